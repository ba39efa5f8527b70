"""analyse_checkpoints and `bifurcation-callback analyse`: a finished run's checkpoints to the monitor's records.

Checkpoints come from a short real training run (DSRModule + ModelCheckpoint, TensorBoard and CSV logs) and
from weights planted along a path whose cycle counts change (ground truth by exhaustive enumeration).
"""

from __future__ import annotations

import concurrent.futures
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bifurcation_callback.analysis import StepRecord, without_timings
from bifurcation_callback.cli import main
from bifurcation_callback.cycles import exhaustive_cycles, find_cycles
from bifurcation_callback.dashboard import read_jsonl
from bifurcation_callback.models import CHECKPOINT_MODEL_KEY, PLRNN, model_to_state
from bifurcation_callback.offline import (
    CACHE_FOLDER,
    CheckpointSettings,
    analyse_checkpoint,
    analyse_checkpoints,
    checkpoint_files,
    read_loss_history,
)

from .problems import BISTABLE_2D, busy_plrnn
from .test_callback_ground_truth import random_weights

MAX_ORDER = 3
QUICK = {"max_attractor_period": 16, "progress": False}


def records_of(run) -> list[dict]:
    return without_timings([record.to_json() for record in run.records])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """60 GTF steps of a ShallowPLRNN(2, 8) on the paper's teacher data, a checkpoint every 10 steps, watched by
    BifurcationMonitor at every step."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from bifurcation_callback import BifurcationMonitor, DSRModule, ShallowPLRNN, TimeSeriesDataModule, plrnn_teacher

    root = tmp_path_factory.mktemp("trained")
    x, _ = plrnn_teacher(600)
    torch.manual_seed(0)
    module = DSRModule(ShallowPLRNN(2, 8), training="gtf", alpha=0.1, lr=1e-2)
    data = TimeSeriesDataModule(x, seq_len=32, batch_size=8, n_batches_per_epoch=25, seed=0)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=10, save_top_k=-1)
    # Watched online too, every step: its files (in tb/) are compared with the offline analysis of the checkpoints.
    monitor = BifurcationMonitor(max_order=2, max_attractor_period=16, mode="sync", verbose=False)
    trainer = pl.Trainer(
        max_steps=60, accelerator="cpu", devices=1, callbacks=[checkpoints, monitor], log_every_n_steps=1,
        logger=[TensorBoardLogger(root, name="tb", version=""), CSVLogger(root, name="csv", version="")],
        enable_progress_bar=False, enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return root


def save_checkpoint(path: Path, model: torch.nn.Module, global_step: int, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": global_step, CHECKPOINT_MODEL_KEY: model_to_state(model), **extra}, path)
    return path


def planted_checkpoints(folder: Path, seed: int = 26, n: int = 10) -> list[Path]:
    """PLRNN(3) weights on the straight path between two random weight sets that crosses several changes of
    the fixed points and 2-cycles (tests/test_callback_ground_truth.py), one checkpoint every 10 steps."""
    start, end = random_weights(seed), random_weights(seed + 1)
    model = PLRNN(3)
    paths = []
    for k in range(n):
        fraction = k / max(n - 1, 1)
        with torch.no_grad():
            for name in ("A", "W", "h"):
                getattr(model, name).copy_((1 - fraction) * start[name] + fraction * end[name])
        paths.append(save_checkpoint(folder / f"epoch=0-step={10 * (k + 1)}.ckpt", model, 10 * (k + 1)))
    return paths


# ---------------------------------------------------------------------------------------------- ground truth


def test_counts_equal_find_cycles_and_exhaustive_enumeration_on_a_trained_run(trained_run):
    run = analyse_checkpoints(trained_run / "checkpoints", max_order=4, logs=trained_run / "tb", **QUICK)
    files = sorted((trained_run / "checkpoints").glob("*.ckpt"), key=lambda p: torch.load(p, weights_only=False)["global_step"])
    assert [r.checkpoint for r in run.records] == [str(p) for p in files]
    for record, path in zip(run.records, files):
        checkpoint = torch.load(path, weights_only=False)
        assert record.step == checkpoint["global_step"] - 1  # the monitor's step of these weights
        model = analyse_checkpoint(path, CheckpointSettings(orders=(1,))).model
        alone = find_cycles(model, 4, seed=record.step)
        assert record.n_cycles == alone.counts() and record.n_stable == alone.stable_counts(), record.step
        assert record.statuses == alone.statuses
        exhaustive = [k for k, status in alone.statuses.items() if status == "exhaustive"]
        assert exhaustive == [1, 2, 3]  # 4 is beyond the enumeration limit for this model
        exact = exhaustive_cycles(model, max(exhaustive))
        assert {k: record.n_cycles[k] for k in exhaustive} == exact.counts()
        assert {k: record.n_stable[k] for k in exhaustive} == exact.stable_counts()
    # The loss of each record is the one the run logged at that step (train_loss in the TensorBoard logs).
    logged = dict((step, loss) for step, loss, _ in read_loss_history(trained_run / "tb"))
    assert [r.loss for r in run.records] == [logged[r.step] for r in run.records]
    assert all(r.grad_norm is not None and r.grad_norm > 0 for r in run.records)  # DSRModule's grad_norm


def test_planted_path_counts_equal_exhaustive_enumeration_and_changes_are_verified_events(tmp_path):
    paths = planted_checkpoints(tmp_path / "ckpt")
    run = analyse_checkpoints(tmp_path / "ckpt", max_order=MAX_ORDER, **QUICK)
    changes = 0
    for previous, record, path in zip([None, *run.records], run.records, paths):
        exact = exhaustive_cycles(analyse_checkpoint(path, CheckpointSettings(orders=(1,))).model, MAX_ORDER)
        assert record.n_cycles == exact.counts() and record.n_stable == exact.stable_counts()
        if previous is not None and previous.n_cycles != record.n_cycles:
            changes += 1
            # Each order whose count changed has an event of that order (appearance, disappearance, a cycle
            # escaping to infinity, a nonsmooth fold at a border), proved with both checkpoints' weights.
            changed = {k for k in record.n_cycles if record.n_cycles[k] != previous.n_cycles[k]}
            assert changed <= {e["order"] for e in record.verified_events}, (record.step, record.events)
            assert all(e["verified"] for e in record.events)
            assert all(e["step_interval"] == [previous.step, record.step] for e in record.verified_events)
    assert changes >= 2  # the path was chosen to cross several changes


def test_a_cycle_one_search_missed_is_carried_over_not_a_bifurcation(tmp_path):
    # The same weights at every checkpoint: nothing can happen.  A deliberately weak search (no enumeration,
    # 4 starts) finds another subset of the 3 fixed points and the 2-cycle at each step (seeded by the step).
    model = busy_plrnn()
    weak = {"exhaustive_limit": 0, "n_starts": 4, "inner": 2, "outer": 1}
    steps = [10, 20, 30, 40, 50, 60]
    for step in steps:
        save_checkpoint(tmp_path / f"step={step}.ckpt", model, step)
    alone = [find_cycles(model, 2, seed=step - 1, **weak).counts() for step in steps]
    assert len({tuple(counts.values()) for counts in alone}) > 1, alone  # the searches do differ
    run = analyse_checkpoints(tmp_path, max_order=2, finder_kwargs=weak, **QUICK)
    assert [e for r in run.records for e in r.events] == []
    totals = [sum(r.n_cycles.values()) for r in run.records]
    assert totals == sorted(totals) and totals[-1] == 4  # carried over, never lost; all four in the end
    for record, counts in zip(run.records, alone):
        assert all(record.n_cycles[k] >= counts[k] for k in counts)
    assert sum(len(r.late_discoveries) for r in run.records) == totals[-1] - totals[0] > 0
    assert run.summary["n_events"] == 0 and run.summary["n_late_discoveries"] == totals[-1] - totals[0]


def test_the_attractor_is_followed_by_identity_not_by_which_one_most_random_states_reach(tmp_path):
    # Two stable fixed points, the same weights at every checkpoint: the random starting states (seeded by the
    # step) reach one or the other more often, but the followed attractor stays the one of the first checkpoint.
    model = BISTABLE_2D.build()
    for step in range(10, 90, 10):
        save_checkpoint(tmp_path / f"step={step}.ckpt", model, step)
    settings = CheckpointSettings(orders=(1, 2), max_attractor_period=16)
    reports = [analyse_checkpoint(path, settings).attractors for path in checkpoint_files(tmp_path)]
    most_reached = [tuple(report.primary.orbit[-1].round(6)) for report in reports]
    assert len(set(most_reached)) == 2  # the independent analyses alone would switch attractors
    run = analyse_checkpoints(tmp_path, max_order=2, max_attractor_period=16, progress=False)
    first = most_reached[0]
    followed = [next(a.fraction for a in report if tuple(a.orbit[-1].round(6)) == first) for report in reports]
    assert [record.attractor["fraction"] for record in run.records] == followed
    assert not any(record.events for record in run.records)


def test_attractor_changes_are_events_exactly_where_the_followed_attractor_changes(tmp_path):
    planted_checkpoints(tmp_path)
    run = analyse_checkpoints(tmp_path, max_order=MAX_ORDER, **QUICK)
    labels = [record.attractor["label"] for record in run.records]
    changes = [[e for e in record.events if e["kind"] == "attractor_change"] for record in run.records]
    assert [bool(found) for found in changes[1:]] == [a != b for a, b in zip(labels, labels[1:])]
    assert sum(map(bool, changes)) >= 2  # the path crosses several
    for before, found in zip(labels, changes[1:]):
        assert all(event["description"].startswith(f"attractor changed from {before} to ") for event in found)


# ---------------------------------------------------------------------------------------------- executors


def test_same_records_with_one_and_two_processes_and_a_dask_local_cluster(tmp_path):
    pytest.importorskip("distributed")
    planted_checkpoints(tmp_path / "ckpt", n=6)
    common = dict(max_order=MAX_ORDER, cache=False, **QUICK)
    alone = analyse_checkpoints(tmp_path / "ckpt", out=tmp_path / "one", **common)
    pool = analyse_checkpoints(tmp_path / "ckpt", out=tmp_path / "two", workers=2, **common)
    dask = analyse_checkpoints(tmp_path / "ckpt", out=tmp_path / "dask", executor="dask", workers=2, chunk_size=2, **common)
    assert records_of(alone) == records_of(pool) == records_of(dask)
    assert len(alone.records) == 6 and any(r.verified_events for r in alone.records)
    assert (pool.summary["offline"]["executor"], pool.summary["offline"]["workers"]) == ("process", 2)
    assert dask.summary["offline"]["executor"] == "dask"
    files = [without_timings(read_jsonl(tmp_path / name / "events.jsonl")) for name in ("one", "two", "dask")]
    assert files[0] == files[1] == files[2] == records_of(alone)


class SubmititLikeExecutor:
    """submit(fn, *args) returning jobs with result() that are not concurrent.futures futures (as submitit's)."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, function, *args):
        self.submitted += 1

        class Job:
            def result(self):
                return function(*args)

        return Job()


def test_any_executor_with_submit_gives_the_same_records(tmp_path):
    planted_checkpoints(tmp_path, n=4)
    common = dict(max_order=2, cache=False, **QUICK)
    reference = records_of(analyse_checkpoints(tmp_path, **common))
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        assert records_of(analyse_checkpoints(tmp_path, executor=threads, **common)) == reference
    jobs = SubmititLikeExecutor()
    assert records_of(analyse_checkpoints(tmp_path, executor=jobs, chunk_size=3, **common)) == reference
    assert jobs.submitted == 2  # 4 checkpoints in tasks of 3


# ---------------------------------------------------------------------------------------------- restarts


def test_a_rerun_analyses_only_new_or_changed_checkpoints(tmp_path):
    paths = planted_checkpoints(tmp_path / "ckpt", n=5)
    common = dict(out=tmp_path / "out", max_order=2, **QUICK)
    first = analyse_checkpoints(tmp_path / "ckpt", **common)
    assert (first.n_analysed, first.n_cached) == (5, 0)
    assert len(list((tmp_path / "out" / CACHE_FOLDER).glob("*.pkl"))) == 5
    again = analyse_checkpoints(tmp_path / "ckpt", **common)
    assert (again.n_analysed, again.n_cached) == (0, 5) and records_of(again) == records_of(first)
    # One new checkpoint, one changed (other weights under the same name).
    save_checkpoint(tmp_path / "ckpt" / "epoch=0-step=60.ckpt", busy_plrnn_3d(), 60)
    save_checkpoint(paths[0], busy_plrnn_3d(), 10)
    third = analyse_checkpoints(tmp_path / "ckpt", **common)
    assert (third.n_analysed, third.n_cached) == (2, 4)
    assert records_of(third) == records_of(analyse_checkpoints(tmp_path / "ckpt", max_order=2, **QUICK))
    # Other settings are another analysis.
    assert analyse_checkpoints(tmp_path / "ckpt", **{**common, "max_order": 3}).n_analysed == 6
    # The output folder holds this analysis only (one TensorBoard event file, six records).
    assert len(list((tmp_path / "out").glob("events.out.tfevents.*"))) == 1
    assert len(read_jsonl(tmp_path / "out" / "events.jsonl")) == 6


def busy_plrnn_3d() -> PLRNN:
    torch.manual_seed(3)
    return PLRNN(3, weight_scale=2.0)


def test_an_unreadable_checkpoint_is_reported_and_left_out(tmp_path):
    planted_checkpoints(tmp_path, n=3)
    (tmp_path / "epoch=0-step=15.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"x": torch.zeros(2)}}, tmp_path / "weights.ckpt")  # no step, no model
    with pytest.warns(RuntimeWarning) as caught:
        run = analyse_checkpoints(tmp_path, max_order=2, **QUICK)
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        f"analyse_checkpoints leaves out {tmp_path / 'epoch=0-step=15.ckpt'}: cannot be read as a torch checkpoint "
        f"(invalid load key, 'n'.)",
        f"analyse_checkpoints leaves out {tmp_path / 'weights.ckpt'}: no training step inside (no 'global_step') nor "
        "in its name (as in 'epoch=3-step=400.ckpt')",
    ]
    assert [r.step for r in run.records] == [9, 19, 29] and not any(r.skipped for r in run.records)
    assert set(run.left_out) == {str(tmp_path / "epoch=0-step=15.ckpt"), str(tmp_path / "weights.ckpt")}
    assert run.summary["offline"]["left_out"] == run.left_out


def test_a_duplicate_step_and_another_model_are_left_out_with_a_warning(tmp_path):
    paths = planted_checkpoints(tmp_path, n=3)
    (tmp_path / "last.ckpt").write_bytes(paths[-1].read_bytes())
    save_checkpoint(tmp_path / "epoch=1-step=40.ckpt", PLRNN(2), 40)
    with pytest.warns(RuntimeWarning) as caught:
        run = analyse_checkpoints(tmp_path, max_order=2, **QUICK)
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].endswith(f"epoch=1-step=40.ckpt: another model than {paths[0]}'s (PLRNN with tensors 2, 2x2, "
                                "2, 2x2 vs PLRNN with tensors 3, 3x3, 3, 3x3)")
    assert messages[1].endswith(f"last.ckpt: its step 29 is {paths[-1]}'s too (e.g. last.ckpt)") and len(messages) == 2
    assert [Path(r.checkpoint).name for r in run.records] == [p.name for p in paths]


