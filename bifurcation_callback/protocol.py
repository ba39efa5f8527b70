"""The PiecewiseLinear protocol the cycle finder relies on, and the checks that a model implements it correctly.

A model is piecewise linear for the finder when it tells which region a state is in (``region_codes``), the
affine map of each region (``affine_pieces``) and the map itself (``step``); ``require_piecewise_linear``
checks that the methods exist, ``check_protocol`` that the pieces agree with the map.  The package's four
models (``models``) implement it; so can a user's own.
"""

from __future__ import annotations

import itertools
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["BUILT_IN_MODELS", "PROTOCOL_CHECK_STATES", "PiecewiseLinear", "check_protocol", "require_piecewise_linear", "search_radius"]

# The package's own models, named where a model is rejected (``models.MODEL_REGISTRY`` holds the classes; a test
# checks that the two agree).
BUILT_IN_MODELS: tuple[str, ...] = ("PLRNN", "ShallowPLRNN", "ClippedShallowPLRNN", "ALRNN")

# The protocol methods the finder cannot work without (switching_planes is optional).
REQUIRED_METHODS = ("region_codes", "affine_pieces", "step")


@runtime_checkable
class PiecewiseLinear(Protocol):
    """What the cycle finder needs from a model.

    Attributes
    ----------
    state_dim : int
        Dimension ``M`` of the latent state.
    n_switches : int
        Number ``S`` of switches; a region code is a bool vector of that length.

    Methods
    -------
    region_codes(z) -> BoolTensor[..., S]
    affine_pieces(codes) -> (J[..., M, M], c[..., M])
    step(z) -> Tensor[..., M]
    """

    state_dim: int
    n_switches: int

    def region_codes(self, z: Tensor) -> Tensor: ...

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]: ...

    def step(self, z: Tensor) -> Tensor: ...


def require_piecewise_linear(model: object) -> None:
    """Raise ``TypeError`` unless ``model`` implements the ``PiecewiseLinear`` protocol.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> require_piecewise_linear(PLRNN(2))
    >>> require_piecewise_linear(torch.nn.LSTM(2, 2))
    Traceback (most recent call last):
    ...
    TypeError: LSTM is not piecewise linear: it lacks region_codes, affine_pieces, step, state_dim, n_switches. ...
    """
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(model, name, None))]
    missing += [name for name in ("state_dim", "n_switches") if not isinstance(getattr(model, name, None), int)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not piecewise linear: it lacks {', '.join(missing)}. "
            "The cycle finder is exact only for piecewise-linear maps; implement the PiecewiseLinear protocol "
            "(state_dim, n_switches, region_codes, affine_pieces, step) or use one of "
            f"{', '.join(BUILT_IN_MODELS)}."
        )


# ----------------------------------------------------------------------------------------------------------------
# check_protocol: does a model's affine_pieces agree with its step?

# Random states check_protocol draws when called without explicit ones.
PROTOCOL_CHECK_STATES = 64


def search_radius(model: object) -> float:
    """Half-width of the box of random states used to probe a model: ``max(10, 2 * state_scale())``.

    Models without ``state_scale`` get 10.  Shared by ``check_protocol`` and the cycle finder's random
    region codes, so both look at the same part of state space.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> search_radius(PLRNN(2))   # planes through the origin: the default box
    10.0
    """
    scale_of = getattr(model, "state_scale", None)
    return max(10.0, 2.0 * float(scale_of())) if callable(scale_of) else 10.0


def _model_tensor_kind(model: object) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the model's first floating parameter or buffer (float64 on CPU for others)."""
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
    return torch.float64, torch.device("cpu")


def _format_vector(values: Tensor) -> str:
    return np.array2string(values.detach().cpu().double().numpy(), precision=6, separator=", ", max_line_width=10**6)


