"""Lyapunov exponents, orbits and attractors against analytic values: tent and skew-tent maps, linear region
maps, rotations, the paper's 16-cycle teacher and long stable cycles of its family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifurcation_callback.attractors import (
    ATTRACTOR_KINDS,
    AttractorReport,
    find_attractors,
    lyapunov_exponents,
    simulate,
)
from bifurcation_callback.cycles import cycles_from_sequences, find_cycles
from bifurcation_callback.data import PLRNN_TEACHERS, plrnn_teacher_cycle
from bifurcation_callback.models import PLRNN, ShallowPLRNN
from problems import (
    BISTABLE_2D,
    DEVICES,
    DTYPES,
    LONG_CYCLE_A1,
    MODEL_KINDS,
    Rotation,
    check_cycle,
    paper_model,
    random_model,
    same_cycle_points,
)


def tent_like(slope_left: float, slope_right: float, corner: float) -> ShallowPLRNN:
    """A 1-D map with slope ``slope_left`` below ``corner`` and ``slope_right`` above, through (0, 0).

    Written as a ShallowPLRNN(1, 1): z' = s_l z + (s_r - s_l) relu(z - corner).
    """
    model = ShallowPLRNN(latent_dim=1, hidden_dim=1).double()
    with torch.no_grad():
        model.A.fill_(slope_left)
        model.W1.fill_(slope_right - slope_left)
        model.W2.fill_(1.0)
        model.h2.fill_(-corner)
        model.h1.zero_()
    return model


@pytest.mark.parametrize("mu", [1.3, 1.7, 1.9])
def test_tent_map_exponent_is_log_mu(mu: float) -> None:
    # z' = mu * min(z, 1 - z): slopes mu and -mu, corner 1/2; on its attractor every step stretches by mu.
    model = tent_like(mu, -mu, 0.5)
    exponent = lyapunov_exponents(model, [0.2345], n_steps=20_000, n_transient=100)
    assert exponent.shape == (1,)
    assert exponent[0] == pytest.approx(math.log(mu), abs=1e-12)


@pytest.mark.parametrize("corner", [0.3, 0.618034])
def test_skew_tent_exponent_is_the_entropy_of_its_uniform_measure(corner: float) -> None:
    # Slopes 1/a and -1/(1-a); the invariant measure is uniform, so lambda = -a log a - (1-a) log(1-a).
    model = tent_like(1 / corner, -1 / (1 - corner), corner)
    expected = -corner * math.log(corner) - (1 - corner) * math.log(1 - corner)
    exponents = lyapunov_exponents(model, [[0.1234], [0.5678], [0.9012]], n_steps=20_000, n_transient=100)
    assert exponents.shape == (3, 1)
    # Ergodic averages converge like 1/sqrt(n): 2e4 steps give about 2 decimals.
    np.testing.assert_allclose(exponents[:, 0], expected, atol=1e-2)


def test_linear_region_map_spectrum_is_log_of_moduli() -> None:
    model = PLRNN(3).double()
    with torch.no_grad():
        model.A.copy_(torch.tensor([0.9, -0.5, 0.2], dtype=torch.float64))
        model.W.zero_()
        model.h.zero_()
    # With W = 0 every region's Jacobian is diag(A), although the orbit's second coordinate changes sign.
    exponents = lyapunov_exponents(model, [1.0, 1.0, 1.0], n_steps=200, n_transient=0)
    np.testing.assert_allclose(exponents, np.log([0.9, 0.5, 0.2]), atol=1e-12)


def test_rotation_block_gives_a_pair_of_equal_exponents() -> None:
    # A user model (protocol only) whose every region maps by r R(theta): the spectrum is (log r, log r).
    exponents = lyapunov_exponents(Rotation(1.1, 0.7), [1.0, 0.0], n_steps=300, n_transient=0)
    np.testing.assert_allclose(exponents, [math.log(1.1)] * 2, atol=1e-12)


def test_superstable_region_gives_minus_infinity() -> None:
    # z' = relu-gated: slope 0 below the corner, so the orbit from the left sits at 0 with Jacobian 0.
    model = tent_like(0.0, 0.0, 10.0)
    assert lyapunov_exponents(model, [-1.0], n_steps=5, n_transient=0)[0] == -math.inf


def test_diverging_orbit_gives_nan_not_a_number_that_looks_valid() -> None:
    model = tent_like(3.0, 3.0, 0.0)
    exponents = lyapunov_exponents(model, [[1.0], [0.0]], n_steps=2000, n_transient=0)
    assert math.isnan(exponents[0, 0])
    assert exponents[1, 0] == pytest.approx(math.log(3.0))


def test_float32_matches_float64_loosely() -> None:
    model = tent_like(1.7, -1.7, 0.5)
    exponent32 = lyapunov_exponents(model, [0.3], n_steps=2000, n_transient=10, dtype="float32")
    assert exponent32[0] == pytest.approx(math.log(1.7), abs=1e-5)
    assert model.A.dtype == torch.float64  # the caller's model is not converted in place


def test_simulate_matches_repeated_steps() -> None:
    model = ShallowPLRNN(latent_dim=2, hidden_dim=5).double()
    start = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float64)
    orbit = simulate(model, start, 4)
    assert orbit.shape == (2, 5, 2)
    expected = start
    for t in range(5):
        torch.testing.assert_close(orbit[:, t], expected)
        expected = model.step(expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: lyapunov_exponents(m, [0.0, 1.0]), r"z0 must have shape \(1,\)"),
        (lambda m: lyapunov_exponents(m, [float("nan")]), "NaN"),
        (lambda m: lyapunov_exponents(m, [0.1], n_steps=0), "n_steps must be an int >= 1"),
        (lambda m: lyapunov_exponents(m, [0.1], n_transient=-1), "n_transient must be an int >= 0"),
        (lambda m: lyapunov_exponents(m, [0.1], dtype=torch.float16), "dtype must be one of"),
        (lambda m: simulate(m, [0.1], n_steps=True), "n_steps must be an int"),
    ],
)
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(tent_like(1.5, -1.5, 0.5))


def test_non_model_is_rejected() -> None:
    with pytest.raises(TypeError):
        lyapunov_exponents(object(), [0.0])


# ------------------------------------------------------------------------------------------------------------
# find_attractors


def teacher(system: str) -> PLRNN:
    model = PLRNN(2).double()
    with torch.no_grad():
        for name, value in PLRNN_TEACHERS[system]["params"].items():
            getattr(model, name).copy_(torch.tensor(value, dtype=torch.float64))
    return model


def starts(n: int, dim: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("system", ["16-cycle", "4-cycle"])
def test_teacher_has_one_stable_cycle_equal_to_find_cycles_and_the_exact_one(system: str) -> None:
    model = teacher(system)
    order = PLRNN_TEACHERS[system]["order"]
    report = find_attractors(model, starts(16, 2))
    assert len(report) == 1 and report.labels == (0,) * 16
    attractor = report.primary
    assert (attractor.kind, attractor.period, attractor.fraction) == ("cycle", order, 1.0)
    assert attractor.cycle.kind == "stable" and attractor.is_stable
    assert attractor.spectral_radius == attractor.cycle.spectral_radius < 1
    assert attractor.largest_lyapunov == pytest.approx(math.log(attractor.spectral_radius) / order, rel=1e-12)
    stable = [c for c in find_cycles(model, orders=[order]) if c.is_stable]
    assert [c.key for c in stable] == [attractor.cycle.key]
    assert same_cycle_points(attractor.cycle.points, plrnn_teacher_cycle(system), rtol=1e-10)
    check_cycle(model, attractor.cycle)
    # The stored orbit stretch lies on the cycle (the orbit converged to it).
    assert attractor.orbit.shape == (200, 2)
    distances = np.linalg.norm(attractor.orbit[:, None] - attractor.cycle.points[None], axis=-1).min(axis=1)
    assert distances.max() < 1e-6


def test_stable_fixed_point() -> None:
    model = PLRNN(1).double()
    with torch.no_grad():
        model.A.fill_(0.5)
        model.h.fill_(1.0)
    report = find_attractors(model, [[-5.0], [0.0], [7.0]], max_period=4)
    assert report.counts() == {kind: int(kind == "fixed_point") for kind in ATTRACTOR_KINDS}
    (attractor,) = report
    assert (attractor.kind, attractor.period, attractor.cycle.points.tolist()) == ("fixed_point", 1, [[2.0]])
    assert attractor.spectral_radius == 0.5
    assert attractor.largest_lyapunov == pytest.approx(math.log(0.5))


def test_bistable_model_gives_two_attractors_with_their_fractions() -> None:
    model = BISTABLE_2D.build()  # stable fixed points (2, -2) and (-2, 2)
    states = [[3.0, -1.0], [1.0, -3.0], [5.0, -0.5], [-1.0, 3.0]]
    report = find_attractors(model, states, max_period=8)
    assert [(a.kind, a.fraction, a.states) for a in report] == [
        ("fixed_point", 0.75, (0, 1, 2)),
        ("fixed_point", 0.25, (3,)),
    ]
    assert report.labels == (0, 0, 0, 1)
    np.testing.assert_allclose(report.attractors[0].cycle.points, [[2.0, -2.0]], atol=1e-12)
    np.testing.assert_allclose(report.attractors[1].cycle.points, [[-2.0, 2.0]], atol=1e-12)
    assert report.primary is report.attractors[0]


def test_tent_map_is_chaotic_with_exponent_log_slope() -> None:
    model = tent_like(1.9, -1.9, 0.5)
    report = find_attractors(model, [[0.1234], [0.5678], [0.9]], max_period=64)
    (attractor,) = report
    assert (attractor.kind, attractor.period, attractor.cycle) == ("chaotic", None, None)
    assert attractor.spectral_radius is None and attractor.is_stable is None
    assert attractor.largest_lyapunov == pytest.approx(math.log(1.9), abs=1e-12)
    assert attractor.fraction == 1.0


def test_irrational_rotation_is_quasi_periodic() -> None:
    model = Rotation(1.0, 2 * math.pi * (math.sqrt(5) - 1) / 2)
    report = find_attractors(model, [[1.0, 0.0], [0.0, 0.5]], max_period=32)
    assert [a.kind for a in report] == ["quasi_periodic"]  # two circles, but they visit the same regions
    assert abs(report.primary.largest_lyapunov) < 1e-12


def test_rational_rotation_is_a_neutral_cycle_without_a_solvable_system() -> None:
    # R(2π/5)^5 = I: every orbit is a 5-cycle, but (I - P) z = 0 is singular, so there is no isolated cycle.
    report = find_attractors(Rotation(1.0, 2 * math.pi / 5), [[1.0, 0.0]], max_period=16)
    attractor = report.primary
    assert (attractor.kind, attractor.period, attractor.cycle) == ("cycle", 5, None)
    assert attractor.spectral_radius == pytest.approx(1.0, abs=1e-12)
    assert attractor.is_stable is False


def test_divergent_orbits_are_one_divergent_attractor() -> None:
    model = tent_like(3.0, 3.0, 0.0)
    report = find_attractors(model, [[1.0], [-2.0], [0.5]], max_period=4, n_transient=10)
    (attractor,) = report
    assert (attractor.kind, attractor.period, attractor.fraction) == ("divergent", None, 1.0)
    assert math.isnan(attractor.largest_lyapunov)


def test_slowly_growing_orbit_is_divergent_not_chaotic() -> None:
    # z' = 1.02 z from 1: finite and far below the bound after 300 steps, but its exponent log 1.02 is its
    # growth rate, not chaos.
    report = find_attractors(tent_like(1.02, 1.02, 0.0), [[1.0]], max_period=32, n_transient=200)
    assert [a.kind for a in report] == ["divergent"]


@pytest.mark.parametrize("period", sorted(LONG_CYCLE_A1))
def test_long_stable_cycle_of_the_paper_family(period: int) -> None:
    model = paper_model(LONG_CYCLE_A1[period])
    report = find_attractors(model, starts(4, 2), max_period=300)
    attractor = report.primary
    assert (attractor.kind, attractor.period, attractor.fraction) == ("cycle", period, 1.0)
    assert attractor.is_stable
    check_cycle(model, attractor.cycle)


def test_cycle_longer_than_max_period_is_unresolved_not_chaotic() -> None:
    # Exponent log(0.0886) / 285 = -0.0085: close to 0, so a short transient can leave the estimate within
    # the quasi-periodic tolerance (5e-3); 3000 steps settle it.
    model = paper_model(LONG_CYCLE_A1[285])
    report = find_attractors(model, starts(2, 2), max_period=128, n_transient=3000)
    assert [a.kind for a in report] == ["unresolved"]
    assert report.primary.largest_lyapunov < 0


def test_float32_finds_the_same_cycle_loosely() -> None:
    model = teacher("16-cycle")
    exact = find_attractors(model, starts(4, 2)).primary
    report = find_attractors(model, starts(4, 2).float(), dtype="float32")
    assert (report.primary.kind, report.primary.period) == ("cycle", 16)
    assert report.primary.cycle.key == exact.cycle.key
    assert same_cycle_points(report.primary.cycle.points, exact.cycle.points, rtol=1e-4)
    assert model.A.dtype == torch.float64  # the caller's model is not converted


def test_report_round_trips_through_json() -> None:
    import json

    for model, states in [
        (teacher("4-cycle"), starts(3, 2)),
        (tent_like(3.0, 3.0, 0.0), [[1.0], [0.0]]),  # divergent (inf in its orbit) and the unstable fixed point 0
        (tent_like(1.9, -1.9, 0.5), [[0.3]]),
    ]:
        report = find_attractors(model, states, max_period=8, n_transient=50)
        text = json.dumps(report.to_dict(), allow_nan=False)
        again = AttractorReport.from_dict(json.loads(text))
        assert again.to_dict() == report.to_dict()
        assert {a.kind for a in again} <= set(ATTRACTOR_KINDS)


def test_reached_unstable_fixed_point_is_reported_as_such() -> None:
    # z' = 3 z from exactly 0 stays at the unstable fixed point: periodic, but not an attractor in the strict sense.
    report = find_attractors(tent_like(3.0, 3.0, 0.0), [[0.0]], max_period=4, n_transient=10)
    attractor = report.primary
    assert (attractor.kind, attractor.spectral_radius, attractor.is_stable) == ("fixed_point", 3.0, False)


def test_cycles_from_sequences_matches_find_cycles() -> None:
    model = teacher("16-cycle")
    found = find_cycles(model, orders=[16])
    codes = np.stack([np.roll(c.codes, 3, axis=0) for c in found])  # any rotation gives the same key
    again = cycles_from_sequences(model, codes)
    assert [c.key for c in again] == [c.key for c in found]
    np.testing.assert_allclose(np.stack([c.points for c in again]), np.stack([c.points for c in found]), atol=1e-12)
    with pytest.raises(ValueError, match=r"codes must have shape \(B, k, 2\)"):
        cycles_from_sequences(model, codes[:, :, :1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"states": [[0.0]]}, r"states must have shape \(2,\) or \(B, 2\)"),
        ({"states": [[float("nan"), 0.0]]}, "states contains NaN"),
        ({"states": torch.zeros(0, 2)}, "states must hold at least one state"),
        ({"max_period": 0}, "max_period must be an int >= 1"),
        ({"n_transient": -1}, "n_transient must be an int >= 0"),
        ({"max_period": 8, "n_window": 15}, "n_window must be an int >= 16"),
        ({"n_orbit": 0}, "n_orbit must be an int >= 1"),
        ({"lyapunov_tolerance": -1.0}, "lyapunov_tolerance must be a finite number >= 0.0"),
        ({"divergence_bound": 0.0}, "divergence_bound must be a finite number > 0.0"),
        ({"n_rounds": 0}, "n_rounds must be an int >= 1"),
        ({"dtype": torch.float16}, "dtype must be one of"),
    ],
)
def test_find_attractors_bad_input_is_named(kwargs: dict, message: str) -> None:
    arguments = {"states": [[0.1, 0.2]], **kwargs}
    with pytest.raises(ValueError, match=message):
        find_attractors(teacher("4-cycle"), arguments.pop("states"), **arguments)


def test_find_attractors_rejects_non_models_and_nan_weights() -> None:
    with pytest.raises(TypeError):
        find_attractors(object(), [[0.0]])
    model = teacher("4-cycle")
    with torch.no_grad():
        model.h[0] = float("nan")
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        find_attractors(model, [[0.0, 0.0]])


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_invariants_on_random_models(kind: str, dtype: torch.dtype) -> None:
    # Every model family, both precisions: fractions add up, labels point at the attractor holding the state,
    # kinds come from the registry, and every reported cycle is a genuine cycle of the model.
    for seed in range(3):
        model = random_model(kind, seed, dim=2, hidden=4, scale=1.0)
        report = find_attractors(model, starts(6, 2, seed=seed).to(dtype), max_period=32, n_transient=200, dtype=dtype)
        assert sum(a.fraction for a in report) == pytest.approx(1.0)
        assert all(b in report.attractors[label].states for b, label in enumerate(report.labels))
        for attractor in report:
            assert attractor.kind in ATTRACTOR_KINDS
            assert attractor.orbit.shape == (96, 2)  # n_orbit (200) capped by the window, 3 * max_period
            if attractor.cycle is not None:
                assert attractor.period == attractor.cycle.order
                if dtype == torch.float64:
                    check_cycle(model, attractor.cycle)
        if dtype == torch.float32:  # the same attractors as in float64, the cycles to float32 accuracy
            exact = find_attractors(model, starts(6, 2, seed=seed), max_period=32, n_transient=200)
            assert [(a.kind, a.period, a.states) for a in report] == [(a.kind, a.period, a.states) for a in exact]
            for single, double in zip(report, exact):
                if double.cycle is not None:
                    assert single.cycle.key == double.cycle.key
                    assert same_cycle_points(single.cycle.points, double.cycle.points, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_on_each_device(device: str) -> None:
    # CUDA runs the simulation and the solves on the GPU; the report is the same as on the CPU.
    model = teacher("16-cycle").to(device)
    report = find_attractors(model, starts(8, 2).to(device))
    cpu = find_attractors(teacher("16-cycle"), starts(8, 2))
    assert (report.primary.kind, report.primary.period, report.primary.fraction) == ("cycle", 16, 1.0)
    assert report.primary.cycle.key == cpu.primary.cycle.key
    assert same_cycle_points(report.primary.cycle.points, cpu.primary.cycle.points, rtol=1e-10)


def test_summary_lists_each_attractor() -> None:
    report = find_attractors(BISTABLE_2D.build(), [[3.0, -1.0], [-1.0, 3.0]], max_period=8)
    lines = report.summary().splitlines()
    assert len(lines) == 3 and lines[1].split()[:3] == ["fixed_point", "1", "0.5"]


def test_code_periods_are_the_smallest_full_window_repetition() -> None:
    from bifurcation_callback.attractors import _code_periods

    def brute(codes, candidates, max_period):  # the definition, period by period, row by row
        found = np.zeros(len(codes), dtype=np.int64)
        for b, row in enumerate(codes):
            if candidates[b]:
                found[b] = next((p for p in range(1, min(max_period, len(row) - 1) + 1)
                                 if all(np.array_equal(row[t + p], row[t]) for t in range(len(row) - p))), 0)
        return found

    rng = np.random.default_rng(0)
    periodic_rows = 0
    for _ in range(150):
        n_switches, window, max_period = int(rng.integers(1, 130)), int(rng.integers(2, 60)), int(rng.integers(1, 40))
        codes = rng.random((10, window, n_switches)) < 0.5  # aperiodic rows
        for b in range(1, 10):  # periodic after a transient; some broken once late, some constant
            period, start = int(rng.integers(1, 10)), int(rng.integers(0, window))
            cycle = rng.random((period, n_switches)) < 0.5
            codes[b, start:] = cycle[np.arange(window - start) % period]
            if b % 4 == 0:
                codes[b, int(rng.integers(0, window)), 0] ^= True
            if b % 5 == 0:
                codes[b] = codes[b, :1]
        candidates = rng.random(10) < 0.8
        expected = brute(codes, candidates, max_period)
        np.testing.assert_array_equal(_code_periods(codes, candidates, max_period), expected)
        periodic_rows += int((expected > 0).sum())
    assert periodic_rows > 100  # the cases do exercise periods, not only aperiodic rows
