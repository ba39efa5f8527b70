"""The determinant-sign tracker behind CellListing's updates: signs equal fresh determinants along paths."""
import math

import pytest
import torch

from bifurcation_callback._chirotope import MAX_EPOCHS, SignTracker, VertexChanges
from bifurcation_callback.regions import CellListing, _combinations


def moving_rows(seed: int, n_rows: int, dim: int, steps: int, size: float) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randn(n_rows, dim, generator=generator, dtype=torch.float64)]
    for _ in range(steps):
        rows.append(rows[-1] + size * torch.randn(n_rows, dim, generator=generator, dtype=torch.float64))
    return rows


def check_signs_along(rows: list[torch.Tensor], subsets: torch.Tensor) -> tuple[int, int]:
    """Track the determinants' signs along ``rows``: at every step they equal fresh determinants and the
    reported changes are exactly the flips.  Returns (flips, determinants recomputed)."""
    tracker = SignTracker.start(rows[0], subsets)
    recomputed = flips = 0
    for step in range(1, len(rows)):
        before = tracker.signs.clone()
        tracker, changed = tracker.update(rows[step])
        fresh = torch.sign(torch.linalg.det(rows[step][subsets])).to(torch.int8)
        assert torch.equal(tracker.signs, fresh), f"step {step}"
        assert set(changed.tolist()) == set(torch.nonzero(fresh != before).flatten().tolist())
        flips += int((fresh != before).sum())
        recomputed += tracker.recomputed
    return flips, recomputed


@pytest.mark.parametrize(("seed", "dim", "size"), [(0, 3, 1e-3), (1, 4, 3e-3), (2, 2, 3e-2), (3, 3, 0.3)])
def test_tracked_signs_equal_fresh_determinants_at_every_step(seed, dim, size):
    rows = moving_rows(seed, 14, dim, 2 * MAX_EPOCHS + 5, size)  # long enough to start over at MAX_EPOCHS
    subsets = _combinations(14, dim, torch.device("cpu"))
    flips, recomputed = check_signs_along(rows, subsets)
    assert flips > 0  # the paths do change signs
    if size <= 3e-3:
        assert recomputed < 0.5 * subsets.shape[0] * (len(rows) - 1)  # small moves: most certified, not recomputed
    assert recomputed > 0


def test_a_few_fast_rows_bound_only_their_own_subsets_and_no_sign_change_is_missed():
    # Late in training a few planes move ten times faster than the rest: the bound comes from the epoch's k
    # fastest rows (not k times the fastest), and the signs must still equal fresh determinants at every step.
    generator = torch.Generator().manual_seed(5)
    rows = [torch.randn(14, 3, generator=generator, dtype=torch.float64)]
    speed = torch.full((14, 1), 1e-3, dtype=torch.float64)
    speed[:2] = 3e-2
    for _ in range(MAX_EPOCHS + 5):
        rows.append(rows[-1] + speed * torch.randn(14, 3, generator=generator, dtype=torch.float64))
    flips, _ = check_signs_along(rows, _combinations(14, 3, torch.device("cpu")))
    assert flips > 0


def test_the_bound_on_a_determinants_move_is_the_product_over_its_own_rows():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        rows = torch.randn(4, 4, generator=generator, dtype=torch.float64)
        scales = torch.rand(4, 1, generator=generator, dtype=torch.float64) ** 3  # very different row moves
        delta = scales * torch.randn(4, 4, generator=generator, dtype=torch.float64)
        rho = delta.norm(dim=1) / rows.norm(dim=1)
        bound = (torch.prod(1 + rho) - 1) * torch.prod(rows.norm(dim=1))
        assert abs(torch.linalg.det(rows + delta) - torch.linalg.det(rows)) <= bound * (1 + 1e-12)


def test_an_undecided_determinant_is_reported_at_every_update():
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # rows 0 and 1 parallel
    subsets = torch.tensor([[0, 1], [0, 2]])
    tracker = SignTracker.start(rows, subsets)
    assert tracker.signs.tolist() == [0, 1]
    for _ in range(3):
        tracker, changed = tracker.update(rows)
        assert changed.tolist() == [0]


def test_listing_updates_use_the_determinants_where_they_apply():
    generator = torch.Generator().manual_seed(0)
    planes, offsets = torch.randn(20, 3, generator=generator, dtype=torch.float64), torch.randn(20, generator=generator, dtype=torch.float64)
    listing = CellListing()
    listing.update(planes, offsets)
    assert listing._listing.vertices.changes is not None
    assert VertexChanges.applies(20, 3) and not VertexChanges.applies(400, 10)
    assert math.comb(400, 11) > 2**21


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_determinant_signs_and_margins_hold_against_exact_arithmetic(k):
    from fractions import Fraction

    from bifurcation_callback._chirotope import _determinants

    generator = torch.Generator().manual_seed(k)
    rows = torch.randn(3 * k, k, generator=generator, dtype=torch.float64) * 10.0 ** torch.randint(-3, 4, (3 * k, 1), generator=generator)
    if k > 1:  # rows nearly dependent on others: determinants near zero, some undecidable in floating point
        rows[k] = rows[0] + rows[1] * 0.5
        rows[k + 1] = rows[0] + rows[1] * (0.5 + 1e-14)
    subsets = _combinations(rows.shape[0], k, torch.device("cpu"))
    signs, margins = _determinants(rows, subsets)

    def exact(matrix):  # Gaussian elimination in fractions
        m = [[Fraction(float(x)) for x in row] for row in matrix]
        sign = 1
        for col in range(k):
            pivot = next((r for r in range(col, k) if m[r][col] != 0), None)
            if pivot is None:
                return Fraction(0)
            if pivot != col:
                m[col], m[pivot], sign = m[pivot], m[col], -sign
            for r in range(col + 1, k):
                factor = m[r][col] / m[col][col]
                m[r] = [a - factor * b for a, b in zip(m[r], m[col])]
        value = Fraction(sign)
        for i in range(k):
            value *= m[i][i]
        return value

    undecided = 0
    for subset, sign, margin in zip(subsets.tolist(), signs.tolist(), margins.tolist()):
        value = exact(rows[subset].tolist())
        true_sign = (value > 0) - (value < 0)
        if sign == 0:
            undecided += 1
            assert margin == -math.inf
            continue
        assert sign == true_sign, subset
        norms = math.prod(float(rows[s].norm()) for s in subset)
        assert abs(float(value)) >= margin * norms * (1 - 1e-12), subset  # the margin is certain
    assert undecided < len(subsets)
    if k > 1:
        assert undecided > 0  # the planted near-dependences reach the undecidable zone
