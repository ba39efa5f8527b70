"""MonitorSession's overhead account: the figure is the slowdown of training, whatever the parts' sizes."""
import pytest

from bifurcation_callback.session import MIN_STEPS_FOR_CONTENTION, OverheadAccount


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


def test_no_training_time_left_gives_no_figure():
    account = OverheadAccount()
    account.hook_seconds = 1.0
    assert account.fields(1.0)["monitor_overhead"] is None