def test_a_checkpoint_without_a_usable_model_gives_a_skipped_record_as_in_the_monitor(tmp_path):
    planted_checkpoints(tmp_path, n=3)
    broken = PLRNN(3)
    with torch.no_grad():
        broken.h.fill_(float("nan"))
    save_checkpoint(tmp_path / "epoch=0-step=25.ckpt", broken, 25)
    torch.save({"global_step": 12, "state_dict": {"x": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.warns(RuntimeWarning, match="skipped step 11"):
        run = analyse_checkpoints(tmp_path, max_order=2, **QUICK)
    assert [(r.step, r.skipped is not None) for r in run.records] == [(9, False), (11, True), (19, False), (24, True), (29, False)]
    assert "found no group of state_dict entries" in run.records[1].skipped
    assert "parameter h contains NaN" in run.records[3].skipped and run.summary["n_skipped"] == 2
    assert run.records[3].to_json()["checkpoint"].endswith("step=25.ckpt")
    # The tracking goes on from the last analysed checkpoint: 19 -> 29 is one comparison.
    assert all(e["step_interval"] == [19, 29] for e in run.records[4].events)


# ---------------------------------------------------------------------------------------------- outputs


def test_outputs_are_the_monitors_layout(trained_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bifurcation_callback.compare import collect_runs

    out = tmp_path / "analysis"
    run = analyse_checkpoints(trained_run / "checkpoints", out=out, max_order=2, logs=trained_run / "csv", **QUICK)
    lines = read_jsonl(out / "events.jsonl")
    assert [StepRecord.from_json(line).to_json() for line in lines] == lines == [r.to_json() for r in run.records]
    assert all(line["checkpoint"].endswith(".ckpt") for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_analysed_steps"] == 6 and summary["final_step"] == 59 and summary["mode"] == "offline"
    assert summary["hyperparameters"]["training"] == "gtf"  # DSRModule's, from the checkpoint
    assert summary["offline"]["logs"] == str(trained_run / "csv") and summary["final_loss"] is not None
    (listed,) = collect_runs([out])  # compare reads it like a monitored run's
    assert listed["summary"]["n_events"] == summary["n_events"]
    events = EventAccumulator(str(out), size_guidance={"scalars": 0, "images": 0}).Reload()
    assert [e.step for e in events.Scalars("bifurcation/n_cycles/order_1")] == [r.step for r in run.records]
    assert [e.value for e in events.Scalars("bifurcation/loss")] == pytest.approx([r.loss for r in run.records])
    assert {"bifurcation/state_space", "bifurcation/timeline"} <= set(events.Tags()["images"])


def test_compare_lists_the_online_and_offline_analyses_of_a_run_with_what_each_analysed(trained_run, tmp_path, capsys):
    from .test_demo import table_columns, table_rows

    analyse_checkpoints(trained_run / "checkpoints", out=tmp_path / "offline", max_order=2, logs=trained_run / "tb", **QUICK)
    assert main(["compare", str(trained_run / "tb"), str(tmp_path / "offline")]) == 0
    out = capsys.readouterr().out
    rows, column = table_rows(out), table_columns(out)
    # The same training method and settings (DSRModule's hyperparameters, from hparams.yaml online and from the
    # checkpoints offline), but two analyses of one training: two groups named by the analysis, never one mean,
    # each row saying how many of the 60 training steps it analysed.
    assert sorted((row[0], row[1], row[column["analysed"]]) for row in rows) == [
        ("GTF (analysis=monitor)", "-", "60/60 (100 %)"), ("GTF (analysis=offline)", "-", "6/60 (10 %)")
    ]
    online, offline = sorted(rows, key=lambda row: row[column["analysed"]] == "6/60 (10 %)")
    assert online[column["final loss"]] == offline[column["final loss"]]  # the same run's last logged loss
    assert offline[column["overhead"]] == "n/a" and online[column["overhead"]].endswith(" %")
    assert "Note: these runs were analysed at 10 % to 100 % of their training steps" in out


def test_compare_groups_own_runs_by_method_and_settings_and_tests_gtf_against_bptt(tmp_path, capsys):
    from .test_demo import table_rows

    runs = [("bptt", 0.1, 2.0), ("bptt", 0.1, 3.0), ("gtf", 0.1, 0.5), ("gtf", 0.1, 0.6), ("gtf", 0.3, 0.9), ("gtf", 0.3, 0.8)]
    for k, (training, alpha, loss) in enumerate(runs):
        folder = tmp_path / f"version_{k}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(_monitor_summary(loss)))
        (folder / "hparams.yaml").write_text(f"training: {training}\nalpha: {alpha}\nlr: 0.01\n")
    assert main(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [row[0] for row in table_rows(out) if row[1] == "mean"] == ["BPTT (alpha=0.1)", "GTF (alpha=0.1)", "GTF (alpha=0.3)"]
    blocks = out.split("\n\n")
    tests = [block.splitlines()[0] for block in blocks if "Mann–Whitney" in block]
    assert tests == [f"BPTT (alpha=0.1) vs GTF (alpha={alpha}) over seeds (n = 2 / 2): medians, two-sided Mann–Whitney U p"
                     for alpha in (0.1, 0.3)]
    assert "  final loss: 2.5 vs 0.55, p = 0.333" in out


def _monitor_summary(final_loss: float) -> dict:
    return {"n_monitored_steps": 10, "n_analysed_steps": 10, "final_step": 9, "n_skipped": 0, "n_events": 0,
            "final_loss": final_loss, "events_by_kind": {}, "loss_jumps": [], "monitor_overhead": 0.1,
            "jump_correlation": {"jumps_explained": None, "p_value": None, "events_with_jump": None}}


def test_loss_history_from_tensorboard_and_csv_logs_agree(trained_run):
    from_tensorboard, from_csv = read_loss_history(trained_run / "tb"), read_loss_history(trained_run / "csv")
    assert [row[0] for row in from_tensorboard] == [row[0] for row in from_csv] == list(range(60))
    assert np.allclose([row[1] for row in from_tensorboard], [row[1] for row in from_csv], rtol=1e-6)
    # The folder holding both runs' logs is ambiguous.
    with pytest.raises(ValueError, match="holds the logs of 2 runs"):
        read_loss_history(trained_run)


def test_loss_jumps_are_correlated_with_the_events(tmp_path):
    paths = planted_checkpoints(tmp_path / "ckpt")
    steps = [torch.load(p, weights_only=False)["global_step"] - 1 for p in paths]
    # A loss that jumps right after the first checkpoint with an event.
    first = analyse_checkpoints(tmp_path / "ckpt", max_order=MAX_ORDER, **QUICK)
    event_step = next(r.step for r in first.records if r.verified_events)
    noise = np.exp(0.05 * np.random.default_rng(0).standard_normal(steps[-1] + 1))
    losses = [float(noise[s] * (1.0 if s <= event_step else 8.0)) for s in range(steps[-1] + 1)]
    lines = ["step,train_loss"] + [f"{s},{loss!r}" for s, loss in enumerate(losses)]
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    run = analyse_checkpoints(tmp_path / "ckpt", max_order=MAX_ORDER, logs=tmp_path / "metrics.csv",
                              jump_warmup_steps=5, **QUICK)
    jumps = run.summary["loss_jumps"]
    assert [jump["step"] for jump in jumps] == [event_step + 1]
    assert run.summary["jump_correlation"]["jumps_explained"] == 1.0
    assert [r.loss for r in run.records] == [losses[s] for s in steps]


# ---------------------------------------------------------------------------------------------- the command line


def test_cli_analyse_writes_the_files_and_says_where(trained_run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["analyse", str(trained_run / "checkpoints"), "--out", str(out), "--logs", str(trained_run / "tb"),
            "--max-order", "2", "--max-attractor-period", "16", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 checkpoints (steps 9..59): 6 analysed now, 0 from the cache, 0 left out" in printed
    assert f"tensorboard --logdir {out}" in printed and "offline analysis:" in printed
    assert len(read_jsonl(out / "events.jsonl")) == 6
    assert main(argv) == 0
    assert "0 analysed now, 6 from the cache" in capsys.readouterr().out


def test_cli_reports_left_out_checkpoints_in_one_line_each(tmp_path, capsys):
    planted_checkpoints(tmp_path / "ckpt", n=2)
    (tmp_path / "ckpt" / "broken.ckpt").write_bytes(b"junk")
    assert main(["analyse", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--max-order", "1",
                 "--max-attractor-period", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("bifurcation-callback analyse: warning:") == 1 and "broken.ckpt: cannot be read" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "workers must be an int >= 1, got 0"),
        (["--chunk-size", "0"], "chunk_size must be an int >= 1, got 0"),
        (["--max-order", "0"], "max_order must be an int >= 1, got 0"),
        (["--scheduler", "tcp://localhost:1"], "scheduler is the address of a Dask scheduler, for executor='dask'"),
        (["--logs", "/no/such/logs"], "--logs /no/such/logs: no such file or folder"),
        (["--model-class", "ALRNN"], "none of the 2 checkpoints could be analysed"),
    ],
)
def test_cli_bad_input_exits_2_naming_it(tmp_path, capsys, extra, message):
    planted_checkpoints(tmp_path / "ckpt", n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(["analyse", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"), "--no-progress", *extra])
    assert status == 2
    assert message in capsys.readouterr().err


def test_cli_without_checkpoints_exits_2(tmp_path, capsys):
    assert main(["analyse", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"no *.ckpt file under {tmp_path}" in capsys.readouterr().err
    assert main(["analyse", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.ckpt: no such file or folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor": "thread"}, "executor must be one of 'process', 'dask' or an object with submit"),
        ({"executor": object()}, "executor must be one of 'process', 'dask' or an object with submit(fn, *args), got a object"),
        ({"workers": 1.5}, "workers must be an int >= 1, got 1.5"),
        ({"orders": [0, 2]}, "orders must be a non-empty list of positive ints"),
        ({"finder_kwargs": {"speed": 2}}, "finder_kwargs has unknown keys ['speed']"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
        ({"jump_min_change": -1.0}, "jump_min_change must be"),
        ({"max_attractor_period": -1}, "max_attractor_period must be an int >= 0"),
        ({"cache": "yes"}, "cache must be"),
        ({"model_class": ""}, "model_class must be a non-empty string or None"),
        ({"loss_key": ""}, "loss_key must be a non-empty string, got ''"),
        ({"executor": "process", "scheduler": "tcp://x:1"}, "scheduler is the address of a Dask scheduler"),
    ],
)
def test_bad_arguments_raise_naming_them(tmp_path, kwargs, message):
    planted_checkpoints(tmp_path, n=1)
    with pytest.raises(ValueError) as raised:
        analyse_checkpoints(tmp_path, progress=False, **kwargs)
    assert message in str(raised.value)


def test_checkpoint_files_lists_each_file_once_in_order(tmp_path):
    paths = planted_checkpoints(tmp_path, n=3)
    assert checkpoint_files([tmp_path, paths[0]]) == sorted(paths)
    with pytest.raises(ValueError, match="no checkpoint files or folders given"):
        checkpoint_files([])


def test_importing_the_offline_analysis_imports_neither_lightning_nor_dask():
    from .test_cli import _NO_LIGHTNING, _run_python

    code = "import bifurcation_callback, bifurcation_callback.offline\nassert 'distributed' not in __import__('sys').modules\n"
    result = _run_python(code + _NO_LIGHTNING)
    assert result.returncode == 0, result.stderr
