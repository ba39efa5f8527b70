"""The attractors of piecewise-linear maps: exact cycles of any period, or chaotic / quasi-periodic orbits.

``find_attractors`` simulates a batch of starting states, reads the period of each orbit off the recurrence
of its region codes (any period up to ``max_period``, not only the finder's ``max_order``), solves that cycle
exactly with the SCYFI kernel and checks that the orbit converges to it; orbits with no period are classified
by their largest Lyapunov exponent.  Distinct attractors are reported with the fraction of states reaching
each (multistability).

The orbits and exact Lyapunov exponents themselves are in ``orbits`` (``simulate`` and ``lyapunov_exponents``
are re-exported here).  This module knows nothing of Lightning or TensorBoard.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import _scyfi
from ._checks import finite_or_none, require_dtype, require_int, require_real
from ._search import check_interrupt
from ._stack import ModelStack
from .cycles import Cycle, _one_cpu_thread, _prepare_model, _solve_sequences
from .orbits import _as_states, lyapunov_exponents, simulate  # noqa: F401  (re-exported: published here first)
from .models import require_piecewise_linear

__all__ = [
    "simulate",
    "lyapunov_exponents",
    "ATTRACTOR_KINDS",
    "Attractor",
    "AttractorReport",
    "attractor_label",
    "find_attractors",
    "find_attractors_many",
]


# ----------------------------------------------------------------------------------------------------------------
# Attractors reached from a batch of starting states

# The closed vocabulary of attractor kinds; ``Attractor.kind`` is one of these (dashboards and docs read it).
#   fixed_point / cycle : the orbit's region codes repeat with a period p <= max_period, the p-cycle solved exactly
#                         from them is real and verified, and the orbit converges to it (or, for a neutral
#                         orbit, the points themselves repeat);
#   chaotic             : no period, largest Lyapunov exponent > tolerance;
#   quasi_periodic      : no period, |largest Lyapunov exponent| <= tolerance;
#   unresolved          : no period <= max_period, yet contracting (exponent < -tolerance): a cycle longer than
#                         max_period, or an orbit still in its transient;
#   divergent           : the orbit left every bound (non-finite, a norm above ``divergence_bound``) or keeps
#                         growing over the window (``DIVERGENCE_GROWTH``).
ATTRACTOR_KINDS = ("fixed_point", "cycle", "chaotic", "quasi_periodic", "unresolved", "divergent")

# Distance of the orbit's last stretch from its solved cycle, relative to ``1 + |cycle|``, under which the orbit
# counts as on the cycle; also the tolerance of the point-periodicity test for neutral orbits.
CONVERGENCE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-3}

# An orbit whose largest norm over the window's last third exceeds this factor times (1 + that over its first
# third) is divergent even while still finite and below ``divergence_bound``: an exponentially growing orbit
# would otherwise pass for chaotic (its exponent is its growth rate).
DIVERGENCE_GROWTH = 2.0



def _nan_if_none(value: object) -> float:
    return float("nan") if value is None else float(value)


@dataclass(frozen=True, eq=False)
class Attractor:
    """One attractor reached from some of the starting states.

    Attributes
    ----------
    kind : str
        One of ``ATTRACTOR_KINDS``.
    period : int or None
        Minimal period of a fixed point / cycle; None otherwise.
    cycle : Cycle or None
        The exactly solved, verified cycle (same key as ``find_cycles`` gives).  None for aperiodic and
        divergent orbits, and for a neutral periodic orbit whose cycle system is singular.
    spectral_radius : float or None
        Largest multiplier modulus of the periodic orbit; None when not periodic.
    largest_lyapunov : float
        Largest Lyapunov exponent (nats per step): ``log(spectral_radius) / period`` for a periodic orbit
        (exact), the QR estimate along the orbit otherwise, NaN for a divergent one.
    orbit : ndarray, shape (T, M)
        The last ``T`` simulated points of one orbit that reached it (for figures).
    fraction : float
        Fraction of the starting states that reached it.
    states : tuple of int
        Indices of those starting states.
    """

    kind: str
    period: int | None
    cycle: Cycle | None
    spectral_radius: float | None
    largest_lyapunov: float
    orbit: np.ndarray
    fraction: float
    states: tuple[int, ...] = ()

    @property
    def is_stable(self) -> bool | None:
        """For a periodic attractor, whether every multiplier lies strictly inside the unit circle
        (``Cycle.kind == "stable"``); None otherwise."""
        if self.spectral_radius is None:
            return None
        if self.cycle is not None:
            return self.cycle.is_stable
        return self.spectral_radius < 1 - _scyfi.NEUTRAL_TOLERANCE

    def to_dict(self) -> dict:
        """JSON-ready dict (non-finite numbers as None); ``from_dict`` inverts it."""
        return {
            "kind": self.kind,
            "period": self.period,
            "cycle": None if self.cycle is None else self.cycle.to_dict(),
            "spectral_radius": finite_or_none(self.spectral_radius),
            "largest_lyapunov": finite_or_none(self.largest_lyapunov),
            "orbit": [[finite_or_none(v) for v in row] for row in self.orbit.tolist()],
            "fraction": self.fraction,
            "states": list(self.states),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Attractor":
        radius = data.get("spectral_radius")
        orbit = np.array([[_nan_if_none(v) for v in row] for row in data["orbit"]], dtype=np.float64)
        return cls(
            kind=str(data["kind"]),
            period=None if data.get("period") is None else int(data["period"]),
            cycle=None if data.get("cycle") is None else Cycle.from_dict(data["cycle"]),
            # A periodic orbit's radius is finite; None stays None (not periodic).
            spectral_radius=None if radius is None else float(radius),
            largest_lyapunov=_nan_if_none(data.get("largest_lyapunov")),
            orbit=orbit.reshape(len(data["orbit"]), -1),
            fraction=float(data["fraction"]),
            states=tuple(int(i) for i in data.get("states", ())),
        )


@dataclass(frozen=True)
class AttractorReport:
    """The distinct attractors reached from a batch of starting states.

    Attributes
    ----------
    attractors : tuple of Attractor
        Most-reached first.
    labels : tuple of int
        For each starting state, the index of its attractor in ``attractors``.
    max_period : int
        Periods up to this were detected; longer cycles are ``unresolved``.
    elapsed_s : float
        Wall time of the analysis.
    """

    attractors: tuple[Attractor, ...] = ()
    labels: tuple[int, ...] = ()
    max_period: int = 0
    elapsed_s: float = 0.0

    def __iter__(self):
        return iter(self.attractors)

    def __len__(self) -> int:
        return len(self.attractors)

    @property
    def primary(self) -> Attractor | None:
        """The attractor most starting states reached (the first on ties); None for an empty report."""
        return self.attractors[0] if self.attractors else None

    @property
    def n_states(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        """Number of distinct attractors per kind (every kind of ``ATTRACTOR_KINDS`` listed)."""
        return {kind: sum(a.kind == kind for a in self.attractors) for kind in ATTRACTOR_KINDS}

    def summary(self) -> str:
        """A plain-text table: one row per attractor (kind, period, |λ|max, largest exponent, fraction).

        Examples
        --------
        >>> print(AttractorReport(max_period=8).summary())
        kind            period  |λ|max     λ_1         fraction
        (no starting states)
        """
        rows = [f"{'kind':<15} {'period':<7} {'|λ|max':<10} {'λ_1':<11} fraction"]
        for a in self.attractors:
            period = "-" if a.period is None else str(a.period)
            radius = "-" if a.spectral_radius is None else f"{a.spectral_radius:.4g}"
            rows.append(f"{a.kind:<15} {period:<7} {radius:<10} {a.largest_lyapunov:<11.4g} {a.fraction:.3g}")
        if not self.attractors:
            rows.append("(no starting states)")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        return {
            "attractors": [attractor.to_dict() for attractor in self.attractors],
            "labels": list(self.labels),
            "max_period": self.max_period,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "AttractorReport":
        return cls(
            attractors=tuple(Attractor.from_dict(a) for a in data["attractors"]),
            labels=tuple(int(i) for i in data["labels"]),
            max_period=int(data["max_period"]),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )


def _leaving(window: np.ndarray, bound: float) -> np.ndarray:
    """Which orbits ``(B, W, M)`` left every bound: non-finite, or a norm beyond ``bound``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return ~np.isfinite(window).all(axis=(1, 2)) | (np.linalg.norm(window, axis=-1).max(axis=1) > bound)


