"""BifurcationMonitor in async mode: real Trainer runs with the analysis in a worker process (or thread),
TensorBoard read back, equal records to sync mode, dropped steps and their brackets, faults, resume, DDP."""

from __future__ import annotations

import json
import os
import time
import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from bifurcation_callback.analysis import StepAnalyser, TIMING_KEYS, take_snapshot, without_timings
from bifurcation_callback.callback import BifurcationMonitor, default_mode
from bifurcation_callback.dashboard import read_jsonl, summary_line, summary_markdown
from bifurcation_callback.models import PLRNN

from .test_callback import flip_at, lightning_info, monitor_lines, scalars_of  # noqa: F401 (a fixture)
from .tiny_modules import (
    DestroyProcessGroupAtTeardown,
    FragilePLRNN,
    SlowPLRNN,
    TinyRNNModule,
    plant_sentinel_at,
    plrnn_2d,
    quiet_trainer_kwargs,
    random_sequences,
)

FLIP_STEP = 6
TIMING_TAGS = {"bifurcation/monitor_ms", "bifurcation/lag_steps"}


def flip_module(rnn: torch.nn.Module | None = None, *, lr: float = 0.01, flip_step: int = FLIP_STEP,
                step_s: float = 0.0) -> TinyRNNModule:
    """W = 0, a₀ jumps from −0.8 to −1.2 at ``flip_step``: the fixed point's multiplier crosses −1 there.
    ``step_s`` makes every training step last that much longer."""
    rnn = rnn if rnn is not None else plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2))
    flip = flip_at(flip_step)

    def schedule(step: int, model: torch.nn.Module) -> None:
        flip(step, model)
        time.sleep(step_s)

    return TinyRNNModule(rnn, lr=lr, schedule=schedule)


def with_weights(rnn: PLRNN, like: PLRNN) -> PLRNN:
    """``rnn`` (a PLRNN subclass) with the weights of ``like``: runs must not depend on the global RNG."""
    rnn.load_state_dict(like.state_dict())
    return rnn


def slow_rnn(delay_s: float) -> SlowPLRNN:
    """flip_module's RNN, analysed ``delay_s`` slower per region-piece evaluation in the worker process."""
    return with_weights(SlowPLRNN(2, delay_s=delay_s), plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2)))


def fit(tmp_path, module, monitor, max_steps=12, **overrides) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, **overrides))
    trainer.fit(module, random_sequences())
    return trainer


