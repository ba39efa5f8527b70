"""Exact fixed points and k-cycles of piecewise-linear maps (SCYFI, batched in torch).

A k-cycle through regions ``D_1 .. D_k`` solves ``(I - J_k … J_1) z_1 = c̃`` where ``c̃`` accumulates the
offsets.  SCYFI guesses region sequences, solves, simulates the true map, keeps the orbit when it visits
the assumed regions and otherwise retries from the regions it did visit.  Here many sequences are solved
at once with one batched ``torch.linalg.solve_ex`` per iteration, on CPU or CUDA.

Every reported cycle is verified with the nonlinear map: its closing residual is small relative to its
scale, the codes it visits are the assumed ones, its period is minimal, and it is reported once (up to
rotation).  The batched solve, the simulation and these checks are the kernel in ``_scyfi`` (shared with
``bifurcations.scan``); this module searches region sequences, collects verified cycles and defines the
result types.  The realizable regions that exhaustive orders enumerate are listed by ``regions``.  A model's
``affine_pieces`` is checked against its ``step`` once per model object
(``models.check_protocol``).  This module knows nothing of Lightning or TensorBoard.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from . import _scyfi
from ._checks import require_bool, require_dtype, require_int
from ._scyfi import NEUTRAL_TOLERANCE, TOLERANCES
from ._search import CycleCollector, FreshSearch, RegionTables, search_fresh
from ._stack import ModelStack
from .models import PiecewiseLinearRNN, all_codes, check_protocol, detached_copy, require_piecewise_linear, search_radius
from .regions import DEFAULT_MAX_CELLS, CellListing

__all__ = [
    "Cycle",
    "CycleSet",
    "FinderStats",
    "ORDER_STATUSES",
    "STABILITY_KINDS",
    "find_cycles",
    "exhaustive_cycles",
    "follow_cycle",
    "cycle_determinant_sign",
    "cycles_from_sequences",
]

# The closed vocabulary of stability kinds; Cycle.kind returns one of these.
STABILITY_KINDS = ("stable", "unstable", "saddle", "neutral")

# How a CycleSet's cycles of one order were obtained (CycleSet.statuses):
#   exhaustive  every realizable region sequence of that order was solved: the list is complete (proved);
#   searched    SCYFI's heuristic random search ran (the effort is in FinderStats): a lower bound;
#   warm_only   only the warm start's region sequences were re-solved: a lower bound;
#   cut         the time budget stopped the search in or before this order: what was found is kept.
ORDER_STATUSES = ("exhaustive", "searched", "warm_only", "cut")

# find_cycles enumerates an order when it has at most this many region sequences (R**k).  Measured on a
# 2-core CPU (docs/benchmarks.md): 2**18 sequences of order 3 cost ~0.25 s quiet (0.6-0.8 s busy), a default
# random search of that order 0.04-0.09 s.  With 2**16 the fuzz missed 8 of 13,426 cycles, all in clipped
# shallow PLRNNs with 41..64 regions whose order 3 (R**3 <= 2**18) was then only searched.
DEFAULT_EXHAUSTIVE_LIMIT = 2**18

# find_cycles lists a model's realizable regions (regions.list_cells, from the arrangement's vertices) when it
# can have at most this many (``cell_count_bound``; 2**S for orthant models): the default exhaustive limit, so
# every model whose fixed points can be enumerated has them enumerated.  ShallowPLRNN(3, 50) has 20,876 cells,
# ShallowPLRNN(6, 20) 60,460.  Larger models get the heuristic search, with regions drawn from random states
# and trajectories.
REGION_LISTING_LIMIT = DEFAULT_MAX_CELLS

# Models whose regions are not an arrangement's cells (every one of the 2**S codes of a PLRNN / ALRNN, or a
# user's own realizable_codes / all 2**S codes) are enumerated, as before, only with at most this many codes:
# a PLRNN's fixed points have 2**M orthants to solve, and enumerating them costs ~0.8 s per call for M = 16
# and ~4 s for M = 18 against ~20-35 ms searched (1 thread), which the per-step monitor cannot afford.
CODE_TABLE_LIMIT = 128

# NEUTRAL_TOLERANCE and the per-dtype TOLERANCES live in the kernel (_scyfi) and are re-exported here.


@dataclass(frozen=True, eq=False)
class Cycle:
    """One verified fixed point (``order == 1``) or k-cycle.

    Attributes
    ----------
    order : int
        Minimal period ``k``.
    points : ndarray, shape (k, M)
        The cycle's points in visiting order, starting at the canonical rotation.
    codes : ndarray, shape (k, S), bool
        Region code of each point.
    eigenvalues : ndarray, shape (M,), complex
        Multipliers: eigenvalues of the k-step Jacobian product ``J_k … J_1``.
    residual : float
        ``|F^k(z_1) - z_1| / (1 + |z_1|)`` from simulating the true map.
    border_margin : float
        Smallest distance of a cycle point to a switching plane (NaN when the model has no planes);
        near zero means a border collision is close.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)
    >>> fixed_point = find_cycles(model, max_order=1).by_order(1)[0]
    >>> fixed_point.points.round(6).tolist(), fixed_point.kind
    ([[2.0]], 'stable')
    """

    order: int
    points: np.ndarray
    codes: np.ndarray
    eigenvalues: np.ndarray
    residual: float = 0.0
    border_margin: float = float("nan")
    is_virtual: bool = False

    @property
    def spectral_radius(self) -> float:
        """Largest multiplier modulus; the cycle is stable iff this is below 1."""
        return float(np.abs(self.eigenvalues).max()) if self.eigenvalues.size else 0.0

    @property
    def n_unstable(self) -> int:
        """Number of multipliers outside the unit circle (beyond the neutral tolerance)."""
        return int((np.abs(self.eigenvalues) > 1 + NEUTRAL_TOLERANCE).sum())

    @property
    def n_unstable_complex(self) -> int:
        """Number of non-real multipliers outside the unit circle."""
        outside = np.abs(self.eigenvalues) > 1 + NEUTRAL_TOLERANCE
        return int((outside & (np.abs(self.eigenvalues.imag) > 1e-12)).sum())

    @property
    def kind(self) -> str:
        """One of ``STABILITY_KINDS``."""
        moduli = np.abs(self.eigenvalues)
        if np.any(np.abs(moduli - 1) <= NEUTRAL_TOLERANCE):
            return "neutral"
        if np.all(moduli < 1):
            return "stable"
        return "unstable" if np.all(moduli > 1) else "saddle"

    @property
    def is_stable(self) -> bool:
        return self.kind == "stable"

    @property
    def key(self) -> bytes:
        """Identity of the cycle: its canonical region-code sequence (rotation invariant)."""
        return self.codes.astype(np.uint8).tobytes()

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it exactly."""
        return {
            "order": self.order,
            "points": self.points.tolist(),
            "codes": self.codes.astype(int).tolist(),
            "eigenvalues": [[float(v.real), float(v.imag)] for v in self.eigenvalues],
            "residual": self.residual,
            # None when there is no finite margin (no planes, or no switch at all): strict JSON has no NaN/inf.
            "border_margin": self.border_margin if math.isfinite(self.border_margin) else None,
            "kind": self.kind,
            "spectral_radius": self.spectral_radius,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Cycle":
        eigenvalues = np.array([complex(re, im) for re, im in data["eigenvalues"]], dtype=np.complex128)
        margin = data.get("border_margin")
        return cls(
            order=int(data["order"]),
            points=np.asarray(data["points"], dtype=np.float64),
            codes=np.asarray(data["codes"], dtype=bool),
            eigenvalues=eigenvalues,
            residual=float(data.get("residual", 0.0)),
            border_margin=float("nan") if margin is None else float(margin),
        )


@dataclass(frozen=True)
class FinderStats:
    """How much work a search took.

    Attributes
    ----------
    iterations : dict[int, int]
        Batched SCYFI iterations per order.
    n_solves : int
        Linear systems solved (sequences tried), all orders together.
    n_singular : int
        Systems skipped as singular or non-finite.
    warm_start_hits : int
        Warm-start sequences that were real cycles on their first solve.
    elapsed_s : float
        Wall time of the search.
    """

    iterations: dict[int, int] = field(default_factory=dict)
    n_solves: int = 0
    n_singular: int = 0
    warm_start_hits: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "iterations": {str(k): v for k, v in self.iterations.items()},
            "n_solves": self.n_solves,
            "n_singular": self.n_singular,
            "warm_start_hits": self.warm_start_hits,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FinderStats":
        return cls(
            iterations={int(k): int(v) for k, v in data.get("iterations", {}).items()},
            n_solves=int(data.get("n_solves", 0)),
            n_singular=int(data.get("n_singular", 0)),
            warm_start_hits=int(data.get("warm_start_hits", 0)),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )


@dataclass(frozen=True)
class CycleSet:
    """All cycles found in one search, sorted by order.

    Attributes
    ----------
    cycles : tuple[Cycle, ...]
    orders : tuple[int, ...]
        The orders that were searched.
    stats : FinderStats
    statuses : dict[int, str]
        How each order's cycles were obtained, one of ``ORDER_STATUSES``: ``"exhaustive"`` (every region
        sequence solved: complete), ``"searched"`` (heuristic search: a lower bound), ``"warm_only"`` (only
        the warm start re-solved) or ``"cut"`` (stopped by the time budget).  Orders not given are
        ``"searched"``.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> cycles = find_cycles(PLRNN(2), max_order=2, seed=0)
    >>> set(cycles.counts()) == {1, 2}
    True
    >>> cycles.statuses, cycles.complete          # 4 regions: 4 and 16 sequences, both enumerated
    ({1: 'exhaustive', 2: 'exhaustive'}, True)
    >>> CycleSet(orders=(1, 2), statuses={1: "exhaustive"}).status(2)
    'searched'
    """

    cycles: tuple[Cycle, ...] = ()
    orders: tuple[int, ...] = ()
    stats: FinderStats = field(default_factory=FinderStats)
    statuses: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        statuses = {int(k): v for k, v in dict(self.statuses).items()}
        unknown = {k: v for k, v in statuses.items() if v not in ORDER_STATUSES}
        if unknown:
            raise ValueError(f"statuses must be one of {ORDER_STATUSES}, got {unknown}")
        extra = sorted(set(statuses) - set(self.orders))
        if extra:
            raise ValueError(f"statuses name orders {extra} that are not in orders {tuple(self.orders)}")
        object.__setattr__(self, "statuses", {k: statuses.get(k, "searched") for k in self.orders})

    def status(self, order: int) -> str:
        """How the cycles of ``order`` were obtained (one of ``ORDER_STATUSES``); KeyError if not searched."""
        return self.statuses[order]

    def is_exhaustive(self, order: int) -> bool:
        """True when every region sequence of ``order`` was solved: ``by_order(order)`` is all there is."""
        return self.statuses.get(order) == "exhaustive"

    @property
    def complete(self) -> bool:
        """True when every searched order is exhaustive (the counts are exact, not lower bounds)."""
        return all(status == "exhaustive" for status in self.statuses.values())

    @property
    def cut(self) -> bool:
        """True when the time budget stopped the search in some order."""
        return "cut" in self.statuses.values()

    def count_label(self, order: int) -> str:
        """The number of cycles of ``order`` as text: ``"3"`` when exhaustive, ``"≥ 3"`` for a lower bound."""
        count = len(self.by_order(order))
        return str(count) if self.is_exhaustive(order) else f"≥ {count}"

    def __iter__(self) -> Iterator[Cycle]:
        return iter(self.cycles)

    def __len__(self) -> int:
        return len(self.cycles)

    def by_order(self, order: int) -> list[Cycle]:
        """The cycles of minimal period ``order``."""
        return [cycle for cycle in self.cycles if cycle.order == order]

    def counts(self) -> dict[int, int]:
        """Number of cycles per searched order (orders with none included)."""
        return {order: len(self.by_order(order)) for order in self.orders}

    def stable_counts(self) -> dict[int, int]:
        """Number of stable cycles per searched order."""
        return {order: sum(c.is_stable for c in self.by_order(order)) for order in self.orders}

    @property
    def n_stable(self) -> int:
        return sum(cycle.is_stable for cycle in self.cycles)

    def to_dict(self) -> dict:
        return {
            "orders": list(self.orders),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "complete": self.complete,
            "cut": self.cut,
            "cycles": [cycle.to_dict() for cycle in self.cycles],
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CycleSet":
        """Inverse of ``to_dict``.  JSON written before per-order statuses (a ``"complete"`` flag only) reads
        as every order ``"searched"``, or every order ``"cut"`` when ``complete`` was false."""
        orders = tuple(int(k) for k in data["orders"])
        if "statuses" in data:
            statuses = {int(k): str(v) for k, v in data["statuses"].items()}
        else:
            statuses = dict.fromkeys(orders, "searched" if data.get("complete", True) else "cut")
        return cls(
            cycles=tuple(Cycle.from_dict(c) for c in data["cycles"]),
            orders=orders,
            stats=FinderStats.from_dict(data.get("stats", {})),
            statuses=statuses,
        )

    def summary(self) -> str:
        """A plain-text table: one row per cycle (order, kind, spectral radius, first point), then the count
        and status of every order; a count that is only a lower bound is shown as ``≥ n``.

        Examples
        --------
        >>> print(CycleSet(orders=(1,)).summary())
        order  kind      |λ|max     border    first point
        (no cycles found for orders 1)
        counts: order 1: ≥ 0 (searched)
        (≥ n: a lower bound; only exhaustive orders are proved complete)
        """
        rows = [f"{'order':<6} {'kind':<9} {'|λ|max':<10} {'border':<9} first point"]
        for cycle in self.cycles:
            point = np.array2string(cycle.points[0], precision=4, separator=", ", suppress_small=True)
            rows.append(
                f"{cycle.order:<6} {cycle.kind:<9} {cycle.spectral_radius:<10.4g} {cycle.border_margin:<9.3g} {point}"
            )
        if not self.cycles:
            rows.append(f"(no cycles found for orders {', '.join(map(str, self.orders))})")
        rows.append(
            "counts: " + ", ".join(f"order {k}: {self.count_label(k)} ({self.statuses[k]})" for k in self.orders)
        )
        if not self.complete:
            rows.append("(≥ n: a lower bound; only exhaustive orders are proved complete)")
        if self.cut:
            rows.append("(search stopped by the time budget: the list may be incomplete)")
        return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks shared by find_cycles and exhaustive_cycles


def _resolve_orders(max_order: int, orders: Sequence[int] | None) -> tuple[int, ...]:
    if orders is not None:
        resolved = tuple(orders)
        if not resolved or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in resolved):
            raise ValueError(f"orders must be a non-empty list of positive ints, got {orders!r}")
        return tuple(sorted(set(int(k) for k in resolved)))
    if not isinstance(max_order, (int, np.integer)) or isinstance(max_order, bool) or max_order < 1:
        raise ValueError(f"max_order must be an int >= 1, got {max_order!r}")
    return tuple(range(1, int(max_order) + 1))


# Models whose affine_pieces were checked against their step (check_protocol).  The check is about the
# implementation, not the current weights, so once per object is enough; weak references let checked models
# be garbage collected.  Objects that cannot be weakly referenced are checked on every call.
_PROTOCOL_CHECKED: "weakref.WeakSet[object]" = weakref.WeakSet()


def _check_protocol_once(model: object) -> None:
    try:
        if model in _PROTOCOL_CHECKED:
            return
    except TypeError:  # not hashable / not weakly referenceable
        check_protocol(model)
        return
    check_protocol(model)
    _PROTOCOL_CHECKED.add(model)


def _prepare_model(model: object, dtype: torch.dtype, device: torch.device | str | None, *, copy: bool = True):
    """Validate the model and return it in the finder's dtype and device.

    With ``copy=False`` a model that already has that dtype and device is used as it is: the searches
    only read it (under ``no_grad``), and a copy per training step is a measurable part of the monitor's
    cost.  Callers that write parameters (``scan``) keep ``copy=True``.  The first time a model object is
    seen, ``check_protocol`` verifies that its ``affine_pieces`` agrees with its ``step``: otherwise no
    candidate would ever verify and the search would silently report no cycles.
    """
    require_piecewise_linear(model)
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
    if not isinstance(model, torch.nn.Module):
        _check_protocol_once(model)
        return model, torch.device(device or "cpu")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"model parameter {name!r} contains NaN or Inf; cycles are undefined")
    _check_protocol_once(model)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if not copy and all(t.dtype == dtype and t.device == device for t in tensors):
        return model, device
    return detached_copy(model).to(device=device, dtype=dtype), device


