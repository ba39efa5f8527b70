"""Training runs in the plane of a loss landscape: their paths, where they cross the bifurcation curves, and
whether the loss jumps there.

A training run in the plane is a ``RunPath`` (a *run folder*: ``path.json`` plus the monitor's ``events.jsonl``
and ``summary.json``; ``landscape_runs.train_in_plane`` writes them).  ``path_crossings`` finds where a path
crosses the curves of a ``landscape.LossLandscape`` and correlates those crossings with the run's loss jumps
(``loss_jumps.summarise_run``).  This module imports neither Lightning nor TensorBoard.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._checks import require_int, require_real
from .._jsonl import read_jsonl
from ..loss_jumps import Correlation, LossJump, summarise_run
from .landscape import LossLandscape, _array_from_json, _array_to_json, _signatures
from .scan import parse_param_spec

__all__ = ["RUN_PATH_FILE", "RUN_EVENTS_FILE", "RUN_SUMMARY_FILE", "RunPath", "PathCrossings", "path_crossings"]

# What a run folder holds: the path (written by RunPath.save), and the BifurcationMonitor's two files.
RUN_PATH_FILE = "path.json"
RUN_EVENTS_FILE = "events.jsonl"
RUN_SUMMARY_FILE = "summary.json"
_RUN_PATH_FORMAT = "bifurcation-callback run path 1"


def _normalised_spec(spec: str) -> str:
    return re.sub(r"\s+", "", spec)


@dataclass(frozen=True, eq=False)
class RunPath:
    """A training run's path in the (param_a, param_b) plane: the contents of a *run folder*.

    A run folder holds ``path.json`` (``RUN_PATH_FILE``, written by ``save``) and, when a
    ``BifurcationMonitor`` watched the run with ``jsonl_path`` in that folder, its ``events.jsonl`` and
    ``summary.json``.  ``landscape_runs.train_in_plane`` writes such folders.

    Step convention: ``a[k], b[k]`` are the parameters with which the loss ``loss[k]`` of training step
    ``steps[k]`` was computed (before that step's update), so the path's loss is the landscape's loss at the
    path's points when the run trained on the landscape's data.  The monitor records a step's cycles after
    its update, one step later along the path.

    Attributes
    ----------
    param_a, param_b : str
        The two parameter specs the run trained.
    steps : ndarray of int, shape (n,)
    a, b : ndarray, shape (n,)
    loss : ndarray, shape (n,)
        Training loss at each step (NaN where not recorded).
    grad_norm : ndarray, shape (n,)
        Gradient norm at each step (NaN where not recorded).
    method : str
        Free label, e.g. the training mode ``"bptt"`` / ``"gtf"``.
    alpha : float or None
        GTF forcing weight, if any.
    start_model : dict or None
        ``model_to_state`` of the model at the start (its other parameters stay fixed in the plane).
    events : tuple of dict
        Bifurcation events from ``events.jsonl`` (each with ``step`` and ``kind``), empty without the file.
    monitor_summary : dict or None
        ``summary.json`` of the monitor, if present.
    name : str
        The folder's name.

    Examples
    --------
    >>> run = RunPath("A[0]", "A[1]", np.arange(3), np.zeros(3), np.ones(3), np.ones(3), np.ones(3))
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = run.save(folder)
    ...     RunPath.load(folder).b.tolist()
    [1.0, 1.0, 1.0]
    """

    param_a: str
    param_b: str
    steps: np.ndarray
    a: np.ndarray
    b: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    method: str = ""
    alpha: float | None = None
    start_model: dict | None = None
    events: tuple[dict, ...] = field(default=())
    monitor_summary: dict | None = None
    name: str = ""

    def __post_init__(self) -> None:
        lengths = {len(np.asarray(getattr(self, key))) for key in ("steps", "a", "b", "loss", "grad_norm")}
        if len(lengths) != 1:
            raise ValueError(
                f"a run path needs steps, a, b, loss and grad_norm of one length, got lengths {sorted(lengths)}"
            )
        steps = np.asarray(self.steps)
        if steps.size and (not np.issubdtype(steps.dtype, np.integer) or np.any(np.diff(steps) <= 0)):
            raise ValueError("a run path's steps must be strictly increasing integers")

    def to_dict(self) -> dict[str, Any]:
        """The content of ``path.json``."""
        return {
            "format": _RUN_PATH_FORMAT,
            "param_a": self.param_a,
            "param_b": self.param_b,
            "method": self.method,
            "alpha": self.alpha,
            "start_model": self.start_model,
            "steps": np.asarray(self.steps).tolist(),
            "a": _array_to_json(np.asarray(self.a, dtype=np.float64)),
            "b": _array_to_json(np.asarray(self.b, dtype=np.float64)),
            "loss": _array_to_json(np.asarray(self.loss, dtype=np.float64)),
            "grad_norm": _array_to_json(np.asarray(self.grad_norm, dtype=np.float64)),
        }

    def save(self, run_dir: str | Path) -> Path:
        """Write ``path.json`` into ``run_dir`` (created if needed); returns the file's path."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / RUN_PATH_FILE
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "RunPath":
        """Read a run folder: ``path.json``, and ``events.jsonl`` / ``summary.json`` when present.

        Raises
        ------
        ValueError
            The folder does not exist, has no ``path.json``, or a file is not what it should be; the message
            says what a run folder holds.
        """
        run_dir = Path(run_dir)
        what = (
            f"a run folder holds {RUN_PATH_FILE} (the path per step, written by landscape_runs.train_in_plane or "
            f"RunPath.save) and optionally the BifurcationMonitor's {RUN_EVENTS_FILE} and {RUN_SUMMARY_FILE}"
        )
        if not run_dir.is_dir():
            raise ValueError(f"{run_dir}: no such folder; {what}")
        path_file = run_dir / RUN_PATH_FILE
        if not path_file.is_file():
            raise ValueError(f"{run_dir} is not a run folder: it has no {RUN_PATH_FILE}; {what}")
        try:
            data = json.loads(path_file.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path_file}: not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != _RUN_PATH_FORMAT:
            raise ValueError(f"{path_file}: not a run path (no \"format\": {_RUN_PATH_FORMAT!r}); {what}")
        missing = [key for key in ("param_a", "param_b", "steps", "a", "b", "loss", "grad_norm") if key not in data]
        if missing:
            raise ValueError(f"{path_file}: missing {', '.join(missing)}")
        events: list[dict] = []
        events_file = run_dir / RUN_EVENTS_FILE
        if events_file.is_file():
            for record in read_jsonl(events_file):
                events.extend(event for event in record.get("events", []) if "step" in event and "kind" in event)
        summary_file = run_dir / RUN_SUMMARY_FILE
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        return cls(
            param_a=data["param_a"],
            param_b=data["param_b"],
            steps=np.asarray(data["steps"], dtype=np.int64),
            a=_array_from_json(data["a"]),
            b=_array_from_json(data["b"]),
            loss=_array_from_json(data["loss"]),
            grad_norm=_array_from_json(data["grad_norm"]),
            method=data.get("method", ""),
            alpha=data.get("alpha"),
            start_model=data.get("start_model"),
            events=tuple(events),
            monitor_summary=summary,
            name=run_dir.name,
        )


@dataclass(frozen=True)
class PathCrossings:
    """Where a run's path crosses the bifurcation curves of a landscape, and how that lines up with loss jumps.

    Attributes
    ----------
    name, method : str
        From the ``RunPath``.
    n_steps : int
        Points on the path.
    crossing_steps : tuple of int
        Steps ``steps[k]`` whose cell differs in (count, stable count) of some order from the cell of the
        previous point (both on the grid): the path crossed a curve between ``steps[k-1]`` and ``steps[k]``.
        Resolved to the grid spacing.
    n_outside : int
        Points outside the grid (no crossing is counted to or from them).
    loss_jumps : tuple of LossJump
        Jumps of the path's loss (``detect_loss_jumps`` after the warm-up).
    correlation : Correlation
        ``correlate(crossing_steps, loss jumps)``: ``jumps_explained`` is the fraction of loss jumps with a
        crossing within ``window`` steps, ``events_with_jump`` the fraction of crossings with a loss jump, and
        ``p_value`` the permutation test against crossings placed at random steps of the run.
    """

    name: str
    method: str
    n_steps: int
    crossing_steps: tuple[int, ...]
    n_outside: int
    loss_jumps: tuple[LossJump, ...]
    correlation: Correlation

    @property
    def n_crossings(self) -> int:
        """Number of curve crossings."""
        return len(self.crossing_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; a fraction with nothing to count (no jumps, no crossings) is None, not 0."""
        correlation = self.correlation
        return {
            "name": self.name,
            "method": self.method,
            "n_steps": self.n_steps,
            "n_crossings": self.n_crossings,
            "crossing_steps": list(self.crossing_steps),
            "n_outside": self.n_outside,
            "loss_jumps": [jump.to_dict() for jump in self.loss_jumps],
            "crossings_with_jump": correlation.events_with_jump if correlation.n_events else None,
            "jumps_at_crossing": correlation.jumps_explained if correlation.n_jumps else None,
            "p_value": correlation.p_value if correlation.n_jumps and correlation.n_events else None,
            "window": correlation.window,
        }


def _cell_index(values: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest grid index of each point and whether it lies within the grid (half a spacing beyond the ends)."""
    order = np.argsort(values)
    sorted_values = values[order]
    position = np.clip(np.searchsorted(sorted_values, points), 1, max(1, values.size - 1))
    if values.size == 1:
        nearest = np.zeros(points.shape, dtype=np.int64)
        inside = np.abs(points - values[0]) <= 0.5
        return nearest, inside
    left, right = sorted_values[position - 1], sorted_values[position]
    nearest_sorted = np.where(np.abs(points - left) <= np.abs(points - right), position - 1, position)
    half_first = 0.5 * (sorted_values[1] - sorted_values[0])
    half_last = 0.5 * (sorted_values[-1] - sorted_values[-2])
    inside = np.isfinite(points) & (points >= sorted_values[0] - half_first) & (points <= sorted_values[-1] + half_last)
    return order[nearest_sorted], inside


def _check_run_fits(landscape: LossLandscape, run: RunPath) -> None:
    """The run moved the landscape's two parameters and shares its other parameters, else ValueError."""
    label = run.name or "the run"
    if (_normalised_spec(run.param_a), _normalised_spec(run.param_b)) != (
        _normalised_spec(landscape.param_a), _normalised_spec(landscape.param_b)
    ):
        raise ValueError(
            f"{label} trained {run.param_a} and {run.param_b}, but the landscape is over {landscape.param_a} and "
            f"{landscape.param_b}"
        )
    if run.start_model is None or landscape.base_model is None:
        return
    if run.start_model.get("model") != landscape.base_model.get("model"):
        raise ValueError(
            f"{label} trained a {run.start_model.get('model')}, the landscape is of a {landscape.base_model.get('model')}"
        )
    from ..models import model_from_state

    start, base = model_from_state(run.start_model), model_from_state(landscape.base_model)
    moved = {parse_param_spec(base, landscape.param_a), parse_param_spec(base, landscape.param_b)}
    base_parameters = dict(base.named_parameters())
    for name, value in start.named_parameters():
        ours = base_parameters[name].detach().double().clone()
        theirs = value.detach().double().clone()
        for moved_name, index in moved:
            if moved_name == name:
                ours[index] = theirs[index]
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7):
            raise ValueError(
                f"{label} started from a model whose {name} differs from the landscape model's (beyond {landscape.param_a} "
                f"and {landscape.param_b}): its path does not lie in this landscape's plane"
            )


def path_crossings(
    landscape: LossLandscape,
    run: RunPath,
    *,
    window: int = 5,
    warmup_steps: int = 20,
    min_relative_change: float = 1.0,
    loss_floor: float = 0.0,
    n_permutations: int = 1000,
) -> PathCrossings:
    """Curve crossings of a run's path and their correlation with its loss jumps.

    A crossing is a step whose point lies in a grid cell with another (count, stable count) signature than
    the previous point's cell (nearest cells, both inside the grid).  Loss jumps and the correlation come
    from ``loss_jumps.summarise_run`` with the crossings as events; the defaults of ``window``,
    ``warmup_steps`` and ``min_relative_change`` are ``BifurcationMonitor``'s (``jump_window`` at
    ``every_n_steps=1``, ``jump_warmup_steps``, ``jump_min_change``).

    Parameters
    ----------
    landscape : LossLandscape
    run : RunPath
    window : int
        Steps within which a crossing and a loss jump count as together.
    warmup_steps : int
        No loss jump is looked for in the run's first ``warmup_steps`` steps.
    min_relative_change : float
        Smallest relative loss change that can be a jump (1.0: doubling or halving).
    loss_floor : float
        Losses below this are raised to it before looking for jumps.  A run that has converged to an exact
        teacher jitters between losses of 1e-12 and 1e-9 (relative changes of 10× and more from step to
        step), which ``detect_loss_jumps`` rightly calls jumps of the curve but which are no feature of the
        landscape; 0 keeps every loss.
    n_permutations : int

    Returns
    -------
    PathCrossings

    Raises
    ------
    ValueError
        The run moved other parameters than the landscape's, or started from a model whose other
        parameters differ from the landscape model's.

    Examples
    --------
    >>> from bifurcation_callback.bifurcations.landscape import loss_landscape
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.0)
    >>> landscape = loss_landscape(model, np.ones((5, 1)), "A[0]", "h[0]", (np.linspace(0.5, 1.5, 11), [1.0]), max_order=1)
    >>> run = RunPath("A[0]", "h[0]", np.arange(4), np.array([0.8, 0.9, 1.1, 1.2]), np.ones(4), np.ones(4), np.ones(4))
    >>> path_crossings(landscape, run, warmup_steps=0).crossing_steps          # the fixed point is lost at A = 1
    (2,)
    """
    _check_run_fits(landscape, run)
    require_int("window", window, 0)
    require_int("warmup_steps", warmup_steps, 0)
    require_real("min_relative_change", min_relative_change, minimum=0.0)
    loss_floor = require_real("loss_floor", loss_floor, minimum=0.0)
    require_int("n_permutations", n_permutations, 1)
    steps = np.asarray(run.steps, dtype=np.int64)
    i, inside_a = _cell_index(landscape.a_values, np.asarray(run.a, dtype=np.float64))
    j, inside_b = _cell_index(landscape.b_values, np.asarray(run.b, dtype=np.float64))
    inside = inside_a & inside_b
    signatures = _signatures(landscape.diagram)[i, j]
    changed = (signatures[1:] != signatures[:-1]).any(-1) & inside[1:] & inside[:-1]
    crossing_steps = tuple(int(step) for step in steps[1:][changed])
    loss = np.asarray(run.loss, dtype=np.float64)
    loss = np.where(loss < loss_floor, loss_floor, loss)
    grad_norm = np.asarray(run.grad_norm, dtype=np.float64)
    history = [
        (int(step), float(value) if not math.isnan(value) else None, float(norm) if math.isfinite(norm) else None)
        for step, value, norm in zip(steps, loss, grad_norm)
    ]
    summary = summarise_run(
        history, crossing_steps, window=window, warmup_steps=warmup_steps,
        min_relative_change=min_relative_change, n_permutations=n_permutations,
    )
    return PathCrossings(
        name=run.name,
        method=run.method,
        n_steps=int(steps.size),
        crossing_steps=crossing_steps,
        n_outside=int((~inside).sum()),
        loss_jumps=summary.loss_jumps,
        correlation=summary.jump_correlation,
    )
