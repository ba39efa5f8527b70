"""CycleTracker and AttractorTracker: the monitor's memory between training steps, without Lightning.

``CycleTracker`` decides how hard to search at each monitored step, runs ``find_cycles`` warm-started from the
previous step's cycles, compares the two snapshots (``detect_bifurcations``, ``match``), widens the brackets
of newly found cycles back to the last step their order was proved complete, optionally localises events
along the weight path, and gives every cycle a track id that persists while the cycle does.
``AttractorTracker`` (``_attractor_tracking``) follows the attractor at any period.  ``BifurcationMonitor``
only calls their ``update`` methods and logs what they return; everything here is testable with a bare model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tqdm import tqdm

from . import _scyfi
from ._checks import FINDER_KEYS, check_finder_kwargs, require_int
from ._fixed_points import FixedPointCache
from ._search import (
    FreshSearch,
    RegionTables,
    _realizable_regions,
    assemble_step,
    resolve_sequences,
    search_fresh,
    sequence_table,
)
from ._attractor_tracking import AttractorTracker, TrackedAttractor
from ._stack import ModelStack
from .bifurcations import BifurcationEvent, compare_snapshots, localize, match
from .cycles import (
    DEFAULT_EXHAUSTIVE_LIMIT,
    Cycle,
    CycleSet,
    _one_cpu_thread,
    _resolve_orders,
    _solve_sequences,
    follow_cycle,
)
from .models import model_tensors, search_radius

__all__ = [
    "GPU_EXHAUSTIVE_LIMIT",
    "GPU_FINDER_DEFAULTS",
    "MONITOR_FINDER_DEFAULTS",
    "THOROUGH_SEARCH",
    "FINDER_KEYS",
    "AttractorTracker",
    "CycleTracker",
    "TrackedAttractor",
    "TrackedStep",
    "check_finder_kwargs",
]

# Per-step search effort once a warm start exists: previous cycles are re-solved first (one solve each), then
# every order is searched: exhaustively where its region sequences can be enumerated (find_cycles decides),
# else by this small random search, so a new cycle is counted at the step it is born.  The first step uses
# find_cycles' thorough defaults on every order.
MONITOR_FINDER_DEFAULTS: dict[str, int] = {"n_starts": 32, "inner": 5, "outer": 1}
# The first monitored step (no previous cycles yet): find_cycles' own defaults.
THOROUGH_SEARCH: dict[str, int] = {"n_starts": 256, "inner": 20, "outer": 4}
# On a GPU a batched call costs little more for many more sequences, so the monitor's searches there try more
# (the statuses say which orders were enumerated): more random starts, and orders enumerated up to 16x more
# region sequences than on the CPU.
GPU_FINDER_DEFAULTS: dict[str, int] = {"n_starts": 128, "inner": 5, "outer": 1}
GPU_EXHAUSTIVE_LIMIT = 2**22

@dataclasses.dataclass(frozen=True)
class TrackedStep:
    """What :meth:`CycleTracker.update_many` found at one step.

    Attributes
    ----------
    step : int
        The step the snapshot belongs to.
    cycles : CycleSet
        All cycles found.
    events : tuple of BifurcationEvent
        Changes since the previous snapshot (empty at the first one; none for orders cut by the time
        budget), each checked against both steps' weights (``bifurcations.compare_snapshots``).
    charted : dict of int to float
        Track id → largest |multiplier| of the current cycles that own a per-cycle curve (at most
        ``max_tracked_cycles`` ids over the whole run).
    finder_ms, compare_ms : float
        Wall time of the search (a batch's search shared equally by its steps) and of the comparison
        (including the checks and localisation).
    late_discoveries : tuple of dict
        Cycles first found at this step that existed at the previous analysed step (the heuristic search
        missed them there): not events (see ``bifurcations.Comparison.missed``).
    """

    step: int
    cycles: CycleSet
    events: tuple[BifurcationEvent, ...]
    charted: dict[int, float]
    finder_ms: float
    compare_ms: float
    late_discoveries: tuple[dict, ...] = ()


def _solved_alone(cycles: CycleSet, model: Any, dtype: torch.dtype, device: torch.device,
                  alone_already: Collection[int] = ()) -> CycleSet:
    """The step's cycles solved again from their region sequences with this step's model alone, one call per
    order: what a step reports then does not depend on the batch it was found in.  Batched products round
    differently with the batch's shape (MKL picks its kernels by size), and a fixed point solved among 64
    steps differed in the last bit from the same one solved alone.  A cycle the re-solve does not confirm
    (a borderline verification) keeps its batched values.  ``alone_already``: orders whose cycles were solved
    for this step alone in the first place (the fixed points of ``FixedPointCache``), not solved again."""
    solved: dict[bytes, Cycle] = {}
    for order in cycles.orders:
        found = cycles.by_order(order)
        if found and order not in alone_already:
            codes = np.stack([cycle.codes for cycle in found])
            solved.update((c.key, c) for c in _solve_sequences(model, codes, dtype, device))
    return dataclasses.replace(cycles, cycles=tuple(solved.get(c.key, c) for c in cycles))


class CycleTracker:
    """Follow the cycles of one piecewise-linear model across training steps.

    At every step the cycles are those of a fresh search (every order enumerated where its region sequences can
    be listed, else SCYFI's random search seeded by ``seed + step``) together with the previous step's cycles
    that still exist (their region sequences re-solved with the new weights, and, for a cycle that is not
    found again in an order that was only searched, the regions its points moved into).  A step's result
    depends on its own weights and the previous step's cycles only, so steps analysed together
    (``update_many``) give exactly what steps analysed one at a time give.

    Parameters
    ----------
    max_order : int
        Largest cycle order searched.
    orders : sequence of int, optional
        Search exactly these orders instead of ``1 .. max_order`` (e.g. ``[1, 2, 16]``).
    max_tracked_cycles : int
        How many tracks (the first ones created) get a per-cycle curve over the whole run.
    seed : int
        Base seed of the random search (the step is added).
    finder_kwargs : dict, optional
        Overrides of ``MONITOR_FINDER_DEFAULTS`` (see :func:`check_finder_kwargs`).
    time_budget_s : float, optional
        Per-step budget of the search; orders it cuts keep what was found (status ``cut``).
    localize_events : bool
        Bisect along the straight weight path between two snapshots around every update with events.

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)  # z' = a z + h with a = 0.5: one stable fixed point
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5), model.W.zero_(), model.h.fill_(0.2)
    >>> tracker = CycleTracker(max_order=1)
    >>> first = tracker.update(model, step=0)
    >>> len(first.cycles), first.events, first.charted
    (1, (), {0: 0.5})
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(-1.5)  # the multiplier crosses -1: a flip
    >>> [(event.kind, event.crossing, event.step_interval) for event in tracker.update(model, step=1).events]
    [('stability_change', '-1', (0, 1))]
    """

    def __init__(
        self,
        max_order: int,
        *,
        orders: Sequence[int] | None = None,
        max_tracked_cycles: int = 8,
        seed: int = 0,
        finder_kwargs: Mapping[str, Any] | None = None,
        time_budget_s: float | None = None,
        localize_events: bool = False,
    ) -> None:
        self.max_order = require_int("max_order", max_order, 1, owner="CycleTracker")
        self.orders = _resolve_orders(self.max_order, orders)
        self.max_tracked_cycles = require_int("max_tracked_cycles", max_tracked_cycles, 0, owner="CycleTracker")
        self.seed = require_int("seed", seed, 0, owner="CycleTracker")
        self.finder_kwargs = check_finder_kwargs(finder_kwargs, owner="CycleTracker")
        self.time_budget_s = time_budget_s
        self.localize_events = localize_events
        self.progress = True
        self.reset()

    @property
    def dtype(self) -> torch.dtype:
        return self.finder_kwargs.get("dtype", torch.float64)

    @property
    def on_gpu(self) -> bool:
        device = self.finder_kwargs.get("device")
        return device is not None and device.type == "cuda"

    @property
    def exhaustive_limit(self) -> int:
        default = GPU_EXHAUSTIVE_LIMIT if self.on_gpu else DEFAULT_EXHAUSTIVE_LIMIT
        return self.finder_kwargs.get("exhaustive_limit", default)

    def reset(self) -> None:
        """Forget every snapshot and track."""
        self.previous: CycleSet | None = None
        self.previous_step: int | None = None
        self._warm_start: CycleSet | None = None
        self._tracks: dict[str, int] = {}
        self._next_track_id = 0
        self._first_step: int | None = None
        # Per order, the last analysed step whose search was exhaustive (proved complete).
        self._last_exhaustive: dict[int, int] = {}
        # The previous step's model (for the checks and localisation), or its weights after a resume.
        self._previous_model: Any = None
        self._previous_weights: list[list] | None = None
        # What proves most cells' candidate fixed points still outside their cells (not state: a speed-up).
        self.fixed_points = FixedPointCache()

    # ------------------------------------------------------------------------------------------ schedule

    def plan(self) -> dict[str, int]:
        """The finder options of the next search: find_cycles' thorough defaults while there is no previous
        step, then ``MONITOR_FINDER_DEFAULTS`` on every order; the user's ``finder_kwargs`` override both.

        Examples
        --------
        >>> CycleTracker(max_order=3).plan()
        {'n_starts': 256, 'inner': 20, 'outer': 4}
        """
        per_step = GPU_FINDER_DEFAULTS if self.on_gpu else MONITOR_FINDER_DEFAULTS
        effort = dict(THOROUGH_SEARCH) if self.previous is None else dict(per_step)
        effort.update({k: v for k, v in self.finder_kwargs.items() if k in ("n_starts", "inner", "outer")})
        return effort

    # ------------------------------------------------------------------------------------------ update

    def update(self, model: Any, step: int) -> TrackedStep:
        """Search the cycles of ``model`` at ``step``, compare with the previous snapshot and move on.

        Parameters
        ----------
        model : PiecewiseLinear
            The live model (only read: a ``torch.nn.Module`` is copied in the finder's dtype and device).
        step : int
            The step the snapshot belongs to (increasing from call to call).

        Returns
        -------
        TrackedStep

        Raises
        ------
        ValueError
            Non-finite weights, or a step not after the previous one; the tracker's state is left as it was.
        """
        return self.update_many(self.stack([model_tensors(model)], model) if isinstance(model, torch.nn.Module)
                                else ModelStack.single(model, dtype=self.dtype, device=torch.device("cpu")), [step])[0]

    def stack(self, weights: Sequence[Sequence[Any]], template: torch.nn.Module) -> ModelStack:
        """A ``ModelStack`` of ``template`` with the given weights (per step: parameters then buffers), in the
        finder's dtype and device."""
        device = self.finder_kwargs.get("device") or next(iter(template.parameters()), torch.empty(0)).device
        return ModelStack(template, weights, dtype=self.dtype, device=device)

    def update_many(
        self, stack: ModelStack, steps: Sequence[int], *, searched: Sequence[CycleSet] | None = None
    ) -> list[TrackedStep]:
        """Analyse the consecutive snapshots ``stack`` (one per step of ``steps``, increasing) in one batched
        search; the same results as calling :meth:`update` for each step in turn.

        With ``searched`` (one ``CycleSet`` of this tracker's orders per step, e.g. ``find_cycles`` run on each
        step's weights elsewhere, as ``offline.analyse_checkpoints`` does) no search runs here: those sets take
        the fresh search's place, and the rest (the previous step's cycles carried over, followed and checked
        against both steps' weights, track ids) is as without them.

        A search cut by the time budget keeps what it found: its orders have status ``"cut"`` (their counts are
        lower bounds), no event is reported for them (a cycle not reached is no disappearance), and the next
        search starts from the union of what this one found and the earlier cycles of those orders, so a budget
        too small for one thorough search still lets the monitor catch up.  The budget is shared by the batch.

        Raises
        ------
        ValueError
            Non-finite weights (``find_cycles``' message), steps not after the previous ones, or ``searched`` not
            one set of this tracker's orders per step; the tracker's state is left as it was.
        """
        steps = [int(step) for step in steps]
        if len(steps) != stack.n_steps:
            raise ValueError(f"update_many got {len(steps)} steps for a stack of {stack.n_steps} snapshots")
        if searched is not None:
            searched = list(searched)
            if len(searched) != stack.n_steps or any(found.orders != self.orders for found in searched):
                raise ValueError(f"searched must hold one CycleSet of orders {list(self.orders)} per step, got "
                                 f"{[list(found.orders) for found in searched]} for {stack.n_steps} steps")
        last = self.previous_step
        for step in steps:
            if last is not None and step <= last:
                raise ValueError(f"steps must increase from snapshot to snapshot, got {step} after {last}")
            last = step
        for index in range(stack.n_steps):
            _check_finite(stack, index)
        if self.previous is None and stack.n_steps > 1:  # the thorough first search runs alone
            first, rest = (None, None) if searched is None else (searched[:1], searched[1:])
            return self.update_many(stack.select([0]), steps[:1], searched=first) + self.update_many(
                stack.select(range(1, stack.n_steps)), steps[1:], searched=rest
            )
        started = time.perf_counter()
        orders = self.orders
        models = [stack.model(index) for index in range(stack.n_steps)]
        with torch.no_grad():
            fresh = self._search(stack, models, steps, orders, self.plan()) if searched is None else _fresh_search_of(searched)
            carried = _CarriedSequences(stack, orders)
            carried.add([self._warm_start] + [_fresh_set(fresh, i, orders) for i in range(stack.n_steps)])
        # A search that ran elsewhere counts its own time; the batch's shared work here is split equally.
        shared_ms = 1e3 * (time.perf_counter() - started) / stack.n_steps
        own_ms = [0.0] * stack.n_steps if searched is None else [1e3 * found.stats.elapsed_s for found in searched]
        search_ms = [shared_ms + ms for ms in own_ms]
        results = []
        for index, step in enumerate(steps):
            assembled = time.perf_counter()
            with torch.no_grad():
                cycles = self._assemble(stack, models[index], index, fresh, carried, orders)
            compared = time.perf_counter()
            events, late = self._compare(cycles, models[index], step)
            results.append(TrackedStep(
                step=step,
                cycles=cycles,
                events=tuple(events),
                charted={track: cycle.spectral_radius for track, cycle in self.charted(cycles).items()},
                finder_ms=search_ms[index] + 1e3 * (compared - assembled),
                compare_ms=1e3 * (time.perf_counter() - compared),
                late_discoveries=tuple(late),
            ))
            self._advance(cycles, models[index], step)
        return results

    def _search(self, stack: ModelStack, models: list, steps: list[int], orders: tuple[int, ...], effort: dict) -> FreshSearch:
        deadline = time.monotonic() + self.time_budget_s * stack.n_steps if self.time_budget_s else math.inf
        # The thorough first search can take seconds on a large model: a progress bar, unless off the training
        # thread (the monitor's worker turns it off: nobody waits for it there).
        bar = tqdm(total=len(orders), desc="cycle search", unit="order", delay=2.0, leave=False,
                   disable=not (self.progress and self.previous is None))
        with bar, _one_cpu_thread(stack.device):
            return search_fresh(
                stack,
                orders,
                seeds=[self.seed + step for step in steps],
                regions=RegionTables([_realizable_regions(m, stack.device) for m in models], stack.n_switches, stack.device),
                radii=[search_radius(m) for m in models],
                geometries=[_scyfi.switching_geometry(m) for m in models],
                n_starts=effort["n_starts"],
                inner=effort["inner"],
                outer=effort["outer"],
                exhaustive_limit=self.exhaustive_limit,
                random_orders=set(orders),
                deadline=deadline,
                on_order=lambda _: bar.update(1),
                fixed_points=self.fixed_points,
            )

    def _assemble(self, stack: ModelStack, model: Any, index: int, fresh: FreshSearch, carried, orders) -> CycleSet:
        """This step's cycles: the previous step's that still exist, then the fresh search's; a previous cycle
        of an order that is not exhaustive here and not found again is followed into the regions it moved to."""
        wanted = {order: {c.key for c in self._warm_start.by_order(order)} for order in orders} if self._warm_start else {}
        cycles = assemble_step(stack, index, fresh, carried.table(), orders, wanted=wanted)
        if self.previous is not None:
            found = {c.key for c in cycles}
            extra: dict[int, list[Cycle]] = {}
            for cycle in self.previous:
                if cycle.key in found or cycles.is_exhaustive(cycle.order) or cycles.status(cycle.order) == "cut":
                    continue
                extra.setdefault(cycle.order, []).extend(follow_cycle(model, cycle, dtype=stack.dtype))
            if any(extra.values()):
                cycles = assemble_step(stack, index, fresh, carried.table(), orders, wanted=wanted, extra=extra)
        # An exhaustive order takes the fresh search's cycles only (assemble_step): those solved alone stay.
        alone = [order for order in fresh.alone_orders if cycles.is_exhaustive(order)]
        return _solved_alone(cycles, model, stack.dtype, stack.device, alone)

    def _compare(self, cycles: CycleSet, model: Any, step: int) -> tuple[list[BifurcationEvent], list[dict]]:
        """Events and late discoveries against the previous step; also moves the track ids on."""
        if self.previous is None:  # the first snapshot: every cycle starts a track, nothing to compare with
            self._update_tracks(match(CycleSet(orders=cycles.orders), cycles))
            return [], []
        before = self._previous_model
        comparison = compare_snapshots(self.previous, cycles, step=step, prev_step=self.previous_step,
                                       before=before, after=model if before is not None else None)
        self._update_tracks(list(comparison.matches))
        kept = {k for k in cycles.orders if "cut" not in (cycles.status(k), self.previous.status(k))}
        events = [self._honest_bracket(event) for event in comparison.events if event.order in kept]
        if events and self.localize_events and before is not None and isinstance(model, torch.nn.Module):
            events = self._localize(events, before, model, step)
        late = [entry for entry in comparison.missed if entry["order"] in kept]
        return events, late

    def _advance(self, cycles: CycleSet, model: Any, step: int) -> None:
        self._warm_start = _carry_over(cycles, self._warm_start)
        self.previous, self.previous_step, self._previous_model = cycles, step, model
        self._previous_weights = None
        self._first_step = step if self._first_step is None else self._first_step
        self._last_exhaustive.update({order: step for order in cycles.orders if cycles.is_exhaustive(order)})

    def track_id(self, cycle: Cycle) -> int | None:
        """The track id of a cycle of the last snapshot (None for any other cycle)."""
        return self._tracks.get(cycle.key.hex())

    def charted(self, cycles: CycleSet) -> dict[int, Cycle]:
        """The cycles of ``cycles`` that own a per-cycle curve: tracks ``0 .. max_tracked_cycles - 1``, so the
        run never has more than ``max_tracked_cycles`` of them."""
        tracked = ((self.track_id(cycle), cycle) for cycle in cycles)
        return dict(sorted((t, c) for t, c in tracked if t is not None and t < self.max_tracked_cycles))

    def _honest_bracket(self, event: BifurcationEvent) -> BifurcationEvent:
        """An appearance that could not be checked against the previous step's weights (after a resume from a
        checkpoint without them) may be a cycle the search missed: its bracket reaches back to the last step
        at which its order was proved complete without it (the first analysed step if never).  Checked events
        keep ``(previous step, step)``."""
        low, high = event.step_interval
        newly_found = event.eigenvalues_before is None and event.eigenvalues_after is not None
        proved_absent = self._last_exhaustive.get(event.order, self._first_step)
        if event.verified or not newly_found or proved_absent is None or proved_absent >= low:
            return event
        return dataclasses.replace(event, step_interval=(proved_absent, high))

    def _update_tracks(self, pairings: list) -> None:
        """Give every current cycle a track id; a persisting cycle keeps its id under its (possibly new) key."""
        tracks: dict[str, int] = {}
        for pairing in pairings:
            if pairing.curr is None:
                continue
            origin = self._tracks.get(pairing.prev.key.hex()) if pairing.prev is not None else None
            if origin is None:
                origin, self._next_track_id = self._next_track_id, self._next_track_id + 1
            tracks[pairing.curr.key.hex()] = origin
        self._tracks = tracks

    def _localize(
        self, events: list[BifurcationEvent], before: Any, after: Any, step: int
    ) -> list[BifurcationEvent]:
        """Give events the sub-step position where the cycle set changes along the weight path."""
        result = localize(
            before, after, max_order=self.max_order, tol=1e-3, step_interval=(self.previous_step, step)
        )
        if not result.converged:
            return events
        located = {(event.kind, event.order) for event in result.events}
        return [
            dataclasses.replace(event, location=result.location) if (event.kind, event.order) in located else event
            for event in events
        ]

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the last snapshot, its weights, the tracks and the last exhaustive steps
        (JSON-friendly)."""
        weights = self._previous_weights
        if weights is None and isinstance(self._previous_model, torch.nn.Module):
            weights = [t.detach().cpu().double().tolist() for t in model_tensors(self._previous_model)]
        return {
            "previous": self.previous.to_dict() if self.previous is not None else None,
            "previous_step": self.previous_step,
            "previous_weights": weights,
            "tracks": dict(self._tracks),
            "next_track_id": self._next_track_id,
            "first_step": self._first_step,
            "last_exhaustive": {str(k): v for k, v in self._last_exhaustive.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], template: torch.nn.Module | None = None) -> None:
        """Restore :meth:`state_dict` output.  With ``template`` (the model being tracked) the previous step's
        weights are restored too, so the first update after a resume is checked like any other; without them
        (or from an older checkpoint) its appearances in searched orders are reported unverified."""
        self.reset()
        previous = state.get("previous")
        self.previous = CycleSet.from_dict(previous) if previous is not None else None
        self._warm_start = self.previous
        self.previous_step = state.get("previous_step")
        self._tracks = dict(state.get("tracks", {}))
        self._next_track_id = int(state.get("next_track_id", 0))
        self._first_step = state.get("first_step")
        self._last_exhaustive = {int(k): int(v) for k, v in state.get("last_exhaustive", {}).items()}
        self._previous_weights = state.get("previous_weights")
        if self._previous_weights is not None and template is not None:
            self._previous_model = self.stack([self._previous_weights], template).model(0)


class _CarriedSequences:
    """Every region sequence a batch may carry from step to step (the warm start's and every fresh search's),
    solved with every step's weights in one batched call per order."""

    def __init__(self, stack: ModelStack, orders: tuple[int, ...]) -> None:
        self.stack, self.orders = stack, orders
        self._keys: dict[int, list[bytes]] = {order: [] for order in orders}
        self._evaluations: dict[int, list[Any]] = {order: [] for order in orders}

    def add(self, cycle_sets: Sequence[CycleSet | None]) -> None:
        table = sequence_table(cycle_sets, self.orders, self.stack.n_switches)
        new = {}
        for order, (keys, codes) in table.items():
            fresh = [i for i, key in enumerate(keys) if key not in set(self._keys[order])]
            if fresh:
                self._keys[order].extend(keys[i] for i in fresh)
                new[order] = codes[fresh]
        for order, evaluation in resolve_sequences(self.stack, new).items():
            self._evaluations[order].append(evaluation)

    def table(self) -> dict[int, tuple[list[bytes], Any]]:
        """Per order, the keys and one ``Evaluation`` with leading axes (N, K)."""
        joined = {}
        for order in self.orders:
            parts = self._evaluations[order]
            if not parts:
                continue
            if len(parts) > 1:
                parts[:] = [_scyfi.Evaluation(*(torch.cat([getattr(p, f) for p in parts], dim=1) for f in _scyfi.EVALUATION_FIELDS))]
            joined[order] = (self._keys[order], parts[0])
        return joined


def _fresh_search_of(searched: Sequence[CycleSet]) -> FreshSearch:
    """Searches that ran elsewhere (one ``CycleSet`` per step) in the shape of a batched fresh search."""
    return FreshSearch(
        cycles=[{order: found.by_order(order) for order in found.orders} for found in searched],
        statuses=[dict(found.statuses) for found in searched],
        iterations=[dict(found.stats.iterations) for found in searched],
        n_solves=[found.stats.n_solves for found in searched],
        n_singular=[found.stats.n_singular for found in searched],
        elapsed_s=sum(found.stats.elapsed_s for found in searched),
    )


def _fresh_set(fresh: FreshSearch, index: int, orders: tuple[int, ...]) -> CycleSet:
    return CycleSet(tuple(c for order in orders for c in fresh.cycles[index][order]), orders)


def _check_finite(stack: ModelStack, index: int) -> None:
    model = stack.model(index)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if isinstance(model, torch.nn.Module) else ():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"model parameter {name!r} contains NaN or Inf; cycles are undefined")


def _carry_over(cycles: CycleSet, warm_start: CycleSet | None) -> CycleSet:
    """The next warm start: ``cycles`` plus, for its orders cut by the time budget, the earlier warm start's
    cycles of those orders (their region sequences are only tried again, never reported)."""
    if warm_start is None or not cycles.cut:
        return cycles
    known = {cycle.key for cycle in cycles}
    kept = [c for c in warm_start if c.order in cycles.orders and cycles.status(c.order) == "cut" and c.key not in known]
    return dataclasses.replace(cycles, cycles=tuple(sorted(cycles.cycles + tuple(kept), key=lambda c: c.order)))
