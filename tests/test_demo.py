"""`bifurcation-callback demo` end to end (fast settings) and `compare` on its output."""

from __future__ import annotations

import json
import re

import pytest

from bifurcation_callback.cli import main
from bifurcation_callback.demo import DEMO_METHODS, collect_runs, comparison_table, demo_config

# The smallest run that still exercises everything: 1 seed per method, short sequences, few steps.
TINY = ["--fast", "--steps", "60", "--seq-len", "20", "--every-n-steps", "3", "--max-order", "2"]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the Markdown table rows in ``text`` (header and separator excluded)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def table_of(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import contextlib
    import io

    logdir = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["demo", *TINY, "--logdir", str(logdir)])
    return status, out.getvalue(), err.getvalue(), logdir


def test_demo_runs_end_to_end_and_fills_every_cell(demo_run):
    status, out, err, logdir = demo_run
    assert status == 0, err
    rows = table_rows(out)
    assert [row[0] for row in rows] == list(DEMO_METHODS)  # one seed: no mean rows
    header = [cell.strip() for cell in out.splitlines()[[l.startswith("|") for l in out.splitlines()].index(True)].strip("|").split("|")]
    for column in ("final loss", "D_stsp", "D_H", "loss jumps", "appear", "degen", "jumps w/ bif. nearby", "p", "monitor overhead"):
        assert column in header, header
    for row in rows:
        assert len(row) == len(header)
        no_jumps = row[header.index("loss jumps")] == "0"
        for name, cell in zip(header, row):
            # With no loss jump the association is undefined: its p-value reads n/a, never a made-up 1.
            undefined = {"n/a"} if (no_jumps and name == "p") else set()
            assert cell and (cell not in {"-", "n/a"} or cell in undefined), (name, row)
            assert not re.search(r"\b(none|nan)\b", cell, re.IGNORECASE), (name, row)
    assert f"tensorboard --logdir {logdir}" in out
    assert "BPTT seed 0" in err and "GTF seed 0" in err  # the progress lines


def test_demo_writes_logs_per_run(demo_run):
    _, _, _, logdir = demo_run
    for training in DEMO_METHODS.values():
        run = logdir / f"{training}_seed0"
        assert list(run.glob("events.out.tfevents.*")), sorted(p.name for p in run.iterdir())
        summary = json.loads((run / "summary.json").read_text())
        demo = json.loads((run / "demo.json").read_text())
        assert summary["final_step"] == 59 and summary["n_monitored_steps"] > 0
        assert demo["training"] == training and demo["seed"] == 0
        assert demo["D_stsp"] >= 0 and 0 <= demo["D_H"] <= 1


def test_compare_prints_the_same_table(demo_run, tmp_path, capsys):
    _, out, _, logdir = demo_run
    assert main(["compare", str(logdir)]) == 0
    assert table_of(capsys.readouterr().out) == table_of(out)
    # A run folder and a summary.json file work too; each is listed once.
    run = logdir / "bptt_seed0"
    assert main(["compare", str(run), str(run / "summary.json")]) == 0
    assert [row[0] for row in table_rows(capsys.readouterr().out)] == ["BPTT"]


def test_compare_without_demo_json_marks_missing_measures(demo_run, tmp_path, capsys):
    _, _, _, logdir = demo_run
    plain = tmp_path / "plain_run"
    plain.mkdir()
    (plain / "summary.json").write_text((logdir / "gtf_seed0" / "summary.json").read_text())
    assert main(["compare", str(plain)]) == 0
    (row,) = table_rows(capsys.readouterr().out)
    assert row[0] == "plain_run" and row[3] == row[4] == "n/a"


def test_mean_rows_pool_seeds(demo_run):
    _, _, _, logdir = demo_run
    runs = collect_runs([logdir])
    # Pretend a second seed of each method: the mean row appears, pooled fractions, Fisher's p.
    doubled = runs + [{**run, "demo": {**run["demo"], "seed": 1}} for run in runs]
    rows = table_rows(comparison_table(doubled))
    assert [(row[0], row[1]) for row in rows] == [
        ("BPTT", "0"), ("BPTT", "1"), ("BPTT", "mean"), ("GTF", "0"), ("GTF", "1"), ("GTF", "mean")
    ]
    for row in rows:
        assert all(cell and "nan" not in cell.lower() for cell in row), row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--seeds", "0"], "--seeds must be an int >= 1, got 0"),
        (["demo", "--steps", "-5"], "--steps must be an int >= 1"),
        (["demo", "--fast", "--seq-len", "5000"], "must be longer than --seq-len 5000"),
        (["compare", "/no/such/folder"], "/no/such/folder: no such file or folder"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, tmp_path, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_compare_on_a_folder_without_summaries(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "no summary.json found" in capsys.readouterr().err


def test_compare_needs_a_logdir(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare"])
    assert exit_info.value.code == 2
    assert "LOGDIR" in capsys.readouterr().err


def test_unknown_data_set_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data", "mnist"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err


def test_fast_config_is_small():
    fast, full = demo_config(fast=True), demo_config()
    assert fast.seeds == 1 and full.seeds >= 3
    assert fast.steps * fast.seq_len < full.steps * full.seq_len / 10
