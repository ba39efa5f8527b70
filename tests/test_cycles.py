"""SCYFI (find_cycles) against closed-form cycles, the exhaustive ground truth and the paper's model."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bifurcation_callback import PLRNN, Cycle, CycleSet, FinderStats, ShallowPLRNN, exhaustive_cycles, find_cycles
from bifurcation_callback.cycles import DEFAULT_EXHAUSTIVE_LIMIT, ORDER_STATUSES, REGION_LISTING_LIMIT, STABILITY_KINDS
from bifurcation_callback.regions import cell_count_bound
from problems import (
    DEVICES,
    DTYPES,
    FLIP_1D,
    KNOWN_PROBLEMS,
    MODEL_KINDS,
    PAPER_LONG_CYCLES,
    PLRNN_2D,
    check_cycle,
    paper_model,
    paper_variant,
    plrnn,
    random_model,
    same_cycle_points,
)


def keys(cycles) -> list[bytes]:
    return sorted(c.key for c in cycles)


def assert_no_duplicates(cycles: CycleSet) -> None:
    assert len(set(keys(cycles))) == len(cycles), "a cycle key is reported twice"
    for i, a in enumerate(cycles.cycles):
        for b in cycles.cycles[i + 1 :]:
            if a.order == b.order:
                scale = 1 + max(np.abs(a.points).max(), np.abs(b.points).max())
                distance = np.linalg.norm(a.points[:, None] - b.points[None], axis=-1).min(axis=1)
                assert not np.all(distance <= 1e-6 * scale), "two reported cycles have the same points"


def assert_same_cycles(found: CycleSet, exact: CycleSet, *, rtol: float = 1e-8) -> None:
    assert keys(found) == keys(exact)
    by_key = {c.key: c for c in exact}
    for cycle in found:
        other = by_key[cycle.key]
        assert cycle.order == other.order
        assert cycle.kind == other.kind
        # Both are rotated to the canonical code sequence, so the points line up without a shift.
        scale = 1 + np.abs(other.points).max()
        assert np.abs(cycle.points - other.points).max() <= rtol * scale


# ------------------------------------------------------------------------------------------------------------
# Closed-form problems (tests/problems.py) over dtype × device


def _match_known(found: CycleSet, problem, *, atol: float) -> None:
    assert not found.cut
    expected_counts = collections.Counter(c.order for c in problem.cycles)
    assert found.counts() == {k: expected_counts.get(k, 0) for k in range(1, problem.max_order + 1)}
    for known in problem.cycles:
        matches = [c for c in found.by_order(known.order)
                   if same_cycle_points(np.array(known.points), c.points, rtol=atol)]
        assert len(matches) == 1, f"{problem.name}: no unique match for {known.points}"
        cycle = matches[0]
        assert cycle.kind == known.kind
        np.testing.assert_allclose(np.poly(cycle.eigenvalues), np.poly(np.array(known.multipliers)), atol=atol * 100)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", KNOWN_PROBLEMS, ids=lambda p: p.name)
def test_known_problem(problem, dtype, device):
    model = problem.build()
    found = find_cycles(model, max_order=problem.max_order, dtype=dtype, device=device, seed=1)
    _match_known(found, problem, atol=1e-10 if dtype == torch.float64 else 1e-4)
    if dtype == torch.float64:
        for cycle in found:
            check_cycle(model, cycle)


@pytest.mark.parametrize("problem", KNOWN_PROBLEMS, ids=lambda p: p.name)
def test_known_problem_matches_exhaustive(problem):
    exact = exhaustive_cycles(problem.build(), max_order=problem.max_order)
    _match_known(exact, problem, atol=1e-10)


def test_known_2d_saddle_multipliers_in_closed_form():
    cycle = find_cycles(PLRNN_2D.build(), orders=[2]).cycles[0]
    np.testing.assert_allclose(
        np.sort(cycle.eigenvalues.real), [(89 - math.sqrt(7857)) / 32, (89 + math.sqrt(7857)) / 32], rtol=1e-12
    )
    assert np.all(cycle.eigenvalues.imag == 0)
    assert cycle.n_unstable == 1 and cycle.n_unstable_complex == 0
    # Codes: p = (2, -1) is in region 10, q = (-1, 2) in region 01; canonical rotation is the smaller first.
    assert cycle.codes.tolist() == [[False, True], [True, False]]
    np.testing.assert_allclose(cycle.points, [[-1.0, 2.0], [2.0, -1.0]], atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Property test: SCYFI equals exhaustive enumeration on random small models

OBSERVED_ORDERS: collections.Counter = collections.Counter()
OBSERVED_MODELS: set = set()

_seeds = st.integers(0, 2**32 - 1)
_specs = st.one_of(
    st.tuples(st.just("PLRNN"), st.integers(2, 3), st.just(0), _seeds),
    st.tuples(st.just("ShallowPLRNN"), st.just(2), st.integers(2, 6), _seeds),
)


@settings(max_examples=75, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs)
def test_find_cycles_equals_exhaustive(spec):
    kind, dim, hidden, seed = spec
    model = random_model(kind, seed, dim=dim, hidden=hidden)
    exact = exhaustive_cycles(model, max_order=4)
    found = find_cycles(model, max_order=4)
    assert not found.cut
    assert_same_cycles(found, exact)
    assert_no_duplicates(found)
    for cycle in found:
        check_cycle(model, cycle)
    if spec not in OBSERVED_MODELS:
        OBSERVED_MODELS.add(spec)
        OBSERVED_ORDERS.update(c.order for c in exact)


def test_property_test_is_not_vacuous():
    """The random models of the property test really have cycles of order 2, 3 and 4."""
    if not OBSERVED_ORDERS:  # run alone (e.g. with -k): run the property test first
        test_find_cycles_equals_exhaustive()
    assert len(OBSERVED_MODELS) >= 50
    assert {spec[0] for spec in OBSERVED_MODELS} == {"PLRNN", "ShallowPLRNN"}
    assert OBSERVED_ORDERS[1] >= 30
    assert OBSERVED_ORDERS[2] + OBSERVED_ORDERS[3] + OBSERVED_ORDERS[4] >= 10
    assert all(OBSERVED_ORDERS[k] >= 1 for k in (2, 3, 4)), OBSERVED_ORDERS


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_kind_matches_exhaustive(kind):
    for seed in range(3):
        model = random_model(kind, 100 + seed, dim=2, hidden=3)
        exact = exhaustive_cycles(model, max_order=3)
        found = find_cycles(model, max_order=3)
        assert_same_cycles(found, exact)
        for cycle in found:
            check_cycle(model, cycle)


# ------------------------------------------------------------------------------------------------------------
# The paper's 2-D PLRNN (SCYFI unit tests)


def test_paper_model_has_two_16_cycles_and_no_15_cycle():
    model = paper_model()
    found = find_cycles(model, orders=[15, 16])
    assert found.statuses == {15: "searched", 16: "searched"}  # 4**15 sequences: beyond enumeration
    assert not found.cut and not found.complete
    assert found.counts() == {15: 0, 16: 2}
    assert found.stable_counts() == {15: 0, 16: 1}
    assert sorted(c.kind for c in found) == ["saddle", "stable"]
    assert_no_duplicates(found)
    for cycle in found:
        check_cycle(model, cycle, rtol=1e-8)


@pytest.mark.parametrize("order, parameters", PAPER_LONG_CYCLES, ids=[f"{k}-cycles" for k, _ in PAPER_LONG_CYCLES])
def test_paper_long_cycles(order, parameters):
    """SCYFI's published unit tests: two cycles of orders 16 .. 83 (one stable, one saddle), found by the search."""
    model = paper_variant(**parameters)
    found = find_cycles(model, orders=[order])
    assert found.counts() == {order: 2} and found.status(order) == "searched"
    assert sorted(c.kind for c in found) == ["saddle", "stable"]
    for cycle in found:
        check_cycle(model, cycle, rtol=1e-8)


