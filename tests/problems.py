"""Shared test problems: piecewise-linear maps whose cycles are known in closed form, random model
factories, the dtype × device grid and an independent cycle checker.

Every test module imports from here (STYLE.md habit 10).  The closed-form problems are derived on
paper in the comments below; the tests then assert the finder reproduces them to 1e-10.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from bifurcation_callback import ALRNN, PLRNN, ClippedShallowPLRNN, ShallowPLRNN
from bifurcation_callback.models import model_from_state

REPO = Path(__file__).resolve().parents[1]
PAPER_MODEL_PATH = REPO / "examples" / "models" / "plrnn_2d_16cycles.json"

# ------------------------------------------------------------------------------------------------------------
# dtype × device grid (CUDA only when present: the cuda params are skipped, not dropped, elsewhere)

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="CUDA not available")),
]
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


# ------------------------------------------------------------------------------------------------------------
# Model constructors with exact float64 parameters


def _set(model: torch.nn.Module, **values) -> torch.nn.Module:
    model = model.double()
    with torch.no_grad():
        for name, value in values.items():
            getattr(model, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float64)))
    return model


def plrnn(A, W, h) -> PLRNN:
    """PLRNN ``z' = diag(A) z + W relu(z) + h`` (W's diagonal is masked by the model)."""
    return _set(PLRNN(len(A)), A=A, W=W, h=h)


class UnmaskedPLRNN(PLRNN):
    """A user's PLRNN whose ``affine_pieces`` forgets W's zero-diagonal mask, so it disagrees with ``step``.

    Before ``check_protocol`` existed, no candidate of such a model ever verified and ``find_cycles``
    silently returned no cycles.
    """

    def affine_pieces(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._check_codes(codes)
        J = torch.diag(self.A) + self.W * d.unsqueeze(-2)  # the bug: self.W, not self.off_diagonal_weights()
        return J, self.h.expand(d.shape[:-1] + (self.state_dim,))


def unmasked_plrnn(A, W, h) -> UnmaskedPLRNN:
    """``UnmaskedPLRNN`` with the given raw parameters (a nonzero diagonal of W shows the bug)."""
    return _set(UnmaskedPLRNN(len(A)), A=A, W=W, h=h)


def shallow(A, W1, W2, h1, h2) -> ShallowPLRNN:
    """ShallowPLRNN ``z' = diag(A) z + W1 relu(W2 z + h2) + h1``."""
    W1 = np.asarray(W1, dtype=np.float64)
    return _set(ShallowPLRNN(W1.shape[0], W1.shape[1]), A=A, W1=W1, W2=W2, h1=h1, h2=h2)


def paper_model(a1: float | None = None) -> PLRNN:
    """The paper's 2-D PLRNN (two 16-cycles); ``a1`` overrides ``A[0]`` (the SCYFI unit tests vary it)."""
    model = model_from_state(json.loads(PAPER_MODEL_PATH.read_text()))
    if a1 is not None:
        with torch.no_grad():
            model.A[0] = a1
    return model


# ------------------------------------------------------------------------------------------------------------
# Bifurcation paths with closed-form bifurcation points (test_events, test_localize, test_scan, test_plots)


def tent(a: float, w1: float, h1: float) -> ShallowPLRNN:
    """z' = a z + w1 relu(z) + h1 (left slope a, right slope a + w1, border at z = 0).

    ShallowPLRNN(latent_dim=1, hidden_dim=1) with w2 = 1, h2 = 0; ``FLIP_1D`` is ``tent(0.5, -2, 1)``.
    """
    return shallow(A=[a], W1=[[w1]], W2=[[1.0]], h1=[h1], h2=[0.0])


def plrnn_1d(a: float, h: float) -> PLRNN:
    """z' = a z + h (a 1-D PLRNN is linear: W's only entry is the masked diagonal)."""
    return plrnn(A=[a], W=[[0.0]], h=[h])


def sliding_fold(a1: float) -> ShallowPLRNN:
    """2-D ShallowPLRNN with one switch on y: x' = a1 x + relu(y) + 1, y' = 0.5 y + 1.

    y* = 1 / (1 - 0.5) = 2 > 0, so the switch is on and x* = (2 + 1) / (1 - a1) = 3 / (1 - a1).
    The multipliers are (a1, 0.5).  As a1 crosses +1, x* passes through infinity, but the region code
    (y > 0) never changes: the fixed point persists *by codes* and a real multiplier crosses +1.
    """
    return shallow(A=[a1, 0.5], W1=[[1.0], [0.0]], W2=[[0.0, 1.0]], h1=[1.0, 1.0], h2=[0.0])


def busy_plrnn() -> PLRNN:
    """A 2-D PLRNN with three fixed points (two stable) and a 2-cycle (found by a seed search)."""
    torch.manual_seed(98)
    model = PLRNN(2, weight_scale=2.0).double()
    with torch.no_grad():
        model.A.uniform_(-1.0, 1.0)
    return model


