"""The projection of the fit-end wait from the queue at each batch end, and its warning."""

import pytest

from bifurcation_callback._pace import EVERY, MIN_SAMPLES, WINDOW, PaceProjection, PaceWatch, step_spans


def projections(watch: PaceWatch, queue, step_seconds: float = 0.02) -> list[PaceProjection]:
    found = [watch.sample(step, waiting, step_seconds * step) for step, waiting in enumerate(queue)]
    return [p for p in found if p is not None]


def test_a_queue_that_grows_is_projected_to_the_fit_end():
    watch = PaceWatch(last_step=1999)
    found = projections(watch, [step // 4 for step in range(400)])  # the analysis misses a quarter of the pace
    assert len(found) == (400 - MIN_SAMPLES) // EVERY + 1
    last = found[-1]
    assert last.pace == pytest.approx(0.75, abs=0.01) and last.remaining_steps == 1999 - 383
    assert last.waiting == 383 // 4 and last.waiting_at_end == pytest.approx(95 + 1616 / 4, abs=5)
    assert last.step_seconds == pytest.approx(0.02) and last.analysis_seconds == pytest.approx(0.02 / 0.75, rel=0.02)
    assert last.wait_seconds == pytest.approx(last.waiting_at_end * last.analysis_seconds)


def test_a_worker_that_keeps_up_in_batches_projects_no_growth():
    # The queue rises to 8 and is taken as a batch: a sawtooth, no trend.
    found = projections(PaceWatch(last_step=9999), [step % 8 for step in range(600)])
    assert found and all(p.pace > 0.98 and p.waiting_at_end <= 8 + 5 for p in found)
    assert all(p.wait_seconds < 0.5 for p in found)


def test_every_n_steps_counts_one_snapshot_per_n_steps():
    # Every other step is monitored; the queue grows by one every fourth step: half the snapshots are analysed.
    last = projections(PaceWatch(last_step=999, every_n_steps=2), [step // 4 for step in range(300)])[-1]
    assert last.pace == pytest.approx(0.5, abs=0.02) and last.every_n_steps == 2
    assert last.analysis_seconds == pytest.approx(0.02 * 2 / 0.5, rel=0.05)  # 80 ms per monitored step
    assert "every_n_steps=4 halves the work" in last.message(60.0)


def test_no_projection_without_a_known_end_or_enough_samples():
    assert projections(PaceWatch(last_step=None), [step for step in range(300)]) == []
    assert projections(PaceWatch(last_step=999), [step for step in range(MIN_SAMPLES - 1)]) == []
    assert WINDOW >= MIN_SAMPLES


@pytest.mark.parametrize(("timeout", "says"), [
    (10.0, "more than drain_timeout_s=10.0 allows (the rest would be dropped)"),
    (100.0, "within drain_timeout_s=100.0"),
    (None, "all waited for at fit end (drain_timeout_s=None)"),
])
def test_the_message_says_what_the_fit_end_will_do(timeout, says):
    message = PaceProjection(0.3, 40, 1000, 740, 0.02, 0.067, 49.3).message(timeout)
    assert says in message and "keeps about 30 % of training's pace" in message
    assert "at this pace, about 740 will when training ends in 1000 steps, ~49 s" in message
    assert "every_n_steps=4 cuts the work" in message and "queue_size=1" in message


def test_a_worker_that_finishes_nothing_gets_no_made_up_step_time():
    stuck = projections(PaceWatch(last_step=399), [step + 1 for step in range(64)])[-1]
    assert stuck.pace < 0.05 and stuck.wait_seconds == float("inf") and stuck.waiting_at_end == 400
    message = stuck.message(0.5)
    assert "got through hardly any of the recent steps" in message and " ms per" not in message
    assert "a wait with no end in sight" in message
    assert "every_n_steps reduces the work" in message and "more than drain_timeout_s=0.5 allows" in message


def test_step_spans_words_runs_of_steps():
    assert step_spans([5, 1, 2, 3]) == "1-3, 5"
    assert step_spans(list(range(0, 20, 2))) == "0, 2, 4, 6, 8 and 5 more runs"
    assert step_spans([]) == ""


def simulated_queue(analysis_per_step: float, n_steps: int, min_batch: int = 8, max_batch: int = 64) -> list[int]:
    """The snapshots without a result after each training step (time in training steps) of a worker that takes
    ``analysis_per_step`` per snapshot and the waiting ones in batches of ``min_batch`` to ``max_batch``."""
    waiting, running, queue = 0, [], []  # running: (finish time, batch size)
    free_at = 0.0
    for step in range(n_steps):
        now = step + 1.0
        waiting += 1
        while waiting >= min_batch and free_at <= now:
            size = min(waiting, max_batch)
            free_at = max(free_at, now - 1.0) + size * analysis_per_step
            running.append((free_at, size))
            waiting -= size
        running = [(end, size) for end, size in running if end > now]
        queue.append(waiting + sum(size for _, size in running))
    return queue


@pytest.mark.parametrize("analysis_per_step", [0.5, 0.9, 0.98])
def test_batches_that_keep_up_are_never_projected_to_fall_behind(analysis_per_step):
    found = projections(PaceWatch(last_step=20_000), simulated_queue(analysis_per_step, 2000))
    assert found and max(p.waiting_at_end for p in found) <= 64 + 8


def test_batches_that_fall_behind_are_projected_to_pile_up():
    queue = simulated_queue(1.6, 1500)  # the analysis has 1 / 1.6 = 62.5 % of training's pace
    assert queue[-1] > 400  # it does pile up
    last = projections(PaceWatch(last_step=20_000), queue)[-1]
    # Less the largest batch (64 over 512 steps): a conservative pace and a lower bound on the pile-up.
    assert 0.625 <= last.pace <= 0.625 + 64 / 512 + 0.01
    truth = queue[-1] + (20_000 - 1499) * 0.375
    assert 0.6 * truth < last.waiting_at_end <= truth