def all_exit(pids, timeout_s: float = 15.0) -> bool:
    """Whether every process exits within ``timeout_s`` (the monitor reaps its worker without waiting for it)."""
    deadline = time.monotonic() + timeout_s
    while any(is_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------- equal records


@pytest.mark.parametrize("worker", ["process", "thread"])
def test_async_without_dropped_steps_gives_the_same_records_and_scalars_as_sync(tmp_path, worker):
    runs = {}
    for mode in ("sync", "async"):
        logger = TensorBoardLogger(str(tmp_path), name=mode)
        monitor = BifurcationMonitor(max_order=2, mode=mode, worker=worker, queue_size=None, max_attractor_period=16)
        fit(tmp_path, flip_module(), monitor, logger=logger)
        runs[mode] = (monitor, scalars_of(logger.log_dir), read_jsonl(os.path.join(logger.log_dir, "events.jsonl")))
    (sync, sync_scalars, sync_file), (asynchronous, async_scalars, async_file) = runs["sync"], runs["async"]
    assert asynchronous.active_mode == "async" and sync.active_mode == "sync"
    assert asynchronous.summary["worker"]["kind"] == worker
    assert [r["step"] for r in asynchronous.records] == list(range(12))
    assert without_timings(asynchronous.records) == without_timings(sync.records)
    assert without_timings(async_file) == without_timings(sync_file)  # events.jsonl in step order, same content
    assert any(e.step == FLIP_STEP and e.kind == "stability_change" for e in asynchronous.events)
    # TensorBoard: the same values at the same steps, the monitor's loss at Lightning's step for the batch.
    monitor_tags = {tag for tag in sync_scalars if tag.startswith("bifurcation/")} - TIMING_TAGS
    assert monitor_tags and monitor_tags <= set(async_scalars)
    for tag in monitor_tags:
        assert async_scalars[tag] == pytest.approx(sync_scalars[tag]), tag
    assert async_scalars["bifurcation/loss"] == pytest.approx(
        {step: value for step, value in async_scalars["train_loss"].items() if step in async_scalars["bifurcation/loss"]}
    )
    assert asynchronous.summary["n_dropped_steps"] == 0 and asynchronous.summary["analysed_fraction"] == 1.0


def test_timing_keys_are_the_only_fields_that_differ_between_modes():
    assert set(TIMING_KEYS) >= {"finder_ms", "compare_ms", "attractor_ms", "lag_ms", "lag_steps"}


# ---------------------------------------------------------------------------------------------- latest wins


def test_latest_wins_drops_steps_and_the_next_brackets_cover_them(tmp_path):
    # Opt-in latest wins (queue_size=1): training steps of 30 ms, analyses of about 40 ms plus the worker's
    # start-up: it cannot keep up and analyses only the newest waiting step.  The assertions hold whichever
    # steps the timing lets it analyse.
    logger = TensorBoardLogger(str(tmp_path), name="busy")
    monitor = BifurcationMonitor(max_order=2, mode="async", queue_size=1, max_attractor_period=0)
    module = flip_module(slow_rnn(0.01), lr=0.0, flip_step=60, step_s=0.03)
    fit(tmp_path, module, monitor, max_steps=80, logger=logger)
    n_steps, flip_step = 80, 60

    analysed = [r["step"] for r in monitor.records]
    dropped = monitor.dropped_steps
    assert dropped, "the slow worker should have fallen behind"
    assert sorted(analysed + dropped) == list(range(n_steps))  # every monitored step: analysed or counted as dropped
    assert analysed == sorted(analysed) and analysed[0] == 0 and analysed[-1] == n_steps - 1  # the first is kept
    for before, after in zip(analysed, analysed[1:]):
        record = next(r for r in monitor.records if r["step"] == after)
        # Each event's bracket reaches back to the last analysed step, over the dropped ones in between.
        assert all(tuple(e["step_interval"]) == (before, after) for e in record["events"])
    (flip,) = [e for e in monitor.events if e.kind == "stability_change"]
    low, high = flip.step_interval
    assert low < flip_step <= high
    assert all(step in dropped for step in range(low + 1, high))
    summary = monitor.summary
    assert summary["n_dropped_steps"] == len(dropped) and summary["n_monitored_steps"] == n_steps
    assert summary["n_analysed_steps"] == len(analysed)
    assert f"{len(analysed)} of {n_steps} monitored steps analysed, {len(dropped)} dropped" in summary_line(summary)
    assert f"| dropped steps | {len(dropped)} |" in summary_markdown(summary)
    assert summary["analysed_fraction"] == pytest.approx(len(analysed) / n_steps)
    scalars = scalars_of(logger.log_dir)
    assert max(scalars["bifurcation/dropped"].values()) == len(dropped)
    assert set(scalars["bifurcation/n_cycles/total"]) == set(analysed)  # results at their own steps
    assert json.loads((tmp_path / "busy" / "version_0" / "summary.json").read_text())["n_dropped_steps"] == len(dropped)


def test_a_worker_that_falls_behind_catches_up_in_batches_and_drops_nothing(tmp_path):
    # The default: the same slow worker analyses every step, several at a time, with the records of sync mode.
    runs = {}
    for mode in ("sync", "async"):
        monitor = BifurcationMonitor(max_order=2, mode=mode, max_attractor_period=16)
        fit(tmp_path / mode, flip_module(slow_rnn(0.004), lr=0.0, flip_step=30, step_s=0.01), monitor, max_steps=40, logger=False)
        runs[mode] = monitor
    records = runs["async"].records
    assert [r["step"] for r in records] == list(range(40)) and runs["async"].dropped_steps == []
    assert max(r["batch_size"] for r in records) > 1, "the worker should have analysed waiting steps together"
    assert without_timings(records) == without_timings(runs["sync"].records)
    summary = runs["async"].summary
    assert summary["n_analysed_steps"] == summary["n_monitored_steps"] == 40 and summary["batch_size_median"] >= 1


# ---------------------------------------------------------------------------------------------- faults


def test_an_exception_in_the_worker_skips_that_step_with_a_warning(tmp_path):
    module = TinyRNNModule(with_weights(FragilePLRNN(2), plrnn_2d()), lr=0.0, schedule=plant_sentinel_at({4}))
    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0)
    with pytest.warns(RuntimeWarning, match="skipped step 4: ValueError: planted failure"):
        fit(tmp_path, module, monitor, max_steps=8, logger=False)
    assert [(r["step"], "skipped" in r) for r in monitor.records] == [(s, s == 4) for s in range(8)]
    assert monitor.summary["worker"]["restarts"] == 0 and monitor.summary["mode"] == "async"


