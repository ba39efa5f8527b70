"""Tests for bifurcation_callback.bifurcations.events: match, classify and detect on closed-form problems.

The bifurcation paths (tent maps, sliding fold, escape to infinity) and their derivations are in
tests/problems.py; tests/test_localize.py bisects the same paths, tests/test_scan.py sweeps grids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bifurcation_callback.bifurcations import (
    BIFURCATION_KINDS,
    CROSSINGS,
    BifurcationEvent,
    classify,
    detect_bifurcations,
    match,
)
from bifurcation_callback.bifurcations.events import is_qualitative
from bifurcation_callback.cycles import Cycle, CycleSet, exhaustive_cycles, find_cycles
from problems import (
    ESCAPE_A,
    FLIP_TAU,
    PLUS_ONE_A1,
    busy_plrnn,
    event_summary,
    flip_path,
    fold_path,
    plrnn_1d,
    sliding_fold,
    tent,
)


def events_between(model_before, model_after, max_order: int) -> list[BifurcationEvent]:
    before = exhaustive_cycles(model_before, max_order)
    after = exhaustive_cycles(model_after, max_order)
    return detect_bifurcations(before, after, step=11, prev_step=10)


def test_border_collision_pair_appears_and_vanishes():
    before, after = fold_path()
    born = events_between(before, after, max_order=2)
    assert event_summary(born) == [
        ("border_collision", 1, None, None, False),
        ("border_collision", 1, None, None, True),
    ]
    assert all(e.step_interval == (10, 11) and e.step == 11 for e in born)
    died = events_between(after, before, max_order=2)
    assert event_summary(died) == [
        ("border_collision", 1, None, False, None),
        ("border_collision", 1, None, True, None),
    ]


def test_fixed_point_crossing_the_border_persists_by_nearest_points():
    # tent(0.5, -0.2, mu): tau_L = 0.5, tau_R = 0.3.  z_L = 2 mu (real iff mu < 0), z_R = mu / 0.7 (real iff
    # mu > 0): one stable fixed point that moves through the border at mu = 0.  mu = +-0.002 gives points
    # 0.00286 and -0.004, 0.0069 apart (< rtol 1e-2): same cycle, new code.
    events = events_between(tent(0.5, -0.2, 0.002), tent(0.5, -0.2, -0.002), max_order=1)
    assert event_summary(events) == [("border_collision", 1, None, True, True)]
    matches = match(exhaustive_cycles(tent(0.5, -0.2, 0.002), 1), exhaustive_cycles(tent(0.5, -0.2, -0.002), 1))
    assert [(m.status, m.matched_by) for m in matches] == [("persisted", "nearest")]
    # With tolerances below the distance the same change reads as one vanishing and one appearing point.
    loose = match(
        exhaustive_cycles(tent(0.5, -0.2, 0.002), 1), exhaustive_cycles(tent(0.5, -0.2, -0.002), 1),
        rtol=1e-3, crossing_rtol=0.0,
    )
    assert sorted(m.status for m in loose) == ["appeared", "vanished"]


def test_flip_detected():
    before, after = flip_path()
    events = events_between(before, after, max_order=2)
    assert event_summary(events) == [
        ("appearance", 2, None, None, True),
        ("stability_change", 1, "-1", True, False),
    ]
    flip = next(e for e in events if e.kind == "stability_change")
    assert (flip.n_unstable_before, flip.n_unstable_after) == (0, 1)
    np.testing.assert_allclose(flip.eigenvalues_before, [FLIP_TAU[0]], atol=1e-12)
    np.testing.assert_allclose(flip.eigenvalues_after, [FLIP_TAU[1]], atol=1e-12)
    assert "crossed -1" in flip.description


def test_plus_one_crossing_with_same_codes_is_a_stability_change():
    events = events_between(sliding_fold(PLUS_ONE_A1[0]), sliding_fold(PLUS_ONE_A1[1]), max_order=2)
    assert event_summary(events) == [("stability_change", 1, "+1", True, False)]


def test_escape_to_infinity_is_degenerate():
    events = events_between(plrnn_1d(ESCAPE_A[0], 1.0), plrnn_1d(ESCAPE_A[1], 1.0), max_order=1)
    assert event_summary(events) == [("degenerate", 1, None, None, False), ("degenerate", 1, None, True, None)]


def test_far_out_cycle_is_degenerate_by_norm():
    # Multiplier 0.5 (not near +1) but 1000x farther out than the other cycle: escape to infinity.
    far = Cycle(1, np.array([[1000.0]]), np.array([[True]]), np.array([0.5 + 0j]))
    near = Cycle(1, np.array([[1.0]]), np.array([[False]]), np.array([0.2 + 0j]))
    assert classify(far, None, step=1, step_interval=(0, 1), reference_scale=2.0).kind == "degenerate"
    assert classify(far, None, step=1, step_interval=(0, 1)).kind == "disappearance"
    kinds = [e.kind for e in detect_bifurcations(CycleSet((far, near), (1,)), CycleSet((near,), (1,)), step=1, prev_step=0)]
    assert kinds == ["degenerate"]


def test_complex_pair_crossing():
    before = Cycle(1, np.array([[1.0, 1.0]]), np.array([[True, True]]), np.array([0.9j, -0.9j]))
    after = Cycle(1, np.array([[1.0, 1.0]]), np.array([[True, True]]), np.array([1.1j, -1.1j]))
    event = classify(before, after, step=2, step_interval=(1, 2))
    assert (event.kind, event.crossing, event.n_unstable_after) == ("stability_change", "complex", 2)


def test_cycle_set_matched_with_itself():
    cycles = find_cycles(busy_plrnn(), max_order=4)
    assert len(cycles) >= 2
    matches = match(cycles, cycles)
    assert len(matches) == len(cycles)
    assert all(m.status == "persisted" and m.matched_by == "codes" and m.prev is m.curr for m in matches)
    assert detect_bifurcations(cycles, cycles, step=5, prev_step=4) == []


def test_events_round_trip_through_json():
    events = events_between(*flip_path(), max_order=2) + events_between(*fold_path(), max_order=2)
    assert {e.kind for e in events} <= set(BIFURCATION_KINDS)
    assert {e.crossing for e in events} <= set(CROSSINGS) | {None}
    restored = [BifurcationEvent.from_dict(d) for d in json.loads(json.dumps([e.to_dict() for e in events]))]
    assert restored == events


def test_event_validates_its_vocabulary_and_bracket():
    with pytest.raises(ValueError, match="kind must be one of"):
        BifurcationEvent("fold", 1, step=1, step_interval=(0, 1))
    with pytest.raises(ValueError, match="crossing must be one of"):
        BifurcationEvent("stability_change", 1, step=1, step_interval=(0, 1), crossing="+2")
    with pytest.raises(ValueError, match="outside its bracket"):
        BifurcationEvent("appearance", 1, step=1, step_interval=(0, 1), location=1.5)


def test_match_rejects_sets_from_different_models():
    small = exhaustive_cycles(plrnn_1d(0.5, 1.0), 1)
    large = exhaustive_cycles(busy_plrnn(), 1)
    with pytest.raises(ValueError, match="different models"):
        match(small, large)
    with pytest.raises(TypeError, match="CycleSet"):
        match(small, [])


def test_classify_and_detect_reject_bad_input():
    with pytest.raises(ValueError, match="at least one of"):
        classify(None, None, step=1, step_interval=(0, 1))
    with pytest.raises(ValueError, match="must not exceed"):
        detect_bifurcations(CycleSet(), CycleSet(), step=1, prev_step=2)


# ---------------------------------------------------------------------------------------------- is_qualitative


def _one_cycle(point: float, code: bool, multiplier: float) -> Cycle:
    return Cycle(1, np.array([[point]]), np.array([[code]]), np.array([multiplier + 0j]))


def test_a_border_crossing_that_keeps_stability_is_not_qualitative():
    # The tent path's stable fixed point crosses the border and stays stable: the dashboards fold it.
    (event,) = events_between(tent(0.5, -0.2, 0.002), tent(0.5, -0.2, -0.002), max_order=1)
    assert event.kind == "border_collision" and not is_qualitative(event)
    assert not is_qualitative(event.to_dict()) and not is_qualitative(json.loads(json.dumps(event.to_dict())))


@pytest.mark.parametrize(
    "after, qualitative",
    [
        (_one_cycle(-0.1, False, 0.5), False),  # stable -> stable across the plane
        (_one_cycle(-0.1, False, 1.5), True),  # stable -> unstable: the crossing changed stability
        (_one_cycle(-0.1, False, -0.7), False),  # the multiplier flipped sign but stayed inside the circle
    ],
)
def test_is_qualitative_of_border_collisions_follows_the_stability_change(after, qualitative):
    event = classify(_one_cycle(0.1, True, 0.5), after, step=3, step_interval=(2, 3))
    assert event.kind == "border_collision"
    assert is_qualitative(event) is qualitative


def test_unstable_crossings_compare_the_number_of_unstable_multipliers():
    # Both unstable, but one more multiplier outside the circle after the crossing: qualitative.
    before = Cycle(1, np.array([[0.1, 0.1]]), np.array([[True, True]]), np.array([1.5 + 0j, 0.5 + 0j]))
    same = Cycle(1, np.array([[-0.1, 0.1]]), np.array([[False, True]]), np.array([1.4 + 0j, 0.4 + 0j]))
    more = Cycle(1, np.array([[-0.1, 0.1]]), np.array([[False, True]]), np.array([1.4 + 0j, 1.2 + 0j]))
    assert not is_qualitative(classify(before, same, step=3, step_interval=(2, 3)))
    assert is_qualitative(classify(before, more, step=3, step_interval=(2, 3)))


def test_every_other_kind_and_the_nonsmooth_fold_are_qualitative():
    before, after = fold_path()
    born = events_between(before, after, max_order=2)  # a pair appears at the border: the cycle count changed
    assert [e.kind for e in born] == ["border_collision"] * 2 and all(is_qualitative(e) for e in born)
    for kind in BIFURCATION_KINDS:
        if kind != "border_collision":
            assert is_qualitative({"kind": kind, "stable_before": True, "stable_after": True})
    # A record from before n_unstable_* existed is judged by stable_before / stable_after.
    assert not is_qualitative({"kind": "border_collision", "stable_before": False, "stable_after": False})
