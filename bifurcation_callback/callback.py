"""BifurcationMonitor: the Lightning callback that finds the RNN's cycles every few steps and logs
bifurcations and loss jumps.

The callback only wires pure functions together (find_cycles → match/classify → loss-jump correlation)
and hands the results to ``Dashboard``; it does no linear algebra.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections import Counter
from operator import attrgetter
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback as _LightningCallback
from typing_extensions import override

from ._checks import require_int
from .bifurcations import BIFURCATION_KINDS, BifurcationEvent, detect_bifurcations, localize, match
from .cycles import CycleSet, find_cycles
from .dashboard import Dashboard, custom_scalars_layout, events_markdown
from .loss_jumps import correlate, detect_loss_jumps, detect_spikes
from .models import detached_copy, require_piecewise_linear

try:  # the classic namespace, so one monitor works with both `lightning.pytorch` and `pytorch_lightning`
    from pytorch_lightning.callbacks import Callback as _ClassicCallback

    _CALLBACK_BASES: tuple[type, ...] = (_LightningCallback, _ClassicCallback)
except ImportError:  # pragma: no cover - pytorch_lightning is optional
    _CALLBACK_BASES = (_LightningCallback,)

__all__ = ["BifurcationMonitor", "MONITOR_FINDER_DEFAULTS", "LOGGED_METRICS"]

# Per-step search effort once a warm start exists: previous cycles are re-solved first (one solve each),
# and a small random search for newly born cycles runs on one order every `discovery_every` monitored
# steps, in rotation.
# The first step uses find_cycles' thorough defaults on every order.
MONITOR_FINDER_DEFAULTS: dict[str, int] = {"n_starts": 32, "inner": 5, "outer": 1}
_FINDER_KEYS = {"n_starts", "inner", "outer", "dtype", "device"}

# Every scalar the monitor logs ({k}: order, {id}: track id of a cycle).  The class docstring lists them
# and a test checks the emitted tags against this list.
LOGGED_METRICS: dict[str, str] = {
    "bifurcation/loss": "training loss at the monitored step (from `loss_key` or the step output)",
    "bifurcation/grad_norm": "L2 norm of all gradients before the optimizer step",
    "bifurcation/n_cycles/order_{k}": "number of k-cycles (fixed points for k = 1)",
    "bifurcation/n_stable/order_{k}": "number of stable k-cycles",
    "bifurcation/n_cycles/total": "all cycles up to max_order",
    "bifurcation/n_stable/total": "all stable cycles up to max_order",
    "bifurcation/max_abs_eig/order_{k}": "largest |multiplier| over the k-cycles",
    "bifurcation/max_abs_eig/cycle_{id}": "largest |multiplier| of one tracked cycle (first max_tracked_cycles)",
    "bifurcation/min_unit_distance": "min over cycles and multipliers of ||λ| − 1|: small = stability change near",
    "bifurcation/min_border_margin": "min distance of a cycle point to a switching plane: small = border collision near",
    "bifurcation/event": "number of bifurcation events at this step (0 otherwise): markers on the loss chart",
    "bifurcation/events_total": "cumulative number of events",
    "bifurcation/monitor_ms": "time of the cycle search and comparison at this step",
    "bifurcation/skipped": "cumulative number of monitored steps skipped (errors, NaN weights, time budget)",
    "bifurcation/jumps_explained": "at fit end: fraction of loss jumps with an event within jump_window steps",
    "bifurcation/events_with_jump": "at fit end: fraction of events with a loss jump within jump_window steps",
    "bifurcation/p_value": "at fit end: permutation-test p-value of jumps_explained",
    "bifurcation/n_loss_jumps": "at fit end: number of loss jumps detected",
}


def _require_int(name: str, value: object, minimum: int) -> int:
    return require_int(name, value, minimum, owner="BifurcationMonitor")


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class BifurcationMonitor(*_CALLBACK_BASES):
    """Find all fixed points and k-cycles of the RNN every ``every_n_steps`` training steps, report
    bifurcations (cycles appearing, vanishing, changing stability or colliding with a border) and, at
    the end of fit, whether they explain the loss jumps.

    Parameters
    ----------
    max_order : int
        Largest cycle order searched (1 = fixed points only).
    every_n_steps : int
        Analyse the model after every n-th optimizer step (``trainer.global_step``).  Independent of the
        Trainer's ``log_every_n_steps``.
    model_attr : str, optional
        Dotted attribute path of the piecewise-linear RNN inside the LightningModule (e.g. ``"rnn"``).
        By default the single submodule implementing the PiecewiseLinear protocol is used.
    finder_kwargs : dict, optional
        Overrides of ``MONITOR_FINDER_DEFAULTS`` (``n_starts``, ``inner``, ``outer``, ``dtype``, ``device``).
    time_budget_s : float, optional
        Per-step budget for the cycle search; a search cut short is skipped (with a warning), never
        compared, so no spurious event is reported.
    loss_key : str
        Key in ``trainer.callback_metrics`` holding the training loss; the step's returned loss is used
        when the key is missing.
    log_figures_every_n_steps : int
        Log the figures (state space with the cycles, timeline of events over the loss curve) every n
        monitored steps (0: only at fit end).  Each figure costs tens of milliseconds of matplotlib.
    jsonl_path : str, optional
        Where to write the per-step records; default ``<trainer.log_dir>/events.jsonl``.
        ``summary.json`` goes to the same folder.
    jump_window : int, optional
        Steps within which a loss jump counts as explained by an event (default ``5 * every_n_steps``).
    jump_warmup_steps : int
        Loss jumps are looked for only after this many training steps: a fresh model's first updates
        often drop the loss by more than a jump's threshold, which is learning, not a bifurcation.
    jump_min_change : float
        Smallest relative change of the per-batch training loss in one step that can count as a jump
        (1.0: doubling or halving), on top of being a robust outlier (z > 5) against the run's own
        step-to-step noise.  Per-batch losses under teacher forcing routinely move by ±50 %.
    max_tracked_cycles : int
        How many individual cycles get their own ``max_abs_eig/cycle_{id}`` curve.
    discovery_every : int
        Run the small random search for newly born cycles on every n-th monitored step (one order per
        search, in rotation); the cycles already known are re-solved at every monitored step.  1 finds new
        cycles sooner, 2 (default) halves the search's cost; an appearance's bracket always reaches back
        to its order's previous search.
    localize_events : bool
        Bisect along the straight line between the two weight snapshots around every step with events,
        to give the events a sub-step ``location`` (costs about ten extra searches per such step).
    seed : int
        Base seed of the random part of the search (the step number is added).

    Logged metrics
    --------------
    Scalars go to every logger in ``trainer.loggers``; the event table (``bifurcation/events``), the
    fit-end summary (``bifurcation/summary``), figures (``bifurcation/state_space``,
    ``bifurcation/timeline``) and a custom-scalars layout go to TensorBoard loggers only.

    - ``bifurcation/loss``, ``bifurcation/grad_norm``
    - ``bifurcation/n_cycles/order_{k}``, ``bifurcation/n_stable/order_{k}``, ``bifurcation/n_cycles/total``,
      ``bifurcation/n_stable/total``
    - ``bifurcation/max_abs_eig/order_{k}``, ``bifurcation/max_abs_eig/cycle_{id}``
    - ``bifurcation/min_unit_distance``, ``bifurcation/min_border_margin``
    - ``bifurcation/event``, ``bifurcation/events_total``, ``bifurcation/monitor_ms``, ``bifurcation/skipped``
    - at fit end: ``bifurcation/jumps_explained``, ``bifurcation/events_with_jump``, ``bifurcation/p_value``,
      ``bifurcation/n_loss_jumps``

    Examples
    --------
    >>> monitor = BifurcationMonitor(max_order=2, every_n_steps=5)
    >>> monitor.state_key
    "BifurcationMonitor{'model_attr': None, 'max_order': 2}"
    >>> BifurcationMonitor(every_n_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: BifurcationMonitor: every_n_steps must be an int >= 1, got 0
    """

    def __init__(
        self,
        max_order: int = 4,
        every_n_steps: int = 1,
        *,
        model_attr: str | None = None,
        finder_kwargs: dict[str, Any] | None = None,
        time_budget_s: float | None = None,
        loss_key: str = "train_loss",
        log_figures_every_n_steps: int = 0,
        jsonl_path: str | None = None,
        jump_window: int | None = None,
        jump_warmup_steps: int = 20,
        jump_min_change: float = 1.0,
        max_tracked_cycles: int = 8,
        localize_events: bool = False,
        discovery_every: int = 2,
        seed: int = 0,
    ) -> None:
        self.max_order = _require_int("max_order", max_order, 1)
        self.every_n_steps = _require_int("every_n_steps", every_n_steps, 1)
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise ValueError(f"BifurcationMonitor: model_attr must be a non-empty attribute path or None, got {model_attr!r}")
        self.model_attr = model_attr
        unknown = set(finder_kwargs or {}) - _FINDER_KEYS
        if unknown:
            raise ValueError(
                f"BifurcationMonitor: unknown finder_kwargs {sorted(unknown)}; allowed: {sorted(_FINDER_KEYS)}"
            )
        self.finder_kwargs = dict(finder_kwargs or {})
        if time_budget_s is not None and not (isinstance(time_budget_s, (int, float)) and time_budget_s > 0):
            raise ValueError(f"BifurcationMonitor: time_budget_s must be a positive number or None, got {time_budget_s!r}")
        self.time_budget_s = time_budget_s
        if not isinstance(loss_key, str) or not loss_key:
            raise ValueError(f"BifurcationMonitor: loss_key must be a non-empty string, got {loss_key!r}")
        self.loss_key = loss_key
        self.log_figures_every_n_steps = _require_int("log_figures_every_n_steps", log_figures_every_n_steps, 0)
        self.jsonl_path = jsonl_path
        self.jump_window = _require_int("jump_window", jump_window, 0) if jump_window is not None else 5 * every_n_steps
        self.jump_warmup_steps = _require_int("jump_warmup_steps", jump_warmup_steps, 0)
        if isinstance(jump_min_change, bool) or not isinstance(jump_min_change, (int, float)) or not jump_min_change >= 0:
            raise ValueError(f"BifurcationMonitor: jump_min_change must be a number >= 0, got {jump_min_change!r}")
        self.jump_min_change = float(jump_min_change)
        self.max_tracked_cycles = _require_int("max_tracked_cycles", max_tracked_cycles, 0)
        if not isinstance(localize_events, bool):
            raise ValueError(f"BifurcationMonitor: localize_events must be True or False, got {localize_events!r}")
        self.localize_events = localize_events
        self.discovery_every = _require_int("discovery_every", discovery_every, 1)
        self.seed = _require_int("seed", seed, 0)
        self.summary: dict[str, Any] | None = None
        self._rnn: Any = None
        self._shadow: Any = None
        self._dashboard: Dashboard | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._previous: CycleSet | None = None
        self._previous_step: int | None = None
        self._records: list[dict[str, Any]] = []
        # [step, loss, grad norm] of every training step: loss jumps are found at full resolution even
        # when the cycle search runs only every n steps.
        self._history: list[list[float | None]] = []
        self._n_events = 0
        self._tracks: dict[str, int] = {}
        self._next_track_id = 0
        self._skip_reasons: Counter[str] = Counter()
        self._warned: set[str] = set()
        self._hook_seconds = 0.0
        self._fit_seconds = 0.0
        self._fit_started: float | None = None
        self._pending_grad_norm: float | None = None
        self._last_random_search: dict[int, int] = {}
        self._previous_weights: Any = None
        self._resumed = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(model_attr=self.model_attr, max_order=self.max_order)

    # ------------------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._rnn = self._find_rnn(pl_module)
            self._shadow = None

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit_started = time.perf_counter()
        if not trainer.is_global_zero:
            return
        self._dashboard = Dashboard(trainer.loggers, self._log_dir(trainer), self._jsonl_name())
        self._dashboard.log_layout(custom_scalars_layout("bifurcation/loss", range(1, self.max_order + 1)))
        # On resume the restored records replace whatever the interrupted run wrote after its checkpoint.
        self._dashboard.rewrite_records(self._records if self._resumed else [])

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.is_global_zero:
            norms = [p.grad.detach().norm() for p in pl_module.parameters() if p.grad is not None]
            self._pending_grad_norm = float(torch.stack(norms).norm()) if norms else None

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self._history and self._history[-1][0] == step:
            return  # gradient accumulation: several batches share one optimizer step
        started = time.perf_counter()
        loss = self._read_loss(trainer, outputs)
        self._history.append([step, _finite_or_none(loss), _finite_or_none(self._pending_grad_norm)])
        if step % self.every_n_steps:
            self._hook_seconds += time.perf_counter() - started
            return
        try:
            self._analyse(step, loss)
        except Exception as error:  # the monitor must never take the training run down
            self._skip(step, loss, f"{type(error).__name__}: {error}")
        finally:
            self._hook_seconds += time.perf_counter() - started

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fit_started is not None:
            self._fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None
        if not trainer.is_global_zero or self._dashboard is None:
            return
        try:
            self.summary = self._summarise(trainer.global_step)
            self._log_summary(self.summary, trainer.global_step)
        except Exception as error:  # a broken summary must not hide the training result
            self._warn("summary", f"BifurcationMonitor could not write its summary: {error}")
        self._dashboard.flush()

    # ------------------------------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": self._previous.to_dict() if self._previous is not None else None,
            "previous_step": self._previous_step,
            "records": self._records,
            "history": self._history,
            "tracks": self._tracks,
            "next_track_id": self._next_track_id,
            "skip_reasons": dict(self._skip_reasons),
            "hook_seconds": self._hook_seconds,
            "fit_seconds": self._fit_seconds,
            "last_random_search": {str(k): v for k, v in self._last_random_search.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous = state_dict.get("previous")
        self._previous = CycleSet.from_dict(previous) if previous is not None else None
        self._previous_step = state_dict.get("previous_step")
        self._records = list(state_dict.get("records", []))
        self._history = [list(entry) for entry in state_dict.get("history", [])]
        self._n_events = sum(len(record.get("events", [])) for record in self._records)
        self._tracks = dict(state_dict.get("tracks", {}))
        self._next_track_id = int(state_dict.get("next_track_id", 0))
        self._skip_reasons = Counter(state_dict.get("skip_reasons", {}))
        self._hook_seconds = float(state_dict.get("hook_seconds", 0.0))
        self._fit_seconds = float(state_dict.get("fit_seconds", 0.0))
        self._last_random_search = {int(k): int(v) for k, v in state_dict.get("last_random_search", {}).items()}
        self._resumed = True

    # ------------------------------------------------------------------------------------------ public results

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per monitored step (as written to ``events.jsonl``)."""
        return list(self._records)

    @property
    def events(self) -> list[BifurcationEvent]:
        """All bifurcation events so far, in step order."""
        return [BifurcationEvent.from_dict(e) for record in self._records for e in record.get("events", [])]

    @property
    def cycles(self) -> CycleSet | None:
        """The cycle set of the last analysed step."""
        return self._previous

    @property
    def n_skipped(self) -> int:
        return sum(self._skip_reasons.values())

    # ------------------------------------------------------------------------------------------ internals

    def _find_rnn(self, pl_module: Any) -> Any:
        if self.model_attr is not None:
            try:
                rnn = attrgetter(self.model_attr)(pl_module)
            except AttributeError:
                raise ValueError(
                    f"BifurcationMonitor: {type(pl_module).__name__} has no attribute {self.model_attr!r} (model_attr)"
                ) from None
            require_piecewise_linear(rnn)
            return rnn
        candidates = [(name, module) for name, module in pl_module.named_modules() if _is_piecewise_linear(module)]
        # Keep the outermost ones: a PL model may contain PL parts.
        outermost = [(n, m) for n, m in candidates if not any(n != o and n.startswith(o + ".") for o, _ in candidates if o)]
        if len(outermost) == 1:
            return outermost[0][1]
        if not outermost:
            raise TypeError(
                f"BifurcationMonitor found no piecewise-linear RNN in {type(pl_module).__name__}: it needs a "
                "submodule implementing the PiecewiseLinear protocol (state_dim, n_switches, region_codes, "
                "affine_pieces, step), e.g. bifurcation_callback.PLRNN, or model_attr naming one"
            )
        names = ", ".join(name or "<the LightningModule itself>" for name, _ in outermost)
        raise ValueError(f"BifurcationMonitor found several piecewise-linear models ({names}); pass model_attr=")

    def _log_dir(self, trainer: Any) -> str | None:
        if self.jsonl_path is not None:
            from pathlib import Path

            return str(Path(self.jsonl_path).parent)
        return trainer.log_dir

    def _jsonl_name(self) -> str:
        from pathlib import Path

        return Path(self.jsonl_path).name if self.jsonl_path is not None else "events.jsonl"

    def _read_loss(self, trainer: Any, outputs: Any) -> float | None:
        value = trainer.callback_metrics.get(self.loss_key)
        if value is None:
            value = outputs.get("loss") if isinstance(outputs, dict) else outputs
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def _analyse(self, step: int, loss: float | None) -> None:
        started = time.perf_counter()
        if self._previous is None:  # no warm start yet: find_cycles' thorough defaults on every order
            effort, random_orders = {}, None
        elif len(self._records) % self.discovery_every:
            effort, random_orders = MONITOR_FINDER_DEFAULTS, []
        else:
            discovery = len(self._records) // self.discovery_every
            effort, random_orders = MONITOR_FINDER_DEFAULTS, [1 + discovery % self.max_order]
        cycles = find_cycles(
            self._analysis_copy(),
            self.max_order,
            warm_start=self._previous,
            random_orders=random_orders,
            seed=self.seed + step,
            time_budget_s=self.time_budget_s,
            **{**effort, **self.finder_kwargs},
        )
        searched = time.perf_counter()
        if not cycles.complete:
            self._skip(step, loss, f"time budget of {self.time_budget_s} s exceeded")
            return
        weights = detached_copy(self._rnn) if self.localize_events else None
        if self._previous is not None:
            events = self._compare(cycles, step)
            if events and self._previous_weights is not None:
                events = self._localize(events, self._previous_weights, weights, step)
        else:  # the first snapshot: every cycle starts a track, nothing to compare with
            events = []
            self._update_tracks(match(CycleSet(orders=cycles.orders), cycles))
        timings = {"finder_ms": 1e3 * (searched - started), "compare_ms": 1e3 * (time.perf_counter() - searched)}
        record = self._record(step, loss, cycles, events, timings)
        self._records.append(record)
        self._n_events += len(events)
        self._previous, self._previous_step, self._previous_weights = cycles, step, weights
        for order in cycles.orders if random_orders is None else random_orders:
            self._last_random_search[order] = step
        self._publish(record, cycles, events, step)

    def _analysis_copy(self) -> Any:
        """The RNN's current weights in the finder's dtype and device, in a copy made once and refreshed in
        place every step (a fresh copy per step was a measurable part of the monitor's cost)."""
        rnn = self._rnn
        if not isinstance(rnn, torch.nn.Module):
            return rnn
        dtype = self.finder_kwargs.get("dtype", torch.float64)
        device = self.finder_kwargs.get("device") or next(iter(rnn.parameters()), torch.empty(0)).device
        if self._shadow is None:
            self._shadow = detached_copy(rnn).to(device=device, dtype=dtype)
        with torch.no_grad():
            for mine, theirs in zip(self._shadow.parameters(), rnn.parameters()):
                mine.copy_(theirs)
            for mine, theirs in zip(self._shadow.buffers(), rnn.buffers()):
                mine.copy_(theirs)
        return self._shadow

    def _compare(self, cycles: CycleSet, step: int) -> list[BifurcationEvent]:
        events = detect_bifurcations(self._previous, cycles, step=step, prev_step=self._previous_step)
        self._update_tracks(match(self._previous, cycles))
        return [self._honest_bracket(event) for event in events]

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
            tracks[pairing.curr.key.hex()] = origin if origin is not None else self._new_track()
        self._tracks = tracks

    def _localize(
        self, events: list[BifurcationEvent], before: Any, after: Any, step: int
    ) -> list[BifurcationEvent]:
        """Give events the sub-step position where the cycle set changes along the weight path."""
        result = localize(
            before, after, max_order=self.max_order, tol=1e-3, step_interval=(self._previous_step, step)
        )
        if not result.converged:
            return events
        located = {(event.kind, event.order) for event in result.events}
        return [
            dataclasses.replace(event, location=result.location) if (event.kind, event.order) in located else event
            for event in events
        ]

    def _new_track(self) -> int:
        self._next_track_id += 1
        return self._next_track_id - 1

    def _record(
        self, step: int, loss: float | None, cycles: CycleSet, events: list[BifurcationEvent], timings: dict[str, float]
    ) -> dict[str, Any]:
        record = {
            "step": step,
            "loss": _finite_or_none(loss),
            "grad_norm": self._history[-1][2] if self._history else None,
            "n_cycles": {str(k): n for k, n in cycles.counts().items()},
            "n_stable": {str(k): n for k, n in cycles.stable_counts().items()},
            "events": [event.to_dict() for event in events],
            **timings,
        }
        return record

    def _publish(self, record: dict[str, Any], cycles: CycleSet, events: list[BifurcationEvent], step: int) -> None:
        dashboard = self._dashboard
        if dashboard is None:
            return
        started = time.perf_counter()
        scalars = self._step_scalars(record, cycles)
        dashboard.log_scalars(scalars, step)
        if events:
            dashboard.log_text("bifurcation/events", events_markdown(record["events"]), step)
        logged = time.perf_counter()
        if self.log_figures_every_n_steps and len(self._records) % self.log_figures_every_n_steps == 0:
            self._log_figures(cycles, step)
        # Kept apart so the overhead can be broken down (finder, comparison, logging, figures).
        record["publish_ms"] = 1e3 * (logged - started)
        record["figures_ms"] = 1e3 * (time.perf_counter() - logged)
        dashboard.write_record(record)

    def _step_scalars(self, record: dict[str, Any], cycles: CycleSet) -> dict[str, float | None]:
        scalars: dict[str, float | None] = {
            "bifurcation/loss": record["loss"],
            "bifurcation/grad_norm": record["grad_norm"],
            "bifurcation/n_cycles/total": float(len(cycles)),
            "bifurcation/n_stable/total": float(cycles.n_stable),
            "bifurcation/event": float(len(record["events"])),
            "bifurcation/events_total": float(self._n_events),
            "bifurcation/skipped": float(self.n_skipped),
            "bifurcation/monitor_ms": record["finder_ms"] + record["compare_ms"],
        }
        for order in cycles.orders:
            of_order = cycles.by_order(order)
            scalars[f"bifurcation/n_cycles/order_{order}"] = float(len(of_order))
            scalars[f"bifurcation/n_stable/order_{order}"] = float(sum(c.is_stable for c in of_order))
            if of_order:
                scalars[f"bifurcation/max_abs_eig/order_{order}"] = max(c.spectral_radius for c in of_order)
        tracked = sorted((self._tracks.get(c.key.hex(), -1), c) for c in cycles)
        for track, cycle in [(t, c) for t, c in tracked if t >= 0][: self.max_tracked_cycles]:
            scalars[f"bifurcation/max_abs_eig/cycle_{track}"] = cycle.spectral_radius
        if len(cycles):
            scalars["bifurcation/min_unit_distance"] = min(
                float(abs(abs(value) - 1)) for cycle in cycles for value in cycle.eigenvalues
            )
            scalars["bifurcation/min_border_margin"] = min(c.border_margin for c in cycles)
        return scalars

    def _log_figures(self, cycles: CycleSet | None, step: int, loss_jumps: list[dict] | tuple = ()) -> None:
        """The state space with the cycles and the timeline of events over the loss curve."""
        if self._dashboard is None or not self._dashboard.has_tensorboard:
            return
        from .plots import plot_cycles, plot_timeline

        if cycles is not None:
            self._dashboard.log_figure("bifurcation/state_space", plot_cycles(cycles).figure, step)
        timeline = plot_timeline(self._records, loss_jumps, losses=self._history).figure
        self._dashboard.log_figure("bifurcation/timeline", timeline, step)

    def _skip(self, step: int, loss: float | None, reason: str) -> None:
        category = reason.split(":")[0]
        self._skip_reasons[category] += 1
        self._warn(category, f"BifurcationMonitor skipped step {step}: {reason}")
        record = {"step": step, "loss": _finite_or_none(loss), "skipped": reason}
        self._records.append(record)
        if self._dashboard is not None:
            self._dashboard.write_record(record)
            self._dashboard.log_scalars({"bifurcation/skipped": float(self.n_skipped)}, step)

    def _warn(self, category: str, message: str) -> None:
        # One warning per kind of problem: a NaN model would otherwise warn at every step.
        if category not in self._warned:
            self._warned.add(category)
            warnings.warn(message + " (further warnings of this kind are suppressed)", RuntimeWarning, stacklevel=2)

    def _summarise(self, last_step: int) -> dict[str, Any]:
        analysed = [r for r in self._records if "skipped" not in r]
        event_steps = [e["step"] for r in analysed for e in r["events"]]
        step_range = (int(self._history[0][0]), last_step) if self._history else (0, last_step)
        losses = [(step, loss) for step, loss, _ in self._history if loss is not None]
        after_warmup = [(step, loss) for step, loss in losses if step > step_range[0] + self.jump_warmup_steps]
        jumps, jump_note = [], None
        if after_warmup:
            try:
                jumps = detect_loss_jumps(
                    [loss for _, loss in after_warmup],
                    [step for step, _ in after_warmup],
                    min_relative_change=self.jump_min_change,
                )
            except ValueError as error:  # e.g. a negative loss has no log
                jump_note = str(error)
        jump_correlation = correlate(event_steps, [j.step for j in jumps], window=self.jump_window, step_range=step_range)
        norms = [(step, norm) for step, _, norm in self._history if norm]
        spikes = detect_spikes([norm for _, norm in norms], [step for step, _ in norms]) if norms else []
        spike_correlation = correlate(event_steps, spikes, window=self.jump_window, step_range=step_range)
        by_kind = Counter(e["kind"] for r in analysed for e in r["events"])
        return {
            "max_order": self.max_order,
            "every_n_steps": self.every_n_steps,
            "n_monitored_steps": len(analysed),
            "n_skipped": self.n_skipped,
            "skip_reasons": dict(self._skip_reasons),
            "final_step": last_step,
            "final_loss": losses[-1][1] if losses else None,
            "final_cycles": self._previous.to_dict() if self._previous is not None else None,
            "n_events": len(event_steps),
            "events_by_kind": {kind: by_kind.get(kind, 0) for kind in BIFURCATION_KINDS},
            "loss_jumps": [j.to_dict() for j in jumps],
            "loss_jump_note": jump_note,
            "jump_warmup_steps": self.jump_warmup_steps,
            "jump_min_change": self.jump_min_change,
            "jump_correlation": jump_correlation.to_dict(),
            "grad_spike_steps": spikes,
            "grad_spike_correlation": spike_correlation.to_dict(),
            "monitor_seconds": self._hook_seconds,
            "fit_seconds": self._fit_seconds,
            "monitor_overhead": self._hook_seconds / max(self._fit_seconds - self._hook_seconds, 1e-9),
        }

    def _log_summary(self, summary: dict[str, Any], step: int) -> None:
        dashboard = self._dashboard
        correlation = summary["jump_correlation"]
        dashboard.log_scalars(
            {
                "bifurcation/jumps_explained": correlation["jumps_explained"],
                "bifurcation/events_with_jump": correlation["events_with_jump"],
                "bifurcation/p_value": correlation["p_value"],
                "bifurcation/n_loss_jumps": float(len(summary["loss_jumps"])),
            },
            step,
        )
        dashboard.log_text("bifurcation/summary", summary_markdown(summary), step)
        if self._records:
            self._log_figures(self._previous, step, summary["loss_jumps"])
        dashboard.write_summary(summary)


def summary_markdown(summary: dict[str, Any]) -> str:
    """The fit-end summary as a Markdown table (TensorBoard text tab, CLI ``compare``)."""
    correlation = summary["jump_correlation"]
    kinds = ", ".join(f"{k}: {n}" for k, n in summary["events_by_kind"].items() if n) or "none"
    lag = correlation.get("mean_lag")
    rows = [
        ("monitored steps", summary["n_monitored_steps"]),
        ("skipped steps", summary["n_skipped"]),
        ("bifurcation events", f"{summary['n_events']} ({kinds})"),
        ("loss jumps", len(summary["loss_jumps"])),
        ("jumps with an event nearby", f"{correlation['jumps_explained']:.2f} (p = {correlation['p_value']:.3g})"),
        ("events with a jump nearby", f"{correlation['events_with_jump']:.2f}"),
        ("mean lag jump − event (steps)", "—" if lag is None else f"{lag:.1f}"),
        ("monitor overhead", f"{100 * summary['monitor_overhead']:.1f} %"),
    ]
    return "\n".join(["| quantity | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def _is_piecewise_linear(module: Any) -> bool:
    try:
        require_piecewise_linear(module)
    except TypeError:
        return False
    return True