# find_cycles arguments that callers running many searches (scan, localize) set themselves.
_RESERVED_FINDER_KWARGS = ("max_order", "orders", "warm_start", "dtype", "device")


def _free_finder_kwargs(finder_kwargs: dict | None, owner: str) -> dict:
    """A copy of ``finder_kwargs``; a clash with what ``owner`` sets itself would surface as a bare TypeError."""
    finder_kwargs = dict(finder_kwargs or {})
    reserved = sorted(set(_RESERVED_FINDER_KWARGS) & set(finder_kwargs))
    if reserved:
        raise ValueError(f"finder_kwargs must not set {reserved}: {owner} takes max_order, dtype and device itself")
    return finder_kwargs


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run on one intra-op thread: the search's tensors are small, and a second thread mostly waits
    (measured 10x slower with two threads on a busy 2-core machine, see docs/benchmarks.md)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def find_cycles(
    model: object,
    max_order: int = 4,
    *,
    orders: Sequence[int] | None = None,
    n_starts: int = 256,
    inner: int = 20,
    outer: int = 4,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    warm_start: CycleSet | None = None,
    random_orders: Sequence[int] | None = None,
    time_budget_s: float | None = None,
    exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT,
    progress: bool = False,
) -> CycleSet:
    """Find the fixed points and cycles of a piecewise-linear model: exactly where enumerable, else by SCYFI.

    An order ``k`` whose ``R**k`` region sequences (``R`` realizable regions: cells of the switching-plane
    arrangement, ``2**S`` orthants for a PLRNN) number at most ``exhaustive_limit`` is enumerated: every
    sequence is solved, in batches, and the order's status is ``"exhaustive"`` (complete).  Other orders
    get batched SCYFI (status ``"searched"``): random region sequences drawn from random states, from the
    realizable regions (when listed) and from codes visited by trajectories, followed for ``inner``
    iterations.  A shallow model's regions are listed exactly (``regions.list_cells``, from the arrangement's
    vertices) when there can be at most ``REGION_LISTING_LIMIT`` (``2**18``) of them, so the fixed points of,
    e.g., ShallowPLRNN(3, 50) (20,876 regions) and ShallowPLRNN(6, 20) (60,460) are enumerated; larger ones
    are always searched.  Models whose regions are all ``2**S`` codes (PLRNN, ALRNN) or their own
    ``realizable_codes`` are enumerated up to ``CODE_TABLE_LIMIT`` (128) codes.  Successive calls on a
    changing model (a training run) update the previous listing instead of repeating it.  Orders outside
    ``random_orders`` only re-solve the warm start (``"warm_only"``).

    Parameters
    ----------
    model : PiecewiseLinear
        One of the package's models or any object implementing the protocol.  It is only read: a model in
        another dtype or on another device is copied (detached) to ``dtype`` and ``device`` first.
    max_order : int
        Search orders ``1 .. max_order``.
    orders : list of int, optional
        Search exactly these orders instead (e.g. ``[16]`` for a 2-D PLRNN's 16-cycles).
    n_starts : int
        Random region sequences solved in parallel per order (the batch size).  0 with ``warm_start``
        re-checks only the previous cycles.
    inner : int
        Iterations a chain follows its visited regions before it restarts at random.
    outer : int
        Upper bound on the number of rounds of ``inner`` iterations; a round that finds nothing new ends
        the search of that order earlier.
    seed : int
        Seed of the random region sequences (the result is deterministic for a given seed and device).
    device, dtype
        Where and in which precision to search; float64 by default, float32 allowed with looser tolerances.
    warm_start : CycleSet, optional
        Cycles of a previous snapshot: their region sequences are solved first, so an unchanged model is
        re-analysed in one pass.
    random_orders : list of int, optional
        Orders that get the random search (default: all).  The others only re-solve the warm start, which
        lets a training monitor spread the random search over steps (one order per step).
    time_budget_s : float, optional
        Stop after this many seconds: the cycles found so far are kept, the order being searched and the
        orders not reached get status ``"cut"`` (``CycleSet.cut`` is True).
    exhaustive_limit : int
        Enumerate an order when it has at most this many region sequences (default ``2**18``; 0 never).
    progress : bool
        Show a progress bar over the orders (tqdm, on stderr) once the search has taken more than 2 s.

    Returns
    -------
    CycleSet
        With ``statuses`` per order; ``complete`` is True only when every order was exhaustive.

    Raises
    ------
    TypeError
        The model does not implement the PiecewiseLinear protocol.
    ValueError
        Non-finite parameters, bad orders or counts, a warm start from a model of another shape.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(-2.0); _ = model.h.fill_(1.0)   # z' = -2 z + 1 flips around 1/3
    >>> cycles = find_cycles(model, max_order=2)
    >>> [(c.order, c.kind, round(c.spectral_radius, 6)) for c in cycles]
    [(1, 'unstable', 2.0)]
    >>> cycles.statuses                                    # 2 regions: 2 and 4 sequences, both enumerated
    {1: 'exhaustive', 2: 'exhaustive'}
    >>> find_cycles(model, max_order=2, exhaustive_limit=0).statuses   # never enumerate
    {1: 'searched', 2: 'searched'}
    """
    order_list = _resolve_orders(max_order, orders)
    n_starts = require_int("n_starts", n_starts, 0)
    progress = require_bool("progress", progress)
    inner = require_int("inner", inner, 1)
    outer = require_int("outer", outer, 1)
    exhaustive_limit = require_int("exhaustive_limit", exhaustive_limit, 0)
    if time_budget_s is not None and (
        isinstance(time_budget_s, bool) or not isinstance(time_budget_s, (int, float)) or not time_budget_s > 0
    ):
        raise ValueError(f"time_budget_s must be a positive number of seconds or None, got {time_budget_s!r}")
    if warm_start is not None and not isinstance(warm_start, CycleSet):
        raise TypeError(f"warm_start must be a CycleSet or None, got {type(warm_start).__name__}")
    if n_starts == 0 and warm_start is None:
        raise ValueError("n_starts=0 searches nothing unless a warm_start CycleSet is given")
    randomised = set(order_list if random_orders is None else random_orders)
    if not randomised <= set(order_list):
        raise ValueError(f"random_orders {sorted(randomised)} must be a subset of the searched orders {list(order_list)}")
    if randomised != set(order_list) and warm_start is None:
        raise ValueError("random_orders leaves some orders unsearched unless a warm_start CycleSet is given")
    started = time.monotonic()
    deadline = started + time_budget_s if time_budget_s is not None else math.inf
    analysed, device = _prepare_model(model, dtype, device, copy=False)
    searched = set(randomised) if n_starts else set()
    stack = ModelStack.single(analysed, dtype=dtype, device=device)
    regions = RegionTables([_realizable_regions(analysed, device) if searched else None], analysed.n_switches, device)
    # tqdm's delay: a search that ends within 2 s prints nothing (the monitor's per-step calls).
    bar = tqdm(total=len(order_list), desc="cycle search", unit="order", delay=2.0, leave=False, disable=not progress)
    with torch.no_grad(), _one_cpu_thread(device), bar:
        fresh = search_fresh(
            stack,
            order_list,
            seeds=[seed],
            regions=regions,
            radii=[search_radius(analysed)],
            geometries=[_scyfi.switching_geometry(analysed)],
            n_starts=n_starts,
            inner=inner,
            outer=outer,
            exhaustive_limit=exhaustive_limit,
            random_orders=searched,
            deadline=deadline,
            make_cycle=Cycle,
            on_order=lambda _: bar.update(1),
        )
        table = sequence_table([warm_start], order_list, analysed.n_switches)
        resolved = resolve_sequences(stack, {order: codes for order, (_, codes) in table.items()})
        found = assemble_step(stack, 0, fresh, {k: (table[k][0], resolved[k]) for k in order_list}, order_list)
    return dataclasses.replace(found, stats=dataclasses.replace(found.stats, elapsed_s=time.monotonic() - started))


