"""Bifurcations on parameter paths whose bifurcation points are known in closed form.

Every problem is a ShallowPLRNN(latent_dim=1, hidden_dim=1) with w2 = 1, h2 = 0, i.e. the 1-D map

    z' = a z + w1 relu(z) + h1     slope tau_L = a for z <= 0,  tau_R = a + w1 for z > 0,

or a small PLRNN / 2-D ShallowPLRNN; the derivations are in the comments next to each problem.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bifurcation_callback.bifurcations import (
    BIFURCATION_KINDS,
    CROSSINGS,
    BifurcationDiagram,
    BifurcationEvent,
    Localization,
    classify,
    detect_bifurcations,
    localize,
    match,
    parse_param_spec,
    scan,
)
from bifurcation_callback.cycles import Cycle, CycleSet, exhaustive_cycles, find_cycles
from bifurcation_callback.models import PLRNN, ShallowPLRNN, model_to_state


def tent(a: float, w1: float, h1: float) -> ShallowPLRNN:
    """z' = a z + w1 relu(z) + h1 (left slope a, right slope a + w1, border at z = 0)."""
    model = ShallowPLRNN(latent_dim=1, hidden_dim=1).double()
    with torch.no_grad():
        model.A.fill_(a)
        model.W1.fill_(w1)
        model.W2.fill_(1.0)
        model.h1.fill_(h1)
        model.h2.fill_(0.0)
    return model


def plrnn_1d(a: float, h: float) -> PLRNN:
    """z' = a z + h (a 1-D PLRNN is linear: W's only entry is the masked diagonal)."""
    model = PLRNN(1).double()
    with torch.no_grad():
        model.A.fill_(a)
        model.h.fill_(h)
    return model


def sliding_fold(a1: float) -> ShallowPLRNN:
    """2-D ShallowPLRNN with one switch on y: x' = a1 x + relu(y) + 1, y' = 0.5 y + 1.

    y* = 1 / (1 - 0.5) = 2 > 0, so the switch is on and x* = (2 + 1) / (1 - a1) = 3 / (1 - a1).
    The multipliers are (a1, 0.5).  As a1 crosses +1, x* passes through infinity, but the region code
    (y > 0) never changes: the fixed point persists *by codes* and a real multiplier crosses +1.
    """
    model = ShallowPLRNN(latent_dim=2, hidden_dim=1).double()
    with torch.no_grad():
        model.A.copy_(torch.tensor([a1, 0.5]))
        model.W1.copy_(torch.tensor([[1.0], [0.0]]))
        model.W2.copy_(torch.tensor([[0.0, 1.0]]))
        model.h1.copy_(torch.tensor([1.0, 1.0]))
        model.h2.zero_()
    return model


def events_between(model_before, model_after, max_order: int) -> list[BifurcationEvent]:
    before = exhaustive_cycles(model_before, max_order)
    after = exhaustive_cycles(model_after, max_order)
    return detect_bifurcations(before, after, step=11, prev_step=10)


def summary(events: list[BifurcationEvent]) -> list[tuple]:
    return sorted(((e.kind, e.order, e.crossing, e.stable_before, e.stable_after) for e in events), key=repr)


# ---------------------------------------------------------------------------------------------------------------
# (1) Border collision: a pair of fixed points is born at the border as the bias h1 crosses h* = 0.
#   tent(a=0.5, w1=1, h1=mu): tau_L = 0.5, tau_R = 1.5.
#   Left fixed point  z_L = mu / (1 - 0.5) = 2 mu  is real iff z_L <= 0  iff mu < 0;  multiplier 0.5 (stable).
#   Right fixed point z_R = mu / (1 - 1.5) = -2 mu is real iff z_R > 0   iff mu < 0;  multiplier 1.5 (unstable).
#   At mu = 0 both sit on the border z = 0: a nonsmooth fold.  Path mu: 0.3 -> -0.2, t = (0.3 - 0) / 0.5 = 0.6.

FOLD_MU = (0.3, -0.2)
FOLD_T = 0.6


def test_border_collision_pair_appears_and_vanishes():
    before, after = tent(0.5, 1.0, FOLD_MU[0]), tent(0.5, 1.0, FOLD_MU[1])
    born = events_between(before, after, max_order=2)
    assert summary(born) == [
        ("border_collision", 1, None, None, False),
        ("border_collision", 1, None, None, True),
    ]
    assert all(e.step_interval == (10, 11) and e.step == 11 for e in born)
    died = events_between(after, before, max_order=2)
    assert summary(died) == [
        ("border_collision", 1, None, False, None),
        ("border_collision", 1, None, True, None),
    ]


