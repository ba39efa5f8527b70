"""The one batched SCYFI kernel: products, solve, simulate, verify, tolerances.

A k-cycle through regions ``D_1 .. D_k`` of a piecewise-linear map solves ``(I - J_k … J_1) z_1 = c̃``,
where ``c̃`` accumulates the offsets.  This module solves that system for a whole batch of region
sequences at once (any leading batch dimensions: sequences, or cells × sequences for a parameter scan),
simulates the true map from each solution, and verifies the candidates.  ``cycles.py`` (``find_cycles``,
``exhaustive_cycles``) and ``bifurcations/scan.py`` (``scan``) both call it, so a cycle is accepted by the
same rules everywhere.

Private: the public API is in ``cycles`` and ``bifurcations``.  It knows nothing of Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Distance of a multiplier modulus from 1 under which a cycle counts as neutral.
NEUTRAL_TOLERANCE = 1e-6

# Per dtype: closing residual (relative), point coincidence for minimal period / dedup (relative) and the
# smallest relative singular value of ``I - P`` for a well-posed system.  float32 solutions carry about
# cond(I - P) * 1e-7 relative error, so its residual and coincidence tolerances are looser.  The singular
# value test runs in float64 for both (``verify`` promotes), so it has one threshold: a float32 system that
# is badly conditioned but still closes up to the float32 residual tolerance is kept, as find_cycles always did.
TOLERANCES = {
    torch.float64: {"residual": 1e-9, "coincide": 1e-7, "singular": 1e3 * float(np.finfo(np.float64).eps)},
    torch.float32: {"residual": 1e-3, "coincide": 1e-3, "singular": 1e3 * float(np.finfo(np.float64).eps)},
}

AffinePieces = Callable[[Tensor], tuple[Tensor, Tensor]]
StepWithCodes = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass
class Evaluation:
    """Result of solving and simulating a batch of region sequences of one order.

    Leading dimensions ``...`` are those of the batch (``(B,)`` for the finder, ``(C, N)`` for a scan).
    """

    z1: Tensor  # (..., M)
    trajectory: Tensor  # (..., k + 1, M): z_1 … z_{k+1} under the true map
    products: Tensor  # (..., M, M): J_k … J_1
    visited: Tensor  # (..., k, S): codes of z_1 … z_k
    solvable: Tensor  # (...,) bool
    real: Tensor  # (...,) bool: solvable and visiting exactly the assumed regions


# Evaluation's fields in order (to slice every one the same way).
EVALUATION_FIELDS = ("z1", "trajectory", "products", "visited", "solvable", "real")


def model_functions(model) -> tuple[AffinePieces, StepWithCodes]:
    """The two protocol calls the kernel needs, from a model (``step_with_codes`` when it has one)."""
    step_with_codes = getattr(model, "step_with_codes", None)
    if step_with_codes is None:  # a user model with only the protocol's required methods

        def step_with_codes(z: Tensor) -> tuple[Tensor, Tensor]:
            return model.step(z), model.region_codes(z)

    return model.affine_pieces, step_with_codes


def cycle_products(J: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``(J_k … J_1, c̃)`` from per-step pieces ``J (..., k, M, M)``, ``c (..., k, M)``."""
    product, offset = J[..., 0, :, :], c[..., 0, :]
    for j in range(1, J.shape[-3]):
        product = J[..., j, :, :] @ product
        offset = (J[..., j, :, :] @ offset.unsqueeze(-1)).squeeze(-1) + c[..., j, :]
    return product, offset