def test_a_dead_worker_is_restarted_once_then_the_monitor_falls_back_to_sync(tmp_path):
    # plrnn_2d has one fixed point (h[0] = 0.2 at every step but the sentinel ones).
    module = TinyRNNModule(with_weights(FragilePLRNN(2, crash=True), plrnn_2d()), lr=0.0, schedule=plant_sentinel_at({3, 7}))
    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, module, monitor, max_steps=12, logger=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    # The batch that killed the first worker is analysed again one step at a time: the second death names step 3.
    assert any("died (exit code 3) while analysing steps [" in m and "a new worker process takes over" in m for m in messages)
    assert any("died (exit code 3) while analysing step 3 after 1 restart(s)" in m and "on the training thread (mode='sync')" in m
               for m in messages)
    skipped = [r["step"] for r in monitor.records if "skipped" in r]
    assert skipped == [3, 7]
    assert [r["step"] for r in monitor.records] == list(range(12))  # nothing lost around the crashes
    summary = monitor.summary
    assert summary["worker"]["restarts"] == 1 and summary["worker"]["fell_back_to_sync"]
    assert len(summary["worker"]["processes"]) == 2 and summary["mode"] == "sync"
    assert all_exit(summary["worker"]["processes"])
    # The analysed steps after the crashes continue from the last analysed step's cycles.
    assert all(r["n_cycles"] == {"1": 1} for r in monitor.records if "skipped" not in r)


def test_the_drain_at_fit_end_times_out_instead_of_hanging(tmp_path):
    rnn = slow_rnn(0.5)  # seconds per analysis
    monitor = BifurcationMonitor(max_order=2, mode="async", queue_size=None, drain_timeout_s=0.5, max_attractor_period=0)
    started = time.perf_counter()
    with pytest.warns(RuntimeWarning, match=r"had not analysed \d+ steps \([0-9, -]+.*\) after drain_timeout_s=0.5"):
        fit(tmp_path, TinyRNNModule(rnn), monitor, max_steps=6, logger=False)
    assert time.perf_counter() - started < 30
    analysed = [r["step"] for r in monitor.records]
    assert monitor.dropped_steps and sorted(analysed + monitor.dropped_steps) == list(range(6))
    assert all_exit(monitor.summary["worker"]["processes"])



