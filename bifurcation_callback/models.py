"""Piecewise-linear recurrent models and the protocol the cycle finder relies on.

Every model here is a map ``z_{t+1} = F(z_t)`` that is affine inside each *region* of state space.
A region is identified by a boolean *code*: which switches (ReLU inputs) are active.  Switch ``l``
is active at ``z`` iff ``G[l] @ z + g[l] > 0`` (strict, as in the literature), where ``(G, g)`` are the
model's *switching planes*.  Inside a region the map is ``z' = J z + c`` (``affine_pieces``).

The four models share this machinery through ``PiecewiseLinearRNN``; users can monitor their own
model by implementing ``PiecewiseLinear`` (``state_dim``, ``region_codes``, ``affine_pieces``,
``step``; ``switching_planes`` is optional and enables exhaustive enumeration and border margins).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .protocol import (  # noqa: F401  (re-exported: published here first)
    PROTOCOL_CHECK_STATES,
    REQUIRED_METHODS,
    PiecewiseLinear,
    check_protocol,
    require_piecewise_linear,
    search_radius,
)
from .regions import DEFAULT_MAX_CELLS, list_cells

__all__ = [
    "PiecewiseLinear",
    "PiecewiseLinearRNN",
    "PLRNN",
    "ShallowPLRNN",
    "ClippedShallowPLRNN",
    "ALRNN",
    "MODEL_REGISTRY",
    "MODEL_SPECS",
    "ModelSpec",
    "CHECKPOINT_MODEL_KEY",
    "require_piecewise_linear",
    "model_from_state",
    "model_to_state",
    "build_model",
    "enumerate_region_codes",
    "detached_copy",
    "model_tensors",
    "check_protocol",
]

def model_tensors(model: nn.Module) -> list[Tensor]:
    """The tensors that make up a model's weights: the parameters, then the buffers, in module order (what a
    snapshot copies and a ``ModelStack`` stacks)."""
    return [*model.parameters(), *model.buffers()]


def detached_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with no autograd graph (the model's own ``snapshot()`` when it has one).

    Examples
    --------
    >>> copy_ = detached_copy(torch.nn.Linear(2, 2))
    >>> any(p.requires_grad for p in copy_.parameters())
    False
    """
    snapshot = getattr(model, "snapshot", None)
    return snapshot() if callable(snapshot) else _frozen_deepcopy(model)


def _frozen_deepcopy(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model)
    for parameter in clone.parameters():
        parameter.requires_grad_(False)
    return clone


# The models' maps are written so that one code serves one model and N stacked weight settings (``_stack.ModelStack``,
# which batches the analysis of N training steps): a stacked parameter has a leading step axis and the stack
# passes inputs of shape (N, B, ...).  These helpers broadcast a parameter against such an input.


def _row(vector: Tensor) -> Tensor:
    """A vector parameter (M,) as is; stacked (N, M) as (N, 1, M) against inputs (N, B, M)."""
    return vector if vector.dim() < 2 else vector.unsqueeze(-2)


def _matrix(matrix: Tensor) -> Tensor:
    """A matrix (M, M) as is; stacked (N, M, M) as (N, 1, M, M) against Jacobians (N, B, M, M)."""
    return matrix if matrix.dim() < 3 else matrix.unsqueeze(-3)


def _diagonal(vector: Tensor) -> Tensor:
    """``diag(A)`` of a vector parameter, broadcastable like ``_matrix``."""
    return _matrix(torch.diag_embed(vector))


def _check_state(z: Tensor, state_dim: int, what: str = "z") -> None:
    if z.shape[-1:] != (state_dim,):
        raise ValueError(f"{what} must have shape (..., {state_dim}), got {tuple(z.shape)}")