def check_protocol(model: object, states: Tensor | None = None, *, n_random: int = PROTOCOL_CHECK_STATES, seed: int = 0) -> None:
    """Check that a model's ``affine_pieces`` agrees with its ``step``; raise ``ValueError`` at the first mismatch.

    The cycle finder solves ``(I - J_k … J_1) z = c̃`` with the pieces from ``affine_pieces`` and then keeps
    only orbits that the true map ``step`` reproduces.  When the two disagree (say ``affine_pieces``
    forgets a mask that ``step`` applies), no candidate ever verifies and the finder would silently
    report no cycles.  This check makes that a clear error: at ``n_random`` random states in a box of
    half-width ``search_radius(model)`` (sized by ``state_scale()`` when the model has one) and at every
    given state, it compares ``J z + c`` from ``affine_pieces(region_codes(z))`` with ``step(z)``, and it
    checks the shapes and dtypes the protocol promises.  ``find_cycles`` and ``exhaustive_cycles`` run it
    once per model object.

    Parameters
    ----------
    model : PiecewiseLinear
        The model to check (only read; the global random state is not touched).
    states : Tensor, shape (N, M), optional
        Extra states to check, e.g. points of the data.
    n_random : int
        Number of random states (0 checks only ``states``).
    seed : int
        Seed of the random states.

    Raises
    ------
    TypeError
        The model does not implement the protocol at all (see ``require_piecewise_linear``).
    ValueError
        ``states`` of the wrong shape; ``region_codes`` not returning a bool tensor of shape ``(N, S)``;
        ``affine_pieces`` not returning shapes ``(N, M, M)`` and ``(N, M)``; or ``J z + c != step(z)`` at
        some state (the message gives the state, both values and the likely cause).

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> check_protocol(PLRNN(3))                                  # the package's models pass
    >>> class Unmasked(PLRNN):                                    # forgets W's zero diagonal
    ...     def affine_pieces(self, codes):
    ...         J, c = super().affine_pieces(codes)
    ...         return J + torch.diag(self.W.diagonal()) * codes.unsqueeze(-2), c
    >>> check_protocol(Unmasked(2), torch.tensor([[1.0, 1.0]]), n_random=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: affine_pieces disagrees with step at z=[1., 1.]: J z + c = ...
    """
    require_piecewise_linear(model)
    dim, n_switches = model.state_dim, model.n_switches
    dtype, device = _model_tensor_kind(model)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
    probes = []
    if states is not None:
        if not isinstance(states, Tensor) or states.dim() != 2 or states.shape[-1] != dim:
            shape = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
            raise ValueError(f"states must be a Tensor of shape (N, {dim}), got {shape}")
        probes.append(states.detach().to(device=device, dtype=dtype))
    if n_random:
        generator = torch.Generator().manual_seed(seed)  # a private generator: the user's RNG stream is untouched
        unit = torch.rand((n_random, dim), generator=generator, dtype=torch.float64)
        probes.append(((2 * unit - 1) * search_radius(model)).to(device=device, dtype=dtype))
    if not probes:
        return
    z = torch.cat(probes)
    name = type(model).__name__
    with torch.no_grad():
        codes = model.region_codes(z)
        if not isinstance(codes, Tensor) or codes.dtype != torch.bool or tuple(codes.shape) != (len(z), n_switches):
            got = f"{codes.dtype} of shape {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(
                f"{name}.region_codes must return a bool Tensor of shape (N, n_switches) = ({len(z)}, {n_switches}) "
                f"for states of shape {tuple(z.shape)}, got {got}"
            )
        pieces = model.affine_pieces(codes)
        if not (isinstance(pieces, tuple) and len(pieces) == 2 and all(isinstance(t, Tensor) for t in pieces)):
            raise ValueError(f"{name}.affine_pieces must return a pair of Tensors (J, c), got {type(pieces).__name__}")
        J, c = pieces
        if tuple(J.shape) != (len(z), dim, dim) or tuple(c.shape) != (len(z), dim):
            raise ValueError(
                f"{name}.affine_pieces must return J of shape (N, M, M) = ({len(z)}, {dim}, {dim}) and c of shape "
                f"(N, M) = ({len(z)}, {dim}) for codes of shape {tuple(codes.shape)}, got {tuple(J.shape)} and "
                f"{tuple(c.shape)}"
            )
        after = model.step(z)
        if not isinstance(after, Tensor) or tuple(after.shape) != (len(z), dim):
            got = tuple(after.shape) if isinstance(after, Tensor) else type(after).__name__
            raise ValueError(f"{name}.step must return shape (N, M) = ({len(z)}, {dim}), got {got}")
        predicted = (J @ z.unsqueeze(-1)).squeeze(-1) + c
        # Rounding of J z + c grows with the sizes of its terms; a real mistake is far above this.
        eps = torch.finfo(predicted.dtype).eps
        scale = 1.0 + (J.abs() @ z.abs().unsqueeze(-1)).squeeze(-1).amax(-1) + c.abs().amax(-1)
        error = (predicted - after).abs().amax(-1)
        bad = ~(error <= 1e3 * eps * scale)  # NaN counts as a mismatch
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"affine_pieces disagrees with step at z={_format_vector(z[i])}: J z + c = {_format_vector(predicted[i])}, "
            f"step(z) = {_format_vector(after[i])} ({name}, state {i} of {len(z)}, region code "
            f"{codes[i].int().tolist()}): does affine_pieces apply the same masks (e.g. W's zero diagonal) and "
            "the same region convention (switch active iff its input > 0) as step?"
        )
