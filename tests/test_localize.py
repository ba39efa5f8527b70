"""Tests for bifurcation_callback.bifurcations.localize: bisection to closed-form bifurcation points.

Invariants as in BifurcationKit: the located parameter lies inside its bracket, the bracket is narrower
than the tolerance, and the events carry a location inside their step interval.
"""

from __future__ import annotations

import json

import pytest
import torch

from bifurcation_callback.bifurcations import Localization, localize
from bifurcation_callback.models import PLRNN, model_to_state
from problems import (
    DEVICES,
    DTYPES,
    ESCAPE_A,
    ESCAPE_T,
    FLIP_T,
    FOLD_T,
    PLUS_ONE_A1,
    PLUS_ONE_T,
    event_summary,
    flip_path,
    fold_path,
    plrnn_1d,
    sliding_fold,
    tent,
)


def test_border_collision_fold_is_localised():
    result = localize(*fold_path(), max_order=2, tol=1e-6)
    assert result.converged and result.t_hi - result.t_lo <= 1e-6
    assert result.t_lo <= FOLD_T <= result.t_hi
    assert abs(result.t_star - FOLD_T) <= 1e-6
    assert {e.kind for e in result.events} == {"border_collision"}


def test_flip_localised_and_events_carry_location():
    result = localize(*flip_path(), max_order=2, step_interval=(100, 101))
    assert result.converged and result.t_lo <= FLIP_T <= result.t_hi
    assert abs(result.t_star - FLIP_T) <= 1e-6
    assert event_summary(result.events) == [("appearance", 2, None, None, True), ("stability_change", 1, "-1", True, False)]
    for event in result.events:
        lo, hi = event.step_interval
        assert (lo, hi) == (100, 101) and lo <= event.location <= hi
        assert event.location == pytest.approx(100 + FLIP_T, abs=1e-6)


def test_plus_one_crossing_with_same_codes_is_localised():
    result = localize(sliding_fold(PLUS_ONE_A1[0]), sliding_fold(PLUS_ONE_A1[1]), max_order=2)
    assert result.converged and result.t_lo <= PLUS_ONE_T <= result.t_hi
    assert abs(result.t_star - PLUS_ONE_T) <= 1e-6
    assert event_summary(result.events) == [("stability_change", 1, "+1", True, False)]


def test_escape_to_infinity_is_localised_from_saved_states():
    result = localize(model_to_state(plrnn_1d(ESCAPE_A[0], 1.0)), model_to_state(plrnn_1d(ESCAPE_A[1], 1.0)), max_order=1)
    assert result.converged and result.t_lo <= ESCAPE_T <= result.t_hi
    assert abs(result.t_star - ESCAPE_T) <= 1e-6
    assert {e.kind for e in result.events} == {"degenerate"}


def test_localization_round_trips_through_json():
    located = localize(*fold_path(), max_order=1, tol=1e-3)
    assert located.converged
    assert Localization.from_dict(json.loads(json.dumps(located.to_dict()))) == located


def test_localize_with_nothing_to_find_is_not_converged():
    result = localize(plrnn_1d(0.5, 1.0), plrnn_1d(0.6, 1.0), max_order=2)
    assert not result.converged and "same signature" in result.reason and result.events == ()


def test_localize_with_scyfi_agrees_with_exhaustive():
    before, after = flip_path()
    result = localize(
        before, after, max_order=2, tol=1e-4, exhaustive=False, finder_kwargs={"n_starts": 8, "inner": 5, "outer": 1}
    )
    assert result.converged and result.t_lo <= FLIP_T <= result.t_hi


def test_localize_rejects_mismatched_models():
    with pytest.raises(TypeError, match="same class"):
        localize(PLRNN(1), tent(0.5, 1.0, 0.1))
    with pytest.raises(ValueError, match="parameter shapes"):
        localize(PLRNN(1), PLRNN(2))
    with pytest.raises(ValueError, match="does not fit"):
        localize(PLRNN(1), {"A": [0.1, 0.2]})
    with pytest.raises(TypeError, match="plain state_dict"):
        localize({"A": [0.1]}, PLRNN(1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exhaustive", [True, False], ids=["exhaustive", "scyfi"])
def test_localize_on_dtype_and_device(dtype, device, exhaustive):
    # The flip path's bracket lands on t = 4/13 in either precision (float32 to its own tolerance).
    tol = 1e-6 if dtype == torch.float64 else 1e-4
    result = localize(
        *flip_path(), max_order=2, tol=tol, exhaustive=exhaustive, dtype=dtype, device=device,
        finder_kwargs={"n_starts": 16, "inner": 5, "outer": 1},
    )
    assert result.converged and result.t_lo <= FLIP_T <= result.t_hi
    assert event_summary(result.events) == [("appearance", 2, None, None, True), ("stability_change", 1, "-1", True, False)]


def test_localize_rejects_finder_kwargs_it_sets_itself():
    with pytest.raises(ValueError, match=r"finder_kwargs must not set \['dtype'\]: localize"):
        localize(*flip_path(), exhaustive=False, finder_kwargs={"dtype": torch.float32})
