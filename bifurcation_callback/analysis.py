"""StepAnalyser: the whole analysis of one monitored step, from a snapshot of the RNN's weights to the step's
record, without Lightning.

This is the part of ``BifurcationMonitor`` that may run off the training thread (``worker.py``): the training
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
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import finite_or_none
from .attractors import attractor_label
from .cycles import CycleSet
from .dashboard import analysis_scalars
from .models import detached_copy, model_tensors
from .tracking import AttractorTracker, CycleTracker

__all__ = [
    "Snapshot",
    "StepAnalyser",
    "StepResult",
    "TIMING_KEYS",
    "attractor_record",
    "load_snapshot",
    "model_tensors",
    "take_snapshot",
    "without_timings",
]

# Record fields that measure time (they differ between two runs that found the same things).
TIMING_KEYS: tuple[str, ...] = ("finder_ms", "compare_ms", "attractor_ms", "publish_ms", "figures_ms", "lag_ms", "lag_steps")


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
class StepResult:
    """What :meth:`StepAnalyser.analyse` found at one step.

    Attributes
    ----------
    record : dict
        The step's ``events.jsonl`` record (JSON-friendly).
    cycles : CycleSet
    orbits : list of ndarray
        The bounded attractors' orbits (for the state-space figure); empty without the attractor analysis.
    notes : list of (str, str)
        (category, message) of what the user should be warned about (the caller warns: a worker process
        cannot reach the user's warning filters).
    scalars : dict of str to float or None
        The step's logger scalars that follow from the analysis alone (``dashboard.analysis_scalars``),
        computed where the analysis runs: the training process only adds its running counts.
    """

    record: dict[str, Any]
    cycles: CycleSet
    orbits: list[np.ndarray]
    notes: list[tuple[str, str]]
    scalars: dict[str, float | None] = dataclasses.field(default_factory=dict)

    def __reduce__(self) -> tuple[Any, ...]:
        # From a worker process the cycles and orbits travel as one pickled blob, unpickled on first access: the
        # training process reads them for the last analysed step only, and unpickling every step's arrays cost
        # its thread more than the rest of the result.
        detail = pickle.dumps((self.cycles, self.orbits), protocol=pickle.HIGHEST_PROTOCOL)
        return _unpickle_step_result, (self.record, self.notes, self.scalars, detail)

    def __getattr__(self, name: str) -> Any:
        # Only reached for an attribute that is not set: the cycles and orbits of a result not unpacked yet.
        detail = self.__dict__.get("_detail")
        if detail is None or name not in ("cycles", "orbits"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        self.cycles, self.orbits = pickle.loads(detail)
        del self.__dict__["_detail"]
        return self.__dict__[name]


def _unpickle_step_result(
    record: dict[str, Any], notes: list[tuple[str, str]], scalars: dict[str, float | None], detail: bytes
) -> StepResult:
    result = StepResult.__new__(StepResult)
    result.__dict__.update(record=record, notes=notes, scalars=scalars, _detail=detail)
    return result


class StepAnalyser:
    """Everything the monitor computes at one step, from a :class:`Snapshot`.

    Parameters
    ----------
    model : torch.nn.Module
        The RNN (PiecewiseLinear protocol); the analyser keeps a detached CPU copy and loads every snapshot
        into it, so it never touches the live model.
    max_order, max_tracked_cycles, seed, finder_kwargs, time_budget_s, localize_events
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
    >>> result.record["n_cycles"], result.record["attractor"]["label"]
    ({'1': 1, '2': 0}, 'fixed point')
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_order: int,
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
            max_tracked_cycles=max_tracked_cycles,
            seed=seed,
            finder_kwargs=finder_kwargs,
            time_budget_s=time_budget_s,
            localize_events=localize_events,
        )
        self.attractors = AttractorTracker(max_attractor_period, seed=seed) if max_attractor_period else None

    def load(self, snapshot: Snapshot) -> torch.nn.Module:
        """The analyser's copy of the RNN with the snapshot's weights."""
        return load_snapshot(self.model, snapshot)

    def analyse(self, snapshot: Snapshot) -> StepResult:
        """Find, compare and classify at ``snapshot.step``.

        Raises
        ------
        ValueError
            From the cycle search (non-finite weights, ...); the trackers are left as they were.  A failing
            attractor analysis costs the step only its attractor (a note says why).
        """
        model = self.load(snapshot)
        step = snapshot.step
        tracked = self.cycles.update(model, step)
        notes = []
        if tracked.cycles.cut:
            cut = [k for k, status in tracked.cycles.statuses.items() if status == "cut"]
            notes.append((
                "time budget",
                f"BifurcationMonitor: the cycle search at step {step} was cut by time_budget_s={self.time_budget_s}: "
                f"the counts of orders {cut} are lower bounds (status 'cut'); the next steps continue from what was found",
            ))
        record: dict[str, Any] = {
            "step": step,
            "loss": snapshot.loss,
            "grad_norm": snapshot.grad_norm,
            "n_cycles": {str(k): n for k, n in tracked.cycles.counts().items()},
            "n_stable": {str(k): n for k, n in tracked.cycles.stable_counts().items()},
            "statuses": {str(k): status for k, status in tracked.cycles.statuses.items()},
            "events": [event.to_dict() for event in tracked.events],
            "finder_ms": tracked.finder_ms,
            "compare_ms": tracked.compare_ms,
        }
        orbits: list[np.ndarray] = []
        if self.attractors is not None:
            try:
                found = self.attractors.update(model, step, snapshot.reference)
            except Exception as error:
                notes.append(("attractor", f"BifurcationMonitor has no attractor for step {step}: {error}"))
                record["attractor"] = None
            else:
                record["attractor"] = attractor_record(found.primary, found.report)
                record["attractor_ms"] = found.attractor_ms
                if found.event is not None:
                    record["events"].append(found.event.to_dict())
                orbits = [attractor.orbit for attractor in found.report if attractor.kind != "divergent"]
        scalars = analysis_scalars(record, tracked.cycles, tracked.charted)
        return StepResult(record, tracked.cycles, orbits, notes, scalars)

    def state_dict(self) -> dict[str, Any]:
        """The trackers' state (JSON-friendly): what the next step's comparison needs."""
        return {
            "tracker": self.cycles.state_dict(),
            "attractor": self.attractors.state_dict() if self.attractors is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a missing tracker or attractor state starts that tracker afresh;
        older checkpoint layouts are translated by the callback)."""
        self.cycles.load_state_dict(state.get("tracker") or {})
        if self.attractors is not None:
            if state.get("attractor"):
                self.attractors.load_state_dict(state["attractor"])
            else:
                self.attractors.reset()


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
