"""`bifurcation-callback demo` end to end (fast settings) and `compare` on its output."""

from __future__ import annotations

import json
import re

import pytest

from bifurcation_callback.analysis import TIMING_KEYS

from bifurcation_callback.cli import main
from bifurcation_callback.compare import DEMO_METHODS, collect_runs, comparison_table
from bifurcation_callback.demo import demo_config

# The smallest run that still exercises everything: 1 seed per method, short sequences, few steps.
TINY = ["--fast", "--steps", "60", "--seq-len", "20", "--every-n-steps", "3", "--max-order", "2"]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the Markdown table rows in ``text`` (header and separator excluded)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def table_columns(text: str) -> dict[str, int]:
    """Column name -> index in the rows of ``table_rows(text)``."""
    header = next(line for line in text.splitlines() if line.startswith("|"))
    return {cell.strip(): index for index, cell in enumerate(header.strip("|").split("|"))}


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
    from bifurcation_callback.bifurcations import BIFURCATION_KINDS
    from bifurcation_callback.compare import _kind_header

    from bifurcation_callback.compare import ATTRACTOR_SPLIT_KINDS

    kinds = [_kind_header(kind) for kind in BIFURCATION_KINDS if kind not in ATTRACTOR_SPLIT_KINDS]
    split = [f"{_kind_header(kind)} {part}" for kind in ATTRACTOR_SPLIT_KINDS for part in ("attr", "rest")]
    for column in ("final loss", "D_stsp", "D_H", "final attractor", "jumps", *kinds, *split, "jumps w/ ev.", "p", "overhead"):
        assert column in header, header
    for row in rows:
        assert len(row) == len(header)
        no_jumps = row[header.index("jumps")] == "0"
        for name, cell in zip(header, row):
            # With no loss jump the association is undefined: its p-value reads n/a, never a made-up 1.
            undefined = {"n/a"} if (no_jumps and name == "p") else set()
            assert cell and (cell not in {"-", "n/a"} or cell in undefined), (name, row)
            assert not re.search(r"\b(none|nan)\b", cell, re.IGNORECASE), (name, row)
        attractor = row[header.index("final attractor")]
        assert re.fullmatch(r"fixed point|\d+-cycle|chaotic|quasi-periodic|unresolved|divergent|none", attractor), row
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
        assert summary["max_attractor_period"] == demo["config"]["max_attractor_period"] == 32  # the demo's setting


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
    out = capsys.readouterr().out
    (row,) = table_rows(out)
    column = table_columns(out)
    assert row[0] == "plain_run" and row[column["D_stsp"]] == row[column["D_H"]] == "n/a"


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


def _summary(n_events: int, final_loss: float) -> dict:
    """The keys compare reads from a BifurcationMonitor summary.json."""
    return {
        "n_monitored_steps": 10, "n_skipped": 0, "n_events": n_events, "final_loss": final_loss,
        "events_by_kind": {"appearance": n_events}, "loss_jumps": [],
        "jump_correlation": {"jumps_explained": 0.0, "p_value": 1.0}, "monitor_overhead": 0.1,
    }


def test_compare_keeps_runs_with_the_same_leaf_folder_apart(tmp_path, capsys):
    # Bug: rows were named by the leaf folder, so a/version_0 and b/version_0 were averaged into one mean row.
    for name, loss in (("a", 1.0), ("b", 3.0)):
        run = tmp_path / "logs" / name / "version_0"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(_summary(1, loss)))
    assert main(["compare", str(tmp_path / "logs")]) == 0
    out = capsys.readouterr().out
    loss = table_columns(out)["final loss"]
    assert [(row[0], row[loss]) for row in table_rows(out)] == [("a/version_0", "1"), ("b/version_0", "3")]