class PiecewiseLinearRNN(nn.Module):
    """Base class: region codes and Jacobians from switching planes and affine pieces.

    Subclasses define ``switching_planes``, ``affine_pieces`` and ``step``.
    ``forward(z)`` is one step of the map, batched over leading dimensions.
    """

    state_dim: int
    n_switches: int
    # True when the switches are coordinate signs, so every one of the 2**S codes is a region.
    every_code_realizable: bool = False

    def switching_planes(self) -> tuple[Tensor, Tensor]:
        """Return ``(G, g)`` with shapes ``(S, M)`` and ``(S,)``: switch ``l`` is on iff ``G[l] @ z + g[l] > 0``."""
        raise NotImplementedError

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(J, c)``, shapes ``(..., M, M)`` and ``(..., M)``: the map ``z' = J z + c`` for ``codes``."""
        raise NotImplementedError

    def step(self, z: Tensor) -> Tensor:
        """One step of the (nonlinear) map, batched over leading dimensions."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        return self.step(z)

    def step_with_codes(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(step(z), region_codes(z))`` in one pass: the cycle finder needs both for every simulated point.

        Examples
        --------
        >>> model = ShallowPLRNN(latent_dim=2, hidden_dim=4)
        >>> z = torch.randn(5, 2)
        >>> after, codes = model.step_with_codes(z)
        >>> bool(torch.equal(after, model.step(z)) and torch.equal(codes, model.region_codes(z)))
        True
        """
        return self.step(z), self.region_codes(z)

    def switch_inputs(self, z: Tensor) -> Tensor:
        """Return ``G z + g``, shape ``(..., S)``: the inputs of the switches at ``z``."""
        _check_state(z, self.state_dim)
        planes, offsets = self.switching_planes()
        return z @ planes.mT + _row(offsets)

    def region_codes(self, z: Tensor) -> Tensor:
        """Return the bool region code of ``z``, shape ``(..., S)``.

        Examples
        --------
        >>> PLRNN(2).region_codes(torch.tensor([[1.0, -2.0]]))
        tensor([[ True, False]])
        """
        return self.switch_inputs(z) > 0

    def jacobian(self, z: Tensor) -> Tensor:
        """Return the Jacobian of the map at ``z``, shape ``(..., M, M)`` (exact, piecewise constant)."""
        return self.affine_pieces(self.region_codes(z))[0]

    def _check_codes(self, codes: Tensor) -> Tensor:
        if codes.shape[-1:] != (self.n_switches,):
            raise ValueError(f"codes must have shape (..., {self.n_switches}), got {tuple(codes.shape)}")
        return codes.to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def snapshot(self) -> "PiecewiseLinearRNN":
        """Return a detached copy (no autograd graph, same device and dtype) for analysis."""
        return _frozen_deepcopy(self)

    def realizable_codes(self, max_codes: int = DEFAULT_MAX_CELLS) -> Tensor:
        """Enumerate every region code that some open set of states has, shape ``(R, S)``, sorted.

        Exact: the regions are the cells of the arrangement of the switching planes, listed from its vertices
        by ``regions.list_cells`` (no linear programs; on the parameters' device).  ``enumerate_region_codes``
        is the independent LP listing.

        Raises
        ------
        ValueError
            When the model can have more than ``max_codes`` regions.

        Examples
        --------
        >>> PLRNN(2).realizable_codes().shape
        torch.Size([4, 2])
        >>> ShallowPLRNN(latent_dim=3, hidden_dim=50).realizable_codes().shape   # planes in general position
        torch.Size([20876, 50])
        """
        if self.every_code_realizable:
            if 2**self.n_switches > max_codes:
                raise ValueError(f"{type(self).__name__} has 2**{self.n_switches} regions, more than max_codes={max_codes}")
            return all_codes(self.n_switches)
        planes, offsets = self.switching_planes()
        return list_cells(planes.detach(), offsets.detach(), max_cells=max_codes)

    @torch.no_grad()
    def state_scale(self) -> float:
        """A length scale of the switching geometry, used to size random search boxes."""
        planes, offsets = self.switching_planes()
        norms = planes.norm(dim=-1).clamp_min(1e-12)
        return float((offsets.abs() / norms).max()) if offsets.numel() else 0.0


def _dense_init(*shape: int, scale: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-scale, scale))


class _OffDiagonalMixin:
    """W with a zero diagonal, enforced by masking in every use (so gradients never leave it)."""

    W: nn.Parameter
    off_diagonal_mask: Tensor
    every_code_realizable = True

    def off_diagonal_weights(self) -> Tensor:
        return self.W * self.off_diagonal_mask


