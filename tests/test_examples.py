"""Every script in examples/ runs with --quick, writes its outputs under --out and prints its key lines."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bifurcation_callback import BifurcationDiagram
from bifurcation_callback.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", "--out", str(out)],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_find_cycles_of_trained_model(tmp_path, capsys):
    out = tmp_path / "find"
    stdout = run_example("find_cycles_of_trained_model.py", out)
    assert (out / "model.json").is_file() and (out / "cycles.png").stat().st_size > 0
    assert "order  kind" in stdout and "teacher: 2 16-cycles (1 stable)" in stdout
    # The printed command line is real: it reproduces the script's search.
    command = next(line.strip() for line in stdout.splitlines() if line.strip().startswith("bifurcation-callback find"))
    found = next(line for line in stdout.splitlines() if line.startswith("found "))
    assert cli_main(shlex.split(command)[1:]) == 0
    # the searched orders' counts are lower bounds, which the CLI shows as "≥ n"
    assert f" {found.split()[1]} cycles (order 1:" in capsys.readouterr().out.splitlines()[0]


def test_monitor_your_own_module(tmp_path):
    out = tmp_path / "own"
    stdout = run_example("monitor_your_own_module.py", out)
    run_dir = out / "own_module" / "version_0"
    assert (run_dir / "events.jsonl").is_file() and list(run_dir.glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "summary.json").read_text())
    # The default monitor analyses every step (a worker that falls behind catches up in batches).
    assert (summary["n_monitored_steps"], summary["n_analysed_steps"], summary["n_dropped_steps"]) == (25, 25, 0)
    assert "analysed 25 of 25 monitored steps (0 skipped, 0 dropped" in stdout
    assert f"tensorboard --logdir {out}" in stdout


def test_bifurcation_diagram(tmp_path):
    out = tmp_path / "diagram"
    stdout = run_example("bifurcation_diagram.py", out)
    assert (out / "diagram.png").stat().st_size > 0
    diagram = BifurcationDiagram.load(out / "diagram.json")
    assert diagram.counts.shape == (8, 8, 4) and diagram.method == "exhaustive"
    assert "cells by number of cycles" in stdout and "2 16-cycles, 1 stable" in stdout


def test_gtf_vs_bptt(tmp_path):
    out = tmp_path / "compare"
    stdout = run_example("gtf_vs_bptt.py", out)
    for mode in ("bptt", "gtf"):
        assert (out / mode / "version_0" / "summary.json").is_file()
    rows = [line.split()[0] for line in stdout.splitlines() if line.split()[:1] in (["bptt"], ["gtf"])]
    assert rows == ["bptt", "gtf"]
    assert "free-run MSE" in stdout


def test_loss_landscape(tmp_path, capsys):
    out = tmp_path / "landscape"
    stdout = run_example("loss_landscape.py", out)
    assert (out / "landscape.png").stat().st_size > 0
    for method in ("bptt", "gtf"):
        assert (out / "runs" / f"{method}_start00" / "path.json").is_file()
        assert f"{method}_start00: (0.30, 0.50) -> " in stdout
    assert "cells on the curves" in stdout and "curve crossings" in stdout
    # The printed command line is real: it reproduces the script's landscape.
    command = next(line.strip() for line in stdout.splitlines() if line.strip().startswith("bifurcation-callback landscape"))
    assert cli_main(shlex.split(command)[1:] + ["--no-progress"]) == 0
    ours = json.loads((out / "landscape.json").read_text())
    theirs = json.loads((out / "cli_landscape.json").read_text())
    assert theirs["loss"] == ours["loss"] and theirs["boundary"] == ours["boundary"] and len(theirs["runs"]) == 2
    assert "wrote" in capsys.readouterr().out


def test_analyse_checkpoints(tmp_path, capsys):
    from bifurcation_callback.analysis import without_timings
    from bifurcation_callback.dashboard import read_jsonl

    out = tmp_path / "offline"
    stdout = run_example("analyse_checkpoints.py", out)
    assert "trained ShallowPLRNN(2, 16) for 100 steps" in stdout and "5 checkpoints" in stdout
    assert "analysed 5 checkpoints with 2 workers" in stdout and "second call: 0 analysed, 5 from the cache" in stdout
    records = read_jsonl(out / "analysis" / "events.jsonl")
    assert [record["step"] for record in records] == [19, 39, 59, 79, 99]
    assert all(f"{record['step']:<5d} " in stdout for record in records)
    # The printed command line is real: it writes the same records.
    command = next(line.strip() for line in stdout.splitlines() if line.strip().startswith("bifurcation-callback analyse"))
    assert cli_main(shlex.split(command)[1:] + ["--no-progress"]) == 0
    assert without_timings(read_jsonl(out / "analysis_cli" / "events.jsonl")) == without_timings(records)
    assert "tensorboard --logdir" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_listed_in_the_readme(script):
    assert f"examples/{script}" in (EXAMPLES / "README.md").read_text()
