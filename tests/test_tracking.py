"""CycleTracker without a Trainer: schedule, tracks, brackets, budget, errors and state_dict round trips."""

from __future__ import annotations

import json

import pytest
import torch

from bifurcation_callback.tracking import (
    FINDER_KEYS,
    MONITOR_FINDER_DEFAULTS,
    THOROUGH_SEARCH,
    CycleTracker,
    check_finder_kwargs,
)

from .problems import plrnn, shallow


def border_pair(mu: float):
    """z' = 0.5 z + relu(z) + mu: two fixed points (2 mu and -2 mu) for mu < 0, none for mu > 0."""
    return shallow(A=[0.5], W1=[[1.0]], W2=[[1.0]], h1=[mu], h2=[0.0])


def set_mu(model, mu: float) -> None:
    with torch.no_grad():
        model.h1.fill_(mu)


def linear_1d(a: float):
    """z' = a z + 0.2 (W = 0): one fixed point with multiplier a."""
    return plrnn(A=[a], W=[[0.0]], h=[0.2])


def test_first_update_starts_a_track_per_cycle_and_reports_nothing():
    tracker = CycleTracker(max_order=1)
    first = tracker.update(border_pair(-0.1), step=0)
    assert first.events == () and len(first.cycles) == 2
    assert sorted(first.charted) == [0, 1]
    assert sorted(tracker.track_id(c) for c in first.cycles) == [0, 1]


def test_a_flip_is_an_event_with_the_snapshots_as_bracket():
    model = linear_1d(-0.8)
    tracker = CycleTracker(max_order=2)
    tracker.update(model, step=3)
    with torch.no_grad():
        model.A.fill_(-1.2)
    (event,) = tracker.update(model, step=7).events
    assert (event.kind, event.crossing, event.order, event.step_interval) == ("stability_change", "-1", 1, (3, 7))
    assert tracker.previous_step == 7


def test_persisting_cycles_keep_their_track_ids():
    model = linear_1d(0.5)
    tracker = CycleTracker(max_order=1)
    ids = []
    for step, a in enumerate([0.5, 0.4, 0.3, -0.3]):
        with torch.no_grad():
            model.A.fill_(a)
        result = tracker.update(model, step)
        ids.append(list(result.charted))
    assert ids == [[0]] * 4


def test_search_schedule_thorough_first_then_every_order_at_every_update():
    tracker = CycleTracker(max_order=3)
    model = linear_1d(0.5)
    plans = []
    for step in range(4):
        plans.append(tracker.plan())
        tracker.update(model, step)
    assert plans[0] == THOROUGH_SEARCH
    assert all(plan == MONITOR_FINDER_DEFAULTS for plan in plans[1:])


def test_a_pair_born_at_a_border_is_counted_at_the_step_it_is_born():
    # Every order of this 1-D model is enumerated at every update, so the bracket is exact.
    tracker = CycleTracker(max_order=2)
    model = border_pair(0.1)
    found = []
    for step in range(6):
        if step == 3:
            set_mu(model, -0.1)  # born during step 3
        found.append(tracker.update(model, step))
    assert all(result.cycles.is_exhaustive(order) for result in found for order in (1, 2))
    events = [event for result in found for event in result.events]
    assert [(e.kind, e.order, e.step_interval) for e in events] == [("border_collision", 1, (2, 3))] * 2


def test_a_birth_in_a_searched_order_is_checked_against_the_previous_weights():
    # Above the enumeration limit an order is only searched: a newly found cycle is re-solved with the previous
    # step's weights; the pair born at step 3 did not exist at step 2, so the events are verified births.
    tracker = CycleTracker(max_order=2, finder_kwargs={"exhaustive_limit": 0})
    model = border_pair(0.1)
    found = []
    for step in range(6):
        if step == 3:
            set_mu(model, -0.1)
        found.append(tracker.update(model, step))
    assert not any(result.cycles.is_exhaustive(1) for result in found)
    events = [event for result in found for event in result.events]
    assert [(e.kind, e.order, e.step_interval, e.verified) for e in events] == [("border_collision", 1, (2, 3), True)] * 2
    assert not any(result.late_discoveries for result in found)


