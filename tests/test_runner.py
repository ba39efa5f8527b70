"""Runners without a Trainer: every snapshot analysed (in batches), latest wins as an opt-in, pending snapshots,
faults, figures, a worker that never outlives its training process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bifurcation_callback.analysis import StepAnalyser, take_snapshot, without_timings
from bifurcation_callback.runner import InlineRunner, ProcessRunner, RenderJob

from .test_callback_async import all_exit, is_running
from .tiny_modules import SENTINEL, FragilePLRNN, SlowPLRNN, plrnn_2d


def analyser_for(model, **kwargs) -> StepAnalyser:
    return StepAnalyser(model, max_order=1, max_attractor_period=0, **kwargs)


def with_plrnn_2d_weights(model):
    model.load_state_dict(plrnn_2d().state_dict())
    return model


def snapshots_of(model, h0_values):
    snapshots = []
    for step, h0 in enumerate(h0_values):
        with torch.no_grad():
            model.h[0] = h0
        snapshots.append(take_snapshot(model, step, loss=1.0))
    return snapshots


def records(outcomes):
    return without_timings([outcome.result.record.to_json() for outcome in outcomes if outcome.kind == "result"])


@pytest.mark.parametrize("kind, start_method", [("process", "fork"), ("process", "exec"), ("thread", "auto")])
def test_a_slow_worker_catches_up_in_batches_with_the_records_of_one_at_a_time(kind, start_method):
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=0.02, everywhere=True))
    snapshots = snapshots_of(model, [0.2 + 0.01 * step for step in range(10)])
    runner = ProcessRunner(analyser_for(model), kind=kind, start_method=start_method)
    for snapshot in snapshots:
        runner.submit(snapshot)
    assert runner.drain(timeout_s=120)
    outcomes = runner.poll()
    assert [o.result.record.step for o in outcomes] == list(range(10)) and runner.pending() == []
    assert runner.summary()["started_by"] == ([start_method] if kind == "process" else [])
    assert max(o.result.record.batch_size for o in outcomes) > 1
    inline = InlineRunner(analyser_for(model))
    for snapshot in snapshots:
        inline.submit(snapshot)
    assert records(outcomes) == records(inline.poll())
    runner.close()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_a_free_worker_waits_for_a_fuller_batch_until_a_drain_flushes(kind):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    snapshots = snapshots_of(model, [0.2 + 0.01 * step for step in range(6)])
    runner = ProcessRunner(analyser_for(model), kind=kind, min_batch=4, batch_wait_s=60.0)
    for snapshot in snapshots[:4]:  # a full batch goes at once
        runner.submit(snapshot)
    assert runner.working
    deadline = time.monotonic() + 60
    outcomes = []
    while len(outcomes) < 4 and time.monotonic() < deadline:
        outcomes += runner.poll()
        time.sleep(0.01)
    assert [o.result.record.batch_size for o in outcomes] == [4] * 4
    for snapshot in snapshots[4:]:  # two are not a batch: they wait (60 s) ...
        runner.submit(snapshot)
    time.sleep(0.5)
    assert runner.poll() == [] and [s.step for s in runner.pending()] == [4, 5]
    # Waiting for a fuller batch is no work beside training: the contention account counts these steps idle.
    assert runner.busy and not runner.working
    started = time.monotonic()
    assert runner.drain(timeout_s=30)  # ... until the drain says nothing more comes
    assert time.monotonic() - started < 20
    assert [o.result.record.step for o in runner.poll()] == [4, 5]
    assert not runner.busy and not runner.working
    runner.submit(take_snapshot(model, 6))
    assert not runner.working
    runner.flush()  # the worker analyses step 6 at once: working until its result is in
    assert runner.working
    runner.close()


def test_latest_wins_keeps_the_first_step_and_the_newest():
    # A thread worker that takes at least 0.2 s per batch: while it analyses step 0, steps 1..4 arrive.
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=0.05, everywhere=True))
    runner = ProcessRunner(analyser_for(model), kind="thread", queue_size=1)
    runner.submit(take_snapshot(model, 0))
    while runner.analysing != (0,):  # the worker takes step 0 alone
        runner.poll()
        time.sleep(0.005)
    for step in range(1, 5):
        runner.submit(take_snapshot(model, step))
    assert runner.drain(timeout_s=60)
    outcomes = runner.poll()
    analysed = [o.result.record.step for o in outcomes if o.kind == "result"]
    dropped = [step for o in outcomes if o.kind == "dropped" for step in o.steps]
    assert analysed == [0, 4] and dropped == [1, 2, 3]
    assert outcomes[-1].result.record.events == []  # step 4 compared with step 0: same fixed point
    runner.close()


def test_state_follows_the_last_polled_result_and_pending_lists_the_rest():
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind="thread")
    for snapshot in snapshots_of(model, [0.2] * 3):
        runner.submit(snapshot)
    assert runner.state["tracker"]["previous_step"] is None and [s.step for s in runner.pending()] == [0, 1, 2]
    assert runner.drain(timeout_s=60)
    runner.poll()
    assert runner.pending() == [] and runner.state["tracker"]["previous_step"] == 2
    runner.close()


def test_an_error_skips_that_step_with_its_reason_and_the_next_compares_with_the_last_analysed():
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind="process")
    for snapshot in snapshots_of(model, [0.2, SENTINEL, 0.2]):
        runner.submit(snapshot)
    assert runner.drain(timeout_s=120)
    outcomes = runner.poll()
    assert [(o.kind, o.result.record.skipped is None) for o in outcomes] == [("result", True), ("result", False), ("result", True)]
    assert "ValueError: planted failure" in outcomes[1].result.record.skipped
    assert outcomes[2].result.record.events == [] and len(runner.pids) == 1  # compared with step 0
    runner.close()


def test_a_forked_worker_that_fails_exits_and_a_fresh_interpreter_takes_over(monkeypatch, capfd):
    from bifurcation_callback import runner as runner_module

    def failing_serve(*args):
        raise RuntimeError("planted failure in the forked worker")

    monkeypatch.setattr(runner_module, "serve_forked", failing_serve)  # the fork copies this process, patch included
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind="process")
    for snapshot in snapshots_of(model, [0.2] * 3):
        runner.submit(snapshot)
    assert runner.drain(timeout_s=120)
    outcomes = runner.poll()
    assert [o.result.record.step for o in outcomes if o.kind == "result"] == [0, 1, 2]
    assert runner.summary()["started_by"] == ["fork", "exec"] and runner.restarts == 1
    assert any("died (exit code 1) while starting" in o.message for o in outcomes if o.kind == "note")
    assert "planted failure in the forked worker" in capfd.readouterr().err  # its traceback, then os._exit
    runner.close()
    assert all_exit(runner.pids)


@pytest.mark.parametrize("start_method", ["fork", "exec"])
def test_a_worker_says_whether_mkl_rounds_bitwise(start_method):
    from bifurcation_callback._worker import mkl_bitwise

    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind="process", start_method=start_method)
    runner.submit(take_snapshot(model, 0))
    assert runner.drain(timeout_s=120)
    has_mkl = mkl_bitwise() is not None
    if start_method == "exec":  # MKL_CBWR=...,STRICT in a fresh interpreter's environment
        assert runner.summary()["mkl_bitwise"] is (True if has_mkl else None)
    else:  # strict only if MKL had not run in this process before the fork (it has, in this test session)
        assert runner.summary()["mkl_bitwise"] in ((True, False) if has_mkl else (None,))
    runner.close()


def test_start_method_is_checked():
    with pytest.raises(ValueError, match="start_method must be one of .*'fork'.* got 'spawn'"):
        ProcessRunner(analyser_for(plrnn_2d()), start_method="spawn")


def test_a_worker_that_dies_is_restarted_the_batch_analysed_one_step_at_a_time_then_it_gives_up():
    model = with_plrnn_2d_weights(FragilePLRNN(2, crash=True))
    runner = ProcessRunner(analyser_for(model), kind="process", max_restarts=1)
    for snapshot in snapshots_of(model, [0.2, SENTINEL, 0.2, 0.2]):
        runner.submit(snapshot)
    deadline = time.monotonic() + 120
    outcomes = []
    while not any(o.kind == "fallback" for o in outcomes) and time.monotonic() < deadline:
        runner.drain(timeout_s=1)
        outcomes += runner.poll()
    kinds = [(o.kind, o.result.record.step if o.result else None) for o in outcomes]
    # The first death (a batch, or step 1 alone) costs a restart; the step that kills the worker alone is skipped.
    assert ("fallback", None) in kinds and runner.failed and runner.restarts == 1 and len(runner.pids) == 2
    lost = [o.result.record for o in outcomes if o.kind == "result" and o.result.record.skipped]
    assert [r.step for r in lost] == [1] and "died (exit code 3) while analysing step 1" in lost[0].skipped
    snapshots, _ = runner.take_pending()
    analysed = [o.result.record.step for o in outcomes if o.kind == "result" and not o.result.record.skipped]
    assert sorted(analysed + [1] + [s.step for s in snapshots]) == [0, 1, 2, 3]  # nothing lost, nothing twice
    runner.close()
    assert all_exit(runner.pids)


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_figures_are_drawn_by_the_worker_in_order(kind):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind=kind)
    runner.submit(take_snapshot(model, 0))
    runner.submit_job(figure_job(0))
    runner.submit_job(RenderJob(1, {"cycles": None, "records": "not records"}))  # a broken job: a note
    assert runner.drain(timeout_s=120)
    result, figures, note = runner.poll()
    assert (result.kind, figures.kind, figures.step, note.kind) == ("result", "figures", 0, "note")
    (image,) = figures.images.values()
    assert image.dtype.name == "uint8" and image.ndim == 3 and image.shape[2] == 3
    assert "draws no figures at step 1" in note.message
    runner.close()


def test_close_never_waits_for_a_busy_worker_process_which_then_exits():
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=2.0))
    runner = ProcessRunner(analyser_for(model), kind="process")
    runner.submit(take_snapshot(model, 0))
    assert not runner.drain(timeout_s=3.0)  # started, and in the middle of the analysis
    started = time.perf_counter()
    runner.close()
    assert time.perf_counter() - started < 1.0 and runner.pending() == []
    assert all_exit(runner.pids, timeout_s=5.0)  # it does not finish an analysis nobody will read


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match=r"kind must be 'process' or 'thread', got 'fork'"):
        ProcessRunner(analyser_for(plrnn_2d()), kind="fork")


def figure_job(step: int, **kwargs) -> RenderJob:
    records = [{"step": 0, "n_cycles": {"1": 1}, "events": []}]
    return RenderJob(step, {"cycles": None, "records": records, "history": [[0, 1.0, None]]}, **kwargs)


def test_a_figure_job_with_log_dirs_is_written_by_the_worker_process_after_close(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model), kind="process")
    runner.submit(take_snapshot(model, 0))
    assert runner.drain(timeout_s=120)
    runner.submit_job(figure_job(5, log_dirs=(str(tmp_path),)))
    assert runner.drain(timeout_s=0)  # drawn over there: nothing to wait for here
    runner.close(timeout_s=120)
    assert "figures" not in [outcome.kind for outcome in runner.poll()]  # written, not sent
    assert runner.wait_closed(timeout_s=120)
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    assert event_file.name.split(".")[-2] == str(runner.pids[-1])  # written by the worker process
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert [image.step for image in accumulator.Images("bifurcation/timeline")] == [5]


def test_a_detached_figure_job_that_fails_says_so_on_stderr(tmp_path, capfd):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    blocker = tmp_path / "a-file-not-a-folder"
    blocker.write_text("")
    runner = ProcessRunner(analyser_for(model), kind="process")
    runner.submit(take_snapshot(model, 0))
    assert runner.drain(timeout_s=120)
    runner.submit_job(figure_job(3, log_dirs=(str(blocker / "run"),)))
    runner.close(timeout_s=120)
    assert runner.wait_closed(timeout_s=120)
    assert "could not write the figures of step 3" in capfd.readouterr().err


KILLED_TRAINING = """
import sys, time
sys.path.insert(0, {root!r})
import torch
from bifurcation_callback.analysis import StepAnalyser, take_snapshot
from bifurcation_callback.runner import ProcessRunner
from tests.tiny_modules import SlowPLRNN
model = SlowPLRNN(2, delay_s=30.0)  # an analysis that would run for minutes
runner = ProcessRunner(StepAnalyser(model, max_order=1, max_attractor_period=0), kind="process",
                       start_method={start_method!r})