def test_border_collision_fold_is_localised():
    result = localize(tent(0.5, 1.0, FOLD_MU[0]), tent(0.5, 1.0, FOLD_MU[1]), max_order=2, tol=1e-6)
    assert result.converged and result.t_hi - result.t_lo <= 1e-6
    assert result.t_lo <= FOLD_T <= result.t_hi
    assert abs(result.t_star - FOLD_T) <= 1e-6
    assert {e.kind for e in result.events} == {"border_collision"}


def test_fixed_point_crossing_the_border_persists_by_nearest_points():
    # tent(0.5, -0.2, mu): tau_L = 0.5, tau_R = 0.3.  z_L = 2 mu (real iff mu < 0), z_R = mu / 0.7 (real iff
    # mu > 0): one stable fixed point that moves through the border at mu = 0.  mu = +-0.002 gives points
    # 0.00286 and -0.004, 0.0069 apart (< rtol 1e-2): same cycle, new code.
    events = events_between(tent(0.5, -0.2, 0.002), tent(0.5, -0.2, -0.002), max_order=1)
    assert summary(events) == [("border_collision", 1, None, True, True)]
    matches = match(exhaustive_cycles(tent(0.5, -0.2, 0.002), 1), exhaustive_cycles(tent(0.5, -0.2, -0.002), 1))
    assert [(m.status, m.matched_by) for m in matches] == [("persisted", "nearest")]
    # With tolerances below the distance the same change reads as one vanishing and one appearing point.
    loose = match(
        exhaustive_cycles(tent(0.5, -0.2, 0.002), 1), exhaustive_cycles(tent(0.5, -0.2, -0.002), 1),
        rtol=1e-3, crossing_rtol=0.0,
    )
    assert sorted(m.status for m in loose) == ["appeared", "vanished"]


# ---------------------------------------------------------------------------------------------------------------
# (2) Flip: the right fixed point loses stability through -1 and a 2-cycle is born.
#   tent(a=0.5, w1=tau_R - 0.5, h1=1): tau_L = 0.5, mu = 1.
#   Right fixed point z_R = 1 / (1 - tau_R) > 0 for all tau_R < 1, multiplier tau_R: crosses -1 at tau_R = -1.
#   Left fixed point z_L = 1 / 0.5 = 2 > 0 is virtual.  2-cycle x1 <= 0 < x2 with x2 = tau_L x1 + 1,
#   x1 = tau_R x2 + 1:  x1 = (1 + tau_R) / (1 - tau_L tau_R),  x2 = (1 + tau_L) / (1 - tau_L tau_R) > 0, so it is
#   real iff tau_R < -1; multiplier tau_L tau_R = 0.5 tau_R in (-0.95, -0.5) on the path: stable.
#   Path tau_R: -0.6 -> -1.9 (w1: -1.1 -> -2.4), t = (-1 - (-0.6)) / (-1.3) = 4 / 13.

FLIP_TAU = (-0.6, -1.9)
FLIP_T = 4.0 / 13.0


def test_flip_detected():
    before, after = tent(0.5, FLIP_TAU[0] - 0.5, 1.0), tent(0.5, FLIP_TAU[1] - 0.5, 1.0)
    events = events_between(before, after, max_order=2)
    assert summary(events) == [
        ("appearance", 2, None, None, True),
        ("stability_change", 1, "-1", True, False),
    ]
    flip = next(e for e in events if e.kind == "stability_change")
    assert (flip.n_unstable_before, flip.n_unstable_after) == (0, 1)
    np.testing.assert_allclose(flip.eigenvalues_before, [FLIP_TAU[0]], atol=1e-12)
    np.testing.assert_allclose(flip.eigenvalues_after, [FLIP_TAU[1]], atol=1e-12)
    assert "crossed -1" in flip.description


