"""BifurcationMonitor: the Lightning callback that finds the RNN's cycles every few steps and logs
bifurcations and loss jumps.

The callback validates its arguments, answers Lightning's hooks and wires the pure parts together:
``CycleTracker`` (tracking.py) searches and compares the cycles, ``summarise_run`` (loss_jumps.py) finds and
correlates the loss jumps, ``Dashboard`` and the formatting functions (dashboard.py) write everything out.
It does no linear algebra and touches no logger itself.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback as _LightningCallback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from ._checks import finite_or_none, require_bool, require_choice, require_int, require_real
from .analysis import Snapshot, StepAnalyser, StepResult, take_snapshot
from .bifurcations import BIFURCATION_KINDS, BifurcationEvent
from .cycles import CycleSet
from .dashboard import (
    LOGGED_METRICS,
    Dashboard,
    custom_scalars_layout,
    events_markdown,
    fold_events,
    fresh_run_dir,
    running_scalars,
    summary_line,
    summary_markdown,
    summary_scalars,
)
from .loss_jumps import summarise_run
from .models import check_protocol, require_piecewise_linear
from .tracking import MONITOR_FINDER_DEFAULTS, check_finder_kwargs, gradient_norm
from .worker import WORKER_KINDS, AnalysisWorker, RenderJob, WorkerMessage

try:  # the classic namespace, so one monitor works with both `lightning.pytorch` and `pytorch_lightning`
    from pytorch_lightning.callbacks import Callback as _ClassicCallback

    _CALLBACK_BASES: tuple[type, ...] = (_LightningCallback, _ClassicCallback)
except ImportError:  # pragma: no cover - pytorch_lightning is optional
    _CALLBACK_BASES = (_LightningCallback,)

# LOGGED_METRICS, MONITOR_FINDER_DEFAULTS and summary_markdown live in dashboard.py / tracking.py and are
# re-exported here, where they were first published.
__all__ = ["BifurcationMonitor", "MONITOR_FINDER_DEFAULTS", "LOGGED_METRICS", "summary_markdown"]

_OWNER = "BifurcationMonitor"

MODES: tuple[str, ...] = ("auto", "async", "sync")

# How long a worker process may take to write the fit-end figures after fit (with drain_timeout_s=None).
FIGURES_TIMEOUT_S = 60.0


class BifurcationMonitor(*_CALLBACK_BASES):
    """Find all fixed points and k-cycles of the RNN every ``every_n_steps`` training steps (or at the end of
    every ``every_n_epochs``-th epoch), report bifurcations (cycles appearing, vanishing, changing stability or
    colliding with a border) and, at the end of fit, whether they explain the loss jumps.

    Steps follow Lightning's convention for metrics logged in ``training_step``: the batch that Lightning logs
    at step ``s`` is recorded at step ``s`` (0 for the first batch; ``trainer.global_step - 1`` with one
    optimizer and no gradient accumulation).  Its cycles are those of the weights after that batch's update,
    so an event at step ``s`` happened during batch ``s``; with gradient accumulation only the batches that
    step the optimizer are recorded.

    Parameters
    ----------
    max_order : int
        Largest cycle order searched (1 = fixed points only).
    every_n_steps : int, optional
        Analyse the model after every n-th optimizer step (steps 0, n, 2n, ...).  Independent of the
        Trainer's ``log_every_n_steps``.  Default 1 unless ``every_n_epochs`` is given.
    every_n_epochs : int, optional
        Instead of ``every_n_steps`` (at most one of the two, as in ModelCheckpoint's ``every_n_train_steps``
        / ``every_n_epochs``): analyse the model at the end of every n-th training epoch (epochs n, 2n, ...,
        counted from 1; also an epoch cut short by ``max_steps``), recorded at the step of the epoch's last
        optimizer step, the same step Lightning gives that batch's metrics.
    model_attr : str, optional
        Dotted attribute path of the piecewise-linear RNN inside the LightningModule (e.g. ``"rnn"``).
        By default the single submodule implementing the PiecewiseLinear protocol is used.
    finder_kwargs : dict, optional
        Overrides of ``MONITOR_FINDER_DEFAULTS``: ``n_starts``, ``inner``, ``outer`` (ints >= 1), ``dtype``
        (``torch.float64`` / ``torch.float32`` or the strings ``"float64"`` / ``"float32"``), ``device``.
    time_budget_s : float, optional
        Per-step budget for the cycle search (> 0); a search cut short is skipped (with a warning), never
        compared, so no spurious event is reported.
    loss_key : str
        Name of a metric logged with ``on_step=True`` in ``training_step`` (``self.log(loss_key, ...)``) to
        record as the step's loss.  When it was not logged on_step at this step (e.g. logged ``on_epoch``
        only, whose value is the previous epoch's mean), the step's own loss is used: the ``training_step``
        output (a Tensor, or a dict with ``"loss"``).
    log_figures_every_n_steps : int
        Log the figures (state space with the cycles, timeline of events over the loss curve) every n
        monitored steps (0: only at fit end).  Each figure costs tens of milliseconds of matplotlib (in async
        mode in the worker; a worker process writes the fit-end figures itself after fit returns:
        ``wait_for_figures``).
    jsonl_path : str or path, optional
        Where to write the per-step records; ``summary.json`` goes to the same folder.  An existing file
        there (not from the run being resumed) is overwritten with a warning.  Default:
        ``<trainer.log_dir>/events.jsonl`` with a logger (a fresh ``version_N`` folder per run); without a
        logger ``<trainer.default_root_dir>/bifurcation_monitor/version_N/events.jsonl`` with the first free
        ``N``, so runs never overwrite each other's files.  ``log_dir`` tells where they went.
    jump_window : int, optional
        Steps within which a loss jump counts as explained by an event (default ``5 * every_n_steps``; with
        ``every_n_epochs`` 5 times the median number of steps between two analyses).
    jump_warmup_steps : int
        Loss jumps are looked for only after this many training steps: a fresh model's first updates
        often drop the loss by more than a jump's threshold, which is learning, not a bifurcation.
    jump_min_change : float
        Smallest relative change of the per-batch training loss in one step that can count as a jump
        (1.0: doubling or halving), on top of being a robust outlier (z > 5) against the run's own
        step-to-step noise.  Per-batch losses under teacher forcing routinely move by ±50 %.
    max_tracked_cycles : int
        How many individual cycles get their own ``max_abs_eig/cycle_{id}`` curve over the whole run (the
        first ``max_tracked_cycles`` tracks; a cycle born later gets none).
    max_attractor_period : int
        At every monitored step the attractor is found at any period up to this (beyond ``max_order``): the
        model is simulated from the previous attractor's points, from ``bifurcation_reference_states`` when
        the module has them and from a few random states, eventually periodic orbits are solved exactly, and
        the rest are classified by their largest Lyapunov exponent (``attractors.find_attractors``).  A change
        of the followed attractor's kind or period is an ``attractor_change`` event.  0 turns it off.
    localize_events : bool
        Bisect along the straight line between the two weight snapshots around every step with events,
        to give the events a sub-step ``location`` (costs about ten extra searches per such step).
    seed : int
        Base seed of the random part of the search (the step number is added).
    show_all_events : bool
        List every event in the event tables (``bifurcation/events``, the summary and the fit-end line).  By
        default border collisions that left the cycle's stability unchanged (``bifurcations.events.is_qualitative``
        False: the cycle just moved across a switching plane) are folded into a count; ``events.jsonl`` and
        ``monitor.events`` always hold every event.
    mode : {"auto", "async", "sync"}
        Where the analysis runs.  ``"async"``: the training thread only snapshots the RNN's weights (detached
        CPU copies; from CUDA through pinned memory without a device-wide sync) with the step's loss and
        gradient norm, and a worker analyses them while training goes on; results are logged at the step they
        belong to as soon as they are ready.  ``"sync"``: the analysis runs inside ``on_train_batch_end`` and
        training waits for it.  ``"auto"`` (default) is async when this machine has a spare CPU core: more
        CPUs available to the process (``os.sched_getaffinity``) than the Trainer has processes on it
        (``trainer.num_devices``), and sync otherwise.  Only global rank zero runs a worker.
    worker : {"process", "thread"}
        In async mode: a worker process (default; its own interpreter and CPU thread, so it shares no GIL with
        training) or a thread of the training process.  A model that cannot be sent to another process (its
        class defined in ``__main__``, or unpicklable) is analysed in a thread, with a warning.
    queue_size : int or None
        In async mode: snapshots that may wait while the worker analyses one.  When the worker falls behind,
        the oldest waiting snapshot is dropped (latest wins): the monitor counts the dropped steps
        (``bifurcation/dropped``) and the next analysed step is compared with the last analysed one, so its
        events' brackets cover the dropped steps.  Near a fit's known last step no analysis is started that
        would still run when the last step comes (it would make the fit-end wait longer).  None never drops a
        step (records equal to sync mode's; the backlog is analysed while training goes on and drained at fit
        end).
    drain_timeout_s : float or None
        In async mode: how long the end of fit waits for the snapshots still queued before the summary is
        written; what is left is counted as dropped, with a warning.  None waits for all of them.  It also
        bounds how long a worker process may take for the fit-end figures after fit (60 s when None).
    verbose : bool
        Print a one-line summary at the end of fit on rank zero (``rank_zero_info``, like Lightning's
        ModelCheckpoint / EarlyStopping): events by kind, loss jumps, how many have an event nearby, the
        p-value and the monitor's overhead.

    Notes
    -----
    The state-space figure draws the orbits of the map from the stable cycles' points and a few fixed random
    states under the cycles.  A LightningModule may also expose training data in the RNN's state space as
    ``bifurcation_reference_states``: an array or tensor of shape (T, M) (or (..., M), flattened; at most the
    first 2000 states are drawn) with ``M`` the RNN's ``state_dim``, read whenever a figure is drawn; absent
    or None draws no data.

    Raises
    ------
    ValueError
        Any argument of the wrong kind or out of range; the message names the argument and what is allowed.

    Logged metrics
    --------------
    Scalars go to every logger in ``trainer.loggers``; the event table (``bifurcation/events``), the
    fit-end summary (``bifurcation/summary``), figures (``bifurcation/state_space``,
    ``bifurcation/timeline``) and a custom-scalars layout go to TensorBoard loggers only.

    - ``bifurcation/loss``, ``bifurcation/grad_norm``
    - ``bifurcation/n_cycles/order_{k}``, ``bifurcation/n_stable/order_{k}``, ``bifurcation/n_cycles/total``,
      ``bifurcation/n_stable/total``
    - ``bifurcation/exhaustive/order_{k}`` (1: the count is proved complete, 0: a lower bound)
    - ``bifurcation/max_abs_eig/order_{k}``, ``bifurcation/max_abs_eig/cycle_{id}``
    - ``bifurcation/min_unit_distance``, ``bifurcation/min_border_margin``
    - ``bifurcation/attractor/kind``, ``bifurcation/attractor/period``, ``bifurcation/attractor/max_abs_eig``,
      ``bifurcation/attractor/lyapunov``, ``bifurcation/attractor/n_attractors``
    - ``bifurcation/event``, ``bifurcation/events_total``, ``bifurcation/monitor_ms``, ``bifurcation/skipped``,
      ``bifurcation/dropped``, ``bifurcation/lag_steps``
    - at fit end: ``bifurcation/jumps_explained``, ``bifurcation/events_with_jump``, ``bifurcation/p_value``
      (each only when defined: no loss jumps or no events leave it out, and the summary shows ``n/a``),
      ``bifurcation/n_loss_jumps``

    Examples
    --------
    >>> monitor = BifurcationMonitor(max_order=2, every_n_steps=5)
    >>> monitor.state_key
    "BifurcationMonitor{'model_attr': None, 'max_order': 2}"
    >>> BifurcationMonitor(every_n_steps=0)
    Traceback (most recent call last):
    ...
    ValueError: BifurcationMonitor: every_n_steps must be an int >= 1 or None, got 0
    >>> BifurcationMonitor(every_n_epochs=2).every_n_steps is None
    True
    """

    def __init__(
        self,
        max_order: int = 4,
        every_n_steps: int | None = None,
        *,
        every_n_epochs: int | None = None,
        model_attr: str | None = None,
        finder_kwargs: dict[str, Any] | None = None,
        time_budget_s: float | None = None,
        loss_key: str = "train_loss",
        log_figures_every_n_steps: int = 0,
        jsonl_path: str | Path | None = None,
        jump_window: int | None = None,
        jump_warmup_steps: int = 20,
        jump_min_change: float = 1.0,
        max_tracked_cycles: int = 8,
        max_attractor_period: int = 256,
        localize_events: bool = False,
        seed: int = 0,
        show_all_events: bool = False,
        mode: str = "auto",
        worker: str = "process",
        queue_size: int | None = 1,
        drain_timeout_s: float | None = 60.0,
        verbose: bool = True,
    ) -> None:
        self.max_order = require_int("max_order", max_order, 1, owner=_OWNER)
        every_n_steps = require_int("every_n_steps", every_n_steps, 1, optional=True, owner=_OWNER)
        self.every_n_epochs = require_int("every_n_epochs", every_n_epochs, 1, optional=True, owner=_OWNER)
        if every_n_steps is not None and self.every_n_epochs is not None:
            raise ValueError(
                f"{_OWNER}: every_n_steps and every_n_epochs are mutually exclusive, got every_n_steps={every_n_steps}"
                f" and every_n_epochs={self.every_n_epochs}; pass one of them"
            )
        self.every_n_steps = 1 if every_n_steps is None and self.every_n_epochs is None else every_n_steps
        self.model_attr = _require_text("model_attr", model_attr, optional=True)
        self.finder_kwargs = check_finder_kwargs(finder_kwargs, owner=_OWNER)
        self.time_budget_s = require_real(
            "time_budget_s", time_budget_s, minimum=0.0, exclusive_minimum=True, optional=True, owner=_OWNER
        )
        self.loss_key = _require_text("loss_key", loss_key)
        self.log_figures_every_n_steps = require_int("log_figures_every_n_steps", log_figures_every_n_steps, 0, owner=_OWNER)
        if jsonl_path is not None and not isinstance(jsonl_path, Path):
            jsonl_path = _require_text("jsonl_path", jsonl_path)
        self.jsonl_path = jsonl_path
        jump_window = require_int("jump_window", jump_window, 0, optional=True, owner=_OWNER)
        # With every_n_epochs the default is resolved at fit end, from the steps actually analysed.
        self.jump_window = 5 * self.every_n_steps if jump_window is None and self.every_n_steps else jump_window
        self.jump_warmup_steps = require_int("jump_warmup_steps", jump_warmup_steps, 0, owner=_OWNER)
        self.jump_min_change = require_real("jump_min_change", jump_min_change, minimum=0.0, owner=_OWNER)
        self.max_tracked_cycles = require_int("max_tracked_cycles", max_tracked_cycles, 0, owner=_OWNER)
        self.max_attractor_period = require_int("max_attractor_period", max_attractor_period, 0, owner=_OWNER)
        self.localize_events = require_bool("localize_events", localize_events, owner=_OWNER)
        self.seed = require_int("seed", seed, 0, owner=_OWNER)
        self.show_all_events = require_bool("show_all_events", show_all_events, owner=_OWNER)
        self.mode = require_choice("mode", mode, MODES, owner=_OWNER)
        self.worker = require_choice("worker", worker, WORKER_KINDS, owner=_OWNER)
        self.queue_size = require_int("queue_size", queue_size, 1, optional=True, owner=_OWNER)
        self.drain_timeout_s = require_real(
            "drain_timeout_s", drain_timeout_s, minimum=0.0, optional=True, owner=_OWNER
        )
        self.verbose = require_bool("verbose", verbose, owner=_OWNER)
        self.summary: dict[str, Any] | None = None
        self.log_dir: str | None = None  # where events.jsonl and summary.json go; set at fit start
        self.active_mode: str | None = None  # "async" or "sync" once fit has started ("auto" resolved)
        self._rnn: Any = None
        self._module: Any = None  # the LightningModule, read for bifurcation_reference_states
        self._dashboard: Dashboard | None = None
        self._state_key_inputs: tuple[Any, ...] | None = None
        self._state_key = ""
        self._reset_state()

    def _reset_state(self) -> None:
        self._analyser: StepAnalyser | None = None  # built at fit start, from the RNN
        self._start_error = ""
        self._worker: AnalysisWorker | None = None
        self._worker_summary: dict[str, Any] | None = None
        self._closed_worker: AnalysisWorker | None = None
        # What a checkpoint restored for the analyser: its trackers' state and the snapshots not yet analysed.
        self._restored_state: dict[str, Any] | None = None
        self._restored_pending: list[Snapshot] = []
        self._last: tuple[Snapshot, StepResult] | None = None  # the last analysed step, for the figures
        # What is not yet written to the loggers and events.jsonl (see _publish_pending): accepted results,
        # with their running scalars as they were when accepted, and figures that came back from the worker.
        self._unpublished: list[Callable[[], None]] = []
        self._restored_cycles: CycleSet | None = None  # the last analysed step's, from a checkpoint
        self._records: list[dict[str, Any]] = []
        # [step, loss, grad norm] of every training step: loss jumps are found at full resolution even
        # when the cycle search runs only every n steps.
        self._history: list[list[float | None]] = []
        self._n_events = 0
        self._skip_reasons: Counter[str] = Counter()
        self._dropped: list[int] = []  # monitored steps the async worker never analysed (latest wins)
        self._deferred: int | None = None  # the newest monitored step the busy worker has not got (not copied)
        self._warned: set[str] = set()
        self._hook_seconds = 0.0
        self._analysis_seconds = 0.0
        self._drain_seconds = 0.0
        self._fit_seconds = 0.0
        self._fit_started: float | None = None
        self._pending_grad_norm: float | None = None
        # For not starting an analysis the fit-end wait would have to sit through (see _would_delay_fit_end).
        self._expected_last_step: int | None = None
        self._step_seconds: float | None = None  # moving average of the time between training steps
        self._analysis_estimate_s: float | None = None  # moving average of the worker's analysis time
        self._last_batch_end: float | None = None
        self._parameters: list[Any] | None = None  # the module's parameters, for the gradient norm
        self._resumed = False

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads it around every hook call (profiler names): built once per value of its inputs.
        inputs = (self.model_attr, self.max_order)
        if self._state_key_inputs != inputs:
            self._state_key = self._generate_state_key(model_attr=self.model_attr, max_order=self.max_order)
            self._state_key_inputs = inputs
        return self._state_key

    # ------------------------------------------------------------------------------------------ hooks

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._module = pl_module
            self._rnn = self._find_rnn(pl_module)
            # A model whose affine_pieces disagrees with its step would give wrong (usually empty) cycle sets at
            # every step without any error: fail before training starts, like a misconfigured callback.
            try:
                check_protocol(self._rnn)
            except ValueError as error:
                raise ValueError(f"BifurcationMonitor: {error}") from None

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit_started = time.perf_counter()
        self._parameters = None
        self._expected_last_step, self._last_batch_end = _expected_last_step(trainer), None
        root = trainer.log_dir if self.jsonl_path is None else None  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        if self.jsonl_path is not None:
            folder, name = Path(self.jsonl_path).parent, Path(self.jsonl_path).name
        else:
            if root is None:  # a logger without a folder of its own (no save_dir): Lightning's default root
                root = fresh_run_dir(trainer.default_root_dir)
            folder, name = (Path(root) if trainer.loggers else fresh_run_dir(root)), "events.jsonl"
        self.log_dir = str(folder)
        self._dashboard = Dashboard(trainer.loggers, folder, name)
        self._dashboard.log_layout(custom_scalars_layout("bifurcation/loss", range(1, self.max_order + 1)))
        # On resume the restored records replace whatever the interrupted run wrote after its checkpoint.
        self._dashboard.rewrite_records(self._records if self._resumed else [], resumed=self._resumed)
        self._start_analysis(trainer)

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.is_global_zero:
            started = time.perf_counter()
            if self._parameters is None:  # listed once a fit: walking the module tree each step costs more
                self._parameters = list(pl_module.parameters())
            self._pending_grad_norm = gradient_norm(self._parameters)
            self._hook_seconds += time.perf_counter() - started

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self._unpublished:
            started = time.perf_counter()
            self._publish_pending()
            self._hook_seconds += time.perf_counter() - started

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or _accumulating(trainer, pl_module):
            return
        step = _lightning_step(trainer)
        if self._history and self._history[-1][0] == step:
            return  # several optimizers, or manual optimization: one record per logged step
        started = time.perf_counter()
        if self._last_batch_end is not None:
            self._step_seconds = _moving_average(self._step_seconds, started - self._last_batch_end)
        self._last_batch_end = started
        loss = finite_or_none(_step_loss(trainer, outputs, self.loss_key))
        self._history.append([step, loss, finite_or_none(self._pending_grad_norm)])
        self._collect()  # first: a worker that has finished takes this step's snapshot, the newest
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            self._submit(step, loss)
        self._hook_seconds += time.perf_counter() - started

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs or not self._history:
            return
        step, loss = self._history[-1][:2]  # the epoch's last optimizer step: the same step convention
        if step in self._submitted_steps():
            return  # analysed already (an epoch of batches that never stepped the optimizer)
        started = time.perf_counter()
        self._collect()
        self._submit(int(step), loss)
        self._hook_seconds += time.perf_counter() - started

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._fit_started is not None:
            self._fit_seconds += time.perf_counter() - self._fit_started
            self._fit_started = None
        if not trainer.is_global_zero or self._dashboard is None:
            return
        # Waiting for the worker is part of the fit's wall time that the monitor costs.
        started = time.perf_counter()
        started_late = self._worker is not None and self._worker.starting
        self._drain()
        if started_late and self._dropped:
            n_monitored = len(self._records) + len(self._dropped)
            self._warn(
                "short fit",
                f"BifurcationMonitor: training ended before its worker process had started (a new Python process "
                f"importing torch takes a second or more), so {len(self._dropped)} of the {n_monitored} monitored "
                "steps were dropped; for a fit this short, mode='sync' analyses every monitored step in the hook",
            )
        summary = None
        try:
            summary = self._summarise()
            if self._records:  # async: drawn and written by the worker process after fit returns
                self._log_figures(summary["final_step"] or 0, summary["loss_jumps"], at_fit_end=True)
        except Exception as error:  # a broken summary must not hide the training result
            self._warn("summary", f"BifurcationMonitor could not write its summary: {error}")
        self._finish_worker()
        self._publish_pending()
        waited = time.perf_counter() - started
        self._hook_seconds += waited
        self._fit_seconds += waited
        self._drain_seconds += waited
        if summary is not None:
            try:
                self.summary = {**summary, **self._timing_fields()}
                self._log_summary(self.summary)
                if self.verbose:
                    rank_zero_info(summary_line(self.summary, show_all_events=self.show_all_events))
            except Exception as error:
                self._warn("summary", f"BifurcationMonitor could not write its summary: {error}")
        self._dashboard.flush()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._stop_worker()  # an interrupted fit must not leave a worker process behind
        self._publish_pending()

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._stop_worker()
        self._publish_pending()

    # ------------------------------------------------------------------------------------------ state

    @override
    def state_dict(self) -> dict[str, Any]:
        dropped = list(self._dropped)
        if self._worker is not None:
            self._collect()  # what is finished becomes records; the rest is saved as pending snapshots
        self._publish_pending()  # the run folder holds what the checkpoint holds
        if self._worker is not None:
            analyser_state, pending = self._worker.state, self._worker.pending()
            if self._deferred is not None:  # saved right after it: its weights are the current ones
                deferred = self._deferred_snapshot()
                pending, dropped = (pending + [deferred], dropped) if deferred else (pending, dropped + [self._deferred])
        elif self._analyser is not None:
            analyser_state, pending = self._analyser.state_dict(), []
        else:  # saved before fit started: what was restored, unchanged
            analyser_state, pending = self._restored_state or {}, self._restored_pending
        return {
            "tracker": analyser_state.get("tracker"),
            "attractor": analyser_state.get("attractor"),
            "pending": [snapshot.to_dict() for snapshot in pending],
            "records": self._records,
            "history": self._history,
            "skip_reasons": dict(self._skip_reasons),
            "dropped": dropped,
            "hook_seconds": self._hook_seconds,
            "analysis_seconds": self._analysis_seconds,
            "fit_seconds": self._fit_seconds,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._close_worker()
        self._reset_state()
        self._records = list(state_dict.get("records", []))
        # Checkpoints written before the tracker was split out hold its fields at the top level.
        tracker = state_dict.get("tracker", state_dict)
        self._restored_state = {"tracker": tracker, "attractor": state_dict.get("attractor")}
        self._restored_pending = [Snapshot.from_dict(entry) for entry in state_dict.get("pending", [])]
        previous = (tracker or {}).get("previous")
        self._restored_cycles = CycleSet.from_dict(previous) if previous is not None else None
        self._history = [list(entry) for entry in state_dict.get("history", [])]
        self._n_events = sum(len(record.get("events", [])) for record in self._records)
        self._skip_reasons = Counter(state_dict.get("skip_reasons", {}))
        self._dropped = [int(step) for step in state_dict.get("dropped", [])]
        self._hook_seconds = float(state_dict.get("hook_seconds", 0.0))
        self._analysis_seconds = float(state_dict.get("analysis_seconds", 0.0))
        self._fit_seconds = float(state_dict.get("fit_seconds", 0.0))
        self._resumed = True

    # ------------------------------------------------------------------------------------------ public results

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per analysed or skipped step (as written to ``events.jsonl``), in step order."""
        return list(self._records)

    @property
    def events(self) -> list[BifurcationEvent]:
        """All bifurcation events so far, in step order."""
        return [BifurcationEvent.from_dict(e) for record in self._records for e in record.get("events", [])]

    @property
    def cycles(self) -> CycleSet | None:
        """The cycle set of the last analysed step."""
        # Read from the result only now: a worker process's results unpickle their cycles when first read.
        return self._last[1].cycles if self._last is not None else self._restored_cycles

    @property
    def n_skipped(self) -> int:
        return sum(self._skip_reasons.values())

    @property
    def dropped_steps(self) -> list[int]:
        """Monitored steps the async worker did not analyse (it was busy: latest wins; or the fit-end drain
        timed out).  Each lies inside the step bracket of the next analysed step."""
        return list(self._dropped)

    # ------------------------------------------------------------------------------------------ wiring

    def _start_analysis(self, trainer: Any) -> None:
        """Build the analyser (with a restored state), resolve the mode and start the worker."""
        previous, self._analyser = self._analyser, None
        try:
            analyser = StepAnalyser(
                self._rnn,
                max_order=self.max_order,
                max_tracked_cycles=self.max_tracked_cycles,
                seed=self.seed,
                finder_kwargs=self.finder_kwargs,
                time_budget_s=self.time_budget_s,
                localize_events=self.localize_events,
                max_attractor_period=self.max_attractor_period,
            )
            if self._restored_state is not None:
                analyser.load_state_dict(self._restored_state)
            elif previous is not None:  # a second fit with the same monitor continues from the first one's last step
                analyser.load_state_dict(previous.state_dict())
        except Exception as error:  # e.g. a model that cannot be copied: every step is skipped, training goes on
            self._start_error = f"{type(error).__name__}: {error}"
            self._warn("no analysis", f"BifurcationMonitor cannot analyse this model ({self._start_error}); every monitored step is skipped")
            self.active_mode = "sync"
            return
        self._analyser = analyser
        self.active_mode = self.mode if self.mode != "auto" else default_mode(trainer)
        pending, self._restored_pending = self._restored_pending, []
        if self.active_mode == "async":
            figures = self._dashboard is not None and self._dashboard.has_tensorboard
            self._worker = AnalysisWorker(self._analyser, kind=self.worker, queue_size=self.queue_size, warm_figures=figures)
            try:
                self._worker.start()
                while pending:  # steps a checkpoint saved before they were analysed: none is lost
                    self._worker.submit(pending.pop(0), force=True)  # queued before anything can fail
            except Exception as error:  # never into training: analyse in sync instead
                self._worker_failed(error)
                for snapshot in pending:
                    self._analyse_now(snapshot)
        else:
            for snapshot in pending:
                self._analyse_now(snapshot)

    def _submit(self, step: int, loss: float | None) -> None:
        """Snapshot the RNN at ``step`` and analyse it now (sync) or hand it to the worker (async)."""
        if self._analyser is None:  # it could not be built at fit start (the warning said why)
            self._skip(step, loss, f"no analysis: {self._start_error}")
            return
        if self._worker is not None and self.queue_size == 1 and (self._worker.busy or self._would_delay_fit_end(step)):
            # Latest wins without copying: the one snapshot that may wait would be replaced by the next monitored
            # step's before the worker could take it (it is fed from these hooks), so only the step is noted; it
            # is snapshotted at fit end if training stops right after it (the weights are still its weights).
            self._defer(step)
            return
        snapshot = self._snapshot(step, loss)
        if snapshot is None:
            return
        if self._worker is None:
            self._analyse_now(snapshot)
            return
        self._defer(None)  # a newer step is on its way: the noted one is dropped
        try:
            dropped = self._worker.submit(snapshot)
        except Exception as error:  # the worker's own machinery failed (sockets, processes): go on in sync
            self._worker_failed(error, snapshot)
            return
        if dropped is not None:
            self._dropped.append(dropped.step)

    def _would_delay_fit_end(self, step: int) -> bool:
        """Whether an analysis started at ``step`` would still be running at the fit's last step, which is then
        analysed while training waits (``_drain``): the wait would be that analysis's rest plus the last step's.
        Latest wins anyway, so such a step is dropped instead and the last step's brackets reach back over it.
        Only when the last step is known (``trainer.estimated_stepping_batches``) and monitored; a fit that
        ends earlier (early stopping) or later than expected loses at most the steps of one analysis."""
        last, step_s, analysis_s = self._expected_last_step, self._step_seconds, self._analysis_estimate_s
        if last is None or step_s is None or analysis_s is None or not 0 < last - step:
            return False
        if self.every_n_steps is None or last % self.every_n_steps:
            return False
        return (last - step) * step_s < analysis_s

    def _worker_failed(self, error: Exception, snapshot: Snapshot | None = None) -> None:
        self._warn("worker fallback", f"BifurcationMonitor's worker failed ({type(error).__name__}: {error}); "
                   "the rest of the run is analysed on the training thread (mode='sync')")
        self._fall_back_to_sync()
        if snapshot is not None:
            self._analyse_now(snapshot)

    def _snapshot(self, step: int, loss: float | None) -> Snapshot | None:
        """The RNN's weights now, as ``step``'s snapshot (None, with a skipped record, when that fails)."""
        try:
            return take_snapshot(
                self._rnn, step, loss=loss, grad_norm=self._history[-1][2] if self._history else None,
                reference=self._reference_or_none(), copy=self._worker is not None,
            )
        except Exception as error:  # the monitor must never take the training run down
            self._skip(step, loss, f"{type(error).__name__}: {error}")
            return None

    def _deferred_snapshot(self) -> Snapshot | None:
        """The noted step's snapshot when the weights are still that step's (nothing trained since)."""
        if self._deferred is None or not self._history or self._history[-1][0] != self._deferred:
            return None
        return self._snapshot(self._deferred, self._history[-1][1])

    def _defer(self, step: int | None) -> None:
        """Note ``step`` as the newest monitored step the busy worker has not got (None: forget it); the step
        it replaces is dropped."""
        if self._deferred is not None:
            self._dropped.append(self._deferred)
        self._deferred = step

    def _analyse_now(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        try:
            result = self._analyser.analyse(snapshot)
        except Exception as error:  # the monitor must never take the training run down
            self._skip(snapshot.step, snapshot.loss, f"{type(error).__name__}: {error}")
            return
        finally:
            self._analysis_seconds += time.perf_counter() - started
        self._accept(snapshot, result)

    def _collect(self, *, closed: bool = False) -> None:
        """Log what the worker finished, in step order (``closed``: what the last worker finished before it was
        closed)."""
        worker = self._closed_worker if closed else self._worker
        if worker is None:
            return
        try:
            messages = worker.collect()
        except Exception as error:  # never into training: the rest of the run is analysed in sync
            if not closed:
                self._worker_failed(error)
            return
        for message in messages:
            self._handle(message)

    def _handle(self, message: WorkerMessage) -> None:
        snapshot = message.snapshot
        self._analysis_seconds += message.analysis_s
        if message.kind == "result":
            self._analysis_estimate_s = _moving_average(self._analysis_estimate_s, message.analysis_s)
        try:
            if message.kind == "result":
                self._accept(snapshot, message.result)
            elif message.kind == "figures":  # PNG-encoded and checksummed by TensorBoard: logged like results
                self._publish_later(functools.partial(self._dashboard.log_images, message.images, message.step))
            elif message.kind in ("error", "lost") and snapshot is not None:
                self._skip(snapshot.step, snapshot.loss, message.error if message.kind == "error" else f"worker: {message.error}")
            elif message.kind == "lost":  # while drawing figures: no step is lost
                self._warn("worker", f"BifurcationMonitor: {message.error}")
            elif message.kind == "note":
                self._warn(message.category, message.error)
            elif message.kind == "fallback":
                self._warn("worker fallback", f"BifurcationMonitor: {message.error}")
                self._fall_back_to_sync()
        except Exception as error:  # publishing must not take the training run down either
            self._warn("publish", f"BifurcationMonitor could not log a result: {type(error).__name__}: {error}")

    def _fall_back_to_sync(self) -> None:
        worker = self._worker
        if worker is None:  # fell back already
            return
        for message in worker.collect(progress=False):  # results that arrived before the failure come first
            if message.kind != "fallback":
                self._handle(message)
        leftover = worker.take_queue()
        self._analyser.load_state_dict(worker.state)
        self._close_worker()
        self.active_mode = "sync"
        for item in leftover:
            if isinstance(item, RenderJob):
                self._render_now(item)
            else:
                self._analyse_now(item)

    def _drain(self) -> None:
        """Fit end: wait (at most ``drain_timeout_s``) until the worker has analysed every snapshot; what it has
        not reached by then is counted as dropped."""
        if self._worker is None:
            return
        last = self._deferred_snapshot()  # training stopped right after the noted step: its weights are current
        if last is not None:
            self._deferred = None
            self._worker.submit(last, force=True)
        else:
            self._defer(None)  # an older noted step is dropped
        try:
            drained = self._drain_with_progress()
        except Exception as error:  # the worker's machinery failed at the last moment: finish in sync
            self._worker_failed(error)
            return
        if drained:
            self._collect()
            return
        waiting = [snapshot.step for snapshot in self._worker.pending()]
        self._stop_worker()  # stops the analysis in flight: its result would come too late for the summary
        recorded = {record["step"] for record in self._records}
        unanalysed = [step for step in waiting if step not in recorded]
        self._dropped.extend(unanalysed)
        self._warn(
            "drain",
            f"BifurcationMonitor: the worker had not analysed steps {unanalysed} after drain_timeout_s="
            f"{self.drain_timeout_s}; they are counted as dropped",
        )

    def _drain_with_progress(self) -> bool:
        """``worker.drain`` within ``drain_timeout_s``, with a progress bar when it takes more than 2 s (a long
        backlog with ``queue_size=None``)."""
        from tqdm import tqdm

        deadline = None if self.drain_timeout_s is None else time.monotonic() + self.drain_timeout_s
        total = self._worker.n_waiting
        with tqdm(total=total, desc="BifurcationMonitor: analysing the queued steps", unit="step", delay=2.0,
                  leave=False, disable=total < 2) as bar:
            while True:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                done = self._worker.drain(0.5 if remaining is None else min(remaining, 0.5))
                bar.update(total - self._worker.n_waiting - bar.n)
                if done or (remaining is not None and remaining <= 0):
                    return done

    def _finish_worker(self) -> None:
        """Fit end, after the summary: stop the worker.  A worker process writes the fit-end figures itself and
        is left to finish them after fit returns (``wait_for_figures``); a thread's figures are waited for."""
        if self._worker is None:
            return
        if self._worker.writing_detached:
            self._stop_worker(FIGURES_TIMEOUT_S if self.drain_timeout_s is None else max(self.drain_timeout_s, 5.0))
            return
        try:
            drained = self._worker.drain(self.drain_timeout_s)
        except Exception as error:
            self._worker_failed(error)
            return
        if not drained:
            self._warn("figures", f"BifurcationMonitor: the fit-end figures took longer than drain_timeout_s={self.drain_timeout_s}")
        self._stop_worker()

    def wait_for_figures(self, timeout_s: float | None = FIGURES_TIMEOUT_S) -> bool:
        """Wait until the worker process has written the fit-end figures.

        In async mode the worker process draws the fit-end figures and writes them to the TensorBoard run
        directory itself, after ``trainer.fit`` has returned, so training never waits for matplotlib; they
        appear a fraction of a second later.  Call this before reading them back (or before deleting the log
        directory).  Returns False after ``timeout_s``; True at once in sync mode or when nothing is pending.

        Examples
        --------
        >>> BifurcationMonitor().wait_for_figures()  # nothing pending before a fit
        True
        """
        worker = self._closed_worker
        return worker is None or worker.wait_closed(timeout_s)

    def _stop_worker(self, timeout_s: float = 5.0) -> None:
        """Stop the worker, log what it finished, and make the analyser in this process hold the state of the
        last logged step again: a checkpoint saved after fit (``trainer.save_checkpoint``) or a second fit
        continues from there.  A worker process still writing figures may take ``timeout_s`` to exit."""
        worker = self._worker
        if worker is None:
            return
        self._close_worker(timeout_s)
        self._collect(closed=True)
        if self._analyser is not None:
            self._analyser.load_state_dict(worker.state)

    def _close_worker(self, timeout_s: float = 5.0) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close(timeout_s)
            self._closed_worker = worker
            # What ran where, for the summary (a process worker may have become a thread or fallen back).
            self._worker_summary = {"kind": worker.kind, "processes": worker.pids, "restarts": worker.restarts,
                                    "fell_back_to_sync": worker.failed}

    def _submitted_steps(self) -> set[int]:
        steps = {record["step"] for record in self._records} | ({self._deferred} if self._deferred is not None else set())
        if self._worker is not None:
            steps.update(snapshot.step for snapshot in self._worker.pending())
        return steps

    def _accept(self, snapshot: Snapshot, result: StepResult) -> None:
        record = result.record
        now = self._history[-1][0] if self._history else snapshot.step
        record["lag_ms"] = 1e3 * (time.perf_counter() - snapshot.taken_at)
        record["lag_steps"] = int(now) - snapshot.step
        for category, text in result.notes:
            self._warn(category, text)
        self._records.append(record)
        self._n_events += len(record["events"])
        self._last = (snapshot, result)
        running = running_scalars(record, n_events=self._n_events, n_skipped=self.n_skipped, n_dropped=len(self._dropped))
        started = time.perf_counter()
        if self.log_figures_every_n_steps and len(self._records) % self.log_figures_every_n_steps == 0:
            self._log_figures(record["step"])
        # Kept apart so the overhead can be broken down (finder, comparison, logging, figures).
        record["figures_ms"] = 1e3 * (time.perf_counter() - started)
        self._publish_later(functools.partial(self._publish, record, result, running))

    def _publish_later(self, write: Callable[[], None]) -> None:
        self._unpublished.append(write)
        if len(self._unpublished) >= MAX_UNPUBLISHED:  # no backward comes (manual optimization without one)
            self._publish_pending()

    def _publish_pending(self) -> None:
        """Write the accepted results (and figures) to the loggers and ``events.jsonl``, in step order.

        Called from ``on_before_backward`` rather than where the results arrive: TensorBoard's writer thread
        then computes its (pure-Python) checksums of these events while the backward pass runs without the
        GIL, instead of taking the GIL from the training thread.  Also before a skipped step's record, a
        checkpoint, and the summary at fit end, so nothing is lost or out of order.
        """
        pending, self._unpublished = self._unpublished, []
        for write in pending:
            try:
                write()
            except Exception as error:  # publishing must not take the training run down
                self._warn("publish", f"BifurcationMonitor could not log a result: {type(error).__name__}: {error}")

    def _publish(self, record: dict[str, Any], result: StepResult, running: dict[str, float | None]) -> None:
        dashboard = self._dashboard
        if dashboard is None:
            return
        started = time.perf_counter()
        dashboard.log_scalars({**result.scalars, **running}, record["step"])
        if fold_events(record["events"], show_all=self.show_all_events)[0]:  # a step of folded crossings only: no text
            events = events_markdown(record["events"], show_all=self.show_all_events)
            dashboard.log_text("bifurcation/events", events, record["step"])
        record["publish_ms"] = 1e3 * (time.perf_counter() - started)
        dashboard.write_record(record)

    def _skip(self, step: int, loss: float | None, reason: str) -> None:
        self._publish_pending()  # events.jsonl stays in step order
        category = reason.split(":")[0]
        self._skip_reasons[category] += 1
        self._warn(category, f"BifurcationMonitor skipped step {step}: {reason}")
        record = {"step": step, "loss": loss, "skipped": reason}
        self._records.append(record)
        if self._dashboard is not None:
            self._dashboard.write_record(record)
            self._dashboard.log_scalars({"bifurcation/skipped": float(self.n_skipped)}, step)

    def _warn(self, category: str, message: str) -> None:
        # One warning per kind of problem: a NaN model would otherwise warn at every step.
        if category not in self._warned:
            self._warned.add(category)
            warnings.warn(message + " (further warnings of this kind are suppressed)", RuntimeWarning, stacklevel=2)

    def _summarise(self) -> dict[str, Any]:
        analysed = [r for r in self._records if "skipped" not in r]
        event_steps = [e["step"] for r in analysed for e in r["events"]]
        run = summarise_run(
            self._history,
            event_steps,
            window=self._jump_window(analysed),
            warmup_steps=self.jump_warmup_steps,
            min_relative_change=self.jump_min_change,
        )
        losses = [loss for _, loss, _ in self._history if loss is not None]
        by_kind = Counter(e["kind"] for r in analysed for e in r["events"])
        n_folded = sum(fold_events(r["events"])[1] for r in analysed)
        previous = self.cycles
        lags = sorted(r["lag_steps"] for r in analysed if "lag_steps" in r)
        n_monitored = len(self._records) + len(self._dropped)
        return {
            "max_order": self.max_order,
            "every_n_steps": self.every_n_steps,
            "every_n_epochs": self.every_n_epochs,
            "n_monitored_steps": len(analysed),
            "n_skipped": self.n_skipped,
            "skip_reasons": dict(self._skip_reasons),
            "n_dropped_steps": len(self._dropped),
            "analysed_fraction": len(analysed) / n_monitored if n_monitored else None,
            "lag_steps_median": float(statistics.median(lags)) if lags else None,
            "lag_steps_max": lags[-1] if lags else None,
            "final_step": int(self._history[-1][0]) if self._history else None,
            "final_loss": losses[-1] if losses else None,
            "final_cycles": previous.to_dict() if previous is not None else None,
            # The last monitored step's attractor; None when that step was skipped or its analysis failed, never
            # an older step's attractor presented as the final one.
            "final_attractor": self._records[-1].get("attractor") if self._records else None,
            "max_attractor_period": self.max_attractor_period,
            "n_attractor_changes": by_kind.get("attractor_change", 0),
            "n_events": len(event_steps),
            "events_by_kind": {kind: by_kind.get(kind, 0) for kind in BIFURCATION_KINDS},
            "n_border_crossings": n_folded,
            **run.to_dict(),
            "jump_warmup_steps": self.jump_warmup_steps,
            "jump_min_change": self.jump_min_change,
            **self._timing_fields(),
        }

    def _timing_fields(self) -> dict[str, Any]:
        """Where the analysis ran (``mode``, ``worker``) and where the time went: ``monitor_seconds`` on the
        training thread (hooks, and the fit-end work after the last step, ``drain_seconds``: waiting for the
        worker, the fit-end figures and summary), ``analysis_seconds`` wherever the analysis ran.  Computed
        again once the worker has stopped."""
        return {
            "mode": self.active_mode,
            "worker": self._worker_summary,
            "monitor_seconds": self._hook_seconds,
            "analysis_seconds": self._analysis_seconds,
            "drain_seconds": self._drain_seconds,
            "fit_seconds": self._fit_seconds,
            "monitor_overhead": self._hook_seconds / max(self._fit_seconds - self._hook_seconds, 1e-9),
        }

    def _log_summary(self, summary: dict[str, Any]) -> None:
        dashboard = self._dashboard
        step = summary["final_step"] or 0
        dashboard.log_scalars(summary_scalars(summary), step)
        dashboard.log_text("bifurcation/summary", summary_markdown(summary, show_all_events=self.show_all_events), step)
        dashboard.write_summary(summary)

    def _jump_window(self, analysed: list[dict[str, Any]]) -> int:
        if self.jump_window is not None:
            return self.jump_window
        # every_n_epochs: 5 analyses' worth of steps, as 5 * every_n_steps is for every_n_steps.
        steps = [record["step"] for record in analysed]
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        return 5 * (int(statistics.median(gaps)) if gaps else (steps[0] + 1 if steps else 1))

    def _log_figures(self, step: int, loss_jumps: list[dict[str, Any]] = (), *, at_fit_end: bool = False) -> None:
        """The state space of the last analysed step (its cycles, the orbits under them, the step's reference
        states) and the timeline up to now, drawn by the worker in async mode (logged when they come back; at
        fit end a worker process writes them to the run directories itself)."""
        dashboard = self._dashboard
        if dashboard is None or not dashboard.has_tensorboard:
            return
        snapshot, result = self._last if self._last is not None else (None, None)
        arguments = {
            "cycles": self.cycles,
            # The timeline needs steps, cycle counts and events only: a slim copy keeps the job small.
            "records": [{key: r[key] for key in ("step", "n_cycles", "events") if key in r} for r in self._records],
            "history": [list(entry) for entry in self._history],
            "loss_jumps": list(loss_jumps),
            "orbits": result.orbits if result is not None else [],
            "reference": snapshot.reference if snapshot is not None else None,
        }
        # Without the attractor analysis the orbits under the cycles are sampled from the step's model.
        job = RenderJob(step, arguments, snapshot if self.max_attractor_period == 0 else None, self.seed)
        if self._worker is not None and at_fit_end and self._worker.kind == "process":
            job.log_dirs = dashboard.local_tensorboard_dirs() or ()
        if self._worker is not None:
            self._worker.submit_job(job)
        else:
            self._render_now(job)

    def _render_now(self, job: RenderJob) -> None:
        try:  # figures must not cost the run its records
            self._dashboard.log_images(job.run(self._analyser), job.step)
        except Exception as error:
            self._warn("figures", f"BifurcationMonitor draws no figures at step {job.step}: {type(error).__name__}: {error}")

    def _reference_or_none(self) -> Any:
        try:
            return _reference_states(self._module, self._rnn.state_dim)
        except Exception as error:
            self._warn("reference states", f"BifurcationMonitor ignores the module's reference states: {error}")
            return None

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


def _require_text(name: str, value: object, *, optional: bool = False) -> str | None:
    if optional and value is None:
        return None
    if not isinstance(value, str) or not value:
        wanted = "a non-empty string" + (" or None" if optional else "")
        raise ValueError(f"{_OWNER}: {name} must be {wanted}, got {value!r}")
    return value


# At most this many accepted results wait for a backward pass to be logged in (see _publish_pending).
MAX_UNPUBLISHED = 4

# At most this many states of ``bifurcation_reference_states`` are drawn.
MAX_REFERENCE_STATES = 2000


def _reference_states(pl_module: Any, state_dim: int) -> Any:
    """The LightningModule's ``bifurcation_reference_states`` as a (T, state_dim) array or tensor (at most
    ``MAX_REFERENCE_STATES`` rows, a view: ``take_snapshot`` copies it with the weights, from CUDA without
    blocking), or None when it has none.  Its dtype is kept: the float64 conversion happens where the states
    are read, off the training thread in async mode."""
    states = getattr(pl_module, "bifurcation_reference_states", None)
    if states is None:
        return None
    if not hasattr(states, "detach"):
        states = np.asarray(states)
        if not np.issubdtype(states.dtype, np.floating):
            states = states.astype(float)
    if states.ndim < 1 or states.shape[-1] != state_dim:
        raise ValueError(
            f"bifurcation_reference_states must have shape (..., {state_dim}) (the RNN's state_dim), got {tuple(states.shape)}"
        )
    states = states.reshape(-1, state_dim)[:MAX_REFERENCE_STATES]
    return states.detach() if hasattr(states, "detach") else states


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_mode(trainer: Any) -> str:
    """``mode="auto"``: async when a CPU core is left for the worker after one per training process on this
    machine (``trainer.num_devices``: DDP on CPU runs that many processes, each GPU one), else sync."""
    processes = max(1, int(getattr(trainer, "num_devices", 1) or 1))
    return "async" if available_cpus() > processes else "sync"


def _lightning_step(trainer: Any) -> int:
    """The step Lightning's logger connector gives the metrics logged in the current ``training_step``: the
    number of batches that stepped the optimizers before this one (``trainer.global_step`` counts each
    optimizer's steps, so it runs ahead with several optimizers and is already incremented here).

    The counter is private; should a Lightning release rename it, ``global_step - 1`` is the same number for
    the common single-optimizer loop."""
    stepped = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    return int(stepped) if stepped is not None else max(int(trainer.global_step) - 1, 0)


def _expected_last_step(trainer: Any) -> int | None:
    """The step (``_lightning_step``'s count) the fit is set to end at, from ``max_steps`` or the epochs'
    batches; None when Lightning cannot tell (no limit, a dataloader without a length)."""
    try:
        total = trainer.estimated_stepping_batches
    except Exception:  # Lightning raises for some dataloaders; the estimate is only an optimisation
        return None
    return int(total) - 1 if isinstance(total, (int, float)) and math.isfinite(total) and total >= 1 else None


def _moving_average(average: float | None, value: float, weight: float = 0.2) -> float:
    return value if average is None else average + weight * (value - average)


def _accumulating(trainer: Any, pl_module: Any) -> bool:
    """True for a batch whose gradients are accumulated without an optimizer step (Lightning logs nothing for
    it either)."""
    should_accumulate = getattr(getattr(trainer, "fit_loop", None), "_should_accumulate", None)
    return bool(pl_module.automatic_optimization and should_accumulate is not None and should_accumulate())


def _step_loss(trainer: Any, outputs: Any, loss_key: str) -> float | None:
    """This step's own loss: ``loss_key`` if it was logged with ``on_step=True`` in this ``training_step``,
    else the step output.  ``trainer.callback_metrics`` is not enough: a metric logged on_epoch only stays
    there with the previous epoch's mean during the whole next epoch."""
    value = None
    results = getattr(trainer, "_results", None)  # Lightning's own per-step view of what was logged
    if results is not None:
        try:
            value = _logged_on_step(results, loss_key)
        except Exception:  # a private API: fall back to the step output if it ever changes
            value = None
    if value is None:
        value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _logged_on_step(results: Any, name: str) -> Any:
    """``results.metrics(True)["callback"].get(name)`` for Lightning's ``_ResultCollection`` ``results``, without
    computing every other logged metric (and converting the progress bar's to numbers) at every step."""
    value = None
    if not results.training:
        return None
    for metric in results.values():  # in logging order: a later one of the same name wins, as in metrics()
        meta = metric.meta
        if metric.has_reset or not meta.on_step or meta.dataloader_idx != results.dataloader_idx:
            continue
        if name in results._forked_name(metric, True) and isinstance(metric._forward_cache, torch.Tensor):
            value = metric._forward_cache
    return value


def _is_piecewise_linear(module: Any) -> bool:
    try:
        require_piecewise_linear(module)
    except TypeError:
        return False
    return True
