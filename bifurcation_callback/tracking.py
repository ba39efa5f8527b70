"""CycleTracker: the monitor's memory between training steps, without Lightning.

It decides how hard to search at each monitored step (the search schedule), runs ``find_cycles`` warm-started
from the previous step's cycles, compares the two snapshots (``detect_bifurcations``, ``match``), widens the
brackets of newly found cycles to what the schedule can vouch for, optionally localises events along the
weight path, and gives every cycle a track id that persists while the cycle does.  ``BifurcationMonitor``
only calls :meth:`CycleTracker.update` and logs what it returns; everything here is testable with a bare model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import torch

from ._checks import require_dtype, require_int
from .bifurcations import BifurcationEvent, detect_bifurcations, localize, match
from .cycles import Cycle, CycleSet, find_cycles
from .models import detached_copy

__all__ = ["MONITOR_FINDER_DEFAULTS", "FINDER_KEYS", "CycleTracker", "TrackedStep", "check_finder_kwargs", "gradient_norm"]

# Per-step search effort once a warm start exists: previous cycles are re-solved first (one solve each),
# and a small random search for newly born cycles runs on one order every `discovery_every` monitored
# steps, in rotation.  The first step uses find_cycles' thorough defaults on every order.
MONITOR_FINDER_DEFAULTS: dict[str, int] = {"n_starts": 32, "inner": 5, "outer": 1}

# The single list of find_cycles options a user may override; validation and its error message read it.
FINDER_KEYS: tuple[str, ...] = ("device", "dtype", "inner", "n_starts", "outer")


def check_finder_kwargs(finder_kwargs: object, *, owner: str | None = None) -> dict[str, Any]:
    """Validate and normalise overrides of the finder's options.

    Parameters
    ----------
    finder_kwargs : mapping or None
        Keys from ``FINDER_KEYS``: ``n_starts``, ``inner``, ``outer`` (ints >= 1), ``dtype`` (``torch.float64``
        / ``torch.float32`` or their names) and ``device`` (``torch.device``, a device string or None).
    owner : str, optional
        Prefix of the error message (the class that received the argument).

    Returns
    -------
    dict
        A new dict with ``dtype`` as a ``torch.dtype`` and ``device`` as a ``torch.device``.

    Raises
    ------
    ValueError
        Not a mapping, an unknown key (the message lists the allowed ones) or a bad value.

    Examples
    --------
    >>> check_finder_kwargs({"dtype": "float32", "n_starts": 8})
    {'dtype': torch.float32, 'n_starts': 8}
    >>> check_finder_kwargs({"speed": 2})
    Traceback (most recent call last):
    ...
    ValueError: finder_kwargs has unknown keys ['speed']; allowed: ['device', 'dtype', 'inner', 'n_starts', 'outer']
    """
    prefix = f"{owner}: " if owner else ""
    if finder_kwargs is None:
        return {}
    if not isinstance(finder_kwargs, Mapping):
        raise ValueError(f"{prefix}finder_kwargs must be a dict or None, got {finder_kwargs!r}")
    unknown = sorted(set(finder_kwargs) - set(FINDER_KEYS), key=str)
    if unknown:
        raise ValueError(f"{prefix}finder_kwargs has unknown keys {unknown}; allowed: {list(FINDER_KEYS)}")
    checked: dict[str, Any] = {}
    for key, value in finder_kwargs.items():
        name = f"finder_kwargs[{key!r}]"
        if key == "dtype":
            checked[key] = require_dtype(name, value, owner=owner)
        elif key == "device":
            checked[key] = _device(name, value, prefix)
        else:
            checked[key] = require_int(name, value, 1, owner=owner)
    return checked


def _device(name: str, value: object, prefix: str) -> torch.device | None:
    if value is None or isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except (RuntimeError, ValueError):
            pass
    raise ValueError(f"{prefix}{name} must be a torch.device, a device string such as 'cpu' or None, got {value!r}")


def gradient_norm(parameters: Any) -> float | None:
    """The L2 norm of all gradients of ``parameters`` together (None when none has a gradient).

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 1, bias=False)
    >>> layer.weight.grad = torch.tensor([[3.0, 4.0]])
    >>> gradient_norm(layer.parameters())
    5.0
    """
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else None


@dataclasses.dataclass(frozen=True)
class TrackedStep:
    """What :meth:`CycleTracker.update` found at one step.

    Attributes
    ----------
    step : int
        The step the snapshot belongs to.
    cycles : CycleSet
        All cycles found.
    events : tuple of BifurcationEvent
        Changes since the previous snapshot (empty at the first one), brackets widened where the schedule
        requires it.
    charted : dict of int to float
        Track id → largest |multiplier| of the current cycles that own a per-cycle curve (at most
        ``max_tracked_cycles`` ids over the whole run).
    finder_ms, compare_ms : float
        Wall time of the search and of the comparison (including localisation).
    """

    step: int
    cycles: CycleSet
    events: tuple[BifurcationEvent, ...]
    charted: dict[int, float]
    finder_ms: float
    compare_ms: float


class CycleTracker:
    """Follow the cycles of one piecewise-linear model across training steps.

    Parameters
    ----------
    max_order : int
        Largest cycle order searched.
    discovery_every : int
        Run the random search for newly born cycles on every n-th update (one order per search, in rotation);
        the cycles already known are re-solved at every update.
    max_tracked_cycles : int
        How many tracks (the first ones created) get a per-cycle curve over the whole run.
    seed : int
        Base seed of the random search (the step is added).
    finder_kwargs : dict, optional
        Overrides of ``MONITOR_FINDER_DEFAULTS`` (see :func:`check_finder_kwargs`).
    time_budget_s : float, optional
        Per-search budget; a search cut short is discarded (``update`` returns None).
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
        discovery_every: int = 2,
        max_tracked_cycles: int = 8,
        seed: int = 0,
        finder_kwargs: Mapping[str, Any] | None = None,
        time_budget_s: float | None = None,
        localize_events: bool = False,
    ) -> None:
        self.max_order = require_int("max_order", max_order, 1, owner="CycleTracker")
        self.discovery_every = require_int("discovery_every", discovery_every, 1, owner="CycleTracker")
        self.max_tracked_cycles = require_int("max_tracked_cycles", max_tracked_cycles, 0, owner="CycleTracker")
        self.seed = require_int("seed", seed, 0, owner="CycleTracker")
        self.finder_kwargs = check_finder_kwargs(finder_kwargs, owner="CycleTracker")
        self.time_budget_s = time_budget_s
        self.localize_events = localize_events
        self._shadow: Any = None
        self._shadow_source: Any = None
        self._previous_weights: Any = None
        self.reset()

    def reset(self) -> None:
        """Forget every snapshot, track and schedule position."""
        self.previous: CycleSet | None = None
        self.previous_step: int | None = None
        self.n_searches = 0
        self._tracks: dict[str, int] = {}
        self._next_track_id = 0
        self._last_random_search: dict[int, int] = {}
        self._previous_weights = None

    # ------------------------------------------------------------------------------------------ schedule

    def plan(self) -> tuple[dict[str, int], list[int] | None]:
        """The effort of the next search: (finder options, orders with a random search; None = all, thorough).

        Examples
        --------
        >>> CycleTracker(max_order=3).plan()
        ({}, None)
        """
        if self.previous is None:  # no warm start yet: find_cycles' thorough defaults on every order
            return {}, None
        if self.n_searches % self.discovery_every:
            return dict(MONITOR_FINDER_DEFAULTS), []
        discovery = self.n_searches // self.discovery_every
        return dict(MONITOR_FINDER_DEFAULTS), [1 + discovery % self.max_order]

    # ------------------------------------------------------------------------------------------ update

    def update(self, model: Any, step: int) -> TrackedStep | None:
        """Search the cycles of ``model`` at ``step``, compare with the previous snapshot and move on.

        Parameters
        ----------
        model : PiecewiseLinear
            The live model; a ``torch.nn.Module`` is copied (detached, in the finder's dtype and device) first.
        step : int
            The step the snapshot belongs to (increasing from call to call).

        Returns
        -------
        TrackedStep or None
            None when the time budget cut the search short: nothing is compared or remembered.

        Raises
        ------
        ValueError
            From ``find_cycles`` (non-finite weights, ...); the tracker's state is left as it was, except that
            the attempt counts in the schedule.
        """
        effort, random_orders = self.plan()
        self.n_searches += 1
        started = time.perf_counter()
        cycles = find_cycles(
            self._analysis_copy(model),
            self.max_order,
            warm_start=self.previous,
            random_orders=random_orders,
            seed=self.seed + step,
            time_budget_s=self.time_budget_s,
            **{**effort, **self.finder_kwargs},
        )
        searched = time.perf_counter()
        if cycles.cut:
            return None
        weights = detached_copy(model) if self.localize_events and isinstance(model, torch.nn.Module) else None
        if self.previous is None:  # the first snapshot: every cycle starts a track, nothing to compare with
            events: list[BifurcationEvent] = []
            self._update_tracks(match(CycleSet(orders=cycles.orders), cycles))
        else:
            events = detect_bifurcations(self.previous, cycles, step=step, prev_step=self.previous_step)
            events = [self._honest_bracket(event) for event in events]
            self._update_tracks(match(self.previous, cycles))
            if events and self._previous_weights is not None and weights is not None:
                events = self._localize(events, self._previous_weights, weights, step)
        self.previous, self.previous_step, self._previous_weights = cycles, step, weights
        for order in cycles.orders if random_orders is None else random_orders:
            self._last_random_search[order] = step
        return TrackedStep(
            step=step,
            cycles=cycles,
            events=tuple(events),
            charted={track: cycle.spectral_radius for track, cycle in self.charted(cycles).items()},
            finder_ms=1e3 * (searched - started),
            compare_ms=1e3 * (time.perf_counter() - searched),
        )

    def track_id(self, cycle: Cycle) -> int | None:
        """The track id of a cycle of the last snapshot (None for any other cycle)."""
        return self._tracks.get(cycle.key.hex())

    def charted(self, cycles: CycleSet) -> dict[int, Cycle]:
        """The cycles of ``cycles`` that own a per-cycle curve: tracks ``0 .. max_tracked_cycles - 1``, so the
        run never has more than ``max_tracked_cycles`` of them."""
        tracked = ((self.track_id(cycle), cycle) for cycle in cycles)
        return dict(sorted((t, c) for t, c in tracked if t is not None and t < self.max_tracked_cycles))

    def _honest_bracket(self, event: BifurcationEvent) -> BifurcationEvent:
        """A newly found cycle may have been born any time since its order's last random search, so the
        bracket of every event about a cycle with no predecessor (an appearance, or a pair born at a
        border) reaches back to that search."""
        searched = self._last_random_search.get(event.order)
        low, high = event.step_interval
        newly_found = event.eigenvalues_before is None and event.eigenvalues_after is not None
        if not newly_found or searched is None or searched >= low:
            return event
        return dataclasses.replace(event, step_interval=(searched, high))

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

    def _analysis_copy(self, model: Any) -> Any:
        """The model's current weights in the finder's dtype and device, in a copy made once per model and
        refreshed in place every step (a fresh copy per step was a measurable part of the monitor's cost)."""
        if not isinstance(model, torch.nn.Module):
            return model
        dtype = self.finder_kwargs.get("dtype", torch.float64)
        device = self.finder_kwargs.get("device") or next(iter(model.parameters()), torch.empty(0)).device
        if self._shadow is None or self._shadow_source is not model:
            self._shadow, self._shadow_source = detached_copy(model).to(device=device, dtype=dtype), model
        with torch.no_grad():
            for mine, theirs in zip(self._shadow.parameters(), model.parameters()):
                mine.copy_(theirs)
            for mine, theirs in zip(self._shadow.buffers(), model.buffers()):
                mine.copy_(theirs)
        return self._shadow

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the last snapshot, the tracks and the schedule position (JSON-friendly)."""
        return {
            "previous": self.previous.to_dict() if self.previous is not None else None,
            "previous_step": self.previous_step,
            "n_searches": self.n_searches,
            "tracks": dict(self._tracks),
            "next_track_id": self._next_track_id,
            "last_random_search": {str(k): v for k, v in self._last_random_search.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the weights of the previous snapshot are not kept: the first
        update after a resume is compared but not localised)."""
        self.reset()
        previous = state.get("previous")
        self.previous = CycleSet.from_dict(previous) if previous is not None else None
        self.previous_step = state.get("previous_step")
        self.n_searches = int(state.get("n_searches", 0))
        self._tracks = dict(state.get("tracks", {}))
        self._next_track_id = int(state.get("next_track_id", 0))
        self._last_random_search = {int(k): int(v) for k, v in state.get("last_random_search", {}).items()}
