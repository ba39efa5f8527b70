"""Orbits of piecewise-linear maps and their exact Lyapunov exponents.

Along an orbit of a piecewise-linear map the Jacobian at each point is the affine piece of its region, so the
tangent dynamics are exact: no finite differences, no linearisation error.  The Lyapunov spectrum then follows
from the standard QR (Benettin) method: push an orthonormal frame through the Jacobians, re-orthonormalise every
step, and average the logarithms of the diagonal of ``R``.  What remains is the finite length of the orbit and
the transient, both chosen by the caller.  ``attractors`` classifies where orbits go.

This module knows nothing of Lightning or TensorBoard.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._checks import require_dtype, require_int
from .models import detached_copy, require_piecewise_linear

__all__ = ["lyapunov_exponents", "simulate"]


def _as_states(model: object, z0: object, dtype: torch.dtype, name: str = "z0") -> tuple[Tensor, bool]:
    """``z0`` as a (B, M) tensor in ``dtype`` on the model's device, and whether it was a single state;
    errors call the argument ``name``."""
    first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    device = first.device if first is not None else torch.device("cpu")
    states = torch.as_tensor(z0, dtype=dtype, device=device)
    single = states.ndim == 1
    states = states.reshape(1, -1) if single else states
    if states.ndim != 2 or states.shape[-1] != model.state_dim:
        raise ValueError(
            f"{name} must have shape ({model.state_dim},) or (B, {model.state_dim}) for this model, "
            f"got {tuple(states.shape)}"
        )
    if not torch.isfinite(states).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return states, single


def _model_in(model: object, dtype: torch.dtype) -> object:
    """The model in ``dtype``: a module of another precision is copied, never changed in place."""
    if isinstance(model, torch.nn.Module):
        floating = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
        if any(t.dtype != dtype for t in floating):
            return detached_copy(model).to(dtype=dtype)
    return model


@torch.no_grad()
def simulate(model: object, z0: object, n_steps: int, *, dtype: torch.dtype | str = torch.float64) -> Tensor:
    """Iterate the map ``n_steps`` times from each initial state.

    Parameters
    ----------
    model : PiecewiseLinear
        Any model implementing the protocol (only ``step`` is used).
    z0 : array-like, shape (M,) or (B, M)
        Initial state(s).
    n_steps : int
        Number of steps (>= 0).
    dtype : torch.dtype or str
        Precision of the simulation (float64 by default).

    Returns
    -------
    Tensor, shape (n_steps + 1, M) or (B, n_steps + 1, M)
        The orbit, initial state included.  A diverging orbit shows inf/NaN from the step it overflowed.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)   # z' = z / 2 + 1 → 2
    >>> simulate(model, [0.0], 3).squeeze(-1).tolist()
    [0.0, 1.0, 1.5, 1.75]
    """
    require_piecewise_linear(model)
    n_steps = require_int("n_steps", n_steps, 0)
    dtype = require_dtype("dtype", dtype)
    model = _model_in(model, dtype)
    states, single = _as_states(model, z0, dtype)
    orbit = [states]
    for _ in range(n_steps):
        orbit.append(model.step(orbit[-1]))
    result = torch.stack(orbit, dim=1)
    return result[0] if single else result


@torch.no_grad()
def lyapunov_exponents(
    model: object,
    z0: object,
    n_steps: int = 10_000,
    n_transient: int = 1_000,
    *,
    dtype: torch.dtype | str = torch.float64,
) -> np.ndarray:
    """Lyapunov spectrum along the orbit of ``z0``, exact up to the orbit's length (QR method).

    The orbit first runs ``n_transient`` steps to settle on its attractor; then ``n_steps`` Jacobians (the
    affine pieces of the visited regions) are accumulated with a QR re-orthonormalisation every step.

    Parameters
    ----------
    model : PiecewiseLinear
        Any model implementing the protocol (``step``, ``region_codes``, ``affine_pieces``).
    z0 : array-like, shape (M,) or (B, M)
        Initial state(s); a batch gives one spectrum per state.
    n_steps : int
        Steps averaged over (>= 1).
    n_transient : int
        Steps discarded first (>= 0).
    dtype : torch.dtype or str
        Precision (float64 by default).

    Returns
    -------
    ndarray, shape (M,) or (B, M)
        Exponents in nats per step, sorted in decreasing order.  ``-inf`` where a visited region's Jacobian
        is singular in that direction (the orbit is superstable there); NaN for an orbit that diverged
        (non-finite states).

    Raises
    ------
    TypeError
        The model does not implement the PiecewiseLinear protocol.
    ValueError
        Bad ``z0`` shape, non-finite ``z0``, or bad step counts.

    Examples
    --------
    A linear region map ``z' = diag(0.5, 2) z`` has exponents ``log 2`` and ``log 0.5``:

    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> with torch.no_grad():
    ...     _ = model.A.copy_(torch.tensor([0.5, 2.0])); _ = model.W.zero_(); _ = model.h.zero_()
    >>> lyapunov_exponents(model, [1e-3, 1e-3], n_steps=50, n_transient=0).round(6).tolist()
    [0.693147, -0.693147]
    """
    require_piecewise_linear(model)
    n_steps = require_int("n_steps", n_steps, 1)
    n_transient = require_int("n_transient", n_transient, 0)
    dtype = require_dtype("dtype", dtype)
    model = _model_in(model, dtype)
    states, single = _as_states(model, z0, dtype)
    for _ in range(n_transient):
        states = model.step(states)
    batch, dim = states.shape
    frame = torch.eye(dim, dtype=dtype, device=states.device).expand(batch, dim, dim)
    log_stretch = torch.zeros(batch, dim, dtype=dtype, device=states.device)
    diverged = ~torch.isfinite(states).all(-1)
    for _ in range(n_steps):
        finite = torch.isfinite(states).all(-1)
        diverged |= ~finite
        # Diverged rows are parked at the origin so the batch keeps running; their result is NaN anyway.
        safe = torch.where(finite.unsqueeze(-1), states, torch.zeros_like(states))
        jacobians, _ = model.affine_pieces(model.region_codes(safe))
        frame, upper = torch.linalg.qr(jacobians @ frame)
        log_stretch += torch.log(upper.diagonal(dim1=-2, dim2=-1).abs())
        states = model.step(safe)
    diverged |= ~torch.isfinite(states).all(-1)
    exponents = (log_stretch / n_steps).cpu().numpy()
    exponents[diverged.cpu().numpy()] = np.nan
    exponents = -np.sort(-exponents, axis=-1)
    return exponents[0] if single else exponents