def _realizable_regions(model, device: torch.device) -> Tensor | None:
    """The model's realizable region codes on ``device``, or None when there can be more than
    ``REGION_LISTING_LIMIT`` cells (arrangements listed by ``regions``) or ``CODE_TABLE_LIMIT`` codes (others)."""
    try:
        return _region_table(model, REGION_LISTING_LIMIT if _lists_cells(model) else CODE_TABLE_LIMIT).to(device)
    except ValueError:
        return None


def _lists_cells(model) -> bool:
    """Whether the model's regions are the cells of its switching planes, listed by ``regions.CellListing``."""
    return (
        isinstance(model, PiecewiseLinearRNN)
        and type(model).realizable_codes is PiecewiseLinearRNN.realizable_codes
        and not model.every_code_realizable
    )


def resolve_sequences(stack: ModelStack, sequences: dict[int, Tensor]) -> dict[int, _scyfi.Evaluation]:
    """Solve and simulate the region sequences ``sequences[k] (K, k, S)`` with every step's weights: an
    ``Evaluation`` with leading axes ``(N, K)`` per order (one batched call per order)."""
    resolved = {}
    for order, codes in sequences.items():
        codes = codes.to(stack.device).expand((stack.n_steps,) + tuple(codes.shape))
        resolved[order] = _scyfi.evaluate(stack.affine_pieces, stack.step_with_codes, codes)
    return resolved


