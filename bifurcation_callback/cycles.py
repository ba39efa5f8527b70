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

import math
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from . import _scyfi
from ._checks import require_bool, require_dtype, require_int
from ._scyfi import NEUTRAL_TOLERANCE, TOLERANCES  # noqa: F401  (re-exported: the finder's tolerances)
from ._cycle_types import ORDER_STATUSES, STABILITY_KINDS, Cycle, CycleSet, FinderStats
from ._search import (  # noqa: F401  (the region limits are re-exported, where find_cycles' docstring names them)
    CODE_TABLE_LIMIT,
    REGION_LISTING_LIMIT,
    CycleCollector,
    RegionTables,
    _realizable_regions,
    _region_table,
    assemble_step,
    resolve_sequences,
    search_fresh,
    sequence_table,
)
from ._stack import ModelStack
from .models import check_protocol, detached_copy, require_piecewise_linear, search_radius

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

# find_cycles enumerates an order when it has at most this many region sequences (R**k).  Measured on a
# 2-core CPU (docs/benchmarks.md): 2**18 sequences of order 3 cost ~0.25 s quiet (0.6-0.8 s busy), a default
# random search of that order 0.04-0.09 s.  With 2**16 the fuzz missed 8 of 13,426 cycles, all in clipped
# shallow PLRNNs with 41..64 regions whose order 3 (R**3 <= 2**18) was then only searched.
DEFAULT_EXHAUSTIVE_LIMIT = 2**18

# NEUTRAL_TOLERANCE and the per-dtype TOLERANCES live in the kernel (_scyfi) and are re-exported here.


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
            on_order=lambda _: bar.update(1),
        )
        table = sequence_table([warm_start], order_list, analysed.n_switches)
        resolved = resolve_sequences(stack, {order: codes for order, (_, codes) in table.items()})
        found = assemble_step(stack, 0, fresh, {k: (table[k][0], resolved[k]) for k in order_list}, order_list)
    return dataclasses.replace(found, stats=dataclasses.replace(found.stats, elapsed_s=time.monotonic() - started))


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
    collector = CycleCollector(cycle.order, dtype, [_scyfi.switching_geometry(analysed)])
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
            enumeration_batch=batch_size,
        )
    cycles = tuple(cycle for order in order_list for cycle in fresh.cycles[0][order])
    stats = FinderStats(
        {k: 1 for k in order_list}, fresh.n_solves[0], fresh.n_singular[0], 0, time.monotonic() - started
    )
    return CycleSet(cycles, order_list, stats, dict.fromkeys(order_list, "exhaustive"))


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
    return _solve_sequences(analysed, codes, dtype)


def _solve_sequences(analysed: object, codes: object, dtype: torch.dtype, device: torch.device | None = None) -> list[Cycle]:
    """``cycles_from_sequences`` without the checks, for a model known to be valid and in ``dtype`` (a
    ``ModelStack``'s step; ``device``: where its tensors are) and codes of shape ``(B, k, S)``: the monitor
    calls it several times per step, and the model checks cost more than the solve."""
    codes = torch.as_tensor(codes, device=device)
    collector = CycleCollector(codes.shape[1], dtype, [_scyfi.switching_geometry(analysed)])
    with torch.no_grad():
        collector.add_evaluation(_scyfi.evaluate(*_scyfi.model_functions(analysed), codes.bool()[None]))
    return collector.cycles(0)