def test_a_worker_that_falls_behind_is_told_about_while_training_runs(tmp_path):
    # 10 ms per step of a batch in the worker: a few times training's pace, so the queue grows all fit long.
    rnn = with_weights(SlowPLRNN(2, delay_s=0.01, per_step=True), plrnn_2d(A=(-0.8, 0.5), W=((0.0, 0.0), (0.0, 0.0)), h=(0.3, 0.2)))
    monitor = BifurcationMonitor(max_order=1, mode="async", drain_timeout_s=0.5, max_attractor_period=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, TinyRNNModule(rnn), monitor, max_steps=400, logger=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    pace = [m for m in messages if "steps wait now and, at this pace, about" in m]
    assert len(pace) == 1, messages  # once per fit, while training ran
    assert "more than drain_timeout_s=0.5 allows (the rest would be dropped)" in pace[0] and "every_n_steps" in pace[0]
    assert any("had not analysed" in m for m in messages)  # and so it was
    assert monitor.dropped_steps and all_exit(monitor.summary["worker"]["processes"])

@pytest.mark.parametrize("worker", ["process", "thread"])
def test_fit_end_figures_come_from_a_worker_process_after_fit_or_from_this_one_before(tmp_path, worker):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run")
    monitor = BifurcationMonitor(max_order=2, mode="async", worker=worker, queue_size=None, max_attractor_period=16)
    fit(tmp_path, flip_module(), monitor, logger=logger)
    assert monitor.wait_for_figures(timeout_s=120)
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()  # every event file
    for tag in ("bifurcation/state_space", "bifurcation/timeline"):
        assert [image.step for image in accumulator.Images(tag)] == [11], tag
    files_with_images = {
        path.name.split(".")[-2] for path in sorted(tmp_path.glob("run/version_0/events.out.tfevents.*"))
        if EventAccumulator(str(path), size_guidance={"images": 0}).Reload().Tags()["images"]
    }
    # A worker process writes them to an event file of its own (training did not wait for matplotlib); a
    # thread's figures come back and go through the training process's logger.
    expected = monitor.summary["worker"]["processes"][-1] if worker == "process" else os.getpid()
    assert files_with_images == {str(expected)}
    assert all_exit(monitor.summary["worker"]["processes"])


def test_periodic_figures_from_a_worker_process_reach_tensorboard_at_their_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run")
    monitor = BifurcationMonitor(max_order=2, mode="async", queue_size=None, max_attractor_period=16, log_figures_every_n_steps=4)
    fit(tmp_path, flip_module(), monitor, logger=logger)  # 12 steps, all analysed: figures at the 4th, 8th, 12th
    assert monitor.wait_for_figures(timeout_s=120)
    accumulator = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    # Steps 3 and 7 come back from the worker and are logged with the results; 11 twice (the periodic set, and
    # the fit-end set the worker process writes itself).
    assert sorted(image.step for image in accumulator.Images("bifurcation/state_space")) == [3, 7, 11, 11]
    assert monitor.session.n_unpublished == 0


def test_an_interrupted_fit_leaves_no_worker_process(tmp_path):
    class Failing(TinyRNNModule):
        def training_step(self, batch, batch_idx):
            if self.global_step == 3:
                raise RuntimeError("training failed")
            return super().training_step(batch, batch_idx)

    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None)
    with pytest.raises(RuntimeError, match="training failed"):
        fit(tmp_path, Failing(), monitor, logger=False)
    assert monitor.worker_processes and monitor.session.runner.kind == "inline"
    assert all_exit(monitor.worker_processes)


class NoPickle:
    """An attribute a model may carry that copies but cannot be pickled (a handle, a lock wrapper, ...)."""

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("NoPickle cannot be pickled")


def test_a_model_that_cannot_be_pickled_is_analysed_in_a_forked_worker(tmp_path):
    rnn = plrnn_2d()
    rnn.handle = NoPickle()  # a forked worker has the analyser as it is: nothing is pickled on the way there
    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0)
    fit(tmp_path, TinyRNNModule(rnn), monitor, max_steps=5, logger=False)
    assert [r["step"] for r in monitor.records] == list(range(5))
    assert monitor.summary["worker"]["kind"] == "process" and monitor.summary["worker"]["started_by"] == ["fork"]


def test_a_model_that_cannot_go_to_a_fresh_interpreter_is_analysed_in_a_thread(tmp_path, monkeypatch):
    from bifurcation_callback import runner as runner_module

    monkeypatch.setattr(runner_module, "FORK_MAX_RESIDENT_BYTES", 0)  # too big a process to fork: exec
    rnn = plrnn_2d()
    rnn.handle = NoPickle()
    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0)
    with pytest.warns(RuntimeWarning, match="analyses in a thread instead of a worker process: the RNN cannot be pickled"):
        fit(tmp_path, TinyRNNModule(rnn), monitor, max_steps=5, logger=False)
    assert [r["step"] for r in monitor.records] == list(range(5))
    assert monitor.summary["worker"]["kind"] == "thread"


def test_a_failure_of_the_worker_machinery_falls_back_to_sync_without_losing_steps(tmp_path, monkeypatch):
    from bifurcation_callback import runner as runner_module

    original, calls = runner_module.ProcessRunner.submit, []

    def failing_submit(self, snapshot):
        calls.append(snapshot.step)
        if len(calls) == 3:
            raise OSError("Too many open files")
        return original(self, snapshot)

    monkeypatch.setattr(runner_module.ProcessRunner, "submit", failing_submit)
    monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0)
    with pytest.warns(RuntimeWarning, match=r"worker failed \(OSError: Too many open files\); the rest of the run"):
        fit(tmp_path, TinyRNNModule(plrnn_2d(), lr=0.0), monitor, max_steps=6, logger=False)
    assert [r["step"] for r in monitor.records] == list(range(6)) and monitor.n_skipped == 0
    assert monitor.summary["mode"] == "sync"