def cell_model(base: torch.nn.Module, parameters: dict[str, tuple[tuple[int, ...], float]]) -> torch.nn.Module:
    """A float64 copy of ``base`` with ``parameters[name] = (index, value)`` set: one cell of a scan."""
    model = base.snapshot().double()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, (index, value) in parameters.items():
            named[name][index] = value
    return model


def event_summary(events) -> list[tuple]:
    """Events as sorted ``(kind, order, crossing, stable_before, stable_after)`` tuples, for comparisons."""
    return sorted(((e.kind, e.order, e.crossing, e.stable_before, e.stable_after) for e in events), key=repr)


# (1) Border collision: a pair of fixed points is born at the border as the bias h1 crosses h* = 0.
#   tent(a=0.5, w1=1, h1=mu): tau_L = 0.5, tau_R = 1.5.
#   Left fixed point  z_L = mu / (1 - 0.5) = 2 mu  is real iff z_L <= 0  iff mu < 0;  multiplier 0.5 (stable).
#   Right fixed point z_R = mu / (1 - 1.5) = -2 mu is real iff z_R > 0   iff mu < 0;  multiplier 1.5 (unstable).
#   At mu = 0 both sit on the border z = 0: a nonsmooth fold.  Path mu: 0.3 -> -0.2, t = (0.3 - 0) / 0.5 = 0.6.
FOLD_MU = (0.3, -0.2)
FOLD_T = 0.6

# (2) Flip: the right fixed point loses stability through -1 and a 2-cycle is born.
#   tent(a=0.5, w1=tau_R - 0.5, h1=1): tau_L = 0.5, mu = 1.
#   Right fixed point z_R = 1 / (1 - tau_R) > 0 for all tau_R < 1, multiplier tau_R: crosses -1 at tau_R = -1.
#   Left fixed point z_L = 1 / 0.5 = 2 > 0 is virtual.  2-cycle x1 <= 0 < x2 with x2 = tau_L x1 + 1,
#   x1 = tau_R x2 + 1:  x1 = (1 + tau_R) / (1 - tau_L tau_R),  x2 = (1 + tau_L) / (1 - tau_L tau_R) > 0, so it is
#   real iff tau_R < -1; multiplier tau_L tau_R = 0.5 tau_R in (-0.95, -0.5) on the path: stable.
#   Path tau_R: -0.6 -> -1.9 (w1: -1.1 -> -2.4), t = (-1 - (-0.6)) / (-1.3) = 4 / 13.
FLIP_TAU = (-0.6, -1.9)
FLIP_T = 4.0 / 13.0


def flip_path() -> tuple[ShallowPLRNN, ShallowPLRNN]:
    """The two ends of path (2): before and after the flip at t = FLIP_T."""
    return tent(0.5, FLIP_TAU[0] - 0.5, 1.0), tent(0.5, FLIP_TAU[1] - 0.5, 1.0)


def fold_path() -> tuple[ShallowPLRNN, ShallowPLRNN]:
    """The two ends of path (1): before and after the border-collision fold at t = FOLD_T."""
    return tent(0.5, 1.0, FOLD_MU[0]), tent(0.5, 1.0, FOLD_MU[1])


# (3) A real multiplier crossing +1.
#   (a) sliding_fold(a1): a1: 0.6 -> 1.3 crosses 1 at t = 0.4 / 0.7 = 4 / 7; same codes, so it is a
#       stability_change with crossing "+1".
#   (b) plrnn_1d(a, 1): z* = 1 / (1 - a) is > 0 (code on) for a < 1 and < 0 (code off) for a > 1: the fixed point
#       escapes to +infinity and returns from -infinity with the other code (degenerate transcritical);
#       a: 0.97 -> 1.02 crosses 1 at t = 0.03 / 0.05 = 0.6.
PLUS_ONE_A1 = (0.6, 1.3)
PLUS_ONE_T = 4.0 / 7.0
ESCAPE_A = (0.97, 1.02)
ESCAPE_T = 0.6


# ------------------------------------------------------------------------------------------------------------
# Random models


def random_model(kind: str, seed: int, *, dim: int = 2, hidden: int = 4, scale: float = 1.0) -> torch.nn.Module:
    """A float64 model with weights large enough to have cycles: A ~ 0.8·N(0,1), other weights ~ N(0,1).

    ``scale`` multiplies every weight (use < 1 for tame, contracting-ish models).
    """
    rng = np.random.default_rng(seed)
    normal = lambda *shape: scale * rng.standard_normal(shape)  # noqa: E731
    A = 0.8 * normal(dim)
    if kind == "PLRNN":
        return _set(PLRNN(dim), A=A, W=normal(dim, dim), h=normal(dim))
    if kind == "ALRNN":
        return _set(ALRNN(dim, n_relu=max(1, dim - 1)), A=A, W=normal(dim, dim), h=normal(dim))
    if kind in ("ShallowPLRNN", "ClippedShallowPLRNN"):
        cls = ShallowPLRNN if kind == "ShallowPLRNN" else ClippedShallowPLRNN
        return _set(
            cls(dim, hidden), A=A, W1=normal(dim, hidden), W2=normal(hidden, dim), h1=normal(dim), h2=normal(hidden)
        )
    raise ValueError(kind)


