"""The cycle search behind ``find_cycles`` and the monitor, batched over region sequences *and* weight settings.

A search covers the N weight settings of a ``ModelStack`` (N training steps; one for ``find_cycles``) at once:
every torch call handles all of them, and each step's result is exactly what a search of that step alone
gives.  That holds because nothing a step finds depends on another step: each step draws its random region
sequences from its own generator (seeded per step), keeps its own list of verified cycles and stops on its
own, and the batched kernels compute every step's slice separately.

Two parts, used in this order:

* ``search_fresh``: per order, every realizable region sequence when there are at most ``exhaustive_limit``
  of them (the order is then ``exhaustive``: complete), else SCYFI's random search (``searched``).
* ``CycleCollector.add_evaluation`` / ``add_cycles``: merging the cycles carried over from the previous
  step (their region sequences re-solved with the new weights; ``warm_start``) with the fresh ones.

Which regions a step may enumerate (``_region_table``: the cells of a shallow model's switching planes, listed by
``regions``, or all ``2**S`` codes of a PLRNN) is decided here too.

Private: ``cycles.find_cycles`` and ``tracking.CycleTracker`` are the public entry points.
"""

from __future__ import annotations

import collections
import contextvars
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _scyfi
from ._cycle_types import Cycle, CycleSet, FinderStats
from ._stack import ModelStack
from .models import PiecewiseLinearRNN, all_codes
from .regions import DEFAULT_MAX_CELLS, CellListing

__all__ = [
    "AnalysisInterrupted",
    "CODE_TABLE_LIMIT",
    "CycleCollector",
    "FreshSearch",
    "REGION_LISTING_LIMIT",
    "RegionTables",
    "assemble_step",
    "check_interrupt",
    "interruptible",
    "resolve_sequences",
    "search_fresh",
    "sequence_table",
]

# Asked between batched calls: whether the analysis running in this thread should stop (training is stopping).
_STOP: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("bifurcation_stop", default=None)


class AnalysisInterrupted(RuntimeError):
    """The analysis was stopped from outside (e.g. training received SIGTERM while the analysis ran in its hook)."""


@contextmanager
def interruptible(stop: Callable[[], bool] | None) -> Iterator[None]:
    """Within this block the searches of this thread ask ``stop()`` between batched calls and raise
    ``AnalysisInterrupted`` when it is true (a long first search must not hold up a training that is stopping)."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def check_interrupt() -> None:
    """Raise ``AnalysisInterrupted`` when the enclosing ``interruptible`` block's ``stop()`` is true."""
    stop = _STOP.get()
    if stop is not None and stop():
        raise AnalysisInterrupted("the analysis was interrupted: training is stopping")


