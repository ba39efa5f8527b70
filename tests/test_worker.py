"""AnalysisWorker without a Trainer: latest wins, pending snapshots, faults, figures, both kinds."""

from __future__ import annotations

import time

import pytest
import torch

from bifurcation_callback.analysis import StepAnalyser, take_snapshot
from bifurcation_callback.worker import AnalysisWorker, RenderJob

from .tiny_modules import SENTINEL, FragilePLRNN, SlowPLRNN, plrnn_2d


def analyser_for(model, **kwargs) -> StepAnalyser:
    return StepAnalyser(model, max_order=1, max_attractor_period=0, **kwargs)


def with_plrnn_2d_weights(model):
    model.load_state_dict(plrnn_2d().state_dict())
    return model


def test_latest_wins_keeps_the_next_snapshot_and_the_newest():
    # A thread worker that takes at least 0.2 s per snapshot: while it analyses step 0, steps 1..4 arrive.
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=0.05, everywhere=True))
    worker = AnalysisWorker(analyser_for(model), kind="thread", queue_size=1)
    dropped = [worker.submit(take_snapshot(model, step)) for step in range(5)]
    # Nothing in flight yet when step 0 arrives (the thread takes it at the next call): step 0 is never
    # displaced; later arrivals displace the one waiting snapshot, so steps 1..3 are dropped, 4 waits.
    assert [snapshot.step for snapshot in dropped if snapshot is not None] == [1, 2, 3]
    assert [snapshot.step for snapshot in worker.pending()] == [0, 4]
    assert worker.drain(timeout_s=60)
    messages = worker.collect()
    assert [(m.kind, m.snapshot.step) for m in messages] == [("result", 0), ("result", 4)]
    assert messages[-1].result.record["events"] == []  # step 4 compared with step 0: same fixed point
    worker.close()


def test_without_a_queue_limit_nothing_is_dropped_and_force_never_displaces():
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=0.01, everywhere=True))
    unlimited = AnalysisWorker(analyser_for(model), kind="thread", queue_size=None)
    assert all(unlimited.submit(take_snapshot(model, step)) is None for step in range(6))
    limited = AnalysisWorker(analyser_for(model), kind="thread", queue_size=1)
    assert all(limited.submit(take_snapshot(model, step), force=True) is None for step in range(6))
    for worker in (unlimited, limited):
        assert worker.drain(timeout_s=60)
        assert [m.snapshot.step for m in worker.collect()] == list(range(6))
        worker.close()


def test_state_follows_the_last_collected_step_and_pending_lists_the_rest():
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    worker = AnalysisWorker(analyser_for(model), kind="thread", queue_size=None)
    for step in range(3):
        worker.submit(take_snapshot(model, step))
    assert worker.drain(timeout_s=60)
    assert [s.step for s in worker.pending()] == [0, 1, 2]  # finished but not collected: still pending
    assert worker.state["tracker"]["previous_step"] is None
    worker.collect()
    assert worker.pending() == [] and worker.state["tracker"]["previous_step"] == 2
    worker.close()


def test_an_error_comes_back_as_a_message_and_the_state_is_kept():
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    worker = AnalysisWorker(analyser_for(model), kind="process", queue_size=None)
    worker.submit(take_snapshot(model, 0))
    with torch.no_grad():
        model.h[0] = SENTINEL
    worker.submit(take_snapshot(model, 1))
    with torch.no_grad():
        model.h[0] = 0.2
    worker.submit(take_snapshot(model, 2))
    assert worker.drain(timeout_s=120)
    messages = worker.collect()
    assert [m.kind for m in messages] == ["result", "error", "result"]
    assert "ValueError: planted failure" in messages[1].error
    assert messages[2].result.record["events"] == []  # compared with step 0, the last analysed step
    assert len(worker.pids) == 1
    worker.close()