def sequence_table(cycle_sets: Sequence[CycleSet | None], orders: Sequence[int], n_switches: int) -> dict[int, tuple[list[bytes], Tensor]]:
    """Per order, the distinct canonical region sequences of the cycles in ``cycle_sets``: their keys (in a
    fixed order) and their codes ``(K, k, S)``."""
    table = {}
    for order in orders:
        by_key: dict[bytes, np.ndarray] = {}
        for cycle_set in cycle_sets:
            for cycle in cycle_set.by_order(order) if cycle_set is not None else ():
                if cycle.codes.shape != (order, n_switches):
                    raise ValueError(
                        f"warm_start cycle of order {order} has codes of shape {cycle.codes.shape}, but the model has "
                        f"{n_switches} switches: was it found on a different model?"
                    )
                by_key.setdefault(cycle.key, cycle.codes)
        keys = sorted(by_key)
        codes = np.stack([by_key[key] for key in keys]) if keys else np.zeros((0, order, n_switches), dtype=bool)
        table[order] = (keys, torch.as_tensor(codes, dtype=torch.bool))
    return table


def assemble_step(
    stack: ModelStack,
    step: int,
    fresh: FreshSearch,
    carried: dict[int, tuple[list[bytes], _scyfi.Evaluation]],
    orders: Sequence[int],
    *,
    wanted: dict[int, set[bytes]] | None = None,
    extra: dict[int, list[Cycle]] | None = None,
) -> CycleSet:
    """One step's CycleSet: the carried region sequences that are real cycles with this step's weights first
    (all of them, or only the keys in ``wanted``), then ``extra`` cycles (verified elsewhere), then the fresh
    search's, each cycle once.

    The order is fixed, so a step's result does not depend on which other steps were analysed with it.
    """
    geometry = _scyfi.switching_geometry(stack.model(step))
    cycles: list[Cycle] = []
    n_warm = warm_hits = 0
    iterations = dict(fresh.iterations[step])
    for order in orders:
        collector = CycleCollector(order, stack.dtype, [geometry], Cycle)
        keys, evaluation = carried.get(order, ([], None))
        rows = [i for i, key in enumerate(keys) if wanted is None or key in wanted.get(order, ())]
        if rows and evaluation is not None:
            index = torch.as_tensor(rows, device=stack.device)
            picked = _scyfi.Evaluation(*(getattr(evaluation, name)[step, index][None] for name in _scyfi.EVALUATION_FIELDS))
            n_warm += len(rows)
            warm_hits += int(picked.real.sum())
            iterations[order] = iterations.get(order, 0) + 1  # one batched pass over the carried sequences
            collector.add_evaluation(picked)
        collector.add_cycles(0, (extra or {}).get(order, ()))
        collector.add_cycles(0, fresh.cycles[step][order])
        cycles.extend(collector.cycles(0))
    stats = FinderStats(
        iterations,
        fresh.n_solves[step] + n_warm,
        fresh.n_singular[step],
        warm_hits,
        fresh.elapsed_s / stack.n_steps,
    )
    return CycleSet(tuple(cycles), tuple(orders), stats, dict(fresh.statuses[step]))


