"""MonitorSession's overhead account: the figure is the slowdown of training, whatever the parts' sizes."""
import time

import pytest
import torch

from bifurcation_callback.analysis import take_snapshot
from bifurcation_callback.models import PLRNN
from bifurcation_callback.runner import Runner
from bifurcation_callback.session import (
    ACCOUNT_WARMUP_STEPS,
    MIN_STEPS_FOR_CONTENTION,
    PROBE_AFTER_BUSY_STEPS,
    MonitorSession,
    OverheadAccount,
    SessionSettings,
    warn_once,
)


def account_with(*, hook: float, drain: float, busy_step: float, idle_step: float, steps: int) -> OverheadAccount:
    account = OverheadAccount()
    for busy in [False] * steps + [True] * steps:
        account.step(busy_step if busy else idle_step, busy=busy, hook_s=0.0)
    account.hook_seconds, account.drain_seconds = hook, drain
    return account


def test_overhead_is_the_cost_over_the_time_training_alone_took():
    # 20 steps of 0.1 s alone and 20 of 0.11 s beside the worker, 0.2 s in hooks, 1 s of drain.
    account = account_with(hook=0.2, drain=1.0, busy_step=0.11, idle_step=0.1, steps=20)
    fit = 20 * 0.1 + 20 * 0.11 + 0.2  # the fit's clock stops where the drain begins
    fields = account.fields(fit)
    assert fields["contention_seconds"] == pytest.approx(20 * 0.01)
    cost = 0.2 + 1.0 + 0.2
    assert fields["monitor_overhead"] == pytest.approx(cost / (fit + 1.0 - cost))
    assert fields["overhead_is_lower_bound"] is False


def test_a_drain_longer_than_the_fit_gives_a_large_finite_overhead_not_garbage():
    # The worker never idled: the fit-end wait (9 s) exceeds the fit (6 s); training alone took 6 s.
    account = OverheadAccount()
    for _ in range(MIN_STEPS_FOR_CONTENTION):
        account.step(0.02, busy=True, hook_s=0.0)
    account.drain_seconds = 9.0
    fields = account.fields(6.0)
    assert fields["contention_seconds"] is None and fields["overhead_is_lower_bound"] is True
    assert fields["monitor_overhead"] == pytest.approx(9.0 / 6.0)


def test_a_resumed_run_adds_the_earlier_fits_on_both_sides():
    first = account_with(hook=0.1, drain=4.0, busy_step=0.1, idle_step=0.1, steps=10)
    resumed = OverheadAccount()
    resumed.load_state_dict(first.state_dict(2.1))
    fields = resumed.fields(3.0)
    assert fields["fit_seconds"] == pytest.approx(5.1) and fields["drain_seconds"] == pytest.approx(4.0)
    assert fields["monitor_overhead"] == pytest.approx(4.1 / (5.1 + 4.0 - 4.1))


def test_fewer_threads_that_train_faster_lower_the_overhead_by_what_they_saved():
    # "auto" lowered training's threads: idle steps take 0.10 s with the fit's threads, 0.12 s with the user's.
    account = account_with(hook=0.2, drain=1.0, busy_step=0.11, idle_step=0.1, steps=20)
    account.thread_change = True
    assert account.fields(4.4)["thread_change_seconds"] is None  # not measured yet: left out, and said so
    for _ in range(MIN_STEPS_FOR_CONTENTION):
        account.step(0.12, busy=False, hook_s=0.0, user_threads=True)
    account.step(0.5, busy=True, hook_s=0.0, user_threads=True)  # beside a busy worker: not the threads' speed
    fit = 20 * 0.1 + 20 * 0.11 + MIN_STEPS_FOR_CONTENTION * 0.12 + 0.5 + 0.2
    fields = account.fields(fit)
    saved = -0.02 * 40  # every step with the fit's threads, idle or busy
    assert fields["thread_change_seconds"] == pytest.approx(saved)
    cost = 0.2 + 1.0 + 20 * 0.01 + saved
    assert fields["monitor_overhead"] == pytest.approx(cost / (fit + 1.0 - cost))
    assert fields["steps_with_user_threads"] == MIN_STEPS_FOR_CONTENTION
    resumed = OverheadAccount()
    resumed.load_state_dict(account.state_dict(fit))
    assert resumed.previous_fits["threads"] == pytest.approx(saved)