class PLRNN(_OffDiagonalMixin, PiecewiseLinearRNN):
    r"""Piecewise-linear RNN: ``z' = A ⊙ z + W relu(z) + h``.

    Parameters
    ----------
    dim : int
        State dimension ``M``.
    weight_scale : float
        Half-width of the uniform initialisation of ``W`` and ``h``.

    Attributes
    ----------
    A : Parameter, shape (M,)
        Diagonal auto-regressive weights.
    W : Parameter, shape (M, M)
        Coupling weights; the diagonal is masked to zero.
    h : Parameter, shape (M,)
        Bias.

    Examples
    --------
    >>> model = PLRNN(3)
    >>> model.step(torch.zeros(5, 3)).shape
    torch.Size([5, 3])
    """

    def __init__(self, dim: int, *, weight_scale: float = 0.5) -> None:
        super().__init__()
        _require_positive_int(dim=dim)
        self.state_dim = dim
        self.n_switches = dim
        self.A = nn.Parameter(torch.empty(dim).uniform_(0.5, 0.9))
        self.W = _dense_init(dim, dim, scale=weight_scale)
        self.h = _dense_init(dim, scale=weight_scale)
        self.register_buffer("off_diagonal_mask", 1.0 - torch.eye(dim), persistent=False)

    def switching_planes(self) -> tuple[Tensor, Tensor]:
        return torch.eye(self.state_dim, dtype=self.A.dtype, device=self.A.device), torch.zeros_like(self.A)

    def step(self, z: Tensor) -> Tensor:
        _check_state(z, self.state_dim)
        return _row(self.A) * z + torch.relu(z) @ self.off_diagonal_weights().mT + _row(self.h)

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        d = self._check_codes(codes)
        J = _diagonal(self.A) + _matrix(self.off_diagonal_weights()) * d.unsqueeze(-2)
        return J, _row(self.h).expand(d.shape[:-1] + (self.state_dim,))

    def region_codes(self, z: Tensor) -> Tensor:
        _check_state(z, self.state_dim)
        return z > 0


class ALRNN(_OffDiagonalMixin, PiecewiseLinearRNN):
    r"""Almost-linear RNN: ``z' = A ⊙ z + W φ(z) + h`` with φ the identity on the first ``dim - n_relu``
    units and relu on the last ``n_relu`` units.

    Parameters
    ----------
    dim : int
        State dimension ``M``.
    n_relu : int
        Number of piecewise-linear units (``0 <= n_relu <= dim``); ``S = n_relu`` switches.

    Examples
    --------
    >>> model = ALRNN(4, n_relu=2)
    >>> model.n_switches
    2
    """

    def __init__(self, dim: int, n_relu: int, *, weight_scale: float = 0.5) -> None:
        super().__init__()
        _require_positive_int(dim=dim)
        if not isinstance(n_relu, int) or not 0 <= n_relu <= dim:
            raise ValueError(f"n_relu must be an int in [0, dim={dim}], got {n_relu!r}")
        self.state_dim = dim
        self.n_switches = n_relu
        self.n_linear = dim - n_relu
        self.A = nn.Parameter(torch.empty(dim).uniform_(0.5, 0.9))
        self.W = _dense_init(dim, dim, scale=weight_scale)
        self.h = _dense_init(dim, scale=weight_scale)
        self.register_buffer("off_diagonal_mask", 1.0 - torch.eye(dim), persistent=False)

    def switching_planes(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.state_dim, dtype=self.A.dtype, device=self.A.device)
        return eye[self.n_linear :], self.A.new_zeros(self.A.shape[:-1] + (self.n_switches,))

    def _phi_slopes(self, d: Tensor) -> Tensor:
        ones = torch.ones(d.shape[:-1] + (self.n_linear,), dtype=d.dtype, device=d.device)
        return torch.cat([ones, d], dim=-1)

    def step(self, z: Tensor) -> Tensor:
        _check_state(z, self.state_dim)
        phi = torch.cat([z[..., : self.n_linear], torch.relu(z[..., self.n_linear :])], dim=-1)
        return _row(self.A) * z + phi @ self.off_diagonal_weights().mT + _row(self.h)

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        slopes = self._phi_slopes(self._check_codes(codes))
        J = _diagonal(self.A) + _matrix(self.off_diagonal_weights()) * slopes.unsqueeze(-2)
        return J, _row(self.h).expand(slopes.shape[:-1] + (self.state_dim,))