MODEL_KINDS = ("PLRNN", "ShallowPLRNN", "ClippedShallowPLRNN", "ALRNN")


# ------------------------------------------------------------------------------------------------------------
# Closed-form problems


@dataclass(frozen=True)
class KnownCycle:
    """A cycle derived by hand: points in visiting order (any rotation), multipliers, stability kind."""

    points: tuple[tuple[float, ...], ...]
    multipliers: tuple[complex, ...]
    kind: str

    @property
    def order(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Problem:
    """A model and *all* its cycles up to ``max_order`` (proved on paper; also cross-checked exhaustively)."""

    name: str
    build: Callable[[], torch.nn.Module]
    cycles: tuple[KnownCycle, ...]
    max_order: int
    notes: str = field(default="", compare=False)


# (a1) 1-D map with a flip: ShallowPLRNN(1, 1) with W2 = 1, h2 = 0 gives
#        z' = a z + w relu(z) + h,   slope a for z <= 0 ("L"), slope b = a + w for z > 0 ("R").
#      Take a = 0.5, w = -2 (b = -1.5), h = 1.
#      Fixed points: L: z = h / (1 - a) = 2 > 0, not in L -> virtual.
#                    R: z = h / (1 - b) = 1 / 2.5 = 0.4 > 0, real; multiplier b = -1.5 -> unstable.
#      2-cycle z1 in L, z2 in R: z2 = a z1 + h, z1 = b z2 + h  =>  z1 = h (1 + b) / (1 - ab),
#                    z2 = h (1 + a) / (1 - ab).  With ab = -0.75: z1 = -0.5 / 1.75 = -2/7 <= 0,
#                    z2 = 1.5 / 1.75 = 6/7 > 0: real.  Multiplier ab = -0.75 -> stable.
#                    (The fixed point lost stability as b crossed -1 and this 2-cycle was born: a flip.)
#      The invariant interval is [f(1), f(0)] = [-0.5, 1]; there are no other cycles up to order 6
#      (the exhaustive search confirms; test_known_problem_matches_exhaustive asserts it).
FLIP_1D = Problem(
    name="flip_1d",
    build=lambda: shallow(A=[0.5], W1=[[-2.0]], W2=[[1.0]], h1=[1.0], h2=[0.0]),
    cycles=(
        KnownCycle(points=((0.4,),), multipliers=(-1.5,), kind="unstable"),
        KnownCycle(points=((-2 / 7,), (6 / 7,)), multipliers=(-0.75,), kind="stable"),
    ),
    max_order=6,
)

# (a2) Same family, a = 2, w = -1.75 (b = 0.25), h = 1: a fixed point in each piece.
#      L: z = 1 / (1 - 2) = -1 <= 0, real, multiplier 2 -> unstable.
#      R: z = 1 / (1 - 0.25) = 4/3 > 0, real, multiplier 0.25 -> stable.
#      Both pieces are increasing, so the map is monotone increasing and has no cycle of period > 1
#      (2-cycle formula: z1 = h(1+b)/(1-ab) = 1.25/0.5 = 2.5 > 0, not in L: virtual).
TWO_FIXED_1D = Problem(
    name="two_fixed_points_1d",
    build=lambda: shallow(A=[2.0], W1=[[-1.75]], W2=[[1.0]], h1=[1.0], h2=[0.0]),
    cycles=(
        KnownCycle(points=((-1.0,),), multipliers=(2.0,), kind="unstable"),
        KnownCycle(points=((4 / 3,),), multipliers=(0.25,), kind="stable"),
    ),
    max_order=6,
)

# (b) 2-D PLRNN: A = diag(0.5, 0.5), W = [[0, 2.25], [2.25, 0]], h = (-2, -2).
#     Region (d1, d2) has Jacobian J_d = A + W diag(d).
#     Fixed points:
#       00: z = h / (1 - 0.5) = (-4, -4): both <= 0, real; J = 0.5 I -> multipliers (0.5, 0.5), stable.
#       11: (I - A - W) z = h, i.e. [[0.5, -2.25], [-2.25, 0.5]] z = (-2, -2); by symmetry z1 = z2 = s,
#           -1.75 s = -2, s = 8/7 > 0: real.  J = [[0.5, 2.25], [2.25, 0.5]] -> 0.5 ± 2.25 = 2.75, -1.75:
#           unstable.
#       10: z1 = 0.5 z1 - 2 => z1 = -4, not > 0: virtual.  01: virtual by symmetry.
#     2-cycle p in 10 (p1 > 0 >= p2), q in 01 (q1 <= 0 < q2), designed as p = (2, -1), q = (-1, 2):
#       q = J_10 p + h:  q1 = 0.5·2 - 2 = -1,         q2 = 2.25·2 + 0.5·(-1) - 2 = 2.   ✓
#       p = J_01 q + h:  p1 = 0.5·(-1) + 2.25·2 - 2 = 2, p2 = 0.5·2 - 2 = -1.          ✓
#       P = J_01 J_10 = [[0.5, 2.25], [0, 0.5]] [[0.5, 0], [2.25, 0.5]] = [[5.3125, 1.125], [1.125, 0.25]]:
#       trace 89/16, det 1/16  =>  λ = (89 ± sqrt(7857)) / 32 ≈ 5.5512, 0.01126: saddle.
#     No other cycle up to order 6 (exhaustive search; asserted by the tests).
PLRNN_2D = Problem(
    name="plrnn_2d",
    build=lambda: plrnn(A=[0.5, 0.5], W=[[0.0, 2.25], [2.25, 0.0]], h=[-2.0, -2.0]),
    cycles=(
        KnownCycle(points=((-4.0, -4.0),), multipliers=(0.5, 0.5), kind="stable"),
        KnownCycle(points=((8 / 7, 8 / 7),), multipliers=(2.75, -1.75), kind="unstable"),
        KnownCycle(
            points=((2.0, -1.0), (-1.0, 2.0)),
            multipliers=((89 + math.sqrt(7857)) / 32, (89 - math.sqrt(7857)) / 32),
            kind="saddle",
        ),
    ),
    max_order=6,
)

# (c) 2-D PLRNN with two stable fixed points: A = diag(0.5, 0.5), W = [[0, -1], [-1, 0]], h = (1, 1).
#     10: z1 = 0.5 z1 + 1 = 2 > 0, z2 = 0.5 z2 - z1 + 1  =>  z2 = -2 <= 0: real; J = [[0.5, 0], [-1, 0.5]],
#         multipliers (0.5, 0.5): stable.  01: (-2, 2) by symmetry, stable.
#     11: [[0.5, 1], [1, 0.5]] z = (1, 1)  =>  z1 = z2 = 2/3 > 0: real; J = [[0.5, -1], [-1, 0.5]] ->
#         multipliers 1.5, -0.5: saddle.   00: z = (2, 2), not <= 0: virtual.
#     Every cycle has an active unit, so a wrong W diagonal in affine_pieces hides all three (the
#     UnmaskedPLRNN test stores W's diagonal as 1, which step masks and the buggy affine_pieces does not).
BISTABLE_2D = Problem(
    name="bistable_2d",
    build=lambda: plrnn(A=[0.5, 0.5], W=[[1.0, -1.0], [-1.0, 1.0]], h=[1.0, 1.0]),
    cycles=(
        KnownCycle(points=((2.0, -2.0),), multipliers=(0.5, 0.5), kind="stable"),
        KnownCycle(points=((-2.0, 2.0),), multipliers=(0.5, 0.5), kind="stable"),
        KnownCycle(points=((2 / 3, 2 / 3),), multipliers=(1.5, -0.5), kind="saddle"),
    ),
    max_order=2,
)

KNOWN_PROBLEMS = (FLIP_1D, TWO_FIXED_1D, PLRNN_2D, BISTABLE_2D)


# ------------------------------------------------------------------------------------------------------------
# Independent verification of a reported cycle


def _kind_from_moduli(moduli: np.ndarray, neutral: float = 1e-6) -> str:
    if np.any(np.abs(moduli - 1) <= neutral):
        return "neutral"
    if np.all(moduli < 1):
        return "stable"
    if np.all(moduli > 1):
        return "unstable"
    return "saddle"


def check_cycle(model: torch.nn.Module, cycle, *, rtol: float = 1e-8) -> None:
    """Assert that ``cycle`` is a genuine minimal-period cycle of ``model``, recomputing everything.

    Uses only ``model.step`` / ``model.region_codes`` in float64 and autograd Jacobians of ``step``.
    """
    model = model.double()
    k = cycle.order
    points = np.asarray(cycle.points, dtype=np.float64)
    assert points.shape == (k, model.state_dim)
    assert np.all(np.isfinite(points))
    scale = 1.0 + np.abs(points).max()
    # Iterating the true map from points[0] visits the points in order and returns after k steps.
    z = torch.as_tensor(points[0])
    jacobians = []
    with torch.no_grad():
        for j in range(1, k + 1):
            jacobians.append(torch.autograd.functional.jacobian(model.step, z).numpy())
            z = model.step(z)
            expected = points[j % k]
            assert np.linalg.norm(z.numpy() - expected) <= rtol * scale, (j, z, expected)
    # Region codes of the points are the reported codes.
    codes = model.region_codes(torch.as_tensor(points)).numpy()
    np.testing.assert_array_equal(codes, np.asarray(cycle.codes, dtype=bool))
    # Minimal period: no two points coincide (equivalently, no proper divisor j with points[j] == points[0]).
    for i in range(k):
        for j in range(i + 1, k):
            assert np.linalg.norm(points[i] - points[j]) > 1e-6 * scale, f"points {i} and {j} coincide"
    # Multipliers: eigenvalues of J_k … J_1 from autograd, compared as characteristic polynomials
    # (robust to ordering and to complex pairs).
    product = np.eye(model.state_dim)
    for J in jacobians:
        product = J @ product
    eigenvalues = np.linalg.eigvals(product)
    reported = np.asarray(cycle.eigenvalues, dtype=np.complex128)
    assert reported.shape == (model.state_dim,)
    bound = 1e-8 * (1.0 + np.linalg.norm(product)) ** model.state_dim
    np.testing.assert_allclose(np.poly(reported), np.poly(eigenvalues), rtol=0, atol=bound)
    # The stability kind follows from the moduli.
    assert cycle.kind == _kind_from_moduli(np.abs(eigenvalues))
    assert math.isclose(cycle.spectral_radius, np.abs(eigenvalues).max(), rel_tol=1e-7, abs_tol=1e-9)


def same_cycle_points(a: np.ndarray, b: np.ndarray, *, rtol: float) -> bool:
    """True when the (k, M) point arrays are the same cycle up to rotation."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = 1.0 + np.abs(a).max()
    return any(np.abs(np.roll(a, s, axis=0) - b).max() <= rtol * scale for s in range(a.shape[0]))


# ------------------------------------------------------------------------------------------------------------
# Attractors (test_attractors): a protocol-only rotation model and long stable cycles of the paper's family


class Rotation(torch.nn.Module):
    """A user model (protocol only) mapping every region by ``radius · R(angle)``; one switch, ``z_1 > 0``.

    radius 1 and an angle incommensurate with 2π give a quasi-periodic orbit on a circle (all exponents 0);
    angle 2π/q gives neutral q-periodic orbits whose cycle system ``(I - R^q) z = 0`` is singular.
    """

    state_dim, n_switches = 2, 1

    def __init__(self, radius: float, angle: float) -> None:
        super().__init__()
        c, s = math.cos(angle), math.sin(angle)
        self.register_buffer("J", radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64))

    def region_codes(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., :1] > 0

    def affine_pieces(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        J = self.J.expand(*codes.shape[:-1], 2, 2)
        return J, torch.zeros(*codes.shape[:-1], 2, dtype=self.J.dtype, device=self.J.device)

    def step(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.J.T


# paper_model(a1) for these A[0] has one stable cycle of this period that every start we tried reaches
# (found by simulating a1 on a grid; multipliers |λ|max 0.172 and 0.0886 per period).
LONG_CYCLE_A1 = {107: 0.96905, 285: 0.969}


# ------------------------------------------------------------------------------------------------------------
# The SCYFI unit tests' long cycles of the paper's 2-D PLRNN (paper notes, Sec. 3 "Validation")


def paper_variant(a1: float, *, w1: float = -0.64375, w2: float = 0.52505308, h2: float = -0.97931491) -> PLRNN:
    """A = diag(a1, 0.96461297), W = [[0, w1], [w2, 0]], h = (0.37298253, h2), float64, as in SCYFI's tests."""
    return _set(PLRNN(2), A=[a1, 0.96461297], W=[[0.0, w1], [w2, 0.0]], h=[0.37298253, h2])


# (order, paper_variant keywords): each model has exactly two cycles of that order (one stable, one saddle).
PAPER_LONG_CYCLES = (
    (16, {"a1": 0.8377689}),
    (27, {"a1": 0.9777689, "w1": -0.14375}),
    (31, {"a1": 0.9777689, "w1": -0.14375, "w2": 1.17505}),
    (40, {"a1": 0.9777689}),
    (53, {"a1": 0.9377689}),
    (65, {"a1": 0.9777689, "w1": -0.14375, "w2": 1.32505}),
    (80, {"a1": 0.9777689, "w1": -0.14375, "h2": -0.77931}),
    (83, {"a1": 0.9777689, "w1": -0.14375, "w2": 0.67505}),
)


# ------------------------------------------------------------------------------------------------------------
# Training-loss curves for loss-jump detection (tests/test_loss_jumps.py, benchmarks/bench_loss_jumps.py)

# Per-batch losses under teacher forcing: independent noise of 0.21 in log(loss), so the loss moves by ±30 % from
# one step to the next (one sigma) and by ±50 % or more at one step in six.  The demo's GTF runs, once the forced
# loss is small, move by a robust sigma of 0.19-0.30 in log per step, i.e. level noise of 0.14-0.21.
BATCH_NOISE = 0.21


def fall_within_25_steps(seed: int, *, n_steps: int = 300, noise: float = BATCH_NOISE) -> tuple[np.ndarray, int]:
    """The issue's run: the loss falls from 2.42 to 0.90 within 25 steps, on a slow decay with per-batch noise.

    Returns the losses after the monitor's 20-step warm-up and the step (index) where the fall starts.
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(n_steps)
    start = int(rng.integers(100, 200))
    fall = np.clip((steps - start) / 25, 0.0, 1.0) * math.log(0.90 / 2.42)
    log_loss = math.log(2.6) - 0.07 * steps / start * (steps < start) - 0.07 * (steps >= start) + fall
    return np.exp(log_loss + rng.normal(0.0, noise, n_steps))[20:], start - 20


def smooth_decay(seed: int, *, n_steps: int, noise: float, heteroscedastic: bool = False) -> np.ndarray:
    """No jump: a loss decaying towards a floor (exponentially or as a power law, time constant 30-600 steps,
    1.5-10-fold in all) with multiplicative noise, after a 20-step warm-up.  ``heteroscedastic``: the noise grows
    as the loss falls (up to ~3x), as the forced loss of GTF does."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n_steps + 20)
    floor, fold = rng.uniform(0.05, 1.0), rng.uniform(1.5, 10.0)
    tau = math.exp(rng.uniform(math.log(30), math.log(600)))
    shape = np.exp(-steps / tau) if seed % 2 else (1 + steps / tau) ** -rng.uniform(0.5, 2.0)
    loss = floor * (1 + (fold - 1) * shape)
    sigma = noise * (1 + np.log(floor * fold / loss)) if heteroscedastic else noise
    return (loss * np.exp(rng.normal(0.0, 1.0, steps.size) * sigma))[20:]


def quiet_fall_then_noisy(seed: int, *, n_steps: int = 1500, fall_at: int = 700) -> np.ndarray:
    """The demo's GTF runs: a quiet slow descent (0.3 % per-batch noise), the loss falling tenfold within 60 steps
    from ``fall_at`` on, then 20 % per-batch noise (the forced loss, once small, is relatively noisy)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n_steps)
    fall = np.clip((steps - fall_at) / 60, 0.0, 1.0) * math.log(0.1)
    noise = np.where(steps < fall_at, 0.003, 0.2) * rng.normal(0.0, 1.0, n_steps)
    return np.exp(math.log(2.5) - 0.0003 * steps + fall + noise)


# ------------------------------------------------------------------------------------------------------------
# Independent cell listings and fixed points: references for regions.list_cells and the exhaustive order 1
# (test_regions, benchmarks/bench_fuzz_regions.py).  None of them uses bifurcation_callback.regions.


def codes_as_set(codes) -> set[tuple[bool, ...]]:
    """Rows of a bool tensor / array as a set of tuples."""
    return {tuple(bool(b) for b in row) for row in np.asarray(torch.as_tensor(codes).cpu()).tolist()}


def lp_cells(planes, offsets) -> set[tuple[bool, ...]]:
    """The cells by linear programs (``models.enumerate_region_codes``, exact up to the LP tolerance).

    A zero row is no plane: its bit is the constant ``offset > 0`` (the LP would find no state with
    ``0 > 0`` nor ``0 < 0`` for a zero offset).
    """
    from bifurcation_callback.models import enumerate_region_codes

    G, g = np.asarray(planes, dtype=np.float64), np.asarray(offsets, dtype=np.float64)
    zero = ~np.any(G != 0, axis=1)
    codes = enumerate_region_codes(torch.as_tensor(G[~zero]), torch.as_tensor(g[~zero]), max_codes=1 << 20).numpy()
    full = np.zeros((codes.shape[0], G.shape[0]), dtype=bool)
    full[:, ~zero] = codes
    full[:, zero] = g[zero] > 0
    return codes_as_set(full)


def code_keys(codes) -> dict[bytes, int]:
    """Each distinct row of a bool array / tensor as packed bytes -> its (first) row index: fast set algebra
    on hundreds of thousands of codes."""
    packed = np.packbits(np.asarray(torch.as_tensor(codes).cpu(), dtype=bool), axis=1)
    keys: dict[bytes, int] = {}
    for index, row in enumerate(packed):
        keys.setdefault(row.tobytes(), index)
    return keys


def sampled_cells(planes, offsets, *, n: int = 20_000, seed: int = 0) -> set[tuple[bool, ...]]:
    """Codes of random states at scales from 1e-3 to 1e3 of the arrangement's size (``sampled_codes``)."""
    return codes_as_set(sampled_codes(planes, offsets, n=n, seed=seed))


def sampled_codes(planes, offsets, *, n: int = 20_000, seed: int = 0) -> np.ndarray:
    """Codes (bool rows, repeats possible) of random states at scales from 1e-3 to 1e3 of the arrangement's
    size, around the origin and around random intersection points, keeping only states clearly off every plane."""
    G, g = np.asarray(planes, dtype=np.float64), np.asarray(offsets, dtype=np.float64)
    S, M = G.shape
    rng = np.random.default_rng(seed)
    norms = np.linalg.norm(G, axis=1)
    size = max(1.0, float(np.max(np.abs(g[norms > 0]) / norms[norms > 0], initial=1.0)))
    centres = [np.zeros(M)]
    for _ in range(min(64, S)):  # points where M planes meet (least squares when they do not)
        rows = rng.choice(S, size=min(M, S), replace=False)
        centres.append(np.linalg.lstsq(G[rows], -g[rows], rcond=None)[0])
    centre = np.asarray(centres)[rng.integers(len(centres), size=n)]
    radius = size * 10.0 ** rng.uniform(-3, 3, size=(n, 1))
    z = centre + radius * rng.standard_normal((n, M))
    values = z @ G.T + g
    scale = np.abs(G) @ np.abs(z).T + np.abs(g)[:, None]
    clear = np.all((np.abs(values.T) > 1e-9 * scale) | (norms[:, None] == 0), axis=0)
    return values[clear] > 0


class NotGeneralPosition(ValueError):
    """The arrangement has a vertex with more than M planes through it (within rounding)."""


def general_position_cells(planes, offsets, *, strict: bool = True) -> tuple[np.ndarray, np.ndarray, bool]:
    """An independent listing for arrangements in general position, in plain numpy: every M planes with
    independent normals meet in a vertex, and the 2^M sign patterns of those planes, with the signs of the
    others at the vertex, are the codes of the cells touching it.  Every distinct code gets a witness state
    ``v + t d`` (``N_B d = s``, ``t`` short of every other plane), and the code returned is the witness's own
    code (clear of every plane by 1e-12 relative): every code returned is a cell.

    Planes with a zero offset all meet at the origin (a clipped shallow PLRNN's ``W2 z``): the origin is
    handled apart, its cones listed as the cells of that central arrangement's restrictions to ``x_0 = +1``
    and ``x_0 = -1`` (the same function one dimension lower), each witnessed by a short step from the origin.
    Complete for normals spanning R^M in general position apart from that.

    Returns
    -------
    codes : ndarray, shape (K, S), bool
        Distinct witnessed codes, sorted.
    witnesses : ndarray, shape (K, M)
        A state with each code.
    general : bool
        False when some vertex has another plane within 1e-9 (relative) of it: then the codes are still
        cells, but maybe not all of them.

    Raises
    ------
    NotGeneralPosition
        With ``strict``, instead of returning ``general=False``.
    """
    import itertools

    G, g = np.asarray(planes, dtype=np.float64), np.asarray(offsets, dtype=np.float64)
    S, M = G.shape
    unit, h = G / np.linalg.norm(G, axis=1, keepdims=True), g / np.linalg.norm(G, axis=1)
    through_origin = g == 0
    subsets = np.array(list(itertools.combinations(range(S), M)), dtype=np.int64).reshape(-1, M)
    subsets = subsets[~through_origin[subsets].all(1)]  # the origin: below
    matrices = unit[subsets]
    keep = np.abs(np.linalg.det(matrices)) > 1e-12
    subsets, matrices = subsets[keep], matrices[keep]
    inverses = np.linalg.inv(matrices)
    vertices = -np.einsum("vij,vj->vi", inverses, h[subsets])
    values = vertices @ unit.T + h
    rows = np.arange(len(subsets))[:, None]
    values[rows, subsets] = 0.0
    scale = np.abs(vertices).max(1, keepdims=True) + np.abs(h).max() + 1.0
    near = np.abs(values) <= 1e-9 * scale
    near[rows, subsets] = False
    general = not near.any()
    if strict and not general:
        raise NotGeneralPosition("a vertex has more than M planes through it (within 1e-9)")
    # Codes as integers: bit l of the little-endian words of np.packbits(..., bitorder="little").
    n_bytes = -(-S // 64) * 8
    base = np.zeros((len(subsets), n_bytes), dtype=np.uint8)
    base[:, : -(-S // 8)] = np.packbits(values > 0, axis=1, bitorder="little")
    base = base.view("<u8")
    word, bit = subsets // 64, (subsets % 64).astype(np.uint64)
    keys, origin = [], []
    every = np.arange(len(subsets))
    for pattern, signs in enumerate(itertools.product((0, 1), repeat=M)):
        key = base.copy()
        for k, on in enumerate(signs):
            if on:  # one (row, word) pair per row: a plain fancy-indexed OR is safe
                key[every, word[:, k]] |= np.uint64(1) << bit[:, k]
        keys.append(key)
        origin.append(np.stack([np.arange(len(subsets)), np.full(len(subsets), pattern)], 1))
    keys, origin = np.concatenate(keys), np.concatenate(origin)
    order = np.lexsort(keys.T[::-1])
    fresh = np.ones(len(order), dtype=bool)
    fresh[1:] = np.any(keys[order][1:] != keys[order][:-1], axis=1)
    vertex_index, pattern = origin[order[fresh]].T
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=M)))[pattern]
    directions = np.einsum("vij,vj->vi", inverses[vertex_index], signs)
    speed = np.abs(directions @ unit.T)
    speed[np.arange(len(vertex_index))[:, None], subsets[vertex_index]] = 0.0
    at_vertex = np.abs(values[vertex_index])
    room = np.min(np.where(speed > 0, at_vertex / np.maximum(speed, 1e-300), np.inf), axis=1)
    points = [vertices[vertex_index] + np.minimum(0.5 * room, 1.0)[:, None] * directions]
    if through_origin.sum() >= M:  # the cones at the origin: directions from the restrictions to x_0 = +-1
        cones = [np.array([[1.0]]), np.array([[-1.0]])] if M == 1 else []
        for side in ((1.0, -1.0) if M > 1 else ()):
            _, y, restricted_general = general_position_cells(G[through_origin, 1:], side * G[through_origin, 0], strict=False)
            general &= restricted_general
            cones.append(np.hstack([np.full((len(y), 1), side), y]))
        cones = np.concatenate(cones)
        speed = np.abs(cones @ G[~through_origin].T)
        step = 0.5 * np.min(np.abs(g[~through_origin]) / np.maximum(speed, 1e-300), axis=1, initial=1.0)
        points.append(step[:, None] * cones)
    points = np.concatenate(points)
    true_values = points @ G.T + g
    clear = np.all(np.abs(true_values) > 1e-12 * (np.abs(points) @ np.abs(G).T + np.abs(g)), axis=1)
    codes, points = true_values[clear] > 0, points[clear]
    packed = np.packbits(codes, axis=1)
    _, first = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_index=True)
    order = np.lexsort(codes[first].T[::-1])
    return codes[first][order], points[first][order], general


