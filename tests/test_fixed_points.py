"""FixedPointCache: the order-1 enumeration that re-solves only the cells it cannot prove empty.

Ground truth at every step is ``problems.independent_fixed_points`` (numpy, over every realizable cell), never
the cache itself; the proof is also checked directly (a proved cell's new candidate really lies outside it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifurcation_callback import ShallowPLRNN
from bifurcation_callback._fixed_points import SAFETY, FixedPointCache
from bifurcation_callback._stack import ModelStack
from bifurcation_callback.models import ClippedShallowPLRNN, detached_copy, model_tensors
from bifurcation_callback.tracking import CycleTracker

from .problems import codes_as_set, independent_fixed_points, random_model


def weight_path(kind: str, seed: int, n_steps: int, *, size: float = 2e-3, jumps: bool = True,
                hidden: int = 10) -> list[torch.nn.Module]:
    """A training-like path: random steps of ``size``, with two large jumps (``jumps``) that force new references."""
    model = random_model(kind, seed, dim=2, hidden=hidden)
    generator = torch.Generator().manual_seed(seed)
    path = []
    for step in range(n_steps):
        scale = 0.3 if jumps and step in (n_steps // 3, 2 * n_steps // 3) else size
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        path.append(detached_copy(model))
    return path


def fixed_point_keys(cycles) -> dict[tuple[bool, ...], np.ndarray]:
    return {tuple(c.codes[0].tolist()): c.points[0] for c in cycles.by_order(1)}


@pytest.mark.parametrize(
    "kind, seed, size, hidden",
    [("ShallowPLRNN", 0, 2e-3, 10), ("ShallowPLRNN", 3, 1e-3, 10), ("ClippedShallowPLRNN", 1, 1e-3, 10),
     ("ClippedShallowPLRNN", 2, 1e-4, 40)],  # 80 switches: codes of two 64-bit words
)
def test_tracked_fixed_points_equal_the_independent_enumeration_at_every_step(kind, seed, size, hidden):
    path = weight_path(kind, seed, 30, size=size, hidden=hidden)
    tracker = CycleTracker(max_order=1)
    tracker.progress = False
    total_fixed_points = 0
    for step, model in enumerate(path):
        found = fixed_point_keys(tracker.update(model, step).cycles)
        independent = independent_fixed_points(model, codes_as_set(model.realizable_codes()))
        assert found.keys() == independent.keys(), f"step {step}"
        for key, point in independent.items():
            np.testing.assert_allclose(found[key], point, rtol=1e-9, atol=1e-9)
        total_fixed_points += len(independent)
    counts = tracker.fixed_points.counts
    assert total_fixed_points > 0
    # The proof carried most cells (else the test would not exercise it), and the jumps forced new references.
    assert counts["proved"] > counts["solved"]
    assert 3 <= counts["rebuilt"] < len(path)


def test_steps_analysed_together_equal_steps_analysed_one_at_a_time():
    path = weight_path("ShallowPLRNN", 2, 24)
    alone = CycleTracker(max_order=1)
    together = CycleTracker(max_order=1)
    alone.progress = together.progress = False
    one_by_one = [alone.update(model, step).cycles for step, model in enumerate(path)]
    batched = []
    for begin in range(0, len(path), 8):
        chunk = path[begin : begin + 8]
        stack = ModelStack(chunk[0], [model_tensors(model) for model in chunk])
        batched += [tracked.cycles for tracked in together.update_many(stack, list(range(begin, begin + 8)))]
    for step, (a, b) in enumerate(zip(one_by_one, batched)):
        assert fixed_point_keys(a).keys() == fixed_point_keys(b).keys(), f"step {step}"
    assert alone.fixed_points.counts == together.fixed_points.counts


def one_parameter_path(kind: str, seed: int, name: str, n_steps: int = 4) -> list[torch.nn.Module]:
    """Steps that move one parameter only: each term of the bound alone has to hold."""
    model = random_model(kind, seed, dim=2, hidden=10)
    generator = torch.Generator().manual_seed(seed)
    path = [detached_copy(model)]
    for _ in range(n_steps):
        with torch.no_grad():
            parameter = getattr(model, name)
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        path.append(detached_copy(model))
    return path


PATHS = {
    "all, small steps": lambda: weight_path("ShallowPLRNN", 4, 6, size=2e-3, jumps=False),
    "all, large steps": lambda: weight_path("ShallowPLRNN", 4, 6, size=2e-2, jumps=False),
    "all, clipped": lambda: weight_path("ClippedShallowPLRNN", 4, 6, size=5e-3, jumps=False),
    **{f"{name} only": (lambda name=name: one_parameter_path("ShallowPLRNN", 1, name)) for name in ("A", "W1", "W2", "h1", "h2")},
    "h2 only, clipped": lambda: one_parameter_path("ClippedShallowPLRNN", 1, "h2"),
}


@pytest.mark.parametrize("path_name", sorted(PATHS))
def test_the_bound_holds_for_every_cell(path_name):
    """The certificate itself, cell by cell, after every step: each cell's candidate solved directly violates
    the switch the cache tracks for it by at least the bound it keeps (``margin − spent``), and every cell the
    cache would call proved has its candidate outside the cell."""
    path = PATHS[path_name]()
    cache = FixedPointCache()
    tracker = CycleTracker(max_order=1)
    tracker.progress = False
    tracker.fixed_points = cache
    carried = 0
    for step, model in enumerate(path):
        tracker.update(model, step)
        codes = model.realizable_codes()
        index = cache._lookup(codes.numpy())
        known = index >= 0
        J, c = model.affine_pieces(codes[torch.as_tensor(known)])
        z = torch.linalg.solve(torch.eye(model.state_dim, dtype=J.dtype) - J, c[..., None])[..., 0].numpy()
        G, g = (t.detach().numpy() for t in model.switching_planes())
        plane = cache._cells["plane"][index[known]]
        inputs = np.einsum("ij,ij->i", z, G[plane]) + g[plane]
        violation = np.where(codes.numpy()[known, plane], -inputs, inputs)
        bound = cache.lower_bounds()[index[known]]
        finite = np.isfinite(bound)
        assert np.all(violation[finite] >= bound[finite] - 1e-9 * (1 + np.abs(bound[finite])))
        proved = SAFETY * cache._spent[index[known]] < cache._cells["margin"][index[known]]
        assert np.all(violation[proved] > 0)
        carried += int((cache._spent[index[known]][finite] > 0).sum())
    # Bounds were carried over steps, not only fresh solves checked (large steps solve every cell every step).
    assert carried > 0 or path_name == "all, large steps"


def test_a_previous_step_of_another_shape_is_not_used():
    cache = FixedPointCache()
    tracker = CycleTracker(max_order=1)
    tracker.progress = False
    tracker.fixed_points = cache
    tracker.update(ShallowPLRNN(2, 6), 0)
    other = ShallowPLRNN(3, 6)
    assert cache._advance(other, other.realizable_codes()) is None
    assert FixedPointCache.applies(ShallowPLRNN(2, 3)) and FixedPointCache.applies(ClippedShallowPLRNN(2, 3))


@pytest.mark.parametrize("seed", range(4))
def test_piece_drift_bounds_every_regions_change_and_is_tighter_than_frobenius(seed):
    torch.manual_seed(seed)
    reference = ShallowPLRNN(3, 50).double()
    moved = detached_copy(reference)
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    drift_J, drift_c = moved.piece_drift(reference)
    gates = torch.cat([(torch.rand(2000, 50, dtype=torch.float64) > 0.5).double(),
                       2 * torch.rand(500, 50, dtype=torch.float64) - 1])  # corners and inner diagonals
    J, c = moved._gated_pieces(gates, gates)
    J_ref, c_ref = reference._gated_pieces(gates, gates)
    assert float(torch.linalg.matrix_norm(J - J_ref, ord=2).max()) <= drift_J
    assert float(torch.linalg.vector_norm(c - c_ref, dim=-1).max()) <= drift_c
    frobenius = float((moved.A - reference.A).abs().max()) + float(
        torch.linalg.norm(moved.W1 - reference.W1) * torch.linalg.norm(moved.W2)
        + torch.linalg.norm(reference.W1) * torch.linalg.norm(moved.W2 - reference.W2))
    assert drift_J < frobenius