def test_flip_localised_and_events_carry_location():
    result = localize(
        tent(0.5, FLIP_TAU[0] - 0.5, 1.0), tent(0.5, FLIP_TAU[1] - 0.5, 1.0), max_order=2, step_interval=(100, 101)
    )
    assert result.converged and result.t_lo <= FLIP_T <= result.t_hi
    assert abs(result.t_star - FLIP_T) <= 1e-6
    assert summary(result.events) == [("appearance", 2, None, None, True), ("stability_change", 1, "-1", True, False)]
    for event in result.events:
        lo, hi = event.step_interval
        assert (lo, hi) == (100, 101) and lo <= event.location <= hi
        assert event.location == pytest.approx(100 + FLIP_T, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# (3) A real multiplier crossing +1.
#   (a) sliding_fold(a1): see its docstring; a1: 0.6 -> 1.3 crosses 1 at t = 0.4 / 0.7 = 4 / 7; same codes,
#       so it is a stability_change with crossing "+1".
#   (b) plrnn_1d(a, 1): z* = 1 / (1 - a) is > 0 (code on) for a < 1 and < 0 (code off) for a > 1: the fixed point
#       escapes to +infinity and returns from -infinity with the other code (degenerate transcritical);
#       a: 0.97 -> 1.02 crosses 1 at t = 0.03 / 0.05 = 0.6.

def test_plus_one_crossing_with_same_codes_is_a_stability_change():
    events = events_between(sliding_fold(0.6), sliding_fold(1.3), max_order=2)
    assert summary(events) == [("stability_change", 1, "+1", True, False)]
    result = localize(sliding_fold(0.6), sliding_fold(1.3), max_order=2)
    assert result.converged and result.t_lo <= 4 / 7 <= result.t_hi
    assert abs(result.t_star - 4 / 7) <= 1e-6
    assert summary(result.events) == [("stability_change", 1, "+1", True, False)]


def test_escape_to_infinity_is_degenerate():
    events = events_between(plrnn_1d(0.97, 1.0), plrnn_1d(1.02, 1.0), max_order=1)
    assert summary(events) == [("degenerate", 1, None, None, False), ("degenerate", 1, None, True, None)]
    result = localize(model_to_state(plrnn_1d(0.97, 1.0)), model_to_state(plrnn_1d(1.02, 1.0)), max_order=1)
    assert result.converged and result.t_lo <= 0.6 <= result.t_hi
    assert abs(result.t_star - 0.6) <= 1e-6
    assert {e.kind for e in result.events} == {"degenerate"}


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


# ---------------------------------------------------------------------------------------------------------------
# match / events / localisation invariants


def busy_plrnn() -> PLRNN:
    """A 2-D PLRNN with three fixed points (two stable) and a 2-cycle (found by a seed search)."""
    torch.manual_seed(98)
    model = PLRNN(2, weight_scale=2.0).double()
    with torch.no_grad():
        model.A.uniform_(-1.0, 1.0)
    return model


def test_cycle_set_matched_with_itself():
    cycles = find_cycles(busy_plrnn(), max_order=4)
    assert len(cycles) >= 2
    matches = match(cycles, cycles)
    assert len(matches) == len(cycles)
    assert all(m.status == "persisted" and m.matched_by == "codes" and m.prev is m.curr for m in matches)
    assert detect_bifurcations(cycles, cycles, step=5, prev_step=4) == []


def test_events_round_trip_through_json():
    events = events_between(tent(0.5, FLIP_TAU[0] - 0.5, 1.0), tent(0.5, FLIP_TAU[1] - 0.5, 1.0), max_order=2)
    events += events_between(tent(0.5, 1.0, FOLD_MU[0]), tent(0.5, 1.0, FOLD_MU[1]), max_order=2)
    assert {e.kind for e in events} <= set(BIFURCATION_KINDS)
    assert {e.crossing for e in events} <= set(CROSSINGS) | {None}
    restored = [BifurcationEvent.from_dict(d) for d in json.loads(json.dumps([e.to_dict() for e in events]))]
    assert restored == events
    located = localize(tent(0.5, 1.0, FOLD_MU[0]), tent(0.5, 1.0, FOLD_MU[1]), max_order=1, tol=1e-3)
    assert Localization.from_dict(json.loads(json.dumps(located.to_dict()))) == located


def test_event_validates_its_vocabulary_and_bracket():
    with pytest.raises(ValueError, match="kind must be one of"):
        BifurcationEvent("fold", 1, step=1, step_interval=(0, 1))
    with pytest.raises(ValueError, match="crossing must be one of"):
        BifurcationEvent("stability_change", 1, step=1, step_interval=(0, 1), crossing="+2")
    with pytest.raises(ValueError, match="outside its bracket"):
        BifurcationEvent("appearance", 1, step=1, step_interval=(0, 1), location=1.5)


def test_localize_with_nothing_to_find_is_not_converged():
    result = localize(plrnn_1d(0.5, 1.0), plrnn_1d(0.6, 1.0), max_order=2)
    assert not result.converged and "same signature" in result.reason and result.events == ()


def test_localize_with_scyfi_agrees_with_exhaustive():
    before, after = tent(0.5, FLIP_TAU[0] - 0.5, 1.0), tent(0.5, FLIP_TAU[1] - 0.5, 1.0)
    result = localize(
        before, after, max_order=2, tol=1e-4, exhaustive=False, finder_kwargs={"n_starts": 8, "inner": 5, "outer": 1}
    )
    assert result.converged and result.t_lo <= FLIP_T <= result.t_hi


# ---------------------------------------------------------------------------------------------------------------
# scan


def test_scan_reproduces_the_analytic_existence_region():
    # tent(a, 1, mu): tau_L = a, tau_R = a + 1.  z_L = mu / (1 - a) is real iff z_L <= 0; z_R = mu / (1 - a - 1)
    # = -mu / a is real iff z_R > 0.  Stable iff |tau| < 1.  The grid avoids a in {-2, -1, 0, 1} and mu = 0.
    a_values = np.linspace(-2.45, 1.55, 9)
    mu_values = np.linspace(-1.0, 1.0, 8)
    diagram = scan(tent(0.0, 1.0, 0.0), "A[0]", "h1[0]", (a_values, mu_values), max_order=1)
    assert diagram.method == "exhaustive" and diagram.counts.shape == (9, 8, 1)
    for i, a in enumerate(a_values):
        for j, mu in enumerate(mu_values):
            left = mu / (1 - a) <= 0
            right = -mu / a > 0
            expected = int(left) + int(right)
            expected_stable = int(left and abs(a) < 1) + int(right and abs(a + 1) < 1)
            assert diagram.counts[i, j, 0] == expected, (a, mu)
            assert diagram.stable[i, j, 0] == expected_stable, (a, mu)
    assert 0 < diagram.counts.sum() < 2 * diagram.counts.size  # the region is non-trivial


def cell_model(base, parameters: dict[str, tuple[tuple[int, ...], float]]):
    model = base.snapshot().double()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, (index, value) in parameters.items():
            named[name][index] = value
    return model


def test_scan_agrees_with_find_cycles_cell_by_cell():
    base = busy_plrnn()
    a_values, b_values = np.linspace(-1.0, 1.2, 8), np.linspace(-0.9, 1.1, 8)
    diagram = scan(base, "A[0]", "W[1,0]", (a_values, b_values), max_order=3)
    for i, a in enumerate(a_values):
        for j, b in enumerate(b_values):
            model = cell_model(base, {"A": ((0,), a), "W": ((1, 0), b)})
            found = find_cycles(model, max_order=3, n_starts=32, inner=10, outer=2)
            assert diagram.counts[i, j].tolist() == list(found.counts().values()), (a, b)
            assert diagram.stable[i, j].tolist() == list(found.stable_counts().values()), (a, b)
    assert diagram.counts[..., 1].any()  # some cell has a 2-cycle, so the comparison is not vacuous


def test_scan_moving_switching_planes_and_scyfi_method_agree_with_exhaustive():
    torch.manual_seed(1)
    base = ShallowPLRNN(latent_dim=2, hidden_dim=3, weight_scale=1.2).double()
    grid = (np.linspace(-1.0, 1.0, 3), np.linspace(-1.5, 1.5, 3))
    exact = scan(base, "h2[0]", "W1[0,1]", grid, max_order=2)
    heuristic = scan(base, "h2[0]", "W1[0,1]", grid, max_order=2, method="scyfi", finder_kwargs={"n_starts": 64})
    assert exact.method == "exhaustive" and heuristic.method == "scyfi"
    for i, h2 in enumerate(grid[0]):
        for j, w in enumerate(grid[1]):
            model = cell_model(base, {"h2": ((0,), h2), "W1": ((0, 1), w)})
            truth = exhaustive_cycles(model, max_order=2)
            assert exact.counts[i, j].tolist() == list(truth.counts().values())
            assert exact.stable[i, j].tolist() == list(truth.stable_counts().values())
    np.testing.assert_array_equal(exact.counts, heuristic.counts)


def test_diagram_round_trips_through_json(tmp_path):
    diagram = scan(busy_plrnn(), "A[0]", "A[1]", ([0.1, 0.5], [0.2, 0.3, 0.4]), max_order=2)
    restored = BifurcationDiagram.load(diagram.save(tmp_path / "d.json"))
    assert restored.to_dict() == diagram.to_dict()


# ---------------------------------------------------------------------------------------------------------------
# bad input


def test_match_rejects_sets_from_different_models():
    small = exhaustive_cycles(plrnn_1d(0.5, 1.0), 1)
    large = exhaustive_cycles(busy_plrnn(), 1)
    with pytest.raises(ValueError, match="different models"):
        match(small, large)
    with pytest.raises(TypeError, match="CycleSet"):
        match(small, [])


def test_localize_rejects_mismatched_models():
    with pytest.raises(TypeError, match="same class"):
        localize(PLRNN(1), tent(0.5, 1.0, 0.1))
    with pytest.raises(ValueError, match="parameter shapes"):
        localize(PLRNN(1), PLRNN(2))
    with pytest.raises(ValueError, match="does not fit"):
        localize(PLRNN(1), {"A": [0.1, 0.2]})
    with pytest.raises(TypeError, match="plain state_dict"):
        localize({"A": [0.1]}, PLRNN(1))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("B[0]", "unknown parameter in spec 'B\\[0\\]'; PLRNN has parameters A \\(2,\\), W \\(2, 2\\), h \\(2,\\)"),
        ("A[2]", "out of range"),
        ("W[0]", "needs 2 indices"),
        ("A[0", "cannot parse"),
        ("W[1,1]", "masked diagonal"),
    ],
)
def test_bad_param_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        scan(PLRNN(2), spec, "h[0]", ([0.0], [0.0]))
    with pytest.raises(ValueError, match=message):
        parse_param_spec(PLRNN(2), spec)