def test_a_process_worker_that_dies_twice_gives_up_and_hands_back_the_queue():
    model = with_plrnn_2d_weights(FragilePLRNN(2, crash=True))
    worker = AnalysisWorker(analyser_for(model), kind="process", queue_size=None, max_restarts=1)
    for step, h0 in enumerate([0.2, SENTINEL, 0.2, SENTINEL, 0.2, 0.2]):
        with torch.no_grad():
            model.h[0] = h0
        worker.submit(take_snapshot(model, step))
    assert worker.drain(timeout_s=120)
    messages = worker.collect()
    assert [(m.kind, m.snapshot.step if m.snapshot else None) for m in messages] == [
        ("result", 0), ("lost", 1), ("result", 2), ("lost", 3), ("fallback", None)
    ]
    assert worker.failed and worker.restarts == 1 and len(worker.pids) == 2
    assert [s.step for s in worker.take_queue()] == [4, 5]
    assert worker.state["tracker"]["previous_step"] == 2
    worker.close()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_figures_are_drawn_by_the_worker_in_order(kind):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    worker = AnalysisWorker(analyser_for(model), kind=kind, queue_size=None, warm_figures=kind == "process")
    worker.submit(take_snapshot(model, 0))
    records = [{"step": 0, "n_cycles": {"1": 1}, "events": []}]
    worker.submit_job(RenderJob(0, {"cycles": None, "records": records, "history": [[0, 1.0, None]]}))
    worker.submit_job(RenderJob(1, {"cycles": None, "records": "not records"}))  # a broken job: a note
    assert worker.drain(timeout_s=120)
    result, figures, note = worker.collect()
    assert (result.kind, figures.kind, figures.step, note.kind) == ("result", "figures", 0, "note")
    (image,) = figures.images.values()
    assert image.dtype.name == "uint8" and image.ndim == 3 and image.shape[2] == 3
    assert "draws no figures at step 1" in note.error
    worker.close()


def test_close_never_waits_for_a_busy_worker_process():
    model = with_plrnn_2d_weights(SlowPLRNN(2, delay_s=2.0))
    worker = AnalysisWorker(analyser_for(model), kind="process")
    worker.submit(take_snapshot(model, 0))
    assert not worker.drain(timeout_s=0.2)
    started = time.perf_counter()
    worker.close()
    assert time.perf_counter() - started < 1.0
    assert worker.pending() == []


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match=r"kind must be one of \['process', 'thread'\], got 'fork'"):
        AnalysisWorker(analyser_for(plrnn_2d()), kind="fork")


def figure_job(step: int, **kwargs) -> RenderJob:
    records = [{"step": 0, "n_cycles": {"1": 1}, "events": []}]
    return RenderJob(step, {"cycles": None, "records": records, "history": [[0, 1.0, None]]}, **kwargs)


def test_a_figure_job_with_log_dirs_is_written_by_the_worker_process_after_close(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = with_plrnn_2d_weights(FragilePLRNN(2))
    worker = AnalysisWorker(analyser_for(model), kind="process", warm_figures=True)
    worker.submit(take_snapshot(model, 0))
    assert worker.drain(timeout_s=120)
    worker.submit_job(figure_job(5, log_dirs=(str(tmp_path),)))
    assert worker.writing_detached  # sent, drawn over there: nothing to wait for here
    worker.close(timeout_s=120)
    assert "figures" not in [message.kind for message in worker.collect(progress=False)]  # written, not sent
    assert worker.wait_closed(timeout_s=120)
    (event_file,) = tmp_path.glob("events.out.tfevents.*")
    assert event_file.name.split(".")[-2] == str(worker.pids[-1])  # written by the worker process
    accumulator = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert [image.step for image in accumulator.Images("bifurcation/timeline")] == [5]


def test_a_thread_worker_or_a_job_without_log_dirs_is_not_left_to_finish_alone(tmp_path):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    thread = AnalysisWorker(analyser_for(model), kind="thread")
    thread.submit_job(figure_job(1, log_dirs=(str(tmp_path),)))
    assert not thread.writing_detached  # a thread dies with the training process: its figures are waited for
    assert thread.drain(timeout_s=60)
    thread.close()
    assert thread.wait_closed(timeout_s=0)
    process = AnalysisWorker(analyser_for(model), kind="process")
    process.submit(take_snapshot(model, 0))
    process.submit_job(figure_job(1))
    assert not process.writing_detached  # a snapshot is in flight, and the job sends pixels back
    assert process.drain(timeout_s=120)
    process.close()


def test_a_detached_figure_job_that_fails_says_so_on_stderr(tmp_path, capfd):
    model = with_plrnn_2d_weights(FragilePLRNN(2))
    blocker = tmp_path / "a-file-not-a-folder"
    blocker.write_text("")
    worker = AnalysisWorker(analyser_for(model), kind="process")
    worker.submit(take_snapshot(model, 0))
    assert worker.drain(timeout_s=120)
    worker.submit_job(figure_job(3, log_dirs=(str(blocker / "run"),)))
    worker.close(timeout_s=120)
    assert worker.wait_closed(timeout_s=120)
    assert "could not write the figures of step 3" in capfd.readouterr().err