def _gated_product_bound(left: Tensor, right: Tensor) -> float:
    """An upper bound on ``‖left D right‖₂`` over every diagonal ``D`` with entries in [-1, 1]."""
    spectral = float(torch.linalg.matrix_norm(left, ord=2) * torch.linalg.matrix_norm(right, ord=2))
    rank_one = float((torch.linalg.vector_norm(left, dim=0) * torch.linalg.vector_norm(right, dim=1)).sum())
    return min(spectral, rank_one)


class ShallowPLRNN(PiecewiseLinearRNN):
    r"""Shallow PLRNN: ``z' = A ⊙ z + W1 relu(W2 z + h2) + h1``.

    Parameters
    ----------
    latent_dim : int
        State dimension ``M``.
    hidden_dim : int
        Hidden width ``H``; the ``S = H`` switches are the hidden ReLUs.

    Attributes
    ----------
    A : Parameter, shape (M,)
    W1 : Parameter, shape (M, H)
    W2 : Parameter, shape (H, M)
    h1 : Parameter, shape (M,)
    h2 : Parameter, shape (H,)

    Examples
    --------
    >>> model = ShallowPLRNN(latent_dim=3, hidden_dim=50)
    >>> model.jacobian(torch.zeros(3)).shape
    torch.Size([3, 3])
    """

    def __init__(self, latent_dim: int, hidden_dim: int, *, weight_scale: float | None = None) -> None:
        super().__init__()
        _require_positive_int(latent_dim=latent_dim, hidden_dim=hidden_dim)
        self.state_dim = latent_dim
        self.n_switches = self._switch_count(hidden_dim)
        self.hidden_dim = hidden_dim
        scale = weight_scale if weight_scale is not None else 1.0 / np.sqrt(hidden_dim)
        self.A = nn.Parameter(torch.empty(latent_dim).uniform_(0.5, 0.9))
        self.W1 = _dense_init(latent_dim, hidden_dim, scale=scale)
        self.W2 = _dense_init(hidden_dim, latent_dim, scale=1.0 / np.sqrt(latent_dim))
        self.h1 = _dense_init(latent_dim, scale=scale)
        self.h2 = _dense_init(hidden_dim, scale=1.0)

    @staticmethod
    def _switch_count(hidden_dim: int) -> int:
        return hidden_dim

    def switching_planes(self) -> tuple[Tensor, Tensor]:
        return self.W2, self.h2

    def step(self, z: Tensor) -> Tensor:
        return self.step_with_codes(z)[0]

    def step_with_codes(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # The hidden pre-activations are both the switch inputs and the nonlinearity's argument.
        _check_state(z, self.state_dim)
        hidden = z @ self.W2.mT + _row(self.h2)
        return _row(self.A) * z + torch.relu(hidden) @ self.W1.mT + _row(self.h1), hidden > 0

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        d = self._check_codes(codes)
        return self._gated_pieces(d, d)

    def simulation_step(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """``step_with_codes`` for long simulations of a model whose weights stay fixed meanwhile: the
        transposed weights made once and fused products (``baddbmm``), no checks per call.  Same map, rounded
        in another order (a few ulps); for states ``(..., B, M)`` with the weights' leading axes.

        Examples
        --------
        >>> model = ShallowPLRNN(2, 4).double()
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> after, codes = model.simulation_step()(z)
        >>> torch.allclose(after, model.step(z)) and torch.equal(codes, model.step_with_codes(z)[1])
        True
        """
        # One model is a stack of one: the same fused products for both, so a step analysed alone and among
        # others follows the same orbit.
        single = self.W2.dim() == 2
        W2t, W1t = (w.detach().mT.unsqueeze(0) if single else w.detach().mT for w in (self.W2, self.W1))
        h2, h1, A = (_row(v.detach().unsqueeze(0) if single else v.detach()) for v in (self.h2, self.h1, self.A))

        def step(z: Tensor) -> tuple[Tensor, Tensor]:
            if z.dim() != 3 or z.shape[0] != W2t.shape[0]:  # other leading axes: through (N, B, M) and back
                after, codes = step(z.reshape(W2t.shape[0], -1, z.shape[-1]))
                return after.reshape(z.shape), codes.reshape(z.shape[:-1] + codes.shape[-1:])
            hidden = torch.baddbmm(h2, z, W2t)
            return torch.baddbmm(torch.addcmul(h1, A, z), torch.relu(hidden), W1t), hidden > 0

        return step

    @torch.no_grad()
    def piece_drift(self, reference: "ShallowPLRNN") -> tuple[float, float]:
        """Upper bounds, over every region at once, on how far the affine pieces moved from ``reference`` (the
        same model at another step): ``max_D ‖J_D − J_D^ref‖₂`` and ``max_D ‖c_D − c_D^ref‖₂``.

        ``J_D − J_D^ref = ΔA + ΔW1 D W2 + W1^ref D ΔW2`` and ``c_D − c_D^ref = ΔW1 D h2 + W1^ref D Δh2 + Δh1``
        with ``‖D‖ ≤ 1`` (also for the clipped model's ``D_a − D_b``).  Each product ``X D Y`` is bounded by the
        smaller of ``‖X‖₂ ‖Y‖₂`` and ``Σ_l ‖X[:, l]‖ ‖Y[l, :]‖`` (the sum of its rank-one terms): both hold for
        every diagonal ``D`` with entries in [-1, 1], and the tighter the bound the fewer cells are re-solved.

        Examples
        --------
        >>> model = ShallowPLRNN(2, 4)
        >>> moved = detached_copy(model)
        >>> with torch.no_grad():
        ...     _ = moved.h1.add_(0.1)
        >>> moved.piece_drift(model)[0], round(moved.piece_drift(model)[1], 6)   # only the offsets moved
        (0.0, 0.141421)
        """
        dA, dW1, dW2 = (self.A - reference.A).double(), (self.W1 - reference.W1).double(), (self.W2 - reference.W2).double()
        dh1, dh2 = (self.h1 - reference.h1).double(), (self.h2 - reference.h2).double()
        W1_ref, W2, h2 = reference.W1.double(), self.W2.double(), self.h2.double()
        drift_J = float(dA.abs().max()) + _gated_product_bound(dW1, W2) + _gated_product_bound(W1_ref, dW2)
        drift_c = (_gated_product_bound(dW1, h2[:, None]) + _gated_product_bound(W1_ref, dh2[:, None])
                   + float(torch.linalg.vector_norm(dh1)))
        # The rounding of these sums and of the singular values, far below any margin that matters.
        return drift_J * (1 + 1e-9), drift_c * (1 + 1e-9)

    def _gated_pieces(self, jacobian_gates: Tensor, offset_gates: Tensor) -> tuple[Tensor, Tensor]:
        """``J = diag(A) + W1 diag(jacobian_gates) W2`` and ``c = W1 diag(offset_gates) h2 + h1``.

        Written as one matrix product with the per-unit outer products ``W1[:, l] W2[l, :]`` (H, M*M),
        which is several times faster than gating W1 for every sequence in a large batch.
        """
        M = self.state_dim
        outer = (self.W1.mT.unsqueeze(-1) * self.W2.unsqueeze(-2)).reshape(self.W2.shape[:-2] + (self.hidden_dim, M * M))
        J = (jacobian_gates @ outer).reshape(jacobian_gates.shape[:-1] + (M, M)) + _diagonal(self.A)
        return J, offset_gates @ (self.h2.unsqueeze(-1) * self.W1.mT) + _row(self.h1)


class ClippedShallowPLRNN(ShallowPLRNN):
    r"""Clipped shallow PLRNN: ``z' = A ⊙ z + W1 [relu(W2 z + h2) − relu(W2 z)] + h1``.

    Orbits stay bounded when ``max |A| < 1``.  There are ``S = 2H`` switches: the first ``H`` are the
    signs of ``W2 z + h2``, the last ``H`` those of ``W2 z``.

    Examples
    --------
    >>> ClippedShallowPLRNN(latent_dim=2, hidden_dim=5).n_switches
    10
    """

    @staticmethod
    def _switch_count(hidden_dim: int) -> int:
        return 2 * hidden_dim

    def switching_planes(self) -> tuple[Tensor, Tensor]:
        return torch.cat([self.W2, self.W2], dim=-2), torch.cat([self.h2, torch.zeros_like(self.h2)], dim=-1)

    def step_with_codes(self, z: Tensor) -> tuple[Tensor, Tensor]:
        _check_state(z, self.state_dim)
        pre = z @ self.W2.mT
        shifted = pre + _row(self.h2)
        after = _row(self.A) * z + (torch.relu(shifted) - torch.relu(pre)) @ self.W1.mT + _row(self.h1)
        return after, torch.cat([shifted > 0, pre > 0], dim=-1)

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        d = self._check_codes(codes)
        shifted, unshifted = d[..., : self.hidden_dim], d[..., self.hidden_dim :]
        return self._gated_pieces(shifted - unshifted, shifted)

    def simulation_step(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return self.step_with_codes  # not the shallow model's fused map: the clipped one has a second ReLU


def _require_positive_int(**values: object) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """How the registry builds, describes and recognises one built-in model kind.

    Attributes
    ----------
    cls : type
        The model class.
    config : dict of str to str
        Constructor argument -> the model attribute holding its value (what ``model_to_state`` writes
        under ``"config"``).
    parameters : tuple of str
        The parameter names (``named_parameters``), which is what a checkpoint's state_dict shows.
    infer : callable, optional
        ``params -> config`` from the parameter shapes; ``None`` when the sizes cannot be read off them.
    masked_diagonal : bool
        ``W``'s diagonal is masked to zero (PLRNN, ALRNN): a state with a non-zero diagonal is rejected.
    """

    cls: type
    config: dict[str, str]
    parameters: tuple[str, ...]
    infer: Callable[[dict[str, Tensor]], dict[str, int]] | None = None
    masked_diagonal: bool = False


def _shallow_sizes(params: dict[str, Tensor]) -> dict[str, int]:
    return {"latent_dim": int(params["W1"].shape[0]), "hidden_dim": int(params["W1"].shape[1])}


_SHALLOW_PARAMETERS = ("A", "W1", "W2", "h1", "h2")

# The single registry of built-in model kinds: constructor arguments, model_to_state / model_from_state,
# the checkpoint loader and the CLI's --model-class choices all read it.
MODEL_SPECS: dict[str, ModelSpec] = {
    "PLRNN": ModelSpec(
        PLRNN, {"dim": "state_dim"}, ("A", "W", "h"), lambda p: {"dim": int(p["A"].shape[0])}, masked_diagonal=True
    ),
    "ShallowPLRNN": ModelSpec(
        ShallowPLRNN, {"latent_dim": "state_dim", "hidden_dim": "hidden_dim"}, _SHALLOW_PARAMETERS, _shallow_sizes
    ),
    "ClippedShallowPLRNN": ModelSpec(
        ClippedShallowPLRNN, {"latent_dim": "state_dim", "hidden_dim": "hidden_dim"}, _SHALLOW_PARAMETERS, _shallow_sizes
    ),
    # n_relu cannot be read off the shapes: ALRNN states need their "config".
    "ALRNN": ModelSpec(ALRNN, {"dim": "state_dim", "n_relu": "n_switches"}, ("A", "W", "h"), masked_diagonal=True),
}
# name -> class, for code that only needs the classes.
MODEL_REGISTRY: dict[str, type[PiecewiseLinearRNN]] = {name: spec.cls for name, spec in MODEL_SPECS.items()}

# The key under which ``DSRModule`` stores ``model_to_state(rnn)`` in its Lightning checkpoints; the
# CLI's ``find`` / ``scan`` read the model from it instead of guessing from parameter names.
CHECKPOINT_MODEL_KEY = "bifurcation_model"


def _constructor_kwargs(model: PiecewiseLinearRNN) -> dict[str, int]:
    spec = MODEL_SPECS[type(model).__name__]
    return {arg: int(getattr(model, attribute)) for arg, attribute in spec.config.items()}


def model_to_state(model: PiecewiseLinearRNN) -> dict:
    """Serialise a built-in model to a JSON-ready dict ``{"model": kind, "config": ..., "params": ...}``.

    Examples
    --------
    >>> state = model_to_state(PLRNN(2))
    >>> sorted(state["params"])
    ['A', 'W', 'h']
    """
    kind = type(model).__name__
    if kind not in MODEL_SPECS or type(model) is not MODEL_SPECS[kind].cls:
        raise TypeError(f"model_to_state supports {', '.join(MODEL_SPECS)}, got {kind}")
    return {
        "model": kind,
        "config": _constructor_kwargs(model),
        "params": {name: _effective(model, name, p).detach().cpu().double().tolist() for name, p in model.named_parameters()},
    }


def _effective(model: PiecewiseLinearRNN, name: str, parameter: Tensor) -> Tensor:
    """The parameter as the map uses it: W's masked diagonal is written as the zeros it acts as."""
    if name == "W" and isinstance(model, _OffDiagonalMixin):
        return model.off_diagonal_weights()
    return parameter


def model_from_state(state: dict) -> PiecewiseLinearRNN:
    """Build a model from ``model_to_state`` output (or a hand-written JSON of named tensors).

    ``config`` may be omitted where the sizes can be read off the parameter shapes (all kinds but ALRNN).

    Raises
    ------
    ValueError
        Unknown model kind, missing or extra parameters, wrong shapes, non-finite values, a PLRNN / ALRNN
        ``W`` with a non-zero diagonal (the model masks it, so such a state does not say what it means).

    Examples
    --------
    >>> model = model_from_state({"model": "PLRNN", "params": {"A": [0.5], "W": [[0.0]], "h": [0.1]}})
    >>> model.step(torch.zeros(1, dtype=torch.float64)).tolist()
    [0.1]
    """
    if not isinstance(state, dict) or "model" not in state or "params" not in state:
        raise ValueError('model state must be a dict with keys "model" and "params" (and optionally "config")')
    kind = state["model"]
    if kind not in MODEL_SPECS:
        raise ValueError(f"unknown model {kind!r}; expected one of {', '.join(MODEL_SPECS)}")
    if not isinstance(state["params"], dict):
        raise ValueError(f'"params" must map parameter names to nested lists, got {type(state["params"]).__name__}')
    try:
        params = {name: torch.as_tensor(np.asarray(value, dtype=np.float64)) for name, value in state["params"].items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"{kind} parameters must be nested lists of numbers ({error})") from None
    W = params.get("W")
    if MODEL_SPECS[kind].masked_diagonal and W is not None and W.ndim == 2 and W.shape[0] == W.shape[1]:
        if torch.diagonal(W).abs().max() > 0:
            raise ValueError(
                f"{kind} W must have a zero diagonal (the model masks it), got diagonal {torch.diagonal(W).tolist()}"
            )
    return build_model(kind, params, state.get("config"))


def build_model(kind: str, params: dict[str, Tensor], config: dict | None = None) -> PiecewiseLinearRNN:
    """A float64 built-in model of registry ``kind`` holding ``params`` (a module state_dict's tensors).

    Unlike ``model_from_state`` a masked ``W`` diagonal is accepted (and acts as zero), as in the
    model's own ``load_state_dict``; ``config`` defaults to the sizes read off the shapes.

    Raises
    ------
    ValueError
        Unknown kind, config that cannot be inferred or has the wrong keys, missing or extra parameters,
        wrong shapes, non-finite values.
    """
    if kind not in MODEL_SPECS:
        raise ValueError(f"unknown model {kind!r}; expected one of {', '.join(MODEL_SPECS)}")
    spec = MODEL_SPECS[kind]
    params = {name: torch.as_tensor(value).detach().cpu().double() for name, value in params.items()}
    config = dict(config or _infer_config(kind, params))
    allowed = tuple(spec.config)
    if set(config) != set(allowed):
        raise ValueError(f'{kind} "config" must have exactly the keys {list(allowed)}, got {sorted(config)}')
    model = spec.cls(**config).double()
    expected = dict(model.named_parameters())
    if set(params) != set(expected):
        raise ValueError(f"{kind} parameters must be exactly {sorted(expected)}, got {sorted(params)}")
    with torch.no_grad():
        for name, value in params.items():
            if value.shape != expected[name].shape:
                raise ValueError(
                    f"parameter {name} of {kind}{tuple(config.values())} must have shape "
                    f"{tuple(expected[name].shape)}, got {tuple(value.shape)}"
                )
            if not torch.isfinite(value).all():
                raise ValueError(f"parameter {name} contains NaN or Inf")
            expected[name].copy_(value)
    return model


def _infer_config(kind: str, params: dict[str, Tensor]) -> dict[str, int]:
    spec = MODEL_SPECS[kind]
    if spec.infer is None:
        wanted = ", ".join(f'"{arg}": ...' for arg in spec.config)
        raise ValueError(f'{kind} needs "config": {{{wanted}}} (its sizes cannot be read off the parameter shapes)')
    try:
        return spec.infer(params)
    except (KeyError, IndexError) as error:
        raise ValueError(f"cannot infer the {kind} sizes from parameters {sorted(params)}: missing {error}") from None


def enumerate_region_codes(planes: Tensor, offsets: Tensor, *, max_codes: int = 1 << 16, n_samples: int = 4096) -> Tensor:
    """All codes of the cells of the hyperplane arrangement ``{z : planes @ z + offsets = 0}``, by linear programs.

    The independent reference for ``regions.list_cells`` (which models use: it is exact too, and orders of
    magnitude faster).  A zero row with ``offsets[l] == 0`` has no state strictly on either side, so such an
    arrangement has no cell here (``list_cells`` gives that switch its constant bit ``False``).

    Cells are built one plane at a time: a partial code is extended by ``on``/``off`` when a state strictly
    inside exists.  Random states (at scales from the arrangement's size down to a thousandth of it) and
    every linear program's solution are such states for the codes they show, so a linear program is
    solved only for the partial codes no known state reaches: mostly the empty ones, whose emptiness
    only an LP can prove.  Exact up to the LP tolerance.

    Parameters
    ----------
    planes : Tensor, shape (S, M)
    offsets : Tensor, shape (S,)
    max_codes : int
        Raise ``ValueError`` when the arrangement has more cells than this.
    n_samples : int
        Random states whose codes are taken as known cells before any LP (deterministic: seed 0).

    Returns
    -------
    Tensor, shape (R, S), bool

    Examples
    --------
    >>> enumerate_region_codes(torch.eye(2), torch.zeros(2)).tolist()
    [[False, False], [False, True], [True, False], [True, True]]
    """
    from scipy.optimize import linprog

    G = planes.detach().cpu().double().numpy()
    g = offsets.detach().cpu().double().numpy()
    n_switches, dim = G.shape
    norms = np.maximum(np.linalg.norm(G, axis=1), 1e-300)
    G, g = G / norms[:, None], g / norms
    # Maximise the slack t of every chosen side; a cell exists iff t > 0 (boxed so the LP is bounded).
    objective = np.zeros(dim + 1)
    objective[-1] = -1.0
    bounds = [(-1e6, 1e6)] * dim + [(None, 1.0)]
    # Prefixes of codes of states known to lie strictly inside a cell (away from every plane).
    known: set[tuple[int, ...]] = set()

    def learn(states: np.ndarray) -> None:
        inputs = states @ G.T + g
        inside = (np.abs(inputs) > 1e-9 * (1.0 + np.abs(states).max(axis=-1, keepdims=True))).all(axis=-1)
        for code in {tuple(row) for row in (inputs[inside] > 0).astype(np.int8).tolist()}:
            known.update(code[:upto] for upto in range(1, n_switches + 1))

    if n_switches and n_samples:
        scale = max(1.0, float(np.abs(g).max()))
        rng = np.random.default_rng(0)
        radii = scale * 10.0 ** rng.uniform(-3.0, 0.7, size=(n_samples, 1))
        learn(rng.standard_normal((n_samples, dim)) * radii)

    def has_interior(signs: np.ndarray, upto: int) -> bool:
        A_ub = np.hstack([-signs[:, None] * G[:upto], np.ones((upto, 1))])
        b_ub = signs * g[:upto]
        result = linprog(objective, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if result.status == 0 and -result.fun > 1e-9:
            learn(result.x[None, :dim])
            return True
        return False

    cells: list[tuple[int, ...]] = [()]
    for upto in range(1, n_switches + 1):
        extended = []
        for cell in cells:
            for bit in (0, 1):
                candidate = cell + (bit,)
                if candidate in known or has_interior(np.where(np.array(candidate) > 0, 1.0, -1.0), upto):
                    extended.append(candidate)
        if len(extended) > max_codes:
            raise ValueError(f"the arrangement has more than max_codes={max_codes} regions")
        cells = extended
    return torch.tensor(sorted(cells), dtype=torch.bool).reshape(len(cells), n_switches)


def all_codes(n_switches: int) -> Tensor:
    """All ``2**S`` codes in lexicographic order (used when every orthant is a region).

    Examples
    --------
    >>> all_codes(0).shape   # no switch: one region, the empty code
    torch.Size([1, 0])
    """
    codes = list(itertools.product((False, True), repeat=n_switches))
    return torch.tensor(codes, dtype=torch.bool).reshape(len(codes), n_switches)