def test_a_cycle_the_search_missed_is_a_late_discovery_not_a_birth(monkeypatch):
    # Planted miss: the search at step 0 loses the fixed point -2 mu (a far one, as the README model's searches
    # used to); found at step 1, it is checked with step 0's weights, where it exists: no event.
    import bifurcation_callback.tracking as tracking

    real_search = tracking.search_fresh

    def miss_the_negative_fixed_point_at_first(stack, orders, **kwargs):
        result = real_search(stack, orders, **kwargs)
        if kwargs["seeds"] == [0]:
            result.cycles[0][1] = [c for c in result.cycles[0][1] if c.points[0, 0] > 0]
        return result

    monkeypatch.setattr(tracking, "search_fresh", miss_the_negative_fixed_point_at_first)
    tracker = CycleTracker(max_order=1, finder_kwargs={"exhaustive_limit": 0})
    model = border_pair(-0.1)
    first = tracker.update(model, step=0)
    assert len(first.cycles) == 1
    second = tracker.update(model, step=1)
    assert len(second.cycles) == 2 and second.events == ()
    (late,) = second.late_discoveries
    assert (late["order"], late["missed_at"], late["found_at"]) == (1, 0, 1) and late["point"][0] < 0
    # Had the weights not been available (an old checkpoint), the appearance would be reported unverified.
    unchecked = CycleTracker(max_order=1, finder_kwargs={"exhaustive_limit": 0})
    unchecked.update(model, step=0)
    unchecked.load_state_dict(json.loads(json.dumps({**unchecked.state_dict(), "previous_weights": None})))
    (event,) = unchecked.update(model, step=1).events
    assert not event.verified and event.step_interval == (0, 1)


def test_tracked_curves_are_capped_for_the_whole_run():
    tracker = CycleTracker(max_order=1, max_tracked_cycles=2)
    model = border_pair(-0.1)
    charted = set()
    for step in range(14):
        if step in (3, 7):
            set_mu(model, 0.1 if step == 3 else -0.1)  # the pair vanishes, then is born again as new tracks
        charted |= set(tracker.update(model, step).charted)
    assert len(tracker.previous) == 2
    assert sorted(tracker.track_id(c) for c in tracker.previous) == [2, 3]
    assert charted == {0, 1}
    assert tracker.charted(tracker.previous) == {}


def test_a_search_cut_by_the_time_budget_keeps_what_it_found_and_reports_no_event():
    tracker = CycleTracker(max_order=2)
    model = border_pair(-0.1)  # two fixed points
    assert len(tracker.update(model, step=0).cycles) == 2
    tracker.time_budget_s = 1e-12  # cut at once: nothing is re-solved
    cut = tracker.update(model, step=1)
    assert cut.cycles.cut and set(cut.cycles.statuses.values()) == {"cut"}
    assert cut.events == ()  # the two fixed points were not reached, not lost
    tracker.time_budget_s = None
    again = tracker.update(model, step=2)
    assert len(again.cycles) == 2 and not again.cycles.cut
    assert again.events == ()  # nor are they born again: the step before was only a lower bound
    assert again.cycles.stats.warm_start_hits == 2  # the cut step passed the earlier cycles on as warm start


def test_finder_errors_propagate_and_leave_the_snapshot_untouched():
    tracker = CycleTracker(max_order=1)
    model = linear_1d(0.5)
    tracker.update(model, step=0)
    previous = tracker.previous
    with torch.no_grad():
        model.h.fill_(float("nan"))
    with pytest.raises(ValueError):
        tracker.update(model, step=1)
    assert tracker.previous is previous and tracker.previous_step == 0


def test_state_dict_round_trips_through_json_and_continues_identically():
    model = border_pair(-0.1)
    original = CycleTracker(max_order=2)
    for step in range(5):
        original.update(model, step)
    restored = CycleTracker(max_order=2)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert restored.plan() == original.plan()
    assert restored.state_dict() == original.state_dict()
    set_mu(model, 0.1)  # both see the pair vanish, with the same tracks and brackets
    ours, theirs = original.update(model, 5), restored.update(model, 5)
    assert [e.to_dict() for e in ours.events] == [e.to_dict() for e in theirs.events] and ours.events