def solve_cycle_system(product: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
    """Solve ``(I - P) z = c̃``; returns ``z`` (zeros where unsolvable, never NaN) and the solvable mask."""
    system = -product
    system.diagonal(dim1=-2, dim2=-1).add_(1.0)  # I - P without building I
    z1, info = torch.linalg.solve_ex(system, offset)
    solvable = (info == 0) & torch.isfinite(z1).all(-1)
    return torch.where(solvable.unsqueeze(-1), z1, torch.zeros_like(z1)), solvable


def simulate(step_with_codes: StepWithCodes, z1: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """``order`` steps of the true map: trajectory ``(..., k + 1, M)`` and visited codes ``(..., k, S)``."""
    points, codes_seen = [z1], []
    for _ in range(order):
        after, code = step_with_codes(points[-1])
        points.append(after)
        codes_seen.append(code)
    return torch.stack(points, dim=-2), torch.stack(codes_seen, dim=-2)


def evaluate(affine_pieces: AffinePieces, step_with_codes: StepWithCodes, codes: Tensor) -> Evaluation:
    """Solve the cycle equations for every sequence in ``codes (..., k, S)`` and simulate the true map.

    ``affine_pieces`` may add leading dimensions (a scan's cells); ``codes`` broadcasts against them.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1).double()
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)       # z' = z / 2 + 1: fixed point 2 (code "on")
    >>> codes = torch.tensor([[[True]], [[False]]])               # two 1-step sequences: on, off
    >>> result = evaluate(*model_functions(model), codes)
    >>> result.z1.squeeze(-1).tolist(), result.real.tolist()      # the "off" solution 2 is virtual
    ([2.0, 2.0], [True, False])
    """
    J, c = affine_pieces(codes)
    product, offset = cycle_products(J, c)
    z1, solvable = solve_cycle_system(product, offset)
    trajectory, visited = simulate(step_with_codes, z1, codes.shape[-2])
    real = solvable & (visited == codes).flatten(-2).all(-1)
    return Evaluation(z1, trajectory, product, visited, solvable, real)


def verify(trajectories: Tensor, products: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Which candidates are true cycles of minimal period, and their closing residuals.

    Parameters
    ----------
    trajectories : Tensor, shape (B, k + 1, M)
        Simulated orbits of candidates whose visited codes already equal the assumed ones.
    products : Tensor, shape (B, M, M)
        Their Jacobian products.
    dtype : torch.dtype
        The precision the candidates were computed in (selects ``TOLERANCES``).

    Returns
    -------
    valid : Tensor, shape (B,), bool
        Closes up (residual within tolerance), ``I - P`` well conditioned, no earlier return to ``z_1``.
    residuals : Tensor, shape (B,), float64
        ``|F^k(z_1) - z_1| / (1 + |z_1|)``.
    """
    tolerance = TOLERANCES[dtype]
    # float64 regardless of the search dtype: the checks must not add rounding of their own.
    trajectories, products = trajectories.double(), products.double()
    order = trajectories.shape[-2] - 1
    z1 = trajectories[:, 0]
    scale = 1.0 + z1.norm(dim=-1)
    residuals = (trajectories[:, -1] - z1).norm(dim=-1) / scale
    # Errors of the forward simulation grow with the product's norm, so the tolerance does too.
    valid = residuals <= tolerance["residual"] * (1.0 + products.flatten(-2).norm(dim=-1))
    if products.shape[0]:
        eye = torch.eye(products.shape[-1], dtype=products.dtype, device=products.device)
        singular_values = torch.linalg.svdvals(eye - products)
        valid &= singular_values[:, -1] > tolerance["singular"] * singular_values[:, 0].clamp_min(1.0)
    # Minimal period: a k-cycle that returns to z_1 after a divisor of k steps is a lower-order cycle.
    for divisor in (j for j in range(1, order) if order % j == 0):
        valid &= (trajectories[:, divisor] - z1).norm(dim=-1) > tolerance["coincide"] * scale
    return valid, residuals


def rotation_table(order: int) -> np.ndarray:
    """``rotations[r]`` re-indexes a cycle's ``k`` points to start at point ``r``; shape (k, k)."""
    return (np.arange(order)[:, None] + np.arange(order)[None, :]) % order


def canonical_rotation(codes: np.ndarray) -> int:
    """Index of the rotation whose code sequence (k, S) is lexicographically smallest."""
    rows = [bytes(row) for row in np.packbits(codes.astype(np.uint8), axis=-1)]
    order = len(rows)
    return min(range(order), key=lambda r: rows[r:] + rows[:r])


def switching_geometry(model) -> tuple[np.ndarray, np.ndarray] | None:
    """Unit-normalised switching planes as numpy arrays (None when the model does not expose them)."""
    planes_of = getattr(model, "switching_planes", None)
    if planes_of is None:
        return None
    planes, offsets = (t.detach().cpu().double().numpy() for t in planes_of())
    norms = np.maximum(np.linalg.norm(planes, axis=1), 1e-300)
    return planes / norms[:, None], offsets / norms


def border_margins(points: np.ndarray, geometry: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Smallest distance of each candidate's points ``(B, k, M)`` to a switching plane.

    NaN without known planes, inf for a model with no switch at all.
    """
    if geometry is None:
        return np.full(len(points), np.nan)
    planes, offsets = geometry
    if planes.shape[0] == 0:
        return np.full(len(points), np.inf)
    return np.abs(points @ planes.T + offsets).min(axis=(-2, -1)) if len(points) else np.empty(0)
