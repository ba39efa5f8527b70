"""regions.py: the cells of a hyperplane arrangement, listed exactly from its vertices.

References (tests/problems.py, none of them uses regions.py): linear programs (``lp_cells``), dense sampling at
many scales (``sampled_cells``), an independent numpy vertex listing with witness states for arrangements in
general position (``general_position_cells``) and numpy fixed points over given codes
(``independent_fixed_points``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bifurcation_callback import PLRNN, ShallowPLRNN, find_cycles
from bifurcation_callback._search import _CELL_LISTINGS
from bifurcation_callback.cycles import CODE_TABLE_LIMIT, REGION_LISTING_LIMIT
from bifurcation_callback import _chirotope
from bifurcation_callback.regions import DEFAULT_MAX_CELLS, CellListing, cell_count_bound, list_cells
from problems import (
    DEVICES,
    check_cycle,
    codes_as_set,
    general_position_cells,
    independent_fixed_points,
    lp_cells,
    random_model,
    sampled_cells,
)


def assert_exact(G, g, *, lp: bool = True):
    """list_cells equals the LP listing and contains every sampled cell; returns the listing as a set."""
    G, g = torch.as_tensor(G, dtype=torch.float64), torch.as_tensor(g, dtype=torch.float64)
    listed = list_cells(G, g)
    cells = codes_as_set(listed)
    assert len(cells) == listed.shape[0]  # no duplicates
    assert [tuple(r) for r in listed.int().tolist()] == sorted(tuple(r) for r in listed.int().tolist())  # sorted
    if lp:
        assert cells == lp_cells(G, g)
    assert sampled_cells(G, g) <= cells
    assert len(cells) <= cell_count_bound(G, g)
    return cells


# ------------------------------------------------------------------------------------------------------------
# Random arrangements, 1-4 dimensions


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_random_arrangements_equal_the_lp_listing(dim, seed):
    rng = np.random.default_rng([dim, seed])
    n_planes = int(rng.integers(1, {1: 6, 2: 8, 3: 7, 4: 6}[dim] + 1))
    G, g = rng.standard_normal((n_planes, dim)), rng.standard_normal(n_planes)
    cells = assert_exact(G, g)
    if n_planes >= dim:  # general position: the maximum, sum_{i <= M} C(S, i)
        assert len(cells) == sum(math.comb(n_planes, i) for i in range(dim + 1))


def test_shallow_model_with_many_planes_equals_the_general_position_count_and_witnesses():
    model = ShallowPLRNN(3, 50).double()
    G, g = (t.detach() for t in model.switching_planes())
    listed = codes_as_set(list_cells(G, g))
    assert len(listed) == 20_876 == cell_count_bound(G, g)
    assert listed == codes_as_set(general_position_cells(G.numpy(), g.numpy())[0])  # each has a witness state
    assert sampled_cells(G, g) <= listed


# ------------------------------------------------------------------------------------------------------------
# Degenerate arrangements


def test_lines_through_one_point_and_a_moved_line():
    # x = 1, y = 1, x + y = 2, x - y = 0 all pass through (1, 1): 8 cones.
    G = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]
    through = assert_exact(G, [-1.0, -1.0, -2.0, 0.0])
    assert len(through) == 8
    # Moving x + y = 2 by 2**-40 (exact in floating point) opens a triangle on one side of (1, 1).
    for shift, triangle in ((2.0**-40, (False, False, True)), (-(2.0**-40), (True, True, False))):
        cells = assert_exact(G[:3], [-1.0, -1.0, -2.0 + shift], lp=False)
        assert len(cells) == 7 and triangle in cells


@pytest.mark.parametrize("offset", [5e-324, -5e-324, 1e-300, -1e-300, 0.0])
def test_the_smallest_floats_decide_exactly(offset):
    # z1 > 0, z2 > 0 and offset - z1 - z2 > 0: a triangle exists iff offset > 0, however small (floats are exact).
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    cells = codes_as_set(list_cells(G, torch.tensor([0.0, 0.0, offset], dtype=torch.float64)))
    assert ((True, True, True) in cells) == (offset > 0)
    assert ((False, False, False) in cells) == (offset < 0)
    assert len(cells) == (6 if offset == 0 else 7)


def test_duplicate_scaled_and_opposite_planes():
    G = np.array([[1.0, 2.0], [2.0, 4.0], [-0.5, -1.0], [1.0, -1.0]])
    g = np.array([1.0, 2.0, -0.5, 0.3])  # rows 0, 1 and 2 are one line (row 2 the other way round)
    cells = assert_exact(G, g)
    assert len(cells) == 4
    for code in cells:
        assert code[0] == code[1] != code[2]


def test_opposite_planes_with_zero_entries_are_one_plane():
    from bifurcation_callback._arrangement import _reduce

    # -1 / -1 and 0 / -1 scale row 1 to (1.0, -0.0): a zero's sign must not keep it apart from row 0.
    G, g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), np.array([0.0, 0.0, -1.0])
    reduction = _reduce(G, g)
    assert reduction.representatives.tolist() == [0, 2] and reduction.flipped.tolist() == [False, True, False]
    cells = assert_exact(G, g)
    assert len(cells) == 4 and all(code[0] != code[1] for code in cells)


def test_parallel_pairs_of_a_clipped_model():
    model = random_model("ClippedShallowPLRNN", 3, dim=2, hidden=5)
    G, g = (t.detach() for t in model.switching_planes())
    assert len(assert_exact(G, g)) < cell_count_bound(G, g)  # the W2 z lines all meet at the origin
    # W2 z + h2 and W2 z never meet; with h2 = 0 they are one plane, with the same bit everywhere.
    with torch.no_grad():
        model.h2[0] = 0.0
    G, g = (t.detach() for t in model.switching_planes())
    cells = assert_exact(G, g)
    assert all(code[0] == code[5] for code in cells)


def test_planes_through_the_origin_in_three_dimensions():
    rng = np.random.default_rng(7)
    G = rng.standard_normal((6, 3))
    cells = assert_exact(G, np.zeros(6))
    assert len(cells) == 2 * sum(math.comb(5, i) for i in range(3))  # central, general position: 32
    # Plus planes not through the origin: a degenerate vertex among simple ones.
    G2, g2 = np.vstack([G, rng.standard_normal((3, 3))]), np.concatenate([np.zeros(6), rng.standard_normal(3)])
    assert_exact(G2, g2)


def test_rank_deficient_normals():
    rng = np.random.default_rng(3)
    # Normals in the plane z3 = 0 of R^3: the cells are cylinders over the cells of lines in the plane.
    G = np.hstack([rng.standard_normal((5, 2)), np.zeros((5, 1))])
    g = rng.standard_normal(5)
    cells = assert_exact(G, g)
    assert cells == codes_as_set(list_cells(torch.as_tensor(G[:, :2]), torch.as_tensor(g)))
    # Normals along a skew direction of R^4 (rank 1): parallel planes, S + 1 slabs.  The factors are powers of
    # two, so the rows are exactly parallel; other factors round, and the planes then meet far away (rank 4).
    direction = rng.standard_normal(4)
    G1 = np.outer([0.5, -2.0, 4.0, 1.0], direction)
    assert len(assert_exact(G1, rng.standard_normal(4))) == 5
    skew = np.outer([0.3, -1.7, 2.9, 1.0], direction)
    assert len(codes_as_set(list_cells(torch.as_tensor(skew), torch.as_tensor(rng.standard_normal(4))))) > 5


def test_fewer_hidden_units_than_latent_dimensions():
    model = ShallowPLRNN(4, 2).double()
    G, g = (t.detach() for t in model.switching_planes())
    assert len(assert_exact(G, g)) == 4
    assert model.realizable_codes().shape == (4, 2)


@pytest.mark.parametrize("offset, bit", [(1.0, True), (-1.0, False), (0.0, False)])
def test_zero_rows_have_the_constant_bit_of_region_codes(offset, bit):
    G = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([0.2, offset, -0.1])
    codes = list_cells(G, g)
    assert codes.shape == (4, 3) and bool((codes[:, 1] == bit).all())
    z = torch.randn(500, 2)
    assert codes_as_set((z @ G.T + g) > 0) <= codes_as_set(codes)  # region_codes' strict > 0


def test_no_planes_and_only_zero_rows():
    assert list_cells(torch.zeros(0, 3), torch.zeros(0)).shape == (1, 0)
    assert list_cells(torch.zeros(2, 3), torch.tensor([1.0, -1.0])).tolist() == [[True, False]]


def test_nearly_concurrent_planes_are_decided_exactly():
    # Three lines nearly through one point: the triangle between them is 1e-13 wide, far below what sampling
    # or an LP can see; a line moved by that much the other way closes it.
    G = torch.tensor([[1.0, 0.3], [-0.2, 1.0], [0.7, 0.9]], dtype=torch.float64)
    point = torch.tensor([0.37, -1.21], dtype=torch.float64)
    g = -(G @ point)
    g[2] += 1e-13
    up = codes_as_set(list_cells(G, g))
    g[2] -= 2e-13
    down = codes_as_set(list_cells(G, g))
    assert len(up) == len(down) == 7 and up != down
    assert len(up & down) == 6  # the six unbounded cells; the triangle flips


hypothesis_settings = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def integer_arrangements(draw):
    """Small integer normals and offsets: duplicates, parallel and concurrent planes and zero rows are common."""
    dim = draw(st.integers(1, 3))
    n_planes = draw(st.integers(0, 6))
    entries = st.integers(-2, 2)
    G = np.array(draw(st.lists(st.lists(entries, min_size=dim, max_size=dim), min_size=n_planes, max_size=n_planes)), dtype=np.float64)
    g = np.array(draw(st.lists(entries, min_size=n_planes, max_size=n_planes)), dtype=np.float64)
    return G.reshape(n_planes, dim), g


@hypothesis_settings
@given(arrangement=integer_arrangements())
def test_degenerate_integer_arrangements_equal_the_lp_listing(arrangement):
    G, g = arrangement
    assert_exact(G, g)


@hypothesis_settings
@given(arrangement=integer_arrangements(), seed=st.integers(0, 2**16))
def test_listing_follows_permutations_scalings_and_flips_of_the_planes(arrangement, seed):
    G, g = arrangement
    rng = np.random.default_rng(seed)
    cells = codes_as_set(list_cells(torch.as_tensor(G), torch.as_tensor(g)))
    order = rng.permutation(len(g))
    factor = rng.uniform(0.1, 10.0, len(g))
    flip = rng.random(len(g)) < 0.5
    sign = np.where(flip, -1.0, 1.0)
    moved = codes_as_set(list_cells(torch.as_tensor((G * (factor * sign)[:, None])[order]), torch.as_tensor((g * factor * sign)[order])))
    nonzero = np.any(G != 0, axis=1)
    expected = {tuple(bool(code[i]) ^ bool(flip[i] and nonzero[i]) for i in order) for code in cells}
    if not np.all(nonzero):  # a flipped zero row keeps the constant bit of its (negated) offset
        expected = {tuple((g[i] * sign[i] > 0) if not nonzero[i] else c for c, i in zip(code, order)) for code in expected}
    assert moved == expected


# ------------------------------------------------------------------------------------------------------------
# Precision and devices


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_devices_give_the_float64_listing_of_the_same_numbers(device):
    model = random_model("ClippedShallowPLRNN", 11, dim=3, hidden=8)
    G, g = (t.detach().float() for t in model.switching_planes())
    expected = list_cells(G.double(), g.double())
    got = list_cells(G.to(device), g.to(device))
    assert got.device.type == device and got.dtype == torch.bool
    assert torch.equal(got.cpu(), expected)
    listing = CellListing()
    assert torch.equal(listing.update(G.to(device), g.to(device)).cpu(), expected)


# ------------------------------------------------------------------------------------------------------------
# CellListing: reuse along weight paths


def _walk(model_planes, steps: int, size: float, seed: int):
    G, g = model_planes
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        G = G + size * torch.as_tensor(rng.standard_normal(G.shape))
        g = g + size * torch.as_tensor(rng.standard_normal(g.shape))
        yield G, g


@pytest.mark.parametrize("certificate", ["determinants", "vertex margins"])
@pytest.mark.parametrize("kind, dim, hidden, size", [
    ("ShallowPLRNN", 3, 20, 1e-3),
    ("ShallowPLRNN", 2, 12, 3e-2),
    ("ClippedShallowPLRNN", 3, 8, 1e-3),
    ("ShallowPLRNN", 4, 9, 1e-6),
    ("ShallowPLRNN", 2, 70, 1e-2),  # more than 63 planes: codes of two words (the other merge of new cells)
])
def test_reuse_along_random_weight_paths_equals_fresh_listings(kind, dim, hidden, size, certificate, monkeypatch):
    if certificate == "vertex margins":  # what arrangements with more than _chirotope.MAX_SUBSETS subsets use
        monkeypatch.setattr(_chirotope, "MAX_SUBSETS", 0)
    model = random_model(kind, 5, dim=dim, hidden=hidden)
    planes = tuple(t.detach().clone() for t in model.switching_planes())
    listing = CellListing()
    listing.update(*planes)
    changes = 0
    previous = None
    for G, g in _walk(planes, 25, size, seed=dim):
        if kind == "ClippedShallowPLRNN":
            g = torch.cat([g[:hidden], torch.zeros(hidden, dtype=g.dtype)])  # keep W2 z through the origin
            G = torch.cat([G[:hidden], G[:hidden]])
        fresh = list_cells(G, g)
        assert torch.equal(listing.update(G, g), fresh)
        changes += previous is not None and not torch.equal(previous, fresh)
        previous = fresh
    assert (listing._listing.vertices.changes is None) == (certificate == "vertex margins")
    assert listing.counts["listed"] == 1 and sum(listing.counts.values()) == 26
    if size >= 1e-3:
        assert changes > 0 and listing.counts["updated"] > 0  # the paths do change the cells
    else:
        assert listing.counts["certified"] + listing.counts["reused"] > 0


def test_reuse_through_exact_degeneracies_and_changes_of_structure():
    # Line 3 moves through the intersection of lines 1 and 2 in exact steps of 2**-10, passing through it.
    listing = CellListing()
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -2.0]], dtype=torch.float64)
    for k in range(-4, 5):
        g = torch.tensor([-1.0, -1.0, -2.0 + k * 2.0**-10, 0.5], dtype=torch.float64)
        assert torch.equal(listing.update(G, g), list_cells(G, g))
    # A row becoming zero, then two rows becoming one plane: the reduction changes, the listing starts again.
    before = listing.counts["listed"]
    for G2, g2 in (
        (torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, -2.0]]), torch.tensor([-1.0, 0.5, -2.0, 0.5])),
        (torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [1.0, -2.0]]), torch.tensor([-1.0, -2.0, -2.0, 0.5])),
    ):
        assert torch.equal(listing.update(G2.double(), g2.double()), list_cells(G2, g2))
    assert listing.counts["listed"] == before + 2
    assert listing.update(G2.double(), g2.double()) is not None and listing.last == "unchanged"


@hypothesis_settings
@given(arrangement=integer_arrangements(), steps=st.lists(st.lists(st.integers(-2, 2), min_size=4, max_size=4), min_size=1, max_size=5))
def test_reuse_along_paths_through_degenerate_arrangements(arrangement, steps):
    """Steps of multiples of 1/4 on integer arrangements: planes become concurrent, parallel, identical or zero
    and separate again; every update equals a fresh listing."""
    G, g = (torch.as_tensor(x) for x in arrangement)
    listing = CellListing()
    assert torch.equal(listing.update(G, g), list_cells(G, g))
    for row, column, by, offset_by in steps:
        if G.shape[0] == 0:
            break
        G, g = G.clone(), g.clone()
        G[row % G.shape[0], column % G.shape[1]] += by / 4
        g[row % G.shape[0]] += offset_by / 4
        assert torch.equal(listing.update(G, g), list_cells(G, g))


def test_reuse_outcomes_are_counted():
    listing = CellListing()
    G, g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.0, 0.0, -1.0])
    listing.update(G, g)
    listing.update(G, g)
    listing.update(G * 1.001, g)
    assert listing.counts == {"unchanged": 1, "certified": 1, "reused": 0, "updated": 0, "listed": 1}
    assert set(listing.counts) == set(CellListing.OUTCOMES)


# ------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("planes, offsets, error, match", [
    (torch.zeros(3), torch.zeros(3), ValueError, r"planes must have shape \(S, M\)"),
    (torch.zeros(3, 2), torch.zeros(2), ValueError, r"offsets must have shape \(S,\) = \(3,\)"),
    (torch.tensor([[1.0, float("nan")]]), torch.zeros(1), ValueError, "planes contains NaN or Inf"),
    (torch.eye(2), torch.tensor([0.0, float("inf")]), ValueError, "offsets contains NaN or Inf"),
    (torch.eye(2, dtype=torch.complex64), torch.zeros(2), TypeError, "planes must be a real tensor"),
])
def test_bad_input_is_named(planes, offsets, error, match):
    with pytest.raises(error, match=match):
        list_cells(planes, offsets)
    with pytest.raises(error, match=match):
        CellListing().update(planes, offsets)


@pytest.mark.parametrize("max_cells", [0, -3, 2.5, True, "many"])
def test_bad_max_cells(max_cells):
    with pytest.raises(ValueError, match="max_cells must be an int >= 1"):
        list_cells(torch.eye(2), torch.zeros(2), max_cells=max_cells)
    with pytest.raises(ValueError, match="max_cells must be an int >= 1"):
        CellListing(max_cells=max_cells)


def test_too_many_cells_is_refused_before_any_work_with_the_numbers():
    G = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bound = sum(math.comb(100, i) for i in range(5))
    with pytest.raises(ValueError, match=rf"can have up to {bound} cells, more than max_cells={DEFAULT_MAX_CELLS}"):
        list_cells(G, torch.ones(100))
    listing = CellListing(max_cells=10)
    with pytest.raises(ValueError, match="can have up to 22 cells, more than max_cells=10"):
        listing.update(torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64))
    assert listing.update(torch.eye(2), torch.zeros(2)).shape == (4, 2)
    with pytest.raises(ValueError, match="more than max_cells=3"):
        listing.update(torch.eye(2), torch.zeros(2), max_cells=3)  # unchanged planes, a lower limit


# ------------------------------------------------------------------------------------------------------------
# The finder: order 1 exhaustive on the README's model and the paper's real-data model


def test_readme_model_fixed_points_are_exhaustive_and_equal_an_independent_count():
    model = random_model("ShallowPLRNN", 3, dim=3, hidden=50, scale=0.45)
    found = find_cycles(model, max_order=2, n_starts=16, inner=4, outer=1)
    assert found.statuses == {1: "exhaustive", 2: "searched"}  # 20,876 regions: R <= 2**18 < R**2
    G, g = (t.detach().numpy() for t in model.switching_planes())
    independent = independent_fixed_points(model, codes_as_set(general_position_cells(G, g)[0]))
    assert len(independent) == 4  # the weights are chosen to give several fixed points (1 stable, 3 not)
    assert {tuple(c.codes[0].tolist()) for c in found.by_order(1)} == set(independent)
    for cycle in found.by_order(1):
        check_cycle(model, cycle)
        np.testing.assert_allclose(cycle.points[0], independent[tuple(cycle.codes[0].tolist())], rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_paper_real_data_model_fixed_points_are_exhaustive():
    model = random_model("ShallowPLRNN", 2, dim=6, hidden=20, scale=0.5)
    assert model.realizable_codes().shape[0] == 60_460 <= REGION_LISTING_LIMIT
    found = find_cycles(model, max_order=1)
    assert found.statuses == {1: "exhaustive"}
    independent = independent_fixed_points(model, codes_as_set(model.realizable_codes()))
    assert {tuple(c.codes[0].tolist()) for c in found.by_order(1)} == set(independent)


def test_finder_results_do_not_depend_on_the_cell_listing_cache():
    model = random_model("ClippedShallowPLRNN", 4, dim=2, hidden=20)
    first = find_cycles(model, max_order=2, seed=3)
    with torch.no_grad():
        model.W2.add_(1e-3)
    warm = find_cycles(model, max_order=2, seed=3)  # updates the cached listing
    _CELL_LISTINGS.clear()
    cold = find_cycles(model, max_order=2, seed=3)
    assert first.statuses[1] == warm.statuses[1] == cold.statuses[1] == "exhaustive"
    assert [c.key for c in warm] == [c.key for c in cold]
    assert all(np.array_equal(a.points, b.points) for a, b in zip(warm, cold))


def test_orthant_models_keep_the_former_code_table_limit():
    # 2**7 = 128 orthants are enumerated, 2**8 are not (solving 2**16 orthants each step would cost ~0.8 s).
    assert find_cycles(PLRNN(7), max_order=1).statuses == {1: "exhaustive"}
    assert find_cycles(PLRNN(8), max_order=1, n_starts=16, inner=4, outer=1).statuses == {1: "searched"}
    assert CODE_TABLE_LIMIT == 2**7


class OwnRegionsShallow(ShallowPLRNN):
    """A user's model that lists its regions itself (here: by sampling, so deliberately not complete)."""

    calls = 0

    def realizable_codes(self, max_codes: int = 1 << 16) -> torch.Tensor:
        type(self).calls += 1
        z = 10 * torch.randn(2000, self.state_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return torch.unique(self.region_codes(z), dim=0)


def test_models_with_their_own_realizable_codes_are_still_asked():
    model = OwnRegionsShallow(2, 6).double()
    OwnRegionsShallow.calls = 0
    found = find_cycles(model, max_order=1)
    assert OwnRegionsShallow.calls >= 1 and found.statuses == {1: "exhaustive"}


@pytest.mark.slow
def test_fuzz_regions_small_version():
    """20 models of the acceptance fuzz (benchmarks/bench_fuzz_regions.py, at most 5,000 possible cells each):
    exhaustive, 0 missed and 0 false fixed points, the same cells as the independent listing."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_fuzz_regions import run_fuzz

    totals = run_fuzz(n_models=20, seed=1, lp_probes=8, max_cells=5_000, progress=False)
    assert totals["models"] == 20 and totals["exhaustive"] == 20
    assert totals["missed"] == 0 and totals["false"] == 0 and totals["cells_missing"] == 0 and totals["cells_extra"] == 0
    assert totals["fixed_points"] > 20 and totals["lp_checked"] == 320 and totals["lp_mismatch"] == 0
