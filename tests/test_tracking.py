"""CycleTracker without a Trainer: schedule, tracks, brackets, budget, errors and state_dict round trips."""

from __future__ import annotations

import json

import pytest
import torch

from bifurcation_callback.tracking import (
    FINDER_KEYS,
    MONITOR_FINDER_DEFAULTS,
    CycleTracker,
    check_finder_kwargs,
    gradient_norm,
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


def test_search_schedule_thorough_first_then_one_order_in_rotation():
    """Today's schedule (a later issue replaces it): the first search is thorough on every order, then a random
    search on one order every `discovery_every` updates, orders in rotation."""
    tracker = CycleTracker(max_order=3, discovery_every=2)
    model = linear_1d(0.5)
    plans = []
    for step in range(8):
        plans.append(tracker.plan())
        tracker.update(model, step)
    assert plans[0] == ({}, None)
    assert all(effort == MONITOR_FINDER_DEFAULTS for effort, _ in plans[1:])
    assert [orders for _, orders in plans[1:]] == [[], [2], [], [3], [], [1], []]


def test_a_pair_born_between_random_searches_gets_a_bracket_back_to_the_last_search():
    tracker = CycleTracker(max_order=2, discovery_every=2)
    model = border_pair(0.1)
    found = []
    for step in range(12):
        if step == 3:
            set_mu(model, -0.1)  # born during step 3
        found.append(tracker.update(model, step))
    events = [event for result in found for event in result.events]
    assert [(e.kind, e.order) for e in events] == [("border_collision", 1)] * 2
    for event in events:
        low, high = event.step_interval
        assert low <= 2 < 3 <= high


def test_tracked_curves_are_capped_for_the_whole_run():
    tracker = CycleTracker(max_order=1, discovery_every=1, max_tracked_cycles=2)
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


def test_time_budget_cut_returns_none_and_remembers_nothing():
    tracker = CycleTracker(max_order=2, time_budget_s=1e-12)
    assert tracker.update(linear_1d(0.5), step=0) is None
    assert tracker.previous is None and tracker.previous_step is None
    assert tracker.plan() == ({}, None)


def test_finder_errors_propagate_and_leave_the_snapshot_untouched():
    tracker = CycleTracker(max_order=1)
    model = linear_1d(0.5)
    tracker.update(model, step=0)
    previous = tracker.previous
    with torch.no_grad():
        model.h.fill_(float("nan"))
    with pytest.raises(ValueError):
        tracker.update(model, step=1)
    assert tracker.previous is previous and tracker.previous_step == 0 and tracker.n_searches == 2


def test_state_dict_round_trips_through_json_and_continues_identically():
    model = border_pair(-0.1)
    original = CycleTracker(max_order=2, discovery_every=2)
    for step in range(5):
        original.update(model, step)
    restored = CycleTracker(max_order=2, discovery_every=2)
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
    assert next(tracker._shadow.parameters()).dtype == torch.float32


def test_gradient_norm():
    layer = torch.nn.Linear(2, 1)
    assert gradient_norm(layer.parameters()) is None
    layer.weight.grad = torch.tensor([[1.0, 2.0]])
    layer.bias.grad = torch.tensor([2.0])
    assert gradient_norm(layer.parameters()) == pytest.approx(3.0)