def independent_fixed_points(model, codes) -> dict[tuple[bool, ...], np.ndarray]:
    """Fixed points of a shallow (or clipped shallow) PLRNN over the given region codes, in numpy: the
    affine piece of each code solved, then kept when the strict code of the solution is that code and the
    true map fixes it (relative 1e-9).  Independent of the package's kernel (``_scyfi``).  ``codes``: a set of
    bool tuples or a bool array of shape (R, S)."""
    A, W1, W2, h1, h2 = (getattr(model, name).detach().double().numpy() for name in ("A", "W1", "W2", "h1", "h2"))
    codes = np.array(sorted(codes) if isinstance(codes, set) else codes, dtype=bool).reshape(-1, model.n_switches)
    H, M = W2.shape
    clipped = model.n_switches == 2 * H
    on = codes[:, :H].astype(np.float64)
    slope = on - codes[:, H:].astype(np.float64) if clipped else on
    J = np.diag(A)[None] + np.einsum("mh,bh,hn->bmn", W1, slope, W2)
    c = (on * h2) @ W1.T + h1
    system = np.eye(M)[None] - J
    fine = np.abs(np.linalg.det(system)) > 1e-12
    z = np.zeros((len(codes), M))
    z[fine] = np.linalg.solve(system[fine], c[fine][..., None])[..., 0]

    def step(x):
        pre = x @ W2.T
        hidden = np.maximum(pre + h2, 0) - (np.maximum(pre, 0) if clipped else 0)
        return A * x + hidden @ W1.T + h1, np.concatenate([pre + h2 > 0, pre > 0], 1) if clipped else pre + h2 > 0

    after, visited = step(z)
    closes = np.linalg.norm(after - z, axis=1) <= 1e-9 * (1 + np.linalg.norm(z, axis=1))
    real = fine & closes & np.all(visited == codes, axis=1)
    return {tuple(code.tolist()): point for code, point in zip(codes[real], z[real])}