def test_paper_model_fixed_point_when_a1_is_negative():
    model = paper_model(a1=-0.0222311)
    found = find_cycles(model, max_order=1)
    assert found.counts() == {1: 1}
    (fixed,) = found.cycles
    np.testing.assert_allclose(fixed.points[0], [0.36, -22.26], atol=0.01)
    # Closed form in region (1, 0): z1 = h1 / (1 - a1); z2 = (w21 z1 + h2) / (1 - a2).
    A, W, h = model.A.detach().numpy(), model.W.detach().numpy(), model.h.detach().numpy()
    z1 = h[0] / (1 - A[0])
    np.testing.assert_allclose(fixed.points[0], [z1, (W[1, 0] * z1 + h[1]) / (1 - A[1])], rtol=1e-12)
    check_cycle(model, fixed)


# ------------------------------------------------------------------------------------------------------------
# Minimal period and deduplication


def test_two_cycle_is_not_reported_as_four_cycle():
    model = FLIP_1D.build()
    assert find_cycles(model, orders=[4], n_starts=512).counts() == {4: 0}
    assert find_cycles(model, orders=[2, 4], n_starts=512).counts() == {2: 1, 4: 0}
    # A fixed point solved as a 2-, 3-, 4-sequence is not a 2-, 3-, 4-cycle either.
    assert exhaustive_cycles(model, orders=[3, 4]).counts() == {3: 0, 4: 0}