class RegionTables:
    """Per step, the model's realizable region codes (or None when they are not listed), with the counts
    ``sizes (N,)``; ``pick`` reads them by (step, index).  The tables are kept one after another in one tensor
    (a padded ``(N, R_max, S)`` one cost a zero fill and a copy of 67 MB per batch of 64 README steps)."""

    def __init__(self, tables: Sequence[Tensor | None], n_switches: int, device: torch.device) -> None:
        self.tables = list(tables)
        self.sizes = torch.tensor([0 if t is None else t.shape[0] for t in self.tables], dtype=torch.long, device=device)
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        # A zero row at the end: where indices of steps without a table land (their picks are masked out).
        parts = [t.to(device) for t in self.tables if t is not None and t.shape[0]]
        self._flat = torch.cat(parts + [torch.zeros((1, n_switches), dtype=torch.bool, device=device)])

    def pick(self, cells: Tensor) -> Tensor:
        """Codes ``(N, ..., S)`` of the cells ``cells (N, ...)`` (indices into each step's own table; indices
        at or beyond a step's count give some valid code, for the caller to mask out)."""
        limit = (self.sizes - 1).clamp(min=0).view((-1,) + (1,) * (cells.dim() - 1))
        offsets = self.offsets.view((-1,) + (1,) * (cells.dim() - 1))
        flat = torch.where(self.sizes.view_as(offsets) > 0, offsets + cells.clamp(max=limit), self._flat.shape[0] - 1)
        return self._flat[flat]

    def count(self, step: int) -> int | None:
        table = self.tables[step]
        return None if table is None else int(table.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Verified cycles, kept per step


class CycleCollector:
    """Verifies candidate cycles of one order and keeps each once per step (minimal period, dedup up to rotation).

    Parameters
    ----------
    order : int
    dtype : torch.dtype
        The precision of the candidates (selects the tolerances).
    geometries : list of (planes, offsets) or None
        Per step, the unit-normalised switching planes (``_scyfi.switching_geometry``) for border margins.
    """

    def __init__(
        self,
        order: int,
        dtype: torch.dtype,
        geometries: Sequence[tuple[np.ndarray, np.ndarray] | None],
    ) -> None:
        self.order = order
        self.dtype = dtype
        self.tolerance = _scyfi.TOLERANCES[dtype]
        self.geometries = list(geometries)
        self.known: list[dict[bytes, object]] = [{} for _ in self.geometries]
        self.rotations = _scyfi.rotation_table(order)
        # Raw code sequences already judged per step (every rotation of a kept cycle, and rejected ones): for
        # fixed weights the solution is a function of the sequence, so a verdict never needs repeating.
        self.judged: list[set[bytes]] = [set() for _ in self.geometries]

    def cycles(self, step: int) -> list:
        return sorted(self.known[step].values(), key=lambda c: c.key)

    def add_evaluation(
        self, evaluation: _scyfi.Evaluation, steps: Tensor | None = None, rows_to_steps: Sequence[int] | None = None
    ) -> np.ndarray:
        """Verify the real candidates of ``evaluation`` (leading axes ``(N, B)``), only for the steps where
        ``steps`` (N,) is True; returns the number of new cycles per step.  ``rows_to_steps``: the steps the
        evaluation's leading axis holds, when it is not every step of the collector (e.g. one step alone)."""
        real = evaluation.real if steps is None else evaluation.real & steps[:, None]
        new = np.zeros(len(self.known), dtype=np.int64)
        index = torch.nonzero(real)
        if index.numel() == 0:
            return new
        codes = evaluation.visited[index[:, 0], index[:, 1]].cpu().numpy().astype(np.uint8)
        step_of = index[:, 0].cpu().numpy()
        if rows_to_steps is not None:
            step_of = np.asarray(rows_to_steps, dtype=np.int64)[step_of]
        fresh: dict[tuple[int, bytes], int] = {}
        for position, (step, code) in enumerate(zip(step_of, codes)):
            raw = code.tobytes()
            if raw not in self.judged[step]:
                fresh.setdefault((int(step), raw), position)
        if not fresh:
            return new
        for step, raw in fresh:
            self.judged[step].add(raw)
        positions = np.fromiter(fresh.values(), dtype=np.int64)
        chosen = index[torch.as_tensor(positions, device=index.device)]
        trajectories = evaluation.trajectory[chosen[:, 0], chosen[:, 1]]
        products = evaluation.products[chosen[:, 0], chosen[:, 1]]
        valid, residuals = _scyfi.verify(trajectories, products, self.dtype)
        valid, residuals = valid.cpu().numpy(), residuals.cpu().numpy()
        trajectories = trajectories.cpu().double().numpy()[valid]
        products = products.cpu().double().numpy()[valid]
        eigenvalues = np.linalg.eigvals(products).astype(np.complex128) if len(products) else []
        for trajectory, step, code, multipliers, residual in zip(
            trajectories, step_of[positions][valid], codes[positions][valid], eigenvalues, residuals[valid]
        ):
            margin = float(_scyfi.border_margins(trajectory[None, :-1], self.geometries[step])[0])
            canonical = self.rotations[_scyfi.canonical_rotation(code)]
            cycle = Cycle(
                order=self.order,
                points=trajectory[canonical],
                codes=code[canonical].astype(bool),
                eigenvalues=multipliers,
                residual=float(residual),
                border_margin=margin,
            )
            if self._keep(int(step), cycle):
                self.judged[step].update(row.tobytes() for row in code[self.rotations])
                new[step] += 1
        return new

    def add_cycles(self, step: int, cycles: Sequence) -> int:
        """Add already verified cycles (of this order) to ``step``'s list; returns how many were new."""
        added = 0
        for cycle in cycles:
            if self._keep(step, cycle):
                code = cycle.codes.astype(np.uint8)
                self.judged[step].update(row.tobytes() for row in code[self.rotations])
                added += 1
        return added

    def _keep(self, step: int, cycle) -> bool:
        known = self.known[step]
        # Two code sequences can describe one cycle only if a point sits on a switching plane (to rounding).
        near_border = not cycle.border_margin > self.tolerance["coincide"] * (1.0 + np.abs(cycle.points).max())
        if cycle.key in known or (near_border and self._duplicate(step, cycle)):
            return False
        known[cycle.key] = cycle
        return True

    def _duplicate(self, step: int, cycle) -> bool:
        # Codes identify a cycle except for points lying within rounding of a switching plane.
        scale = 1.0 + np.linalg.norm(cycle.points, axis=1).max()
        for other in self.known[step].values():
            distances = np.linalg.norm(other.points[:, None, :] - cycle.points[None, :, :], axis=-1)
            if np.all(distances.min(axis=1) <= self.tolerance["coincide"] * scale):
                return True
        return False


# ----------------------------------------------------------------------------------------------------------------
# Random region sequences


class _RandomSequences:
    """SCYFI's random region sequences for every step of a stack, each step from its own generator.

    Each sequence comes from one of three sources, drawn at random:

    * codes of random states in a box sized to the step's switching geometry, each sequence shrunk by a
      random factor down to 1/100 so that thin regions near the origin are reached too;
    * uniformly drawn realizable regions, when the step's regions are listed;
    * windows of ``k`` consecutive codes visited by trajectories of the map from random states: the
      sequences orbits actually follow, where attracting cycles and their neighbours live.

    The random numbers of chain ``c`` at its ``r``-th restart are row ``c * (max_restarts + 1) + r`` of the
    step's pool for that order, drawn up front: a step's sequences do not depend on the other steps.
    """

    # Trajectories simulated (once per search) for the third source, and their length.
    N_TRAJECTORIES = 64
    TRAJECTORY_STEPS = 32

    def __init__(self, stack: ModelStack, seeds: Sequence[int], radii: Sequence[float], regions: RegionTables) -> None:
        self.stack = stack
        self.device, self.dtype = stack.device, stack.dtype
        self.seeds = [int(seed) for seed in seeds]
        self.radii = torch.tensor(list(radii), dtype=self.dtype, device=self.device)
        self.regions = regions
        self._visited: Tensor | None = None  # (N, T, L, S) codes along trajectories
        self._alive: Tensor | None = None  # (N, T, L) finite and not escaped
        self._alive_windows: dict[int, tuple[Tensor, Tensor]] = {}  # order -> (counts, cumulative counts)

    def _uniform(self, shape: tuple[int, ...], stream: int) -> Tensor:
        """Per step, ``shape`` uniforms from that step's generator for ``stream`` (0: the trajectories, k: the
        sequences of order k): (N, *shape).  Separate streams keep a step's numbers independent of which
        orders it searches at random and which it enumerates."""
        drawn = [
            torch.rand(shape, generator=torch.Generator().manual_seed(_stream_seed(seed, stream)), dtype=torch.float64)
            for seed in self.seeds
        ]
        return torch.stack(drawn).to(device=self.device, dtype=self.dtype)

    def _trajectory_codes(self) -> tuple[Tensor, Tensor]:
        if self._visited is None:
            unit = self._uniform((self.N_TRAJECTORIES, self.stack.state_dim), 0)
            state = (2 * unit - 1) * self.radii[:, None, None]
            visited, alive = [], []
            for _ in range(self.TRAJECTORY_STEPS):
                ok = torch.isfinite(state).all(-1) & (state.abs().amax(-1) < 1e6 * self.radii[:, None])
                state, code = self.stack.step_with_codes(torch.where(ok[..., None], state, torch.zeros_like(state)))
                visited.append(code)
                alive.append(ok)
            self._visited, self._alive = torch.stack(visited, 2), torch.stack(alive, 2)
        return self._visited, self._alive

    def pool(self, order: int, n_slots: int) -> Tensor:
        """The uniforms of ``n_slots`` sequences of ``order``: (N, n_slots, width)."""
        return self._uniform((n_slots, 3 + order * (self.stack.state_dim + 1)), order)

    def sequences(self, order: int, numbers: Tensor) -> Tensor:
        """Region sequences (N, B, k, S) from their uniforms ``numbers`` (N, B, width)."""
        n_steps, batch = numbers.shape[:2]
        dim = self.stack.state_dim
        source = (numbers[..., 0] * 3).long().clamp(max=2)
        shrink = 10.0 ** (-2.0 * numbers[..., 1])
        states = (2 * numbers[..., 3 : 3 + order * dim].reshape(n_steps, batch, order, dim) - 1)
        states = states * (self.radii[:, None, None, None] * shrink[..., None, None])
        codes = self.stack.region_codes(states)
        sizes = self.regions.sizes[:, None, None]
        if bool((sizes > 0).any()):
            picked = self.regions.pick((numbers[..., 3 + order * dim :] * sizes).long())
            codes = torch.where(((source == 1) & (sizes[..., 0] > 0))[..., None, None], picked, codes)
        windows = self._windows(order, numbers[..., 2])
        if windows is not None:
            picked, available = windows
            codes = torch.where(((source == 2) & available[:, None])[..., None, None], picked, codes)
        return codes

    def _windows(self, order: int, numbers: Tensor) -> tuple[Tensor, Tensor] | None:
        """Windows of ``order`` consecutive visited codes, chosen uniformly among each step's alive windows."""
        visited, alive = self._trajectory_codes()
        if order > visited.shape[2]:
            return None
        if order not in self._alive_windows:  # the same for every draw of this order
            valid = alive.unfold(2, order, 1).all(-1).flatten(1)  # (N, T * (L - k + 1)): all k steps alive
            self._alive_windows[order] = valid.sum(-1), valid.long().cumsum(-1)
        counts, cumulative = self._alive_windows[order]
        available = counts > 0
        if not bool(available.any()):
            return None
        rank = (numbers * counts[:, None]).long().clamp(max=cumulative.shape[1] - 1)  # (N, B): the rank-th alive window
        flat = torch.searchsorted(cumulative, rank + 1).clamp(max=cumulative.shape[1] - 1)
        per_trajectory = visited.shape[2] - order + 1
        trajectory, start = flat // per_trajectory, flat % per_trajectory
        steps = start[..., None] + torch.arange(order, device=self.device)
        step_index = torch.arange(visited.shape[0], device=self.device)[:, None, None]
        return visited[step_index, trajectory[..., None], steps], available


def _stream_seed(seed: int, stream: int) -> int:
    """A seed per (step seed, stream), spread so that neighbouring steps and orders get unrelated streams."""
    return (seed * 1_000_003 + stream * 7_919 + 0x5DEECE66D) % (1 << 63)


# ----------------------------------------------------------------------------------------------------------------
# The fresh search


@dataclass
class FreshSearch:
    """What ``search_fresh`` found, per step.

    Attributes
    ----------
    cycles : list of dict of int to list of Cycle
        Per step, per order, the verified cycles (sorted by key).
    statuses : list of dict of int to str
        Per step, per order: ``exhaustive``, ``searched``, ``warm_only`` (no fresh search) or ``cut``.
    iterations : list of dict of int to int
    n_solves, n_singular : list of int
    elapsed_s : float
        Wall time of the whole batched search.
    alone_orders : set of int
        Orders whose cycles were solved for each step alone (the fixed points of ``fixed_points``), not in a
        batch whose shape changes the rounding.
    """

    cycles: list[dict[int, list]] = field(default_factory=list)
    statuses: list[dict[int, str]] = field(default_factory=list)
    iterations: list[dict[int, int]] = field(default_factory=list)
    n_solves: list[int] = field(default_factory=list)
    n_singular: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    alone_orders: set[int] = field(default_factory=set)


def search_fresh(
    stack: ModelStack,
    orders: Sequence[int],
    *,
    seeds: Sequence[int],
    regions: RegionTables,
    radii: Sequence[float],
    geometries: Sequence[tuple[np.ndarray, np.ndarray] | None],
    n_starts: int,
    inner: int,
    outer: int,
    exhaustive_limit: int,
    random_orders: set[int],
    deadline: float = math.inf,
    on_order: Callable[[int], None] | None = None,
    enumeration_batch: int = 1 << 16,
    fixed_points: Any = None,
) -> FreshSearch:
    """Every step's cycles of ``orders`` found without a warm start: enumerated where an order has at most
    ``exhaustive_limit`` region sequences at that step, else SCYFI's random search (for ``random_orders``,
    with ``n_starts`` chains; other orders get nothing fresh: ``warm_only``)."""
    started = time.monotonic()
    n_steps = stack.n_steps
    result = FreshSearch(
        cycles=[{} for _ in range(n_steps)],
        statuses=[{} for _ in range(n_steps)],
        iterations=[{} for _ in range(n_steps)],
        n_solves=[0] * n_steps,
        n_singular=[0] * n_steps,
    )
    sampler = _RandomSequences(stack, seeds, radii, regions)
    cut = False
    for order in orders:
        collector = CycleCollector(order, stack.dtype, geometries)
        counts = [regions.count(step) for step in range(n_steps)]
        randomised = order in random_orders and n_starts > 0
        enumerate_steps = [randomised and c is not None and c**order <= exhaustive_limit for c in counts]
        search_steps = [randomised and not e for e in enumerate_steps]
        finished = not cut
        if finished and any(search_steps):
            finished = _random_search(stack, order, sampler, collector, search_steps, result, n_starts, inner, outer, deadline)
        if finished and any(enumerate_steps):
            steps = [step for step, chosen in enumerate(enumerate_steps) if chosen]
            if order == 1 and fixed_points is not None and all(fixed_points.applies(stack.model(i)) for i in steps):
                solved = {"solved": [0] * n_steps}
                finished = fixed_points.enumerate(stack, regions.tables, collector, steps, solved, deadline)
                result.alone_orders.add(order)
                for step in steps:
                    result.n_solves[step] += solved["solved"][step]
                    result.iterations[step][order] = result.iterations[step].get(order, 0) + 1
            else:
                finished = _enumerate(stack, order, regions, collector, enumerate_steps, result, deadline, enumeration_batch)
        cut = cut or not finished
        for step in range(n_steps):
            result.cycles[step][order] = collector.cycles(step)
            if cut:
                status = "cut"
            elif enumerate_steps[step]:
                status = "exhaustive"
            else:
                status = "searched" if search_steps[step] else "warm_only"
            result.statuses[step][order] = status
        if on_order is not None:
            on_order(order)
    result.elapsed_s = time.monotonic() - started
    return result


def _random_search(
    stack: ModelStack,
    order: int,
    sampler: _RandomSequences,
    collector: CycleCollector,
    search_steps: list[bool],
    result: FreshSearch,
    n_starts: int,
    inner: int,
    outer: int,
    deadline: float,
) -> bool:
    """SCYFI for one order, batched over steps and chains; returns False when the deadline stopped it."""
    device = stack.device
    max_iterations = inner * outer
    slots_per_chain = max_iterations + 1  # a chain restarts at most once per iteration
    numbers = sampler.pool(order, n_starts * slots_per_chain).reshape(stack.n_steps, n_starts, slots_per_chain, -1)
    chain = torch.arange(n_starts, device=device)
    restarts = torch.zeros((stack.n_steps, n_starts), dtype=torch.long, device=device)

    def draw() -> Tensor:
        picked = numbers[torch.arange(stack.n_steps, device=device)[:, None], chain[None, :], restarts]
        return sampler.sequences(order, picked)

    codes = draw()
    age = torch.zeros((stack.n_steps, n_starts), dtype=torch.long, device=device)
    active = torch.tensor(search_steps, dtype=torch.bool, device=device)
    quiet = np.zeros(stack.n_steps, dtype=np.int64)
    iterations = np.zeros(stack.n_steps, dtype=np.int64)
    for _ in range(max_iterations):
        if not bool(active.any()):
            break
        check_interrupt()
        if time.monotonic() > deadline:
            return False
        evaluation = _scyfi.evaluate(stack.affine_pieces, stack.step_with_codes, codes)
        found = collector.add_evaluation(evaluation, active)
        running = active.cpu().numpy()
        iterations += running
        singular = (~evaluation.solvable).sum(-1).cpu().numpy()
        for step in np.flatnonzero(running):
            result.n_solves[step] += n_starts
            result.n_singular[step] += int(singular[step])
        # A chain restarts when it found a real cycle, hit a singular system or ran `inner` steps;
        # otherwise it jumps to the regions its virtual cycle actually visited (the SCYFI heuristic).
        age += 1
        restart = evaluation.real | ~evaluation.solvable | (age >= inner)
        restarts = restarts + restart.long()
        codes = torch.where(restart[..., None, None], draw(), evaluation.visited)
        age = torch.where(restart, torch.zeros_like(age), age)
        # SCYFI resets its counters after every discovery; batched, a full round without one ends the search.
        quiet = np.where(found > 0, 0, quiet + running)
        done = (quiet >= inner) & (iterations >= inner)
        active &= torch.as_tensor(~done, device=device)
    for step in range(stack.n_steps):
        if search_steps[step]:
            result.iterations[step][order] = int(iterations[step])
    return True


def _enumerate(
    stack: ModelStack,
    order: int,
    regions: RegionTables,
    collector: CycleCollector,
    enumerate_steps: list[bool],
    result: FreshSearch,
    deadline: float,
    batch_size: int,
) -> bool:
    """Solve every sequence of ``order`` regions at the steps in ``enumerate_steps``, in batches; False when
    the deadline stopped it."""
    device = stack.device
    chosen = [step for step, chosen in enumerate(enumerate_steps) if chosen]
    sizes = regions.sizes
    totals = [int(sizes[step]) ** order for step in chosen]
    steps_mask = torch.tensor(enumerate_steps, dtype=torch.bool, device=device)
    base = sizes.clamp(min=1)[:, None, None]  # (N, 1, 1)
    powers = base ** torch.arange(order - 1, -1, -1, device=device)  # (N, 1, k)
    chunk = max(1, batch_size // max(1, len(chosen)))
    for begin in range(0, max(totals), chunk):
        check_interrupt()
        if time.monotonic() > deadline:
            return False
        index = torch.arange(begin, min(begin + chunk, max(totals)), device=device)
        digits = (index[None, :, None] // powers) % base  # (N, L, k): per step in its own base
        codes = regions.pick(digits)
        evaluation = _scyfi.evaluate(stack.affine_pieces, stack.step_with_codes, codes)
        inside = index[None, :] < (sizes ** order)[:, None]  # (N, L): a sequence of this step's own regions
        evaluation.real &= inside
        collector.add_evaluation(evaluation, steps_mask)
        singular = ((~evaluation.solvable) & inside).sum(-1).cpu().numpy()
        counted = inside.sum(-1).cpu().numpy()
        for step in chosen:
            result.n_solves[step] += int(counted[step])
            result.n_singular[step] += int(singular[step])
    for step in chosen:
        result.iterations[step][order] = result.iterations[step].get(order, 0) + 1
    return True


# ----------------------------------------------------------------------------------------------------------------
# Which regions a search may enumerate


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
# Carrying cycles from one weight setting to the next (find_cycles' warm start, the monitor's previous step)


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
    search's, each cycle once.  Orders the fresh search enumerated at this step take its cycles only (it
    solved every sequence, the carried ones included); their carried sequences still count in the stats.

    The order is fixed, so a step's result does not depend on which other steps were analysed with it.
    """
    geometry = _scyfi.switching_geometry(stack.model(step))
    cycles: list[Cycle] = []
    n_warm = warm_hits = 0
    iterations = dict(fresh.iterations[step])
    for order in orders:
        collector = CycleCollector(order, stack.dtype, [geometry])
        keys, evaluation = carried.get(order, ([], None))
        rows = [i for i, key in enumerate(keys) if wanted is None or key in wanted.get(order, ())]
        if rows and evaluation is not None:
            index = torch.as_tensor(rows, device=stack.device)
            picked = _scyfi.Evaluation(*(getattr(evaluation, name)[step, index][None] for name in _scyfi.EVALUATION_FIELDS))
            n_warm += len(rows)
            warm_hits += int(picked.real.sum())
            iterations[order] = iterations.get(order, 0) + 1  # one batched pass over the carried sequences
            if fresh.statuses[step].get(order) != "exhaustive":
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