def _growing(window: np.ndarray) -> np.ndarray:
    """Which orbits ``(B, W, M)`` keep growing: the largest norm over the window's last third is more than
    ``DIVERGENCE_GROWTH`` times (1 + that over its first third)."""
    norms = np.linalg.norm(window, axis=-1)
    third = max(1, window.shape[1] // 3)
    return norms[:, -third:].max(axis=1) > DIVERGENCE_GROWTH * (1.0 + norms[:, :third].max(axis=1))


def _code_periods(codes: np.ndarray, candidates: np.ndarray, max_period: int) -> np.ndarray:
    """Smallest ``p <= max_period`` with ``codes[b, t + p] == codes[b, t]`` over the whole window, 0 if none.

    ``codes`` is (B, W, S) bool; only rows where ``candidates`` is True are examined.  Codes are packed into
    64-bit words first; a period must repeat the window's first and last few codes, which one vectorised test
    checks for every period and row, and a row's remaining periods are then compared over the whole window
    together (a settled orbit's smallest one first).
    """
    batch, window, _ = codes.shape
    packed = np.packbits(codes, axis=-1)  # (B, W, ceil(S / 8)) bytes
    n_bytes = max(8, -(-packed.shape[-1] // 8) * 8)  # whole 64-bit words, at least one (a model with S = 0)
    padded = np.zeros(packed.shape[:-1] + (n_bytes,), dtype=np.uint8)
    padded[..., : packed.shape[-1]] = packed
    words = padded.view(np.uint64)  # (B, W, n_words)
    periods = np.zeros(batch, dtype=np.int64)
    open_rows = np.flatnonzero(candidates)
    top = min(max_period, window - 1)
    if open_rows.size == 0 or top < 1:
        return periods
    # A period must repeat the first few codes and the last few: one vectorised test of every period prunes most
    # of them (an aperiodic orbit kept every row open through all max_period full-window comparisons, ~2.6 ms a
    # step's book; the head catches an orbit that settled within the window, whose tail repeats at every lag).
    edge = min(8, window - top)
    every_lag = np.arange(1, top + 1)[:, None]
    rows = words[open_rows]
    first, last = np.arange(edge), np.arange(window - edge, window)
    possible = ((rows[:, first + every_lag] == rows[:, first][:, None]).all(axis=(2, 3))
                & (rows[:, last - every_lag] == rows[:, last][:, None]).all(axis=(2, 3)))  # (rows, top)
    steps = np.arange(window)
    for index in np.flatnonzero(possible.any(axis=1)):
        row, lags = words[open_rows[index]], np.flatnonzero(possible[index]) + 1
        if np.array_equal(row[lags[0]:], row[: window - lags[0]]):  # a settled orbit: its smallest lag at once
            periods[open_rows[index]] = lags[0]
            continue
        # Every remaining lag in one comparison (an orbit that keeps returning to a few regions leaves dozens).
        ahead = steps[None, :] + lags[1:, None]
        repeat = ((row[np.minimum(ahead, window - 1)] == row[None]).all(axis=-1) | (ahead >= window)).all(axis=-1)
        if repeat.any():
            periods[open_rows[index]] = lags[1:][np.argmax(repeat)]
    return periods


def _distance_to_cycle(segment: np.ndarray, points: np.ndarray) -> float:
    """Largest distance of ``segment (k, M)`` from the cycle's ``points (k, M)`` at the best-aligned phase."""
    rotated = points[_scyfi.rotation_table(len(points))]  # (k phases, k, M)
    return float(np.linalg.norm(rotated - segment[None], axis=-1).max(axis=1).min())


def _canonical_codes(codes: np.ndarray) -> np.ndarray:
    """A code sequence (k, S) in its lexicographically smallest rotation (the order of ``Cycle.codes``)."""
    return codes[_scyfi.rotation_table(len(codes))[_scyfi.canonical_rotation(codes)]]


def _canonical_key(codes: np.ndarray) -> bytes:
    """``Cycle.key`` of a code sequence (k, S): its lexicographically smallest rotation, as bytes."""
    return _canonical_codes(codes).astype(np.uint8).tobytes()


def _solve_periodic(model, orbits, codes, periods, dtype, device, known: dict[bytes, Cycle] | None = None) -> dict[int, Cycle]:
    """Cycles that the periodic orbits converge to, by state index.

    The code sequence of the last ``p`` window steps is solved once per distinct sequence, in its canonical
    rotation (so a cycle's points do not depend on the phase at which an orbit reached it), each sequence alone
    (so its points do not depend on which other sequences the orbits visited either); ``known`` holds cycles
    already solved that way with this model, by ``Cycle.key``.  Multiples of ``p`` are never tried: their
    solution is the same p-cycle, which the minimal-period check rejects (trying them made a diverging orbit
    that stays in one region cost seconds: 255 solves of orders up to 256).  The orbit is on its cycle when its
    last ``p`` points lie within the convergence tolerance of the cycle's points, or when the cycle is stable and
    the orbit got closer over the window (it stayed in the cycle's regions throughout, where the error evolves
    by the cycle's own contracting product).
    """
    window = codes.shape[1]
    tolerance = CONVERGENCE_TOLERANCE[dtype]
    reached: dict[int, Cycle] = {}
    by_order: dict[int, list[int]] = {}
    for b in np.flatnonzero(periods):
        by_order.setdefault(int(periods[b]), []).append(int(b))
    found: dict[bytes, Cycle | None] = dict(known or {})
    for order, rows in by_order.items():
        # Orbits on one cycle end in few distinct sequences (one per phase): canonicalise those only.
        distinct, which = np.unique(codes[rows, window - order :], axis=0, return_inverse=True)
        keys = [_canonical_key(sequence) for sequence in distinct]
        for key, sequence in zip(keys, distinct):
            if key not in found:
                solved = _solve_sequences(model, _canonical_codes(sequence)[None], dtype, device)
                found[key] = solved[0] if solved else None
        for b, index in zip(rows, np.asarray(which).reshape(-1)):
            cycle = found[keys[index]]
            if cycle is None:
                continue
            scale = 1.0 + float(np.abs(cycle.points).max())
            end = _distance_to_cycle(orbits[b, window - order :], cycle.points)
            start = _distance_to_cycle(orbits[b, :order], cycle.points)
            if end <= tolerance * scale or (cycle.is_stable and end < start):
                reached[b] = cycle
    return reached


def _point_period(orbit: np.ndarray, code_period: int, tolerance: float) -> int:
    """Smallest multiple ``k`` of the code period with ``orbit[t + k] == orbit[t]`` over the last ``k`` steps
    (to ``tolerance`` relative to scale), 0 if none: a numerically periodic orbit without a solvable cycle."""
    window = len(orbit)
    scale = 1.0 + float(np.abs(orbit).max())
    for order in range(code_period, window // 2 + 1, code_period):
        last, before = orbit[window - order :], orbit[window - 2 * order : window - order]
        if np.linalg.norm(last - before, axis=-1).max() <= tolerance * scale:
            return order
    return 0


def _orbit_radius(model, codes: np.ndarray, device: torch.device) -> float:
    """Spectral radius of the Jacobian product along a code sequence (k, S)."""
    jacobians, offsets = model.affine_pieces(torch.as_tensor(codes, device=device))
    product, _ = _scyfi.cycle_products(jacobians, offsets)
    return float(np.abs(np.linalg.eigvals(product.cpu().double().numpy())).max())


def _stretch(stack: ModelStack, codes: Tensor, vectors: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Push unit vectors ``(N, B, M)`` through the exact Jacobians of the region codes ``(N, B, T, S)`` of their
    orbits, renormalising every step; returns the summed log-stretches ``(N, B)`` and the final vectors.

    This is the first column of ``lyapunov_exponents``' QR method (which gives the largest exponent), run on
    the codes of a window already simulated instead of a second simulation, in numpy (small matrices: torch's
    per-call overhead would dominate).  A Jacobian that annihilates the vector (superstable) gives ``-inf``.
    """
    log_stretch = np.zeros(codes.shape[:2])
    vectors = vectors.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for begin in range(0, codes.shape[2], chunk):
            jacobians = stack.affine_pieces(codes[:, :, begin : begin + chunk])[0].cpu().double().numpy()
            for product in _block_products(jacobians):
                vectors = np.einsum("nbij,nbj->nbi", product, vectors)
                norms = np.sqrt(np.einsum("nbi,nbi->nb", vectors, vectors))
                log_stretch += np.log(norms)
                vectors /= np.maximum(norms, 1e-300)[..., None]
    return log_stretch, vectors


# Jacobians multiplied together before the vector is pushed through and renormalised (a few steps of an orbit
# stretch it by far less than float64's range; one renormalisation per step cost 4 numpy calls a step).
STRETCH_BLOCK = 8


def _block_products(jacobians: np.ndarray) -> list[np.ndarray]:
    """The products of ``STRETCH_BLOCK`` consecutive Jacobians of ``(N, B, T, M, M)`` (the later on the left),
    and the ones left over at the end alone, in order: ``(N, B, M, M)`` each."""
    steps = jacobians.shape[2]
    whole = steps - steps % STRETCH_BLOCK
    products: list[np.ndarray] = []
    if whole:
        blocks = jacobians[:, :, :whole].reshape(jacobians.shape[:2] + (whole // STRETCH_BLOCK, STRETCH_BLOCK) + jacobians.shape[3:])
        product = blocks[:, :, :, 0]
        for j in range(1, STRETCH_BLOCK):
            product = blocks[:, :, :, j] @ product
        products.extend(product[:, :, k] for k in range(product.shape[2]))
    products.extend(jacobians[:, :, j] for j in range(whole, steps))
    return products


def _group_by_overlap(code_sets: dict[int, set[bytes]]) -> list[list[int]]:
    """Groups of states whose region sets overlap: two orbits join when they share at least half of the
    regions of the smaller set (union-find, so the relation is closed transitively)."""
    parent = {b: b for b in code_sets}

    def root(b: int) -> int:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    states = sorted(code_sets)
    for i, a in enumerate(states):
        for b in states[i + 1 :]:
            shared = len(code_sets[a] & code_sets[b])
            if 2 * shared >= min(len(code_sets[a]), len(code_sets[b])) and root(a) != root(b):
                parent[root(b)] = root(a)
    groups: dict[int, list[int]] = {}
    for b in states:
        groups.setdefault(root(b), []).append(b)
    return list(groups.values())


def find_attractors(
    model: object,
    states: object,
    *,
    max_period: int = 256,
    n_transient: int = 1000,
    n_window: int | None = None,
    n_orbit: int = 200,
    lyapunov_tolerance: float = 5e-3,
    divergence_bound: float = 1e10,
    n_rounds: int = 2,
    dtype: torch.dtype | str = torch.float64,
) -> AttractorReport:
    """The attractors reached from a batch of starting states: exact cycles of any period up to ``max_period``,
    or chaotic / quasi-periodic orbits by their largest Lyapunov exponent.

    All states are simulated together for ``n_transient + n_window`` steps.  Over the window each orbit's
    region codes are tested for the smallest period ``p <= max_period`` with which they repeat throughout;
    that code sequence is then solved exactly with the SCYFI kernel (the same verification as ``find_cycles``,
    so ``Attractor.cycle.key`` equals ``find_cycles``' key for that cycle), and the orbit must converge to the
    solution (multiples of p would give the same cycle, rejected as non-minimal, so they are not tried); a
    neutral orbit whose points repeat without a solvable cycle is still reported as periodic (``cycle=None``).  Orbits
    without a period get their largest Lyapunov exponent from the exact Jacobians along the window (the first
    column of ``lyapunov_exponents``' QR method).  See ``ATTRACTOR_KINDS`` for the classification.

    Distinct attractors: periodic ones by cycle key (rotation invariant), aperiodic ones of one kind when their
    sets of visited regions overlap by at least half of the smaller set, all divergent orbits as one.

    Parameters
    ----------
    model : PiecewiseLinear
        Any model implementing the protocol; only read (copied when its dtype differs from ``dtype``).
    states : array-like, shape (B, M) or (M,)
        Starting states, e.g. the previous attractor's points, states from the data and a few random ones.
    max_period : int
        Longest period detected (>= 1).
    n_transient : int
        Steps discarded before the window (>= 0).
    n_window : int, optional
        Steps over which periodicity is tested; at least ``2 * max_period``, default ``3 * max_period``.
    n_orbit : int
        Points kept per attractor in ``Attractor.orbit`` (the window's last ones; at most ``n_window``).
    lyapunov_tolerance : float
        ``|λ| <=`` this is quasi-periodic, above it chaotic, below ``-tolerance`` unresolved.
    divergence_bound : float
        An orbit whose norm exceeds this in the window (or is non-finite) is divergent; so is one that keeps
        growing (``DIVERGENCE_GROWTH``).
    n_rounds : int
        Windows simulated at most: an orbit without a period is continued for another window (up to
        ``n_rounds`` in all), since a long transient near a saddle looks aperiodic; its exponent is the
        average over the last window (the earlier ones count as transient; the tangent vector carries over).
    dtype : torch.dtype or str
        Precision (float64 by default; float32 uses the looser tolerances of ``_scyfi.TOLERANCES`` and
        ``CONVERGENCE_TOLERANCE``).

    Returns
    -------
    AttractorReport

    Raises
    ------
    TypeError
        The model does not implement the PiecewiseLinear protocol.
    ValueError
        Bad ``states`` shape or non-finite states, non-finite parameters, bad counts or tolerances.

    Examples
    --------
    The 1-D map ``z' = z / 2 + 1`` has the stable fixed point 2, reached from every state:

    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)
    >>> report = find_attractors(model, [[0.0], [10.0]], max_period=8)
    >>> report.primary.kind, report.primary.period, report.primary.cycle.points.tolist(), report.primary.fraction
    ('fixed_point', 1, [[2.0]], 1.0)
    """
    started = time.monotonic()
    require_piecewise_linear(model)
    dtype = require_dtype("dtype", dtype)
    analysed, device = _prepare_model(model, dtype, None, copy=False)
    z, _ = _as_states(analysed, states, dtype, "states")
    if z.shape[0] == 0:
        raise ValueError("states must hold at least one state, got an empty batch")
    stack = ModelStack.single(analysed, dtype=dtype, device=device)
    (report,) = find_attractors_many(
        stack,
        [z],
        max_period=max_period,
        n_transient=n_transient,
        n_window=n_window,
        n_orbit=n_orbit,
        lyapunov_tolerance=lyapunov_tolerance,
        divergence_bound=divergence_bound,
        n_rounds=n_rounds,
    )
    return dataclasses.replace(report, elapsed_s=time.monotonic() - started)


def find_attractors_many(
    stack: ModelStack,
    states: Sequence[Tensor],
    *,
    max_period: int = 256,
    n_transient: int = 1000,
    n_window: int | None = None,
    n_orbit: int = 200,
    lyapunov_tolerance: float = 5e-3,
    divergence_bound: float = 1e10,
    n_rounds: int = 2,
    width: int = 0,
    known_cycles: Sequence[dict[bytes, Cycle]] | None = None,
) -> list[AttractorReport]:
    """``find_attractors`` for every weight setting of a ``ModelStack`` at once: ``states[i] (B_i, M)`` are
    the starting states of step ``i`` (in the stack's dtype and device).  The orbits of all steps are simulated
    together; each step's report equals what ``find_attractors`` gives for that step alone, because every
    orbit is computed independently of the others.  Every step's batch is padded with copies of its last state
    (left out of the report) to ``width`` states or the largest batch: with a fixed ``width`` the tensors of a
    step have the same shape however many steps are analysed together, so not even the choice of kernels
    differs.  ``known_cycles[i]``: cycles already solved alone with step ``i``'s weights (by ``Cycle.key``),
    not solved again when its orbits reach them."""
    started = time.monotonic()
    max_period = require_int("max_period", max_period, 1)
    n_transient = require_int("n_transient", n_transient, 0)
    n_window = require_int("n_window", 3 * max_period if n_window is None else n_window, 2 * max_period)
    n_orbit = require_int("n_orbit", n_orbit, 1)
    lyapunov_tolerance = require_real("lyapunov_tolerance", lyapunov_tolerance, minimum=0.0)
    divergence_bound = require_real("divergence_bound", divergence_bound, minimum=0.0, exclusive_minimum=True)
    n_rounds = require_int("n_rounds", n_rounds, 1)
    if len(states) != stack.n_steps:
        raise ValueError(f"find_attractors_many got {len(states)} batches of states for {stack.n_steps} steps")
    sizes = [int(batch.shape[0]) for batch in states]
    width = max(sizes + [width])
    z = torch.stack([torch.cat([batch, batch[-1:].expand(width - len(batch), -1)]) for batch in states])
    known_cycles = known_cycles if known_cycles is not None else [{} for _ in sizes]
    books = [
        _OrbitBook(stack.model(i), size, n_window, stack, max_period, divergence_bound, known_cycles[i])
        for i, size in enumerate(sizes)
    ]
    active = list(range(stack.n_steps))  # the steps with orbits still to simulate, and their sub-stack
    current = stack
    with torch.no_grad(), _one_cpu_thread(stack.device):
        step = current.simulation_step()
        for done in range(n_transient):
            if done % 64 == 0:
                check_interrupt()
            z = step(z)[0]
        for _ in range(n_rounds):
            check_interrupt()
            trajectory, visited = _scyfi.simulate(step, z, n_window)
            windows = trajectory[:, :, :n_window].cpu().double().numpy()  # point t has code visited[:, :, t]
            codes = visited.cpu().numpy()
            kept = {i: books[i].absorb(windows[j, : books[i].batch], codes[j, : books[i].batch]) for j, i in enumerate(active)}
            still = [j for j, i in enumerate(active) if len(kept[i])]
            if not still:
                break
            # Orbits without a period (yet): their largest exponent over this window, and another window in case
            # they were still in a transient (long transients near a saddle look aperiodic).  Only the steps with
            # such orbits go on.
            if len(still) < len(active):
                current, visited, trajectory = current.select(still), visited[still], trajectory[still]
                active = [active[j] for j in still]
                step = current.simulation_step()
            vectors = np.stack([np.pad(books[i].vectors, ((0, width - books[i].batch), (0, 0))) for i in active])
            stretch, vectors = _stretch(current, visited, vectors)
            for j, i in enumerate(active):
                rows = kept[i]
                books[i].vectors[rows] = vectors[j, rows]
                books[i].log_stretch[rows] = stretch[j, rows]  # the last window counts; earlier ones were transient
            z = trajectory[:, :, n_window]
    elapsed = time.monotonic() - started
    return [book.report(n_orbit, lyapunov_tolerance, elapsed / stack.n_steps) for book in books]


class _OrbitBook:
    """One step's orbits through the rounds of ``find_attractors_many``: what each starting state reached."""

    def __init__(self, model, batch: int, n_window: int, stack: ModelStack, max_period: int, divergence_bound: float,
                 known: dict[bytes, Cycle]):
        self.model, self.batch, self.n_window, self.known = model, batch, n_window, known
        self.dtype, self.device, n_switches = stack.dtype, stack.device, stack.n_switches
        self.max_period, self.divergence_bound = max_period, divergence_bound
        dim = model.state_dim
        self.orbits = np.full((batch, n_window, dim), np.nan)  # the last window simulated for each state
        self.codes = np.zeros((batch, n_window, n_switches), dtype=bool)
        self.divergent = np.zeros(batch, dtype=bool)
        self.cycles: dict[int, Cycle] = {}
        self.neutral: dict[int, tuple[int, float]] = {}
        generic = np.linspace(1.0, 2.0, dim)  # a fixed start vector, not orthogonal to typical directions
        self.vectors = np.tile(generic / np.linalg.norm(generic), (batch, 1))
        self.log_stretch = np.zeros(batch)
        self.open_rows = np.arange(batch)

    def absorb(self, window: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Take one round's window of every state; returns the rows still without a period (continued)."""
        open_rows = self.open_rows
        if open_rows.size == 0:
            return open_rows
        window, codes = window[open_rows], codes[open_rows]
        self.orbits[open_rows], self.codes[open_rows] = window, codes
        lost = _leaving(window, self.divergence_bound)
        self.divergent[open_rows[lost]] = True
        periods = np.zeros(self.batch, dtype=np.int64)
        periods[open_rows] = _code_periods(codes, ~lost, self.max_period)
        self.cycles.update(_solve_periodic(self.model, self.orbits, self.codes, periods, self.dtype, self.device, self.known))
        # Neutral periodic orbits: points repeat, but no verified cycle was solved from the codes.
        for b in np.flatnonzero(periods):
            if int(b) not in self.cycles:
                order = _point_period(self.orbits[b], int(periods[b]), CONVERGENCE_TOLERANCE[self.dtype])
                if order:
                    self.neutral[int(b)] = (order, _orbit_radius(self.model, self.codes[b, self.n_window - order :], self.device))
        still = np.array([not lost[i] and b not in self.cycles and b not in self.neutral for i, b in enumerate(open_rows)], dtype=bool)
        self.open_rows = open_rows[still]
        return self.open_rows

    def report(self, n_orbit: int, lyapunov_tolerance: float, elapsed_s: float) -> AttractorReport:
        """Group the states into distinct attractors; each group is described by its first state."""
        n_window, codes, divergent = self.n_window, self.codes, self.divergent
        exponents = self.log_stretch / n_window
        # Still without a period after the last window: an orbit that keeps growing is divergent, not chaotic.
        open_rows = self.open_rows
        growing = open_rows[_growing(self.orbits[open_rows])]
        divergent[growing] = True
        open_rows = np.setdiff1d(open_rows, growing)
        groups: dict[tuple, list[int]] = {}
        for b, cycle in self.cycles.items():
            groups.setdefault(("cycle", cycle.key), []).append(b)
        for b, (order, _) in self.neutral.items():
            groups.setdefault(("neutral", order, _canonical_key(codes[b, n_window - order :])), []).append(b)
        kinds: dict[int, str] = {}
        for b in open_rows.tolist():
            exponent = float(exponents[b])
            if math.isnan(exponent):
                divergent[b] = True
            elif exponent > lyapunov_tolerance:
                kinds[b] = "chaotic"
            else:
                kinds[b] = "quasi_periodic" if exponent >= -lyapunov_tolerance else "unresolved"
        for kind in ("chaotic", "quasi_periodic", "unresolved"):
            code_sets = {b: {row.tobytes() for row in codes[b]} for b, k in kinds.items() if k == kind}
            for i, members in enumerate(_group_by_overlap(code_sets)):
                groups[(kind, i)] = members
        if divergent.any():
            groups[("divergent",)] = [int(b) for b in np.flatnonzero(divergent)]
        attractors = []
        for members in groups.values():
            members = sorted(members)
            first = members[0]
            kept = self.orbits[first, max(0, n_window - n_orbit) :]
            cycle, period, radius, exponent = self.cycles.get(first), None, None, float("nan")
            if cycle is not None:
                period, radius = cycle.order, cycle.spectral_radius
            elif first in self.neutral:
                period, radius = self.neutral[first]
            if period is not None:
                kind = "fixed_point" if period == 1 else "cycle"
                exponent = math.log(radius) / period if radius > 0 else -math.inf
            elif divergent[first]:
                kind = "divergent"
            else:
                kind, exponent = kinds[first], float(exponents[first])
            attractors.append(Attractor(kind, period, cycle, radius, exponent, kept, len(members) / self.batch, tuple(members)))
        attractors.sort(key=lambda a: (-len(a.states), a.states[0]))
        labels = [0] * self.batch
        for index, attractor in enumerate(attractors):
            for b in attractor.states:
                labels[b] = index
        return AttractorReport(tuple(attractors), tuple(labels), self.max_period, elapsed_s)


def attractor_label(kind: str | None, period: int | None = None) -> str:
    """A short name of an attractor (its kind and period) for tables and event descriptions.

    Examples
    --------
    >>> attractor_label("cycle", 16), attractor_label("fixed_point", 1), attractor_label("quasi_periodic")
    ('16-cycle', 'fixed point', 'quasi-periodic')
    """
    if kind is None:
        return "none"
    if period is not None:
        return "fixed point" if period == 1 else f"{period}-cycle"
    return kind.replace("_", "-")