@pytest.mark.parametrize("hidden, seed", [(5, 18), (4, 54)])
def test_many_starts_report_each_cycle_once(hidden, seed):
    # Seed 18 has ten cycles of orders 2-4, one within 1e-4 of a switching plane.
    model = random_model("ShallowPLRNN", seed, dim=2, hidden=hidden)
    exact = exhaustive_cycles(model, max_order=4)
    assert sum(exact.counts()[k] for k in (2, 3, 4)) >= 6
    many = find_cycles(model, max_order=4, n_starts=4096, seed=3)
    assert_no_duplicates(many)
    assert_same_cycles(many, exact)
    few = find_cycles(model, max_order=4, n_starts=32, seed=3)
    assert_no_duplicates(few)
    assert set(keys(few)) <= set(keys(many))


def test_duplicate_from_two_starts_is_one_cycle():
    # Every start of the 2-D problem lands on its three cycles; thousands of chains, one report each.
    found = find_cycles(PLRNN_2D.build(), max_order=2, n_starts=2048)
    assert found.counts() == {1: 2, 2: 1}
    assert_no_duplicates(found)


def test_seed_determinism_and_independence():
    model = random_model("PLRNN", 11, dim=3)
    a = find_cycles(model, max_order=3, seed=5)
    b = find_cycles(model, max_order=3, seed=5)
    c = find_cycles(model, max_order=3, seed=6)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert a.stats.n_solves == b.stats.n_solves
    assert keys(a) == keys(c)


def test_caller_model_is_unchanged():
    model = PLRNN(2)  # float32, requires_grad
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    find_cycles(model, max_order=2)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.requires_grad
        assert torch.equal(p, before[name])


# ------------------------------------------------------------------------------------------------------------
# Warm start


@pytest.mark.parametrize("problem", [PLRNN_2D, FLIP_1D], ids=lambda p: p.name)
def test_warm_start_of_unchanged_model_is_one_pass(problem):
    model = problem.build()
    first = find_cycles(model, max_order=4)
    assert len(first) > 0
    again = find_cycles(model, max_order=4, warm_start=first, n_starts=0)
    assert keys(again) == keys(first)
    assert_same_cycles(again, first, rtol=1e-12)
    assert again.stats.warm_start_hits == len(first)
    for order, count in first.counts().items():
        if count:
            assert again.stats.iterations[order] == 1


def test_warm_start_from_random_model_round_trips_through_json():
    model = random_model("ShallowPLRNN", 118, dim=2, hidden=5)
    first = find_cycles(model, max_order=4)
    assert first.counts() == {1: 2, 2: 1, 3: 2, 4: 3}
    restored = CycleSet.from_dict(json.loads(json.dumps(first.to_dict())))
    again = find_cycles(model, max_order=4, warm_start=restored, n_starts=0)
    assert keys(again) == keys(first)
    assert again.stats.warm_start_hits == len(first)
    assert again.stats.iterations == {1: 1, 2: 1, 3: 1, 4: 1}