def staircase_model(kind: str, seed: int, *, dim: int, hidden: int, noise: float = 0.02) -> torch.nn.Module:
    """A shallow (or clipped shallow) PLRNN with many fixed points: each hidden unit watches one latent
    coordinate (``W2`` near the unit vectors), and the units of a coordinate make its map a zigzag around the
    diagonal (slopes 0.2 and 1.8 in turn), crossing it about once per unit; the latent dimensions multiply the
    counts (hundreds to thousands of fixed points).  ``noise`` perturbs every weight (N(0, noise))."""
    rng = np.random.default_rng(seed)
    clipped = kind == "ClippedShallowPLRNN"
    unit_dim = np.arange(hidden) % dim
    W1, W2, h2, h1 = np.zeros((dim, hidden)), np.eye(dim)[unit_dim], np.zeros(hidden), np.zeros(dim)
    a = 0.2
    for d in range(dim):
        units = np.flatnonzero(unit_dim == d)
        rank = np.arange(len(units))
        # shallow: kinks at x = theta; clipped: a unit ramps on (-theta, 0), all ramps end at the origin
        theta = 1.0 + rank if clipped else rank - (len(units) - 1) / 2
        h2[units] = theta if clipped else -theta
        slope = np.where((rank[::-1] if clipped else rank) % 2 == 0, 1.6, -1.6)
        W1[d, units] = slope
        x = np.linspace(-theta.max() - 1 if clipped else theta.min() - 1, 1 if clipped else theta.max() + 1, 4001)
        active = np.maximum(x[:, None] + h2[units], 0) - (np.maximum(x[:, None], 0) if clipped else 0)
        gap = (a - 1) * x + active @ slope
        h1[d] = -(gap.max() + gap.min()) / 2  # centre the zigzag on the diagonal
    cls = ClippedShallowPLRNN if clipped else ShallowPLRNN
    jitter = lambda shape: noise * rng.standard_normal(shape)  # noqa: E731
    return _set(cls(dim, hidden), A=a + jitter(dim), W1=W1 + jitter(W1.shape), W2=W2 + jitter(W2.shape), h1=h1, h2=h2 + jitter(hidden))