class NoCopy:
    def __deepcopy__(self, memo):
        raise TypeError("NoCopy cannot be copied")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_model_that_cannot_be_copied_skips_every_step_and_training_finishes(tmp_path, mode):
    rnn = plrnn_2d()
    rnn.handle = NoCopy()
    monitor = BifurcationMonitor(max_order=1, mode=mode)
    with pytest.warns(RuntimeWarning, match=r"cannot analyse this model \(TypeError: NoCopy cannot be copied\)"):
        trainer = fit(tmp_path, TinyRNNModule(rnn), monitor, max_steps=4, logger=False)
    assert trainer.global_step == 4
    assert [("skipped" in r, r["step"]) for r in monitor.records] == [(True, s) for s in range(4)]
    assert monitor.summary["n_skipped"] == 4 and monitor.summary["mode"] == "sync"


UNGUARDED_SCRIPT = """
import json, sys, warnings
import lightning.pytorch as pl
import torch
sys.path.insert(0, {root!r})
from bifurcation_callback import BifurcationMonitor
from bifurcation_callback.models import PLRNN
from tests.tiny_modules import TinyRNNModule, quiet_trainer_kwargs, random_sequences

class ScriptRNN(PLRNN):  # defined in __main__: the worker process cannot import it
    pass

torch.set_num_threads(1)  # as in the test process: an explicit async mode beside threads on every core warns
print("training starts", flush=True)  # no __main__ guard: a worker that imported this script would train again
rnn = ScriptRNN(2)
with torch.no_grad():  # plrnn_2d's weights: one fixed point
    rnn.A.copy_(torch.tensor([0.5, 0.6])), rnn.W.copy_(torch.tensor([[0.0, -0.4], [0.3, 0.0]])), rnn.h.copy_(torch.tensor([0.2, -0.1]))
monitor = BifurcationMonitor(max_order=1, mode="async", queue_size=None, max_attractor_period=0, verbose=False)
trainer = pl.Trainer(max_steps=6, callbacks=[monitor], **quiet_trainer_kwargs({tmp!r}, logger=False))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trainer.fit(TinyRNNModule(rnn, lr=0.0), random_sequences())
print(json.dumps({{"worker": monitor.summary["worker"]["kind"], "steps": [r["step"] for r in monitor.records],
                  "counts": [r.get("n_cycles") for r in monitor.records],
                  "warnings": [str(w.message) for w in caught if "thread" in str(w.message)]}}))
"""