def test_bad_grids_and_options():
    with pytest.raises(ValueError, match="values_a is empty"):
        scan(PLRNN(2), "A[0]", "A[1]", ([], [0.1]))
    with pytest.raises(ValueError, match="values_b is empty"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], np.zeros(0)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        scan(PLRNN(2), "A[0]", "A[1]", ([np.nan], [0.1]))
    with pytest.raises(ValueError, match="same entry"):
        scan(PLRNN(2), "A[0]", "A[0]", ([0.1], [0.1]))
    with pytest.raises(ValueError, match="method must be one of"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], [0.1]), method="fast")
    with pytest.raises(TypeError, match="nn.Module"):
        scan(object(), "A[0]", "A[1]", ([0.1], [0.1]))
    with pytest.raises(ValueError, match="at least one of"):
        classify(None, None, step=1, step_interval=(0, 1))
    with pytest.raises(ValueError, match="must not exceed"):
        detect_bifurcations(CycleSet(), CycleSet(), step=1, prev_step=2)


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_scan_writes_png_and_json(tmp_path, capsys):
    from bifurcation_callback.cli import main

    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(busy_plrnn())))
    out = tmp_path / "out" / "diagram"
    status = main(
        [
            "scan", str(model_path), "--param-a", "A[0]", "--range-a", "-1", "1", "--param-b", "h[1]",
            "--range-b", "-1", "1", "--n", "5", "--max-order", "2", "--out", str(out), "--no-progress",
        ]
    )
    assert status == 0
    diagram = BifurcationDiagram.load(tmp_path / "out" / "diagram.json")
    assert diagram.counts.shape == (5, 5, 2) and diagram.param_b == "h[1]"
    assert (tmp_path / "out" / "diagram.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--param-a", "Q[0]"], "unknown parameter in spec 'Q[0]'"), (["--n", "0"], "--n must be >= 1")],
)
def test_cli_scan_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    from bifurcation_callback.cli import main

    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(busy_plrnn())))
    args = ["scan", str(model_path), "--param-a", "A[0]", "--range-a", "-1", "1", "--param-b", "A[1]", "--range-b", "0", "1"]
    assert main(args + extra + ["--out", str(tmp_path / "d"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bifurcation-callback scan: error:") and message in error and "\n" not in error


def test_scan_rejects_finder_kwargs_it_sets_itself():
    with pytest.raises(ValueError, match=r"finder_kwargs must not set \['orders'\]"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], [0.2]), method="scyfi", finder_kwargs={"orders": [16]})