def follow_cycle(model: object, cycle: Cycle, *, rounds: int = 3, dtype: torch.dtype = torch.float64) -> list[Cycle]:
    """The real cycles of ``cycle.order`` that SCYFI reaches from ``cycle`` with another model's weights.

    Tried: the cycle's own region sequence, the regions its points lie in under ``model`` (the sequence the
    cycle has if it moved across switching planes), and, ``rounds`` times, the regions the solutions of the
    previous tries visit (SCYFI's heuristic).  This is how the monitor checks that a cycle newly found at a
    step existed at the step before (it was missed there, not born) and that a cycle not found again still
    exists (it moved into other regions).  Every returned cycle is verified like ``find_cycles``' cycles.

    Parameters
    ----------
    model : PiecewiseLinear
    cycle : Cycle
        A cycle of a model with the same structure (state dimension and switches).
    rounds : int
        Solves that follow the visited regions.
    dtype : torch.dtype

    Returns
    -------
    list of Cycle
        Distinct cycles of ``cycle.order`` (empty when none was reached).

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)       # fixed point 2
    >>> before = find_cycles(model, max_order=1).by_order(1)[0]
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.5)                               # it moved to 3
    >>> [c.points.tolist() for c in follow_cycle(model, before)]
    [[[3.0]]]
    """
    rounds = require_int("rounds", rounds, 1)
    analysed, device = _prepare_model(model, dtype, None, copy=False)
    affine_pieces, step_with_codes = _scyfi.model_functions(analysed)
    collector = CycleCollector(cycle.order, dtype, [_scyfi.switching_geometry(analysed)], Cycle)
    with torch.no_grad():
        own = torch.as_tensor(cycle.codes, dtype=torch.bool, device=device)
        moved = analysed.region_codes(torch.as_tensor(cycle.points, dtype=dtype, device=device))
        candidates = torch.unique(torch.stack([own, moved]), dim=0)
        for _ in range(rounds):
            evaluation = _scyfi.evaluate(affine_pieces, step_with_codes, candidates[None])
            collector.add_evaluation(evaluation)
            virtual = evaluation.solvable[0] & ~evaluation.real[0]
            if not bool(virtual.any()):
                break
            candidates = torch.unique(evaluation.visited[0][virtual], dim=0)
    return collector.cycles(0)