def test_warm_start_after_small_change_follows_the_cycles():
    model = PLRNN_2D.build()
    first = find_cycles(model, max_order=2)
    with torch.no_grad():
        model.h.add_(1e-3)
    again = find_cycles(model, max_order=2, warm_start=first, n_starts=0)
    assert keys(again) == keys(first)
    moved = [np.abs(a.points - b.points).max() for a, b in zip(again, first)]
    assert all(0 < m < 0.1 for m in moved)


def test_warm_start_from_model_with_other_switch_count_raises():
    cycles = find_cycles(PLRNN_2D.build(), max_order=1)
    assert len(cycles) > 0
    with pytest.raises(ValueError, match="switches"):
        find_cycles(random_model("PLRNN", 0, dim=3), max_order=1, warm_start=cycles)


def test_warm_start_must_be_cycle_set():
    with pytest.raises(TypeError, match="warm_start"):
        find_cycles(PLRNN(2), warm_start=[])


# ------------------------------------------------------------------------------------------------------------
# float32


@pytest.mark.parametrize(
    "make",
    [
        *[pytest.param(lambda p=p: p.build(), id=p.name) for p in KNOWN_PROBLEMS],
        # Seeds picked for their 2-, 3- and 4-cycles (border margins >= 0.004, safe in float32).
        *[pytest.param(lambda s=s, d=d: random_model("PLRNN", s, dim=d), id=f"PLRNN{d}-{s}")
          for d, s in [(2, 53), (2, 72), (2, 84), (3, 103)]],
        *[pytest.param(lambda s=s, h=h: random_model("ShallowPLRNN", s, dim=2, hidden=h), id=f"ShallowPLRNN{h}-{s}")
          for h, s in [(4, 54), (4, 56), (5, 113), (5, 118)]],
    ],
)
def test_float32_finds_the_same_cycles(make):
    model = make()
    double = find_cycles(model, max_order=4)
    single = find_cycles(model, max_order=4, dtype=torch.float32)
    assert len(double) >= 2
    assert keys(single) == keys(double)
    assert_same_cycles(single, double, rtol=1e-3)


def test_float32_paper_model():
    model = paper_model()
    double = find_cycles(model, orders=[16])
    single = find_cycles(model, orders=[16], dtype=torch.float32)
    assert keys(single) == keys(double) and len(single) == 2


# ------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_parameters_raise_naming_the_parameter(kind, bad):
    for name, _ in random_model(kind, 0).named_parameters():
        model = random_model(kind, 0)
        with torch.no_grad():
            getattr(model, name).view(-1)[-1] = bad
        for search in (find_cycles, exhaustive_cycles):
            with pytest.raises(ValueError, match=rf"'{name}'"):
                search(model, max_order=1)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"max_order": 0}, "max_order"),
        ({"max_order": -3}, "max_order"),
        ({"max_order": 2.0}, "max_order"),
        ({"max_order": True}, "max_order"),
        ({"orders": []}, "orders"),
        ({"orders": [0]}, "orders"),
        ({"orders": [2, -1]}, "orders"),
        ({"orders": [1.5]}, "orders"),
        ({"n_starts": -1}, "n_starts"),
        ({"inner": 0}, "inner"),
        ({"outer": 0}, "outer"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"time_budget_s": -1.0}, "time_budget_s"),
        ({"time_budget_s": math.nan}, "time_budget_s"),
        ({"dtype": torch.float16}, "dtype"),
        ({"n_starts": 0}, "n_starts"),
    ],
)
def test_find_cycles_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        find_cycles(PLRNN_2D.build(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"max_order": 0}, "max_order"), ({"orders": []}, "orders"), ({"max_sequences": 0}, "max_sequences"),
     ({"batch_size": 0}, "batch_size")],
)
def test_exhaustive_cycles_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        exhaustive_cycles(PLRNN_2D.build(), **kwargs)


def test_exhaustive_too_large_names_the_sequence_count():
    with pytest.raises(ValueError, match=r"8\*\*8 = 16777216"):
        exhaustive_cycles(PLRNN(3), max_order=8)
    with pytest.raises(ValueError, match=r"4\*\*3 = 64 .*max_sequences=10"):
        exhaustive_cycles(PLRNN(2), max_order=3, max_sequences=10)


@pytest.mark.parametrize("model", [torch.nn.LSTM(2, 2), object(), torch.nn.Linear(2, 2)],
                         ids=["LSTM", "object", "Linear"])
