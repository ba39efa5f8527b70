"""StepAnalyser: the whole analysis of one monitored step, from a snapshot of the RNN's weights to the step's
record, without Lightning.

This is the part of ``BifurcationMonitor`` that may run off the training thread (``runner.ProcessRunner``): the training
process only takes a :class:`Snapshot` (detached copies of the RNN's parameters and buffers, the step's loss
and gradient norm, the module's reference states) and the analyser, wherever it runs, loads the snapshot into
its own copy of the RNN, runs the cycle tracker (finder, comparison, localisation) and the attractor tracker,
and returns a :class:`StepResult`.  The analyser is picklable, so a worker process starts from a copy of it
(with its trackers' state), and its state is JSON-friendly, so a checkpoint can hold it.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import finite_or_none
from .attractors import AttractorReport, attractor_label
from .cycles import CycleSet
from ._search import AnalysisInterrupted, interruptible
from ._stack import ModelStack
from .dashboard import analysis_scalars
from .models import detached_copy, model_tensors
from .tracking import AttractorTracker, CycleTracker

__all__ = [
    "Snapshot",
    "StepAnalyser",
    "StepRecord",
    "StepResult",
    "TIMING_KEYS",
    "attractor_record",
    "cycle_scalars",
    "load_snapshot",
    "model_tensors",
    "skipped_result",
    "take_snapshot",
    "without_timings",
]

# Record fields that measure time (they differ between two runs that found the same things).
TIMING_KEYS: tuple[str, ...] = (
    "finder_ms", "compare_ms", "attractor_ms", "publish_ms", "figures_ms", "lag_ms", "lag_steps", "batch_size",
)


@dataclasses.dataclass
class Snapshot:
    """One monitored step as the training process hands it to the analysis.

    Attributes
    ----------
    step : int
        The step the weights belong to (after that batch's optimizer step).
    loss, grad_norm : float or None
        The step's own loss and gradient norm.
    tensors : list of Tensor or ndarray
        :func:`model_tensors` of the RNN: detached copies for a worker, or the live tensors for an analysis
        that runs at once.
    reference : ndarray or Tensor, shape (T, M), optional
        The module's ``bifurcation_reference_states`` at this step (a copy, like ``tensors``; its own dtype).
    taken_at : float
        ``time.perf_counter()`` in the training process when the snapshot was taken (for the lag).
    ready : torch.cuda.Event, optional
        Recorded after non-blocking copies from CUDA: :meth:`wait` before reading ``tensors``.  Never pickled.
    """

    step: int
    loss: float | None
    grad_norm: float | None
    tensors: list[Any]
    reference: np.ndarray | None = None
    taken_at: float = 0.0
    ready: Any = None

    def is_ready(self) -> bool:
        """Whether the copies are complete (always for CPU tensors), without blocking."""
        return self.ready is None or bool(self.ready.query())

    def wait(self) -> Snapshot:
        """Block until the copies are complete (a no-op for CPU tensors); turns the copies into numpy arrays,
        which pickle without torch's shared-memory machinery."""
        if self.ready is not None:
            self.ready.synchronize()
            self.ready = None
        self.tensors = [t.numpy() if isinstance(t, torch.Tensor) and t.device.type == "cpu" else t for t in self.tensors]
        if isinstance(self.reference, torch.Tensor):  # on CUDA only uncopied (an analysis on the training thread)
            self.reference = self.reference.cpu().numpy()
        return self

    def __getstate__(self) -> dict[str, Any]:
        if self.ready is not None:
            raise RuntimeError("Snapshot.wait() must be called before the snapshot is pickled")
        return dict(self.__dict__)

    def to_dict(self) -> dict[str, Any]:
        """A checkpoint-friendly dict (tensors, no numpy objects: ``torch.load(weights_only=True)`` reads it)."""
        self.wait()
        return {
            "step": self.step,
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "tensors": [torch.as_tensor(t).clone() for t in self.tensors],
            "reference": torch.as_tensor(self.reference).clone() if self.reference is not None else None,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Snapshot:
        reference = state.get("reference")
        return cls(
            step=int(state["step"]),
            loss=state.get("loss"),
            grad_norm=state.get("grad_norm"),
            tensors=[torch.as_tensor(t).numpy() for t in state["tensors"]],
            reference=torch.as_tensor(reference).numpy() if reference is not None else None,
            taken_at=time.perf_counter(),
        )


def take_snapshot(
    model: torch.nn.Module,
    step: int,
    *,
    loss: float | None = None,
    grad_norm: float | None = None,
    reference: np.ndarray | torch.Tensor | None = None,
    copy: bool = True,
) -> Snapshot:
    """Snapshot the RNN's weights (and ``reference``, states to start the attractor search from) at ``step``.

    With ``copy`` the tensors are detached CPU copies the optimizer can no longer change; from CUDA they are
    copied into pinned memory without blocking the training stream; :meth:`Snapshot.is_ready` tells without
    blocking when that copy (only that one, not the whole device) is complete, and the worker sends the
    snapshot only then.
    Without ``copy`` the snapshot holds the live tensors, for an analysis that runs before the next update.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> h_before = model.h.detach().clone()
    >>> snapshot = take_snapshot(model, 3, loss=0.5)
    >>> with torch.no_grad():
    ...     _ = model.h.add_(1.0)  # the next optimizer step
    >>> h_index = [name for name, _ in model.named_parameters()].index("h")
    >>> torch.equal(torch.as_tensor(snapshot.wait().tensors[h_index]), h_before)
    True
    """
    started = time.perf_counter()
    tensors = [t.detach() for t in model_tensors(model)]
    ready = None
    if copy:
        if isinstance(reference, np.ndarray):
            reference = reference.copy()
        elif reference is not None:
            tensors.append(reference.detach())  # copied like the weights; split off again below
        if any(t.is_cuda for t in tensors):
            copies = []
            for tensor in tensors:
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda)
                copies.append(pinned.copy_(tensor, non_blocking=tensor.is_cuda))
            ready = torch.cuda.Event()
            ready.record()
            tensors = copies
        else:
            tensors = [t.clone() for t in tensors]
        if isinstance(reference, torch.Tensor):
            reference = tensors.pop()
    return Snapshot(step, loss, grad_norm, tensors, reference, started, ready)


def load_snapshot(model: torch.nn.Module, snapshot: Snapshot) -> torch.nn.Module:
    """Copy a snapshot's weights into ``model`` (a copy of the snapshotted RNN) and return it."""
    snapshot.wait()
    tensors = model_tensors(model)
    if len(tensors) != len(snapshot.tensors):
        raise ValueError(f"the snapshot of step {snapshot.step} has {len(snapshot.tensors)} tensors, the model {len(tensors)}")
    with torch.no_grad():
        for mine, theirs in zip(tensors, snapshot.tensors):
            mine.copy_(torch.as_tensor(theirs))
    return model


@dataclasses.dataclass
class StepRecord:
    """Everything the monitor reports about one monitored step, built once where the analysis runs.

    The per-step scalars (:meth:`scalars`), the ``events.jsonl`` line (:meth:`to_json`) and the fit-end summary
    all read this one object.

    Attributes
    ----------
    step : int
        The step the weights belong to (after that batch's optimizer step).
    loss, grad_norm : float or None
        The step's own loss and gradient norm.
    n_cycles, n_stable : dict of int to int
        Cycles and stable cycles per order (a lower bound where ``statuses`` is not ``"exhaustive"``).
    statuses : dict of int to str
        How each order's cycles were obtained (``cycles.ORDER_STATUSES``).
    events : list of dict
        ``BifurcationEvent.to_dict()`` of every change since the previous analysed step (the attractor's too);
        only those with ``verified`` true count as bifurcations (``verified_events``).
    late_discoveries : list of dict
        Cycles first found here that existed at the previous analysed step (missed there): not events.
    attractor : dict or None
        ``attractor_record`` of the followed attractor (None when none was found or its analysis failed).
    has_attractor : bool
        Whether the attractor was analysed at all (``max_attractor_period > 0``).
    cycle_scalars : dict of str to float or None
        The scalars that need the cycles (per-order and per-track multipliers, margins), computed with them.
    finder_ms, compare_ms, attractor_ms : float
        Wall time of the cycle search, the comparison and the attractor analysis; in a batch of ``batch_size``
        steps the batched parts are shared equally.
    batch_size : int
        Steps analysed together with this one.
    skipped : str or None
        Why the step was not analysed (then only ``step``, ``loss`` and ``grad_norm`` are set).
    lag_ms, lag_steps, publish_ms, figures_ms : float or int or None
        Set where the record is logged: delay behind training, and the logging costs.
    checkpoint : str or None
        The checkpoint file the weights came from (``offline.analyse_checkpoints``); None in a monitored run.
    """

    step: int
    loss: float | None = None
    grad_norm: float | None = None
    n_cycles: dict[int, int] = dataclasses.field(default_factory=dict)
    n_stable: dict[int, int] = dataclasses.field(default_factory=dict)
    statuses: dict[int, str] = dataclasses.field(default_factory=dict)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    late_discoveries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    attractor: dict[str, Any] | None = None
    has_attractor: bool = False
    cycle_scalars: dict[str, float | None] = dataclasses.field(default_factory=dict)
    finder_ms: float = 0.0
    compare_ms: float = 0.0
    attractor_ms: float | None = None
    batch_size: int = 1
    skipped: str | None = None
    lag_ms: float | None = None
    lag_steps: int | None = None
    publish_ms: float | None = None
    figures_ms: float | None = None
    checkpoint: str | None = None

    @property
    def verified_events(self) -> list[dict[str, Any]]:
        """The events that count: every one proved by both snapshots."""
        return [event for event in self.events if event.get("verified", True)]

    def scalars(self) -> dict[str, float | None]:
        """The step's logger scalars that follow from its analysis (tags from ``dashboard.LOGGED_METRICS``)."""
        return analysis_scalars(self)

    def to_json(self) -> dict[str, Any]:
        """The ``events.jsonl`` line: JSON-ready, read back by :meth:`from_json`."""
        data: dict[str, Any] = {"step": self.step, "loss": self.loss, "grad_norm": self.grad_norm}
        if self.checkpoint is not None:
            data["checkpoint"] = self.checkpoint
        if self.skipped is not None:
            return {**data, "skipped": self.skipped}
        data.update(
            n_cycles={str(k): n for k, n in self.n_cycles.items()},
            n_stable={str(k): n for k, n in self.n_stable.items()},
            statuses={str(k): status for k, status in self.statuses.items()},
            events=list(self.events),
            late_discoveries=list(self.late_discoveries),
        )
        if self.has_attractor:
            data["attractor"] = self.attractor
        data.update(finder_ms=self.finder_ms, compare_ms=self.compare_ms, batch_size=self.batch_size)
        optional = {"attractor_ms": self.attractor_ms, "lag_ms": self.lag_ms, "lag_steps": self.lag_steps,
                    "publish_ms": self.publish_ms, "figures_ms": self.figures_ms}
        data.update({key: value for key, value in optional.items() if value is not None})
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepRecord:
        """Inverse of :meth:`to_json` (the cycle scalars are not stored: they stay empty)."""
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("n_cycles", "n_stable", "statuses"):
            values[key] = {int(k): v for k, v in data.get(key, {}).items()}
        values["has_attractor"] = "attractor" in data
        return cls(**values)


@dataclasses.dataclass
class StepResult:
    """What :meth:`StepAnalyser.analyse_batch` found at one step.

    Attributes
    ----------
    record : StepRecord
    cycles : CycleSet or None
        None for a skipped step.
    orbits : list of ndarray
        The bounded attractors' orbits (for the state-space figure); empty without the attractor analysis.
    notes : list of (str, str)
        (category, message) of what the user should be warned about (the caller warns: a worker process
        cannot reach the user's warning filters).
    """

    record: StepRecord
    cycles: CycleSet | None
    orbits: list[np.ndarray]
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __reduce__(self) -> tuple[Any, ...]:
        # From a worker process the cycles and orbits travel as one pickled blob, unpickled on first access: the
        # training process reads them for the last analysed step only, and unpickling every step's arrays cost
        # its thread more than the rest of the result.
        detail = pickle.dumps((self.cycles, self.orbits), protocol=pickle.HIGHEST_PROTOCOL)
        return _unpickle_step_result, (self.record, self.notes, detail)

    def __getattr__(self, name: str) -> Any:
        # Only reached for an attribute that is not set: the cycles and orbits of a result not unpacked yet.
        detail = self.__dict__.get("_detail")
        if detail is None or name not in ("cycles", "orbits"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.cycles, self.orbits = pickle.loads(detail)
        del self.__dict__["_detail"]
        return self.__dict__[name]


def _unpickle_step_result(record: StepRecord, notes: list[tuple[str, str]], detail: bytes) -> StepResult:
    result = StepResult.__new__(StepResult)
    result.__dict__.update(record=record, notes=notes, _detail=detail)
    return result


def skipped_result(snapshot: Snapshot, reason: str) -> StepResult:
    """The result of a step that could not be analysed."""
    return StepResult(StepRecord(snapshot.step, snapshot.loss, snapshot.grad_norm, skipped=reason), None, [])


class StepAnalyser:
    """Everything the monitor computes at each monitored step, from :class:`Snapshot` objects.

    Snapshots that wait are analysed together (:meth:`analyse_batch`): one batched cycle search and one batched
    attractor simulation for all of them, then the comparison with the previous step in step order.  The
    results are exactly those of analysing the snapshots one at a time (:meth:`analyse`).

    Parameters
    ----------
    model : torch.nn.Module
        The RNN (PiecewiseLinear protocol); the analyser keeps a detached CPU copy as the template of its
        weight stacks, so it never touches the live model.
    max_order, orders, max_tracked_cycles, seed, finder_kwargs, time_budget_s, localize_events
        As for :class:`~bifurcation_callback.tracking.CycleTracker`.
    max_attractor_period : int
        As for :class:`~bifurcation_callback.tracking.AttractorTracker`; 0 turns the attractor analysis off.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> with torch.no_grad():  # z' = 0.5 z + 0.1: one stable fixed point
    ...     _ = model.A.fill_(0.5), model.W.zero_(), model.h.fill_(0.1)
    >>> analyser = StepAnalyser(model, max_order=2, max_attractor_period=8)
    >>> result = analyser.analyse(take_snapshot(model, 0, loss=1.0))
    >>> result.record.n_cycles, result.record.attractor["label"]
    ({1: 1, 2: 0}, 'fixed point')
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_order: int,
        orders: Sequence[int] | None = None,
        max_tracked_cycles: int = 8,
        seed: int = 0,
        finder_kwargs: Mapping[str, Any] | None = None,
        time_budget_s: float | None = None,
        localize_events: bool = False,
        max_attractor_period: int = 256,
    ) -> None:
        self.model = detached_copy(model).cpu()
        self.time_budget_s = time_budget_s
        self.cycles = CycleTracker(
            max_order,
            orders=orders,
            max_tracked_cycles=max_tracked_cycles,
            seed=seed,
            finder_kwargs=finder_kwargs,
            time_budget_s=time_budget_s,
            localize_events=localize_events,
        )
        self.attractors = AttractorTracker(max_attractor_period, seed=seed) if max_attractor_period else None
        # Asked between batched calls of an analysis in this process (a worker process gets none): True stops it
        # with AnalysisInterrupted, the step is skipped (a training that received SIGTERM stops promptly).
        self.stop: Callable[[], bool] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "stop": None}  # a callable of the training process stays there

    def load(self, snapshot: Snapshot) -> torch.nn.Module:
        """The analyser's copy of the RNN with the snapshot's weights."""
        return load_snapshot(self.model, snapshot)

    def analyse(self, snapshot: Snapshot) -> StepResult:
        """Find, compare and classify at ``snapshot.step`` (:meth:`analyse_batch` of one snapshot).

        Raises
        ------
        ValueError
            A snapshot that does not fit the model (its number of tensors).
        """
        return self.analyse_batch([snapshot])[0]

    def analyse_batch(
        self,
        snapshots: Sequence[Snapshot],
        *,
        searched: Sequence[CycleSet] | None = None,
        attractor_reports: Sequence[AttractorReport | None] | None = None,
    ) -> list[StepResult]:
        """Analyse consecutive snapshots (increasing steps) together; one result per snapshot, in order.

        ``searched`` (one ``CycleSet`` per snapshot) and ``attractor_reports`` (one ``AttractorReport`` per snapshot,
        None where that analysis failed) replace the cycle search and the attractor simulation with work done
        elsewhere, e.g. per checkpoint in parallel (``CycleTracker.update_many(searched=...)``,
        ``AttractorTracker.follow``).

        A snapshot whose analysis fails (non-finite weights, a user model's error) gets a skipped result with the
        reason, and the trackers go on from the last analysed step, as if it had been analysed alone: a failing
        batch is analysed again one snapshot at a time so that only the failing steps are skipped.  A failing
        attractor analysis costs a step only its attractor (a note says why).

        Raises
        ------
        ValueError
            A snapshot that does not fit the model (its number of tensors).
        """
        for name, given in (("searched cycle sets", searched), ("attractor reports", attractor_reports)):
            if given is not None and len(given) != len(snapshots):
                raise ValueError(f"analyse_batch got {len(given)} {name} for {len(snapshots)} snapshots")
        expected = len(model_tensors(self.model))
        for snapshot in snapshots:
            snapshot.wait()
            if len(snapshot.tensors) != expected:
                raise ValueError(f"the snapshot of step {snapshot.step} has {len(snapshot.tensors)} tensors, the model {expected}")
        results: list[StepResult | None] = [None] * len(snapshots)
        usable = []
        for index, snapshot in enumerate(snapshots):
            reason = _non_finite(self.model, snapshot)
            if reason:
                results[index] = skipped_result(snapshot, f"ValueError: {reason}")
            else:
                usable.append(index)
        def elsewhere(indices: list[int]) -> dict[str, Any]:
            """The work done elsewhere for these snapshots."""
            return {"searched": None if searched is None else [searched[i] for i in indices],
                    "reports": None if attractor_reports is None else [attractor_reports[i] for i in indices]}

        if usable:
            saved = self._trackers_checkpoint()
            try:
                with interruptible(self.stop):
                    together = self._analyse_together([snapshots[i] for i in usable], **elsewhere(usable))
                for index, result in zip(usable, together):
                    results[index] = result
            except AnalysisInterrupted as error:  # nothing else is analysed: training is stopping
                self._trackers_restore(saved)
                for index in usable:
                    results[index] = skipped_result(snapshots[index], f"{type(error).__name__}: {error}")
            except Exception:
                if len(usable) == 1:
                    self._trackers_restore(saved)
                    raise
                # One failing step must not cost the others theirs: the batch again, one snapshot at a time.
                self._trackers_restore(saved)
                for index in usable:
                    results[index] = self._analyse_alone(snapshots[index], **elsewhere([index]))
        return results  # type: ignore[return-value]

    def _analyse_alone(self, snapshot: Snapshot, **elsewhere: Any) -> StepResult:
        saved = self._trackers_checkpoint()
        try:
            return self._analyse_together([snapshot], **elsewhere)[0]
        except Exception as error:  # the trackers go on from the last analysed step
            self._trackers_restore(saved)
            return skipped_result(snapshot, f"{type(error).__name__}: {error}")

    def _analyse_together(self, snapshots: list[Snapshot], searched: list[CycleSet] | None = None,
                          reports: list[AttractorReport | None] | None = None) -> list[StepResult]:
        steps = [snapshot.step for snapshot in snapshots]
        weights = [snapshot.tensors for snapshot in snapshots]
        stack = self.cycles.stack(weights, self.model)
        tracked = self.cycles.update_many(stack, steps, searched=searched)
        notes: list[list[tuple[str, str]]] = [[] for _ in snapshots]
        for note, found in zip(notes, tracked):
            if found.cycles.cut:
                cut = [k for k, status in found.cycles.statuses.items() if status == "cut"]
                note.append((
                    "time budget",
                    f"BifurcationMonitor: the cycle search at step {found.step} was cut by time_budget_s={self.time_budget_s}: "
                    f"the counts of orders {cut} are lower bounds (status 'cut'); the next steps continue from what was found",
                ))
        attractors = self._attractors(stack, snapshots, notes) if reports is None else self._follow(snapshots, reports, notes)
        results = []
        for snapshot, found, attractor, note in zip(snapshots, tracked, attractors, notes):
            record = StepRecord(
                step=snapshot.step,
                loss=snapshot.loss,
                grad_norm=snapshot.grad_norm,
                n_cycles=found.cycles.counts(),
                n_stable=found.cycles.stable_counts(),
                statuses=dict(found.cycles.statuses),
                events=[event.to_dict() for event in found.events],
                late_discoveries=list(found.late_discoveries),
                has_attractor=self.attractors is not None,
                cycle_scalars=cycle_scalars(found.cycles, found.charted),
                finder_ms=found.finder_ms,
                compare_ms=found.compare_ms,
                batch_size=len(snapshots),
            )
            orbits: list[np.ndarray] = []
            if attractor is not None:
                record.attractor = attractor_record(attractor.primary, attractor.report)
                record.attractor_ms = attractor.attractor_ms
                if attractor.event is not None:
                    record.events.append(attractor.event.to_dict())
                orbits = [found_.orbit for found_ in attractor.report if found_.kind != "divergent"]
            results.append(StepResult(record, found.cycles, orbits, note))
        return results

    def _attractors(self, stack: Any, snapshots: list[Snapshot], notes: list[list[tuple[str, str]]]) -> list[Any]:
        """The attractor of every snapshot (None where its analysis failed, with a note)."""
        if self.attractors is None:
            return [None] * len(snapshots)
        steps = [snapshot.step for snapshot in snapshots]
        references = [snapshot.reference for snapshot in snapshots]
        if stack.dtype != torch.float64:
            stack = ModelStack(self.model, [snapshot.tensors for snapshot in snapshots], dtype=torch.float64, device=stack.device)
        saved = dict(self.attractors.__dict__)
        try:
            return self.attractors.update_many(stack, steps, references)
        except Exception:
            self.attractors.__dict__.update(saved)
        found = []
        for index, (step, reference) in enumerate(zip(steps, references)):
            try:
                found.extend(self.attractors.update_many(stack.select([index]), [step], [reference]))
            except Exception as error:
                notes[index].append(("attractor", f"BifurcationMonitor has no attractor for step {step}: {error}"))
                found.append(None)
        return found

    def _follow(self, snapshots: list[Snapshot], reports: list[AttractorReport | None], notes: list[list[tuple[str, str]]]) -> list[Any]:
        """The attractor of every snapshot from reports found elsewhere (None where there is none, with a note)."""
        if self.attractors is None:
            return [None] * len(snapshots)
        found = []
        for snapshot, report, note in zip(snapshots, reports, notes):
            if report is None:
                note.append(("attractor", f"BifurcationMonitor has no attractor for step {snapshot.step}"))
                found.append(None)
            else:
                found.append(self.attractors.follow(report, snapshot.step, attractor_ms=1e3 * report.elapsed_s))
        return found

    def _trackers_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        cycles = dict(self.cycles.__dict__)
        cycles["_last_exhaustive"] = dict(cycles["_last_exhaustive"])
        return cycles, dict(self.attractors.__dict__) if self.attractors is not None else None

    def _trackers_restore(self, saved: tuple[dict[str, Any], dict[str, Any] | None]) -> None:
        self.cycles.__dict__.update(saved[0])
        if self.attractors is not None and saved[1] is not None:
            self.attractors.__dict__.update(saved[1])

    def state_dict(self) -> dict[str, Any]:
        """The trackers' state (JSON-friendly): what the next step's comparison needs."""
        return {
            "tracker": self.cycles.state_dict(),
            "attractor": self.attractors.state_dict() if self.attractors is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a missing tracker or attractor state starts that tracker afresh;
        older checkpoint layouts are translated by the callback)."""
        self.cycles.load_state_dict(state.get("tracker") or {}, template=self.model)
        if self.attractors is not None:
            if state.get("attractor"):
                self.attractors.load_state_dict(state["attractor"])
            else:
                self.attractors.reset()


def _non_finite(model: torch.nn.Module, snapshot: Snapshot) -> str | None:
    """The message for a snapshot with NaN or Inf weights (the finder's wording), else None."""
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in model.named_buffers()]
    for name, tensor in zip(names, snapshot.tensors):
        values = np.asarray(tensor)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"model parameter {name!r} contains NaN or Inf; cycles are undefined"
    return None


def cycle_scalars(cycles: CycleSet, charted: Mapping[int, float]) -> dict[str, float | None]:
    """The scalars of a step that need its cycles: totals, per-order counts and multipliers, per-track
    multipliers, the smallest distance of a multiplier to the unit circle and of a point to a switching plane.

    Examples
    --------
    >>> cycle_scalars(CycleSet(orders=(1,), statuses={1: "exhaustive"}), {})["bifurcation/exhaustive/order_1"]
    1.0
    """
    scalars: dict[str, float | None] = {
        "bifurcation/n_cycles/total": float(len(cycles)),
        "bifurcation/n_stable/total": float(cycles.n_stable),
    }
    for order in cycles.orders:
        of_order = cycles.by_order(order)
        scalars[f"bifurcation/n_cycles/order_{order}"] = float(len(of_order))
        scalars[f"bifurcation/n_stable/order_{order}"] = float(sum(c.is_stable for c in of_order))
        scalars[f"bifurcation/exhaustive/order_{order}"] = float(cycles.is_exhaustive(order))
        if of_order:
            scalars[f"bifurcation/max_abs_eig/order_{order}"] = max(c.spectral_radius for c in of_order)
    for track, radius in charted.items():
        scalars[f"bifurcation/max_abs_eig/cycle_{track}"] = radius
    if len(cycles):
        scalars["bifurcation/min_unit_distance"] = min(
            float(abs(abs(value) - 1)) for cycle in cycles for value in cycle.eigenvalues
        )
        scalars["bifurcation/min_border_margin"] = min(c.border_margin for c in cycles)
    return scalars


def attractor_record(primary: Any, report: Any) -> dict[str, Any] | None:
    """The followed attractor as a JSON-ready record (no orbit: records stay small).

    Parameters
    ----------
    primary : Attractor or None
    report : AttractorReport

    Examples
    --------
    >>> attractor_record(None, None) is None
    True
    """
    if primary is None:
        return None
    return {
        "kind": primary.kind,
        "period": primary.period,
        "label": attractor_label(primary.kind, primary.period),
        "stable": primary.is_stable,
        "spectral_radius": finite_or_none(primary.spectral_radius),
        "largest_lyapunov": finite_or_none(primary.largest_lyapunov),
        "fraction": primary.fraction,
        "n_attractors": len(report),
        "others": [attractor_label(a.kind, a.period) for a in report if a is not primary],
    }


def without_timings(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records without their timing fields: what two runs that found the same things share."""
    return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]