def test_compare_rejects_a_foreign_summary_json(tmp_path, capsys):
    # Bug: any JSON object named summary.json was tabulated (all n/a) with exit status 0.
    good, foreign = tmp_path / "good", tmp_path / "other"
    good.mkdir(), foreign.mkdir()
    (good / "summary.json").write_text(json.dumps(_summary(0, 1.0)))
    (foreign / "summary.json").write_text(json.dumps({"accuracy": 0.9}))
    assert main(["compare", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert str(foreign / "summary.json") in err and "not a BifurcationMonitor summary.json" in err


def test_compare_json_into_a_closed_pipe_exits_quietly(tmp_path):
    # Bug: `compare ... --json - | head -1` ended in a BrokenPipeError traceback.
    from test_cli import run_into_closed_pipe

    for k in range(200):
        run = tmp_path / f"run{k}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(_summary(k, 1.0)))
    assert run_into_closed_pipe("compare", str(tmp_path), "--json", "-") == (1, "")


def test_compare_json_lists_the_runs(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "summary.json").write_text(json.dumps(_summary(2, 1.0)))
    assert main(["compare", str(tmp_path / "r"), "--json", "-"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["name"] == "r" and run["summary"]["n_events"] == 2 and run["demo"] is None


def test_kind_headers_come_from_the_bifurcation_vocabulary():
    from bifurcation_callback.bifurcations import BIFURCATION_KINDS
    from bifurcation_callback.compare import _kind_header

    table = comparison_table([{"name": "r", "path": "r", "summary": _summary(1, 1.0), "demo": None}])
    header, legend = table.splitlines()[0], table.splitlines()[-1]
    assert [_kind_header(kind) in header for kind in BIFURCATION_KINDS] == [True] * len(BIFURCATION_KINDS)
    assert all(f"{_kind_header(kind)} = {kind}" in legend for kind in BIFURCATION_KINDS)  # the legend names each


def test_split_by_attractor_counts_qualitative_events_whose_cycle_is_stable_before_or_after():
    from bifurcation_callback.compare import split_by_attractor

    events = [
        {"kind": "border_collision", "stable_before": True, "stable_after": True},  # a mere crossing: not counted
        {"kind": "border_collision", "stable_before": True, "stable_after": True,  # ... unless its stability changed
         "n_unstable_before": 0, "n_unstable_after": 1},
        {"kind": "border_collision", "stable_before": None, "stable_after": True},  # a stable cycle born
        {"kind": "border_collision", "stable_before": False, "stable_after": None},  # a saddle vanishing
        {"kind": "degenerate", "stable_before": False, "stable_after": True},
        {"kind": "degenerate", "stable_before": False, "stable_after": False},
        {"kind": "degenerate"},  # no stability recorded: not the attractor's
        {"kind": "stability_change", "stable_before": True, "stable_after": False},  # not split
        {"kind": "attractor_change", "stable_before": True, "stable_after": True},
    ]
    assert split_by_attractor(events) == {
        "border_collision": {"attractor": 2, "rest": 2},
        "degenerate": {"attractor": 1, "rest": 2},
    }
    assert split_by_attractor([]) == {"border_collision": {"attractor": 0, "rest": 0}, "degenerate": {"attractor": 0, "rest": 0}}


def test_split_columns_add_up_to_the_event_counts(demo_run):
    _, out, _, logdir = demo_run
    from bifurcation_callback.compare import ATTRACTOR_SPLIT_KINDS, _kind_header

    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    for run, row in zip(collect_runs([logdir]), table_rows(out)):
        for kind in ATTRACTOR_SPLIT_KINDS:
            parts = [int(row[header.index(f"{_kind_header(kind)} {part}")]) for part in ("attr", "rest")]
            assert sum(parts) == run["summary"]["events_by_kind"][kind], (kind, row)
        changes = row[header.index(_kind_header("attractor_change"))]
        assert int(changes) == run["summary"]["n_attractor_changes"] == run["summary"]["events_by_kind"]["attractor_change"]


def test_mean_row_names_the_most_frequent_final_attractor():
    def run(seed: int, label: str | None, changes: int) -> dict:
        summary = {**_summary(0, 1.0), "final_attractor": label and {"label": label}, "max_attractor_period": 256,
                   "n_attractor_changes": changes}
        return {"name": f"r{seed}", "path": f"r{seed}", "summary": summary, "demo": {"method": "GTF", "seed": seed},
                "attractor_split": None}

    runs = [run(0, "4-cycle", 1), run(1, "fixed point", 2), run(2, "4-cycle", 3), run(3, None, 0)]
    table = comparison_table(runs)
    rows, column = table_rows(table), table_columns(table)
    attractor, changes = column["final attractor"], column["attr.chg"]
    assert [row[attractor] for row in rows] == ["4-cycle", "fixed point", "4-cycle", "none", "4-cycle 2/4"]
    assert [row[changes] for row in rows] == ["1", "2", "3", "0", "1.5"]
    assert rows[0][column["border attr"]] == "n/a"  # no events.jsonl: the split is undefined
    # A monitor without attractor analysis: n/a, not "none".
    off = {**runs[0], "summary": {**runs[0]["summary"], "max_attractor_period": 0}}
    assert table_rows(comparison_table([off]))[0][attractor : changes + 1] == ["n/a", "n/a"]
    # The monitor skipped the last step (a model with NaN weights): the summary's attractor is an old one.
    diverged = {**runs[0], "last_step_skipped": True}
    assert table_rows(comparison_table([diverged]))[0][attractor] == "skipped"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--lr", "0"], "--lr must be a finite number > 0.0, got 0.0"),
        (["demo", "--alpha", "1.5"], "--alpha must be a finite number >= 0.0 and <= 1.0, got 1.5"),
        (["demo", "--seq-len", "1"], "--seq-len must be an int >= 2, got 1"),
    ],
)
def test_demo_options_use_the_shared_validators(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- determinism

# Fields that are timings (they differ between any two runs); everything else must be identical.
# Timings, and what depends on them: the worker process's id, how far behind training its results came.
SUMMARY_TIMINGS = {"monitor_seconds", "fit_seconds", "monitor_overhead", "drain_seconds", "worker", "contention_seconds",
                   "overhead_is_lower_bound", "steps_with_worker_busy", "steps_with_worker_idle", "lag_steps_median",
                   "lag_steps_max", "batch_size_median"}
RECORD_TIMINGS = set(TIMING_KEYS)
DEMO_TIMINGS = {"wall_seconds"}


def without(data: dict, keys: set[str]) -> dict:
    assert keys <= set(data), sorted(keys - set(data))  # a renamed timing field must be renamed here too
    return {k: v for k, v in data.items() if k not in keys}


def test_two_demo_runs_give_the_same_numbers(demo_run, tmp_path_factory):
    # docs/demo.md promises that a re-run of the same command on the same machine prints the same table
    # except the overhead column (a timing); here a second run in the same process, another logdir.
    import contextlib
    import io

    _, first_out, _, first_dir = demo_run
    second_dir = tmp_path_factory.mktemp("demo_again")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["demo", *TINY, "--logdir", str(second_dir)]) == 0
    first_rows, second_rows = table_rows(first_out), table_rows(out.getvalue())
    assert [row[:-1] for row in second_rows] == [row[:-1] for row in first_rows]
    assert [row[-1].endswith("%") for row in second_rows] == [True] * len(first_rows)  # the overhead column
    for training in DEMO_METHODS.values():
        a, b = first_dir / f"{training}_seed0", second_dir / f"{training}_seed0"
        summaries = [json.loads((run / "summary.json").read_text()) for run in (a, b)]
        for summary in summaries:  # the finder's own clock, in the last cycle set
            summary["final_cycles"]["stats"] = without(summary["final_cycles"]["stats"], {"elapsed_s"})
        assert without(summaries[1], SUMMARY_TIMINGS) == without(summaries[0], SUMMARY_TIMINGS)
        demos = [json.loads((run / "demo.json").read_text()) for run in (a, b)]
        assert without(demos[1], DEMO_TIMINGS) == without(demos[0], DEMO_TIMINGS)
        records = [[json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()] for run in (a, b)]
        assert len(records[0]) == summaries[0]["n_monitored_steps"] > 0
        assert [without(r, RECORD_TIMINGS) for r in records[1]] == [without(r, RECORD_TIMINGS) for r in records[0]]


def _train_tiny(tmp_path, *, monitor: bool, steps: int = 40) -> tuple[dict, tuple]:
    """A short demo-like BPTT run (seed 0) with or without the monitor: final weights, global RNG states after."""
    import random

    import lightning.pytorch as pl
    import numpy as np
    import torch

    from bifurcation_callback.callback import BifurcationMonitor
    from bifurcation_callback.data import TimeSeriesDataModule, plrnn_teacher
    from bifurcation_callback.models import PLRNN
    from bifurcation_callback.training import DSRModule
    from tiny_modules import quiet_trainer_kwargs

    x, _ = plrnn_teacher(300, system="4-cycle", seed=0)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    module = DSRModule(PLRNN(3), training="bptt", obs_dim=2, lr=5e-3, seq_len=20)
    data = TimeSeriesDataModule(x.astype(np.float32), seq_len=20, batch_size=4, n_batches_per_epoch=15, seed=0)
    callbacks = [BifurcationMonitor(max_order=2, every_n_steps=1, model_attr="rnn", seed=0, mode="sync")] if monitor else []
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(module, data)
    if monitor:
        assert len(callbacks[0].records) == steps and callbacks[0].n_skipped == 0  # it analysed every step
    weights = {name: p.detach().clone() for name, p in module.state_dict().items()}
    return weights, (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())


def test_the_monitor_never_changes_the_training_trajectory(tmp_path):
    # The monitor only reads the model: its random search has its own generators, so the same seed gives
    # bit-identical weights with and without it, and the global RNGs (torch, numpy, random) end in the same
    # state.  Three epochs, so later epochs' batches would show a global draw of the monitor.
    import numpy as np
    import torch

    with_monitor, rng_with = _train_tiny(tmp_path / "with", monitor=True)
    without_monitor, rng_without = _train_tiny(tmp_path / "without", monitor=False)
    assert with_monitor.keys() == without_monitor.keys()
    for name in with_monitor:
        assert torch.equal(with_monitor[name], without_monitor[name]), name
    assert torch.equal(rng_with[0], rng_without[0])
    assert np.array_equal(rng_with[1], rng_without[1])
    assert rng_with[2] == rng_without[2]


def test_the_demo_records_its_numerical_environment(demo_run):
    _, _, _, logdir = demo_run
    environment = json.loads((logdir / "bptt_seed0" / "demo.json").read_text())["environment"]
    assert environment["torch_threads"] == 1 and environment["torch"] and environment["cpu_capability"]
    import os

    assert environment["MKL_CBWR"] == os.environ.get("MKL_CBWR", "COMPATIBLE")  # the demo's default, or the user's


def test_the_demo_asks_for_the_same_mkl_branch_on_every_cpu(monkeypatch):
    import os

    from bifurcation_callback.demo import _same_mkl_branch_on_every_cpu

    monkeypatch.delenv("MKL_CBWR", raising=False)
    with _same_mkl_branch_on_every_cpu():
        assert os.environ["MKL_CBWR"] == "COMPATIBLE"
    assert "MKL_CBWR" not in os.environ  # restored
    monkeypatch.setenv("MKL_CBWR", "AVX2")  # the user's choice wins
    with _same_mkl_branch_on_every_cpu():
        assert os.environ["MKL_CBWR"] == "AVX2"
    assert os.environ["MKL_CBWR"] == "AVX2"


def test_method_tests_compare_gtf_with_bptt_over_seeds(demo_run, capsys):
    from bifurcation_callback.compare import method_tests

    _, out, _, logdir = demo_run
    runs = collect_runs([logdir])
    assert method_tests(runs) == "" and "Mann–Whitney" not in out  # one seed per method: no test
    # Three pretend seeds per method with different D_stsp and final attractors.
    fake = []
    for run in runs:
        for seed in range(3):
            gtf = run["demo"]["method"] == "GTF"
            summary = {**run["summary"], "final_attractor": {"label": "4-cycle" if gtf or seed == 0 else "fixed point"}}
            demo = {**run["demo"], "seed": seed, "D_stsp": (0.1 if gtf else 5.0) + seed}
            fake.append({**run, "summary": summary, "demo": demo})
    text = method_tests(fake)
    lines = text.splitlines()
    assert lines[0] == "BPTT vs GTF over seeds (n = 3 / 3): medians, two-sided Mann–Whitney U p"
    assert "  D_stsp: 6 vs 1.1, p = 0.1" in lines  # exact two-sided p of a complete separation, n = 3 / 3
    assert lines[-1] == "  final attractor = the teacher's 4-cycle: 1/3 vs 3/3, Fisher's exact p = 0.4"
    assert not re.search(r"\bnan\b", text)
    assert comparison_table(fake).endswith(text)  # printed under the table by demo and compare alike


def test_mean_row_p_combines_only_the_runs_with_loss_jumps():
    def run(seed: int, p: float | None, n_jumps: int) -> dict:
        summary = {**_summary(0, 1.0), "loss_jumps": [{"step": 30 + k} for k in range(n_jumps)],
                   "jump_correlation": {"jumps_explained": 1.0 if n_jumps else None, "p_value": p}}
        return {"name": f"r{seed}", "path": f"r{seed}", "summary": summary, "demo": {"method": "BPTT", "seed": seed}}

    rows = table_rows(comparison_table([run(0, 0.02, 2), run(1, None, 0)]))
    header = comparison_table([run(0, 0.02, 2)]).splitlines()[0]
    p = [cell.strip() for cell in header.strip("|").split("|")].index("p")
    assert [row[p] for row in rows] == ["0.02", "n/a", "0.02"]  # a run without jumps has no p; the mean row skips it
    assert table_rows(comparison_table([run(0, None, 0), run(1, None, 0)]))[-1][p] == "n/a"