@pytest.mark.parametrize("search", [find_cycles, exhaustive_cycles])
def test_non_piecewise_linear_model_raises_type_error(search, model):
    with pytest.raises(TypeError, match="not piecewise linear: it lacks .*(region_codes|step)"):
        search(model, max_order=1)


# ------------------------------------------------------------------------------------------------------------
# Singular I - P, time budget


@pytest.mark.parametrize("h", [[0.0, 0.0], [0.3, -0.2]], ids=["h=0", "h!=0"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_jacobian_never_gives_nan_cycles(h, dtype):
    # A = 1, W = 0: J = I in every region, so I - P is exactly singular for every sequence.
    model = plrnn(A=[1.0, 1.0], W=[[0.0, 0.0], [0.0, 0.0]], h=h)
    for cycles in (find_cycles(model, max_order=3, dtype=dtype), exhaustive_cycles(model, max_order=3, dtype=dtype)):
        assert len(cycles) == 0
        assert cycles.stats.n_singular > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_jacobian_on_one_region_only(dtype):
    # A = 1: region 00 (both ReLUs off) has J = I (singular); the other regions do not.
    model = plrnn(A=[1.0, 1.0], W=[[0.0, -0.8], [-0.9, 0.0]], h=[0.5, 0.5])
    for cycles in (find_cycles(model, max_order=4, dtype=dtype), exhaustive_cycles(model, max_order=4, dtype=dtype)):
        assert cycles.stats.n_singular > 0
        for cycle in cycles:
            assert np.all(np.isfinite(cycle.points)) and np.all(np.isfinite(cycle.eigenvalues))
            assert cycle.kind in STABILITY_KINDS
            if dtype == torch.float64:
                check_cycle(model, cycle)


def test_tiny_time_budget_returns_incomplete():
    found = find_cycles(paper_model(), orders=[15, 16], time_budget_s=1e-6)
    assert found.cut is True and found.complete is False
    assert found.statuses == {15: "cut", 16: "cut"}
    assert "time budget" in found.summary()
    assert all(np.all(np.isfinite(c.points)) for c in found)


def test_generous_time_budget_is_complete():
    found = find_cycles(PLRNN_2D.build(), max_order=2, time_budget_s=60.0)
    assert found.complete and not found.cut and found.statuses == {1: "exhaustive", 2: "exhaustive"}


# ------------------------------------------------------------------------------------------------------------
# A protocol object that is not an nn.Module


class FlipMap:
    """FLIP_1D written by hand against the PiecewiseLinear protocol (no switching_planes)."""

    state_dim = 1
    n_switches = 1

    def region_codes(self, z):
        return z > 0

    def affine_pieces(self, codes):
        d = codes.double()
        return (0.5 - 2.0 * d).unsqueeze(-1), torch.ones_like(d)

    def step(self, z):
        return 0.5 * z - 2.0 * torch.relu(z) + 1.0


def test_protocol_object_gives_the_same_cycles():
    found = find_cycles(FlipMap(), max_order=4)
    assert keys(found) == keys(find_cycles(FLIP_1D.build(), max_order=4))
    assert keys(exhaustive_cycles(FlipMap(), max_order=4)) == keys(found)
    assert all(math.isnan(c.border_margin) for c in found)
    restored = CycleSet.from_dict(json.loads(json.dumps(found.to_dict())))
    assert all(math.isnan(c.border_margin) for c in restored)


# ------------------------------------------------------------------------------------------------------------
# Cycle / CycleSet API and JSON


def test_cycle_set_json_round_trip():
    found = find_cycles(random_model("PLRNN", 53, dim=2), max_order=3)
    assert found.counts()[2] == 2
    assert any(np.any(c.eigenvalues.imag != 0) for c in found), "want complex multipliers in the round trip"
    text = json.dumps(found.to_dict())
    restored = CycleSet.from_dict(json.loads(text))
    assert restored.orders == found.orders and restored.statuses == found.statuses
    assert (restored.complete, restored.cut) == (found.complete, found.cut)
    assert restored.stats == found.stats
    assert len(restored) == len(found)
    for a, b in zip(found, restored):
        assert a.key == b.key and a.order == b.order and a.kind == b.kind
        assert b.points.dtype == np.float64 and b.codes.dtype == bool
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.codes, b.codes)
        np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
        assert (a.residual, a.border_margin) == (b.residual, b.border_margin)
    assert restored.to_dict() == found.to_dict()
    assert restored.counts() == found.counts() and restored.stable_counts() == found.stable_counts()


def test_cycle_kind_vocabulary():
    def cycle(*eigenvalues):
        return Cycle(order=1, points=np.zeros((1, len(eigenvalues))), codes=np.zeros((1, 1), bool),
                     eigenvalues=np.array(eigenvalues, dtype=complex))

    assert cycle(0.5, -0.9).kind == "stable"
    assert cycle(2.0, -1.5).kind == "unstable"
    assert cycle(2.0, 0.5).kind == "saddle"
    assert cycle(1.0, 0.5).kind == "neutral"
    assert cycle(-1.0 + 1e-9, 0.5).kind == "neutral"
    assert cycle(0.6 + 0.8j, 0.6 - 0.8j).kind == "neutral"
    complex_unstable = cycle(1.2 + 0.5j, 1.2 - 0.5j, 0.1)
    assert complex_unstable.kind == "saddle"
    assert complex_unstable.n_unstable == 2 and complex_unstable.n_unstable_complex == 2
    assert complex_unstable.spectral_radius == pytest.approx(1.3)
    assert {c.kind for c in [cycle(0.5), cycle(2.0), cycle(2.0, 0.5), cycle(1.0)]} == set(STABILITY_KINDS)


def test_summary_and_counts():
    found = find_cycles(PLRNN_2D.build(), max_order=3)
    assert found.counts() == {1: 2, 2: 1, 3: 0}
    assert found.stable_counts() == {1: 1, 2: 0, 3: 0}
    assert found.n_stable == 1
    assert [c.order for c in found] == sorted(c.order for c in found)
    lines = found.summary().splitlines()
    assert lines[0].split()[:2] == ["order", "kind"]
    assert len(lines) == 2 + len(found)  # header, cycles, counts with statuses (exhaustive: no legend)
    assert "saddle" in lines[-2]
    assert lines[-1] == "counts: order 1: 2 (exhaustive), order 2: 1 (exhaustive), order 3: 0 (exhaustive)"
    assert "no cycles found for orders 3" in CycleSet(orders=(3,)).summary()


def test_finder_stats_round_trip():
    stats = FinderStats({1: 3, 16: 40}, 1000, 7, 2, 0.25)
    assert FinderStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


# ------------------------------------------------------------------------------------------------------------
# Exhaustive orders and per-order statuses (issue "A complete picture at every step")

_any_kind_specs = st.tuples(
    st.sampled_from(MODEL_KINDS), st.integers(2, 3), st.integers(2, 4), st.floats(0.5, 1.5), _seeds
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_any_kind_specs)
def test_find_cycles_equals_exhaustive_for_every_kind(spec):
    """Defaults: every order with R**k <= exhaustive_limit is enumerated, so found == exact there."""
    kind, dim, hidden, scale, seed = spec
    model = random_model(kind, seed, dim=dim, hidden=hidden, scale=scale)
    exact = exhaustive_cycles(model, max_order=3)
    found = find_cycles(model, max_order=3)
    n_regions = model.realizable_codes().shape[0]
    for order in (1, 2, 3):
        expected = "exhaustive" if n_regions**order <= DEFAULT_EXHAUSTIVE_LIMIT else "searched"
        assert found.status(order) == expected
        assert found.is_exhaustive(order) == (expected == "exhaustive")
    assert found.complete == all(n_regions**k <= DEFAULT_EXHAUSTIVE_LIMIT for k in (1, 2, 3))
    assert exact.statuses == {1: "exhaustive", 2: "exhaustive", 3: "exhaustive"} and exact.complete
    assert_same_cycles(found, exact)
    assert_no_duplicates(found)


def test_orders_above_the_limit_are_searched_never_exhaustive():
    model = random_model("ShallowPLRNN", 3, dim=2, hidden=4)
    n_regions = model.realizable_codes().shape[0]
    limit = n_regions**2  # orders 1 and 2 enumerable, order 3 not
    found = find_cycles(model, max_order=3, exhaustive_limit=limit)
    assert found.statuses == {1: "exhaustive", 2: "exhaustive", 3: "searched"}
    assert not found.is_exhaustive(3) and found.complete is False and found.cut is False
    assert found.count_label(3).startswith("≥ ") and found.count_label(1) == str(len(found.by_order(1)))
    assert "(≥ n: a lower bound" in found.summary()
    never = find_cycles(model, max_order=2, exhaustive_limit=0)
    assert never.statuses == {1: "searched", 2: "searched"} and not never.complete
    # Too many regions to list (ShallowPLRNN(4, 100): up to 4,087,976 > REGION_LISTING_LIMIT): searched at every
    # order, even with a limit that would admit its order 1.
    big = ShallowPLRNN(4, 100)
    assert cell_count_bound(*big.switching_planes()) > REGION_LISTING_LIMIT
    found_big = find_cycles(big, max_order=1, n_starts=8, inner=2, outer=1, exhaustive_limit=10**7)
    assert set(found_big.statuses.values()) == {"searched"}


def test_warm_only_orders_say_so():
    model = PLRNN_2D.build()
    first = find_cycles(model, max_order=3)
    again = find_cycles(model, max_order=3, warm_start=first, random_orders=[2])
    assert again.statuses == {1: "warm_only", 2: "exhaustive", 3: "warm_only"}
    assert keys(again) == keys(first) and not again.complete
    only = find_cycles(model, max_order=2, warm_start=first, n_starts=0)
    assert only.statuses == {1: "warm_only", 2: "warm_only"}


def test_cut_keeps_what_was_found_and_marks_later_orders_cut(monkeypatch):
    import bifurcation_callback._search as search_module

    real_enumerate = search_module._enumerate
    calls = []

    def enumerate_then_run_out(stack, order, regions, collector, steps, result, deadline, batch_size):
        calls.append(order)  # order 1 finishes, then the budget is spent
        deadline = math.inf if len(calls) == 1 else -math.inf
        return real_enumerate(stack, order, regions, collector, steps, result, deadline, batch_size)

    monkeypatch.setattr(search_module, "_enumerate", enumerate_then_run_out)
    found = find_cycles(PLRNN_2D.build(), max_order=3, time_budget_s=60.0)
    assert found.statuses == {1: "exhaustive", 2: "cut", 3: "cut"}
    assert found.cut and not found.complete and found.counts()[1] == 2
    assert "time budget" in found.summary()


def test_cycle_set_statuses_api_and_old_json():
    cycles = CycleSet(orders=(1, 2, 3), statuses={1: "exhaustive", 3: "cut"})
    assert cycles.statuses == {1: "exhaustive", 2: "searched", 3: "cut"}
    assert cycles.status(2) == "searched" and cycles.is_exhaustive(1) and not cycles.is_exhaustive(2)
    assert cycles.cut and not cycles.complete
    assert CycleSet(orders=(1,), statuses={1: "exhaustive"}).complete
    assert CycleSet.from_dict(json.loads(json.dumps(cycles.to_dict()))).statuses == cycles.statuses
    with pytest.raises(TypeError):
        CycleSet(orders=(1,), complete=True)  # complete is derived from the statuses now
    with pytest.raises(ValueError, match="statuses must be one of"):
        CycleSet(orders=(1,), statuses={1: "done"})
    with pytest.raises(ValueError, match="not in orders"):
        CycleSet(orders=(1,), statuses={2: "searched"})
    # JSON written before per-order statuses: "complete" only
    old = {"orders": [1, 2], "complete": True, "cycles": []}
    assert CycleSet.from_dict(old).statuses == {1: "searched", 2: "searched"}
    assert CycleSet.from_dict({**old, "complete": False}).statuses == {1: "cut", 2: "cut"}
    assert set(ORDER_STATUSES) == {"exhaustive", "searched", "warm_only", "cut"}


def test_progress_bar_is_silent_for_quick_searches_and_validated(capsys):
    # tqdm's 2 s delay: the monitor's per-step searches (and this one) print nothing.
    find_cycles(PLRNN(2), max_order=2, progress=True)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="progress must be True or False"):
        find_cycles(PLRNN(2), max_order=2, progress="yes")