def test_no_training_time_left_gives_no_figure():
    account = OverheadAccount()
    account.hook_seconds = 1.0
    assert account.fields(1.0)["monitor_overhead"] is None


class BusyRunner(Runner):
    """A worker stand-in that stays busy until told otherwise and remembers what it was given, in order."""

    def __init__(self) -> None:
        self.given: list[int] = []
        self.computing = True
        self._state = {}  # the analyser's state a checkpoint saves (none here)

    def pending(self):
        return []

    def submit(self, snapshot) -> None:
        self.given.append(snapshot.step)

    def poll(self):
        return []

    @property
    def busy(self) -> bool:
        return self.computing

    @property
    def working(self) -> bool:
        return self.computing


def session_with_busy_worker() -> tuple[MonitorSession, BusyRunner, PLRNN]:
    settings = SessionSettings(max_order=1, every_n_steps=1, every_n_epochs=None, jump_window=5, jump_warmup_steps=0,
                               jump_min_change=1.0, jump_scales=(1,), log_figures_every_n_steps=0,
                               max_attractor_period=0, show_all_events=False, seed=0)
    runner = BusyRunner()
    session = MonitorSession(settings, None, runner, None, warn=lambda category, message: None)
    session.warmup_steps = 0  # these tests count the probe's steps from the first
    return session, runner, PLRNN(2)


def train_steps(session: MonitorSession, runner: BusyRunner, steps: range, model, *, idle_from: int | None = None) -> None:
    for step in steps:
        started = time.perf_counter()
        session.step_ended(started)
        session.submit(take_snapshot(model, step, loss=1.0))
        if idle_from is not None and step >= idle_from:
            runner.computing = False  # the worker got through what it had
        session.hook_ended(started)



def test_the_first_steps_of_a_fit_are_left_out_of_the_step_time_account():
    # They are slow (allocations, caches) while the worker waits for its first batch: timed as idle steps they
    # made a never-idling worker's contention look like none.
    session, runner, model = session_with_busy_worker()
    session.warmup_steps = ACCOUNT_WARMUP_STEPS
    runner.computing = False
    train_steps(session, runner, range(ACCOUNT_WARMUP_STEPS + 1), model)  # the first step has no duration
    assert session.overhead.n_idle_steps == 0 and session.overhead.n_busy_steps == 0
    train_steps(session, runner, range(ACCOUNT_WARMUP_STEPS + 1, ACCOUNT_WARMUP_STEPS + 3), model)
    assert session.overhead.n_idle_steps == 2

def test_a_worker_that_never_idles_is_made_to_idle_once_so_the_slowdown_beside_it_is_measured():
    session, runner, model = session_with_busy_worker()
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 1), model)
    assert runner.given == list(range(PROBE_AFTER_BUSY_STEPS + 1))  # busy all along: nothing held yet
    # The probe holds new snapshots back while the worker finishes what it has, ...
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 1, PROBE_AFTER_BUSY_STEPS + 10), model)
    assert runner.given[-1] <= PROBE_AFTER_BUSY_STEPS + 1 and session.monitored(PROBE_AFTER_BUSY_STEPS + 5)
    # ... and hands them over, oldest first and none dropped, once the idle steps measured the slowdown.
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 10, PROBE_AFTER_BUSY_STEPS + 40), model, idle_from=0)
    assert runner.given == list(range(PROBE_AFTER_BUSY_STEPS + 40))
    assert session.overhead.n_idle_steps >= MIN_STEPS_FOR_CONTENTION
    assert session.overhead.contention_seconds is not None
    # Once per fit: a worker busy again is not held back a second time.
    runner.computing = True
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 40, 3 * PROBE_AFTER_BUSY_STEPS + 40), model)
    assert runner.given == list(range(3 * PROBE_AFTER_BUSY_STEPS + 40))