def test_a_model_class_from_an_unguarded_main_script_runs_in_the_worker_process_without_rerunning_the_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "train.py"
    script.write_text(UNGUARDED_SCRIPT.format(root=root, tmp=str(tmp_path)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training starts") == 1  # the worker never ran the script
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["worker"] == "process" and not report["warnings"]
    assert report["steps"] == list(range(6)) and report["counts"] == [{"1": 1}] * 6


# ---------------------------------------------------------------------------------------------- resume


def test_resume_in_async_loses_and_repeats_no_step(tmp_path):
    jsonl = tmp_path / "monitor" / "events.jsonl"

    def monitor() -> BifurcationMonitor:
        return BifurcationMonitor(max_order=2, mode="async", queue_size=None, jsonl_path=str(jsonl), max_attractor_period=0)

    def slow_flip_module() -> TinyRNNModule:
        return flip_module(slow_rnn(0.02))  # the worker lags behind: snapshots are pending at the checkpoint

    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_train_steps=5)
    first = pl.Trainer(
        max_steps=5, callbacks=[monitor(), checkpoints],
        **quiet_trainer_kwargs(tmp_path, enable_checkpointing=True, logger=False),
    )
    first.fit(slow_flip_module(), random_sequences())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    (state,) = [value for key, value in saved.items() if key.startswith("BifurcationMonitor")]
    assert state["pending"], "the test needs snapshots the worker had not analysed when the checkpoint was saved"
    assert sorted([r["step"] for r in state["records"]] + [p["step"] for p in state["pending"]]) == list(range(5))

    resumed = monitor()
    second = pl.Trainer(max_steps=10, callbacks=[resumed], **quiet_trainer_kwargs(tmp_path, logger=False))
    second.fit(slow_flip_module(), random_sequences(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [record["step"] for record in read_jsonl(jsonl)] == list(range(10))
    assert [record["step"] for record in resumed.records] == list(range(10))
    # The same picture as an uninterrupted sync run: the flip at its step, nothing spurious at the resume.
    whole = BifurcationMonitor(max_order=2, mode="sync", max_attractor_period=0)
    fit(tmp_path / "whole", slow_flip_module(), whole, max_steps=10, logger=False)
    assert [(r["n_cycles"], r["n_stable"]) for r in resumed.records] == [(r["n_cycles"], r["n_stable"]) for r in whole.records]
    assert [(e.step, e.kind) for e in resumed.events] == [(e.step, e.kind) for e in whole.events]


def test_a_checkpoint_saved_after_an_async_fit_holds_the_last_analysed_step(tmp_path):
    states = {}
    for mode in ("sync", "async"):
        monitor = BifurcationMonitor(max_order=2, mode=mode, queue_size=None, max_attractor_period=16)
        trainer = fit(tmp_path / mode, flip_module(), monitor, max_steps=9, logger=False)
        trainer.save_checkpoint(tmp_path / mode / "final.ckpt")  # after fit: the worker is gone
        (state,) = [v for k, v in torch.load(tmp_path / mode / "final.ckpt", weights_only=False)["callbacks"].items()
                    if k.startswith("BifurcationMonitor")]
        states[mode] = state
    assert states["async"]["tracker"]["previous_step"] == 8 and states["async"]["pending"] == []
    def without_search_stats(tracker):  # the finder's own statistics hold its wall time
        return {**tracker, "previous": {k: v for k, v in tracker["previous"].items() if k != "stats"}}

    assert without_search_stats(states["async"]["tracker"]) == without_search_stats(states["sync"]["tracker"])
    assert states["async"]["attractor"] == states["sync"]["attractor"]


# ---------------------------------------------------------------------------------------------- mode and DDP


@pytest.mark.parametrize(
    ("cpus", "devices", "threads", "expected"),
    [(2, 1, 1, "async"), (1, 1, 1, "sync"), (2, 2, 1, "sync"), (8, 2, 1, "async"), (2, 1, 2, "sync"), (8, 2, 3, "async"),
     (8, 2, 4, "sync")],
)
def test_auto_mode_is_async_when_a_core_is_left_for_the_worker(monkeypatch, cpus, devices, threads, expected):
    # torch's intra-op threads count: by default torch uses every core, and a worker beside it slows training.
    from bifurcation_callback import _trainer

    monkeypatch.setattr(_trainer, "available_cpus", lambda: cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    class Trainer:
        num_devices = devices

    assert default_mode(Trainer()) == expected


@pytest.mark.parametrize(
    ("cpus", "devices", "threads", "plan"),
    [(2, 1, 1, ("async", None)), (2, 1, 2, ("async", 1)), (1, 1, 1, ("sync", None)), (16, 1, 16, ("async", 15)),
     (8, 2, 4, ("async", 3)), (2, 2, 1, ("sync", None)), (3, 2, 1, ("async", None))],
)
def test_auto_mode_takes_a_thread_from_training_when_torch_uses_every_core(monkeypatch, cpus, devices, threads, plan):
    from bifurcation_callback import _trainer

    monkeypatch.setattr(_trainer, "available_cpus", lambda: cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)

    class Trainer:
        num_devices = devices

    assert _trainer.worker_core_plan(Trainer()) == plan


class RecordThreads(pl.Callback):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.threads.append(torch.get_num_threads())


def test_auto_mode_lowers_torchs_threads_for_the_fit_only_and_says_so(tmp_path, monkeypatch, lightning_info):
    from bifurcation_callback import _trainer

    before = torch.get_num_threads()
    monkeypatch.setattr(_trainer, "available_cpus", lambda: 2)
    torch.set_num_threads(2)
    try:
        monitor, threads = BifurcationMonitor(max_order=1, jsonl_path=str(tmp_path / "e.jsonl")), RecordThreads()
        trainer = pl.Trainer(max_steps=4, callbacks=[monitor, threads], **quiet_trainer_kwargs(tmp_path, logger=False))
        trainer.fit(TinyRNNModule(), random_sequences())
        assert threads.threads == [1] * 4 and torch.get_num_threads() == 2
        assert monitor.summary["mode"] == "async" and monitor.summary["training_threads"] == {"before": 2, "during_fit": 1}
        assert any("training uses 1 torch thread(s) instead of 2" in line for line in monitor_lines(lightning_info))
        explicit = BifurcationMonitor(max_order=1, mode="async", jsonl_path=str(tmp_path / "f.jsonl"))
        with pytest.warns(RuntimeWarning, match="take turns on the cores"):
            pl.Trainer(max_steps=2, callbacks=[explicit, threads], **quiet_trainer_kwargs(tmp_path, logger=False)).fit(
                TinyRNNModule(), random_sequences())
        assert threads.threads[-2:] == [2, 2] and explicit.summary["training_threads"] is None
    finally:
        torch.set_num_threads(before)


class ReportWorker(pl.Callback):
    """Writes, on every rank, whether that rank's monitor ran a worker (after the monitor's own fit end)."""

    def __init__(self, monitor: BifurcationMonitor, folder) -> None:
        self.monitor, self.folder = monitor, folder

    def on_train_end(self, trainer, pl_module) -> None:
        report = {"rank": trainer.global_rank, "processes": self.monitor.worker_processes}
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_ddp_spawn_runs_one_worker_on_rank_zero(tmp_path):
    jsonl = tmp_path / "events.jsonl"
    monitor = BifurcationMonitor(max_order=2, mode="async", queue_size=None, jsonl_path=str(jsonl))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_steps=4,
            callbacks=[monitor, ReportWorker(monitor, tmp_path), DestroyProcessGroupAtTeardown()],
            **quiet_trainer_kwargs(tmp_path, strategy="ddp_spawn", devices=2, logger=False),
        )
        trainer.fit(TinyRNNModule(), random_sequences())
    assert [record["step"] for record in read_jsonl(jsonl)] == [0, 1, 2, 3]
    reports = {r["rank"]: r for r in (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))}
    assert len(reports[0]["processes"]) == 1 and reports[1]["processes"] == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "async" and summary["n_monitored_steps"] == 4


# ---------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_snapshots_from_cuda_weights_give_the_same_records_as_cpu():
    cpu_model = plrnn_2d(A=(-0.8, 0.5), W=((0.0, -0.4), (0.3, 0.0)), h=(0.3, 0.2))
    cuda_model = plrnn_2d(A=(-0.8, 0.5), W=((0.0, -0.4), (0.3, 0.0)), h=(0.3, 0.2)).cuda()
    records = {}
    for name, model in (("cpu", cpu_model), ("cuda", cuda_model)):
        analyser = StepAnalyser(PLRNN(2), max_order=3, max_attractor_period=16)
        results = []
        for step in range(4):
            with torch.no_grad():
                model.A[0] = -0.8 - 0.15 * step  # through the flip at a₀ = −1
            snapshot = take_snapshot(model, step, loss=1.0)
            assert (snapshot.ready is not None) == (name == "cuda")  # non-blocking copy into pinned memory
            results.append(analyser.analyse(snapshot).record)
        records[name] = without_timings(results)
    assert records["cuda"] == records["cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_async_monitor_on_a_cuda_module_matches_sync(tmp_path):
    runs = {}
    for mode in ("sync", "async"):
        monitor = BifurcationMonitor(max_order=2, mode=mode, queue_size=None, max_attractor_period=16)
        fit(tmp_path / mode, flip_module(), monitor, logger=False, accelerator="gpu")
        runs[mode] = without_timings(monitor.records)
    assert runs["async"] == runs["sync"]


def test_a_fit_shorter_than_the_worker_start_still_gets_every_step_analysed(tmp_path):
    # A few steps of a tiny model take milliseconds; the worker process, started at setup, needs a second or
    # more to import torch: the end of fit waits for it, and no step is lost.
    monitor = BifurcationMonitor(max_order=1, mode="async", max_attractor_period=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, TinyRNNModule(), monitor, max_steps=6, logger=False)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert [r["step"] for r in monitor.records] == list(range(6)) and monitor.dropped_steps == []
    assert monitor.summary["drain_seconds"] > 0