runner.submit(take_snapshot(model, 0))
while not runner.pids or runner.starting:
    runner.poll(); time.sleep(0.05)
print(runner.pids[0], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("start_method", ["fork", "exec"])
def test_a_worker_process_exits_when_its_training_process_is_killed(tmp_path, start_method):
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "train.py"
    script.write_text(KILLED_TRAINING.format(root=root, start_method=start_method))
    training = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(training.stdout.readline())
        time.sleep(1.0)  # in the middle of its analysis
        assert is_running(worker_pid)
    finally:
        training.kill()  # SIGKILL: no cleanup in the training process
        training.wait()
    assert all_exit([worker_pid], timeout_s=10.0)


EXITING_AFTER_FIGURES = """
import os, sys
sys.path.insert(0, {root!r})
from bifurcation_callback.analysis import take_snapshot
from bifurcation_callback.runner import ProcessRunner
from tests.test_runner import analyser_for, figure_job, with_plrnn_2d_weights
from tests.tiny_modules import FragilePLRNN
model = with_plrnn_2d_weights(FragilePLRNN(2))
runner = ProcessRunner(analyser_for(model), kind="process")
runner.submit(take_snapshot(model, 0))
assert runner.drain(timeout_s=120)
runner.submit_job(figure_job(7, log_dirs=({log_dir!r},)))
runner.close(timeout_s=60)
print(runner.pids[-1], flush=True)
os._exit(0)  # the script ends at once: no interpreter shutdown, nobody waits for the worker
"""


def test_fit_end_figures_are_written_even_when_the_training_process_exits_at_once(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "train.py"
    script.write_text(EXITING_AFTER_FIGURES.format(root=root, log_dir=str(tmp_path / "run")))
    training = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert training.returncode == 0, training.stderr
    worker_pid = int(training.stdout.split()[-1])
    assert all_exit([worker_pid], timeout_s=120.0)  # it finishes the figures, then exits
    (event_file,) = (tmp_path / "run").glob("events.out.tfevents.*")
    assert event_file.name.split(".")[-2] == str(worker_pid)


# A trained README-sized model, analysed one step at a time and 64 steps at a time in the worker's environment.
BATCHED_EQUALS_ONE_AT_A_TIME = r"""
import logging, warnings
import lightning.pytorch as pl, torch
from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
from bifurcation_callback.models import ShallowPLRNN, model_tensors
from bifurcation_callback.training import DSRModule
from bifurcation_callback.tracking import CycleTracker
warnings.filterwarnings("ignore"); logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
torch.set_num_threads(1); torch.manual_seed(0)
rnn = ShallowPLRNN(3, 50)
weights = []
class Keep(pl.Callback):
    def on_train_batch_end(self, *args):
        weights.append([t.detach().clone() for t in model_tensors(rnn)])
pl.Trainer(max_steps=150, accelerator="cpu", logger=False, callbacks=[Keep()], enable_progress_bar=False,
           enable_model_summary=False, enable_checkpointing=False).fit(
    DSRModule(rnn, training="bptt", lr=1e-3, seq_len=200, obs_dim=3),
    TimeSeriesDataModule(lorenz63(5000, seed=0), seq_len=200, batch_size=16, n_batches_per_epoch=150, seed=0))
def signature(record):
    return ([(c.key, c.points.tobytes(), c.eigenvalues.tobytes(), c.residual) for c in record.cycles],
            record.cycles.statuses, [e.to_dict() for e in record.events], record.late_discoveries)
alone, together = CycleTracker(4), CycleTracker(4)
alone.progress = together.progress = False
one = [alone.update_many(alone.stack(weights[i:i + 1], rnn), [i])[0] for i in range(len(weights))]
batched = together.update_many(together.stack(weights[:1], rnn), [0])
for begin in range(1, len(weights), 64):  # the worker's largest batch
    batched += together.update_many(together.stack(weights[begin:begin + 64], rnn), list(range(begin, min(begin + 64, len(weights)))))
print("differing steps:", [i for i in range(len(weights)) if signature(one[i]) != signature(batched[i])])
"""


@pytest.mark.slow
@pytest.mark.parametrize("mkl", ["strict", "as in training"])
def test_a_worker_analyses_batches_bitwise_like_one_step_at_a_time_on_a_trained_model(mkl):
    # MKL's small products may round by the operands' alignment unless MKL_CBWR=...,STRICT: a fresh worker
    # interpreter sets it; a worker forked after MKL ran in training cannot, and must give equal records all the same.
    from bifurcation_callback.runner import worker_environment

    environment = worker_environment()
    if mkl != "strict":
        environment.pop("MKL_CBWR")
    result = subprocess.run([sys.executable, "-c", BATCHED_EQUALS_ONE_AT_A_TIME], env=environment,
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "differing steps: []" in result.stdout, result.stdout


@pytest.mark.parametrize("cuda, max_resident, expected", [(False, None, "fork"), (True, None, "exec"), (False, 0, "exec")])
def test_auto_starts_a_fresh_interpreter_when_cuda_is_initialised_or_the_process_is_large(monkeypatch, cuda, max_resident, expected):
    from bifurcation_callback import runner as runner_module

    monkeypatch.setattr(runner_module, "_cuda_initialised", lambda: cuda)
    if max_resident is not None:
        monkeypatch.setattr(runner_module, "FORK_MAX_RESIDENT_BYTES", max_resident)
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    runner = ProcessRunner(analyser_for(model))
    runner.submit(take_snapshot(model, 0))
    assert runner.drain(timeout_s=120)
    assert [o.kind for o in runner.poll()] == ["result"]
    assert runner.summary()["started_by"] == [expected if sys.platform.startswith("linux") else "exec"]
    runner.close()


def test_a_worker_at_eof_writes_detached_figures_whatever_frames_wait_beside_them(tmp_path):
    # A drain's flush (a 1-tuple frame) can wait beside the fit-end figures' job when the connection closes.
    import pickle
    import socket

    from bifurcation_callback._worker import HEADER, serve_socket

    ours, theirs = socket.socketpair()
    for message in [("flush",), ("job", figure_job(5, log_dirs=(str(tmp_path),))), ("flush",)]:
        payload = pickle.dumps(message)
        ours.sendall(HEADER.pack(len(payload)) + payload)
    ours.shutdown(socket.SHUT_WR)  # EOF after the frames: they all wait together
    serve_socket(theirs, analyser_for(with_plrnn_2d_weights(FragilePLRNN(2))), None, 64)  # returns at EOF
    ours.close()
    theirs.close()
    event_files = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(event_files) == 1 and event_files[0].stat().st_size > 0