def test_a_checkpoint_during_a_probe_saves_the_held_snapshots_and_the_probe_goes_on():
    session, runner, model = session_with_busy_worker()
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 5), model)
    given = list(runner.given)
    assert given[-1] < PROBE_AFTER_BUSY_STEPS + 4  # some held
    saved = [entry["step"] for entry in session.state_dict()["pending"]]
    assert saved[-len(range(given[-1] + 1, PROBE_AFTER_BUSY_STEPS + 5)):] == list(range(given[-1] + 1, PROBE_AFTER_BUSY_STEPS + 5))
    assert runner.given == given  # still held: the probe was not ended by the checkpoint
    train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 5, PROBE_AFTER_BUSY_STEPS + 20), model, idle_from=0)
    assert session.overhead.n_idle_steps >= MIN_STEPS_FOR_CONTENTION
    session.release_held()
    assert runner.given == list(range(PROBE_AFTER_BUSY_STEPS + 20))


def test_after_a_thread_change_the_probe_times_steps_on_the_users_threads_while_the_worker_idles():
    session, runner, model = session_with_busy_worker()
    before = torch.get_num_threads()
    session.training_threads = (before + 1, before)  # as if "auto" had lowered training from before + 1 threads
    try:
        train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 1), model)
        train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 1, PROBE_AFTER_BUSY_STEPS + 5), model)
        assert torch.get_num_threads() == before  # the worker is still busy: never the user's threads beside it
        held = PROBE_AFTER_BUSY_STEPS + 5 + MIN_STEPS_FOR_CONTENTION + 1  # the first of them still ended busy
        train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 5, held), model, idle_from=0)
        assert torch.get_num_threads() == before + 1 and session.overhead.n_user_thread_steps == 0
        train_steps(session, runner, range(held, held + MIN_STEPS_FOR_CONTENTION + 1), model, idle_from=0)
        assert torch.get_num_threads() == before  # measured: the fit's threads again, the snapshots handed over
        assert session.overhead.n_user_thread_steps == MIN_STEPS_FOR_CONTENTION
        assert runner.given == list(range(held + MIN_STEPS_FOR_CONTENTION + 1))
        assert session.timing_fields(1.0)["thread_change_seconds"] is not None
    finally:
        torch.set_num_threads(before)


def test_a_checkpoint_while_training_on_the_users_threads_restores_the_fits():
    session, runner, model = session_with_busy_worker()
    before = torch.get_num_threads()
    session.training_threads = (before + 1, before)
    try:
        runner.computing = False  # a worker that idles: only the threads need measuring
        train_steps(session, runner, range(PROBE_AFTER_BUSY_STEPS + 2), model, idle_from=0)
        assert torch.get_num_threads() == before + 1
        session.release_held()
        assert torch.get_num_threads() == before and runner.given == list(range(PROBE_AFTER_BUSY_STEPS + 2))
    finally:
        torch.set_num_threads(before)


def test_warnings_start_with_the_monitor_name_and_come_once_per_category():
    warn = warn_once(set())
    with pytest.warns(RuntimeWarning) as caught:
        warn("lower bounds", "order 3 is a lower bound")
        warn("lower bounds", "order 4 is a lower bound")  # the same kind: suppressed
        warn("pace", "BifurcationMonitor: the analysis falls behind")
    suffix = " (further warnings of this kind are suppressed)"
    assert [str(w.message) for w in caught] == ["BifurcationMonitor: order 3 is a lower bound" + suffix,
                                                "BifurcationMonitor: the analysis falls behind" + suffix]