def cycle_determinant_sign(model: object, codes: np.ndarray, *, dtype: torch.dtype = torch.float64) -> float:
    """Sign of ``det(I - J_k … J_1)`` for the region sequence ``codes (k, S)`` under ``model`` (0 when singular).

    Along a path of weights the solution of one region sequence passes through infinity exactly when this sign
    flips (an odd number of real multipliers crossed +1): the evidence for a degenerate transcritical
    bifurcation, as opposed to a cycle entering or leaving its regions at a switching plane.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5)
    >>> cycle_determinant_sign(model, np.array([[False]]))           # switch off: J = a = 0.5, det(1 - 0.5) > 0
    1.0
    """
    analysed, device = _prepare_model(model, dtype, None, copy=False)
    with torch.no_grad():
        jacobians, offsets = analysed.affine_pieces(torch.as_tensor(codes, dtype=torch.bool, device=device))
        product, _ = _scyfi.cycle_products(jacobians, offsets)
        eye = torch.eye(product.shape[-1], dtype=product.dtype, device=product.device)
        return float(torch.sign(torch.linalg.det((eye - product).double())))


def exhaustive_cycles(
    model: object,
    max_order: int = 4,
    *,
    orders: Sequence[int] | None = None,
    max_sequences: int = 2_000_000,
    batch_size: int = 1 << 16,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> CycleSet:
    """Ground truth: solve every sequence of realizable region codes of each order.

    Costs ``R**k`` solves for ``R`` realizable regions, so it is meant for small models (tests, checks).

    Raises
    ------
    ValueError
        When ``R**k`` exceeds ``max_sequences`` (the message gives both numbers).

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> exact = exhaustive_cycles(model, max_order=3)
    >>> found = find_cycles(model, max_order=3)
    >>> sorted(c.key for c in exact) == sorted(c.key for c in found)
    True
    """
    order_list = _resolve_orders(max_order, orders)
    max_sequences = require_int("max_sequences", max_sequences, 1)
    batch_size = require_int("batch_size", batch_size, 1)
    started = time.monotonic()
    analysed, device = _prepare_model(model, dtype, device, copy=False)
    regions = _region_table(analysed, max_sequences).to(device)
    n_regions = regions.shape[0]
    largest = n_regions ** max(order_list)
    if largest > max_sequences:
        raise ValueError(
            f"exhaustive search of order {max(order_list)} needs {n_regions}**{max(order_list)} = {largest} "
            f"sequences, more than max_sequences={max_sequences}; use find_cycles or a smaller model"
        )
    stack = ModelStack.single(analysed, dtype=dtype, device=device)
    with torch.no_grad():
        fresh = search_fresh(
            stack,
            order_list,
            seeds=[0],
            regions=RegionTables([regions], analysed.n_switches, device),
            radii=[search_radius(analysed)],
            geometries=[_scyfi.switching_geometry(analysed)],
            n_starts=1,
            inner=1,
            outer=1,
            exhaustive_limit=largest,
            random_orders=set(order_list),
            make_cycle=Cycle,
            enumeration_batch=batch_size,
        )
    cycles = tuple(cycle for order in order_list for cycle in fresh.cycles[0][order])
    stats = FinderStats(
        {k: 1 for k in order_list}, fresh.n_solves[0], fresh.n_singular[0], 0, time.monotonic() - started
    )
    return CycleSet(cycles, order_list, stats, dict.fromkeys(order_list, "exhaustive"))


# The cells of the last few models' arrangements, one CellListing per model class, size and device: the monitor
# calls find_cycles once per training step on a snapshot of the same model, and a CellListing updates the
# previous step's cells (the few vertices whose signs changed) instead of listing them again; unchanged weights
# (find_cycles then exhaustive_cycles, a CLI run) cost nothing.  The lock: the monitor's thread fallback.
_CELL_LISTINGS: "collections.OrderedDict[tuple, CellListing]" = collections.OrderedDict()
_CELL_LISTINGS_SIZE = 4
_CELL_LISTINGS_LOCK = threading.Lock()


def _region_table(model, max_cells: int = DEFAULT_MAX_CELLS) -> Tensor:
    """Every realizable region code of the model (all ``2**S`` codes when it cannot say).

    Raises ``ValueError`` when there can be more than ``max_cells`` regions: by ``regions.cell_count_bound`` for
    the package's models, ``Σ_{i≤M} C(S, i)`` for a user's ``realizable_codes``, ``2**S`` without one.
    """
    if isinstance(model, PiecewiseLinearRNN) and model.every_code_realizable:
        return model.realizable_codes(max_cells)
    if _lists_cells(model):
        planes, offsets = (t.detach() for t in model.switching_planes())
        key = (type(model), tuple(planes.shape), planes.device)
        with _CELL_LISTINGS_LOCK:
            listing = _CELL_LISTINGS.pop(key, None) or CellListing(max_cells=max_cells)
            _CELL_LISTINGS[key] = listing
            while len(_CELL_LISTINGS) > _CELL_LISTINGS_SIZE:
                _CELL_LISTINGS.popitem(last=False)
            return listing.update(planes, offsets, max_cells=max_cells)
    name = type(model).__name__
    if callable(getattr(model, "realizable_codes", None)):
        if _region_count_bound(model) > max_cells:
            raise ValueError(f"{name} can have up to {_region_count_bound(model)} regions, more than {max_cells}")
        return model.realizable_codes()
    if 2**model.n_switches > max_cells:
        raise ValueError(f"{name} has no realizable_codes() and 2**{model.n_switches} codes, more than {max_cells}")
    return all_codes(model.n_switches)


def _region_count_bound(model) -> int:
    """Upper bound on the number of regions: 2**S, or the cell count of an arrangement of S planes in R^M."""
    n_switches, dim = model.n_switches, model.state_dim
    if getattr(model, "every_code_realizable", False) or n_switches <= dim:
        return 2**n_switches
    return sum(math.comb(n_switches, i) for i in range(dim + 1))


# ----------------------------------------------------------------------------------------------------------------
# Cycles from given region-code sequences (attractors.find_attractors reads the sequences off simulated orbits)


def cycles_from_sequences(model: object, codes: object, *, dtype: torch.dtype | str = torch.float64) -> list[Cycle]:
    """The verified cycles whose region-code sequences are among ``codes``: one batched solve, no search.

    Each sequence is solved, simulated and verified exactly as ``find_cycles`` does (same ``_scyfi`` kernel
    and checks, same canonical rotation, so ``Cycle.key`` agrees with ``find_cycles``).  Virtual or singular
    sequences, and sequences whose cycle has a smaller period than ``k``, give nothing.

    Parameters
    ----------
    model : PiecewiseLinear
        Any model implementing the protocol.
    codes : array-like of bool, shape (B, k, S)
        ``B`` region-code sequences of one order ``k``.
    dtype : torch.dtype or str
        Precision of the solve (selects the tolerances).

    Returns
    -------
    list of Cycle
        Distinct verified cycles of minimal period ``k``, sorted by key.

    Raises
    ------
    ValueError
        ``codes`` not of shape (B, k, S) with ``k >= 1`` and ``S = model.n_switches``; bad model parameters.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)       # fixed point 2, in the "on" region
    >>> [c.points.tolist() for c in cycles_from_sequences(model, [[[True]], [[False]]])]
    [[[2.0]]]
    """
    dtype = require_dtype("dtype", dtype)
    analysed, device = _prepare_model(model, dtype, None, copy=False)
    codes = torch.as_tensor(codes, device=device)
    if codes.ndim != 3 or codes.shape[1] < 1 or codes.shape[2] != analysed.n_switches:
        raise ValueError(
            f"codes must have shape (B, k, {analysed.n_switches}) with k >= 1 for this model, got {tuple(codes.shape)}"
        )
    collector = CycleCollector(codes.shape[1], dtype, [_scyfi.switching_geometry(analysed)], Cycle)
    with torch.no_grad():
        collector.add_evaluation(_scyfi.evaluate(*_scyfi.model_functions(analysed), codes.bool()[None]))
    return collector.cycles(0)