def test_a_new_model_object_gets_a_new_analysis_copy():
    tracker = CycleTracker(max_order=1)
    tracker.update(linear_1d(0.5), step=0)
    result = tracker.update(linear_1d(-1.5), step=1)  # another model (e.g. a new fit): its weights are used
    assert [e.crossing for e in result.events] == ["-1"]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (None, {}),
        ({"dtype": "float32"}, {"dtype": torch.float32}),
        ({"dtype": "torch.float64", "device": "cpu"}, {"dtype": torch.float64, "device": torch.device("cpu")}),
        ({"n_starts": 1, "inner": 2, "outer": 3}, {"n_starts": 1, "inner": 2, "outer": 3}),
    ],
)
def test_check_finder_kwargs_normalises(kwargs, expected):
    assert check_finder_kwargs(kwargs) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"speed": 1}, r"finder_kwargs has unknown keys \['speed'\]; allowed: " + str(list(FINDER_KEYS)).replace("[", r"\[").replace("]", r"\]")),
        ({"dtype": "float16"}, r"finder_kwargs\['dtype'\] must be one of torch.float64"),
        ({"n_starts": 0}, r"finder_kwargs\['n_starts'\] must be an int >= 1"),
        ({"device": "warp-drive"}, r"finder_kwargs\['device'\] must be a torch.device"),
        ([("n_starts", 1)], "finder_kwargs must be a dict or None"),
    ],
)
def test_check_finder_kwargs_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_finder_kwargs(kwargs)


def test_finder_dtype_override_is_used():
    tracker = CycleTracker(max_order=1, finder_kwargs={"dtype": "float32"})
    result = tracker.update(linear_1d(0.5), step=0)
    assert len(result.cycles) == 1
    assert tracker.dtype == torch.float32 and result.cycles.by_order(1)[0].residual < 1e-3


def tent_path(slopes: list[float]):
    """1-D tent maps z' = s z - 2 s relu(z - 0.5), one per step: chaotic for s > 1, a stable fixed point at 0 below."""
    from bifurcation_callback.models import ShallowPLRNN, model_tensors

    model = ShallowPLRNN(latent_dim=1, hidden_dim=1).double()
    weights = []
    for slope in slopes:
        with torch.no_grad():
            model.A.fill_(slope), model.W1.fill_(-2 * slope), model.W2.fill_(1.0), model.h2.fill_(-0.5), model.h1.zero_()
        weights.append([t.detach().clone() for t in model_tensors(model)])
    return model, weights


def test_attractor_batches_on_aperiodic_dynamics_equal_one_at_a_time_and_repeat_only_what_can_be_done(monkeypatch):
    from bifurcation_callback import _attractor_tracking
    from bifurcation_callback._stack import ModelStack
    from bifurcation_callback.tracking import AttractorTracker

    # Chaotic at the first step and the next four (each step starts from where the orbit before it ended, which
    # a batch cannot know in advance), then a stable fixed point for three steps (its point is solved exactly).
    model, weights = tent_path([1.9, 1.88, 1.86, 1.84, 1.82, 0.8, 0.78, 0.76, 0.74])
    stack = lambda rows: ModelStack(model, [weights[i] for i in rows], dtype=torch.float64, device=torch.device("cpu"))
    inside = [[0.1234], [0.3], [0.71]]  # states in [0, 1], where the orbits stay bounded (outside they escape)
    alone = AttractorTracker(max_period=16)
    one_at_a_time = [alone.update_many(stack([i]), [i], [inside])[0] for i in range(9)]
    rounds: list[int] = []
    simulate = _attractor_tracking.find_attractors_many
    monkeypatch.setattr(_attractor_tracking, "find_attractors_many",
                        lambda batch, states, **kwargs: rounds.append(batch.n_steps) or simulate(batch, states, **kwargs))
    together = AttractorTracker(max_period=16)
    batched = together.update_many(stack([0]), [0], [inside]) + together.update_many(stack(range(1, 9)), list(range(1, 9)), [inside] * 8)
    describe = lambda tracked: (tracked.step, tracked.primary.kind, tracked.primary.largest_lyapunov,
                                tracked.event and tracked.event.description)
    assert [describe(t) for t in batched] == [describe(t) for t in one_at_a_time]
    assert [t.primary.kind for t in batched] == ["chaotic"] * 5 + ["fixed_point"] * 4
    # The batch: all 8 steps, then the chaotic ones one by one (steps 2-4; step 1 started right), then the three
    # fixed-point steps together, the first of them now from the last chaotic orbit.
    assert rounds == [1, 8, 1, 1, 1, 4]
