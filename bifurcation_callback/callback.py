"""BifurcationMonitor: the Lightning callback that analyses the RNN's cycles and attractor at every monitored
step and logs bifurcations and loss jumps.

Lightning wiring only: the callback validates its arguments, answers Lightning's hooks and hands what happens
to a :class:`~bifurcation_callback.session.MonitorSession` (the run's records, counts, publishing and summary),
which hands snapshots to a :class:`~bifurcation_callback.runner.Runner` (the analysis in the hook, or in a
worker process beside training).  It does no linear algebra and touches no logger itself.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback as _LightningCallback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from . import _trainer
from ._checks import (finite_or_none, require_bool, require_choice, require_int, require_int_sequence,
                      require_monitor_max_order, require_real, require_text)
from ._trainer import available_cpus, default_mode
from .analysis import take_snapshot
from .bifurcations import BifurcationEvent
from .cycles import CycleSet
from .loss_jumps import DEFAULT_JUMP_SCALES
from .dashboard import LOGGED_METRICS, Dashboard, custom_scalars_layout, fresh_run_dir, summary_line, summary_markdown
from .models import check_protocol
from .runner import InlineRunner
from .session import FIGURES_TIMEOUT_S, MonitorSession, SessionSettings, warn_once
from ._checks import check_finder_kwargs
from ._trainer import gradient_norm
from .tracking import MONITOR_FINDER_DEFAULTS, THOROUGH_SEARCH

try:  # the classic namespace, so one monitor works with both `lightning.pytorch` and `pytorch_lightning`
    from pytorch_lightning.callbacks import Callback as _ClassicCallback

    _CALLBACK_BASES: tuple[type, ...] = (_LightningCallback, _ClassicCallback)
except ImportError:  # pragma: no cover - pytorch_lightning is optional
    _CALLBACK_BASES = (_LightningCallback,)

# LOGGED_METRICS, MONITOR_FINDER_DEFAULTS and summary_markdown live in dashboard.py / tracking.py and are
# re-exported here, where they were first published; available_cpus and default_mode in _trainer.py.
__all__ = ["BifurcationMonitor", "MONITOR_FINDER_DEFAULTS", "LOGGED_METRICS", "summary_markdown", "available_cpus", "default_mode"]

_OWNER = "BifurcationMonitor"

MODES: tuple[str, ...] = ("auto", "async", "sync")
WORKER_KINDS: tuple[str, ...] = ("process", "thread")


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
        Per-step budget for the cycle search (> 0).  A search cut short keeps what it found: its orders get
        status ``"cut"`` (their counts are lower bounds, with a warning), report no event, and the next step
        continues from what was found.
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
        Smallest relative change of the training loss that can count as a jump (1.0: doubling or halving), on
        top of being a robust outlier (z > 5) against the run's own changes at the same time scale.  Per-batch
        losses under teacher forcing routinely move by ±50 % from one step to the next.
    jump_scales : sequence of int
        Time scales, in steps, at which loss jumps are looked for (``loss_jumps.DEFAULT_JUMP_SCALES``: 1, 3, 10
        and 30): a change of the mean log-loss of ``h`` steps against the ``h`` before, judged against the run's
        own changes at that scale, so a fall spread over 25 steps counts as well as a one-step jump.
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
        gradient norm, and a worker analyses them while training goes on, all the snapshots that wait in one
        batch (the records are those of analysing them one at a time); results are logged at the step they
        belong to as soon as they are ready.  When the module trains on a GPU the worker analyses on that GPU
        (``finder_kwargs["device"]`` overrides).  ``"sync"``: the analysis runs inside ``on_train_batch_end``
        and training waits for it.  ``"auto"`` (default) is async when the worker gets a core of its own:
        more CPUs available to the process (``os.sched_getaffinity``) than training keeps busy (its processes,
        ``trainer.num_devices``, times torch's intra-op threads when training on the CPU), or training on a
        GPU.  When torch's threads take every core (its default) and there are two or more per process, "auto"
        lowers training's intra-op threads by one for the fit (restored at teardown; said on rank zero and in
        the summary's ``training_threads``) and runs async; with a single core per process it is sync.  The
        worker process starts at ``setup``.  Only global rank zero runs a worker.
    worker : {"process", "thread"}
        In async mode: a worker process (default; its own interpreter and CPU thread, so it shares no GIL with
        training) or a thread of the training process.  On Linux, with the analysis on the CPU, the process
        is forked from training at ``setup`` and has the model as it is; otherwise (and for a restarted
        worker) it is a fresh interpreter, to which a model class defined in the training script
        (``__main__``) is sent by value, and a model that cannot be pickled at all is analysed in a thread,
        with a warning (``runner.ProcessRunner``'s ``start_method``).
    queue_size : int or None
        In async mode.  None (default): every monitored step is analysed; a worker that falls behind catches up
        in batches, and the end of fit waits for it (``drain_timeout_s``).  An int opts into latest wins: when
        the worker gets to the waiting snapshots it analyses at most the newest ``queue_size`` of them and drops
        the older ones, counted as ``bifurcation/dropped``; the next analysed step is compared with the last
        analysed one, so its events' brackets cover the dropped steps.
    drain_timeout_s : float or None
        In async mode: how long the end of fit waits for the snapshots still queued before the summary is
        written; what is left is counted as dropped, with a warning.  None waits for all of them.  It also
        bounds how long a worker process may take for the fit-end figures after fit (60 s when None).  When the
        worker falls behind, the monitor warns while training runs (once per fit) if the queue's growth projects a
        fit-end wait over this timeout or 30 s, and names the options (``every_n_steps``, ``queue_size``).
    verbose : bool
        Print a one-line summary at the end of fit on rank zero (``rank_zero_info``, like Lightning's
        ModelCheckpoint / EarlyStopping): events by kind, loss jumps, how many have an event nearby, the
        p-value, the monitored steps analysed / skipped / dropped, and the monitor's overhead: its measured
        cost to training (its hooks, the fit-end wait, and the slowdown of training steps while a worker
        analyses beside them, compared with steps while it idles; a worker that never idles is made to idle
        once, for a few steps, by holding new snapshots back, none dropped), and when "auto" lowered
        training's threads, what that cost or saved (a few steps timed with the user's threads while the
        worker idles).

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
        jump_scales: tuple[int, ...] = DEFAULT_JUMP_SCALES,
        max_tracked_cycles: int = 8,
        max_attractor_period: int = 256,
        localize_events: bool = False,
        seed: int = 0,
        show_all_events: bool = False,
        mode: str = "auto",
        worker: str = "process",
        queue_size: int | None = None,
        drain_timeout_s: float | None = 60.0,
        verbose: bool = True,
    ) -> None:
        self.max_order, max_order_warning = require_monitor_max_order(
            max_order, chains=math.prod(THOROUGH_SEARCH.values()), owner=_OWNER)
        every_n_steps = require_int("every_n_steps", every_n_steps, 1, optional=True, owner=_OWNER)
        self.every_n_epochs = require_int("every_n_epochs", every_n_epochs, 1, optional=True, owner=_OWNER)
        if every_n_steps is not None and self.every_n_epochs is not None:
            raise ValueError(
                f"{_OWNER}: every_n_steps and every_n_epochs are mutually exclusive, got every_n_steps={every_n_steps}"
                f" and every_n_epochs={self.every_n_epochs}; pass one of them"
            )
        self.every_n_steps = 1 if every_n_steps is None and self.every_n_epochs is None else every_n_steps
        self.model_attr = require_text("model_attr", model_attr, optional=True, owner=_OWNER)
        self.finder_kwargs = check_finder_kwargs(finder_kwargs, owner=_OWNER)
        device = self.finder_kwargs.get("device")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{_OWNER}: finder_kwargs['device'] is {device}, but CUDA is not available on this machine")
        self.time_budget_s = require_real(
            "time_budget_s", time_budget_s, minimum=0.0, exclusive_minimum=True, optional=True, owner=_OWNER
        )
        self.loss_key = require_text("loss_key", loss_key, owner=_OWNER)
        self.log_figures_every_n_steps = require_int("log_figures_every_n_steps", log_figures_every_n_steps, 0, owner=_OWNER)
        if jsonl_path is not None and not isinstance(jsonl_path, Path):
            jsonl_path = require_text("jsonl_path", jsonl_path, owner=_OWNER)
        self.jsonl_path = jsonl_path
        jump_window = require_int("jump_window", jump_window, 0, optional=True, owner=_OWNER)
        # With every_n_epochs the default is resolved at fit end, from the steps actually analysed.
        self.jump_window = 5 * self.every_n_steps if jump_window is None and self.every_n_steps else jump_window
        self.jump_warmup_steps = require_int("jump_warmup_steps", jump_warmup_steps, 0, owner=_OWNER)
        self.jump_min_change = require_real("jump_min_change", jump_min_change, minimum=0.0, owner=_OWNER)
        self.jump_scales = require_int_sequence("jump_scales", jump_scales, 1, owner=_OWNER)
        self.max_tracked_cycles = require_int("max_tracked_cycles", max_tracked_cycles, 0, owner=_OWNER)
        self.max_attractor_period = require_int("max_attractor_period", max_attractor_period, 0, owner=_OWNER)
        self.localize_events = require_bool("localize_events", localize_events, owner=_OWNER)
        self.seed = require_int("seed", seed, 0, owner=_OWNER)
        self.show_all_events = require_bool("show_all_events", show_all_events, owner=_OWNER)
        self.mode = require_choice("mode", mode, MODES, owner=_OWNER)
        self.worker = require_choice("worker", worker, WORKER_KINDS, owner=_OWNER)
        self.queue_size = require_int("queue_size", queue_size, 1, optional=True, owner=_OWNER)
        self.drain_timeout_s = require_real("drain_timeout_s", drain_timeout_s, minimum=0.0, optional=True, owner=_OWNER)
        self.verbose = require_bool("verbose", verbose, owner=_OWNER)
        if max_order_warning is not None:
            warn_once(set())("max_order", max_order_warning)
        self.summary: dict[str, Any] | None = None
        self.log_dir: str | None = None  # where events.jsonl and summary.json go; set at fit start
        self._session: MonitorSession | None = None
        self._restored: dict[str, Any] | None = None  # a checkpoint's state loaded before setup
        self._warned: set[str] = set()
        self._rnn: Any = None
        self._module: Any = None  # the LightningModule, read for bifurcation_reference_states
        self._state_key_inputs: tuple[Any, ...] | None = None
        self._state_key = ""
        self._pending_grad_norm: float | None = None
        self._parameters: list[Any] | None = None
        self._threads_before: int | None = None  # torch's intra-op threads before "auto" gave the worker a core

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
        if stage != "fit":
            return
        self._module = pl_module
        self._rnn = _trainer.find_rnn(pl_module, self.model_attr)
        # A model whose affine_pieces disagrees with its step would give wrong (usually empty) cycle sets at every
        # step without any error: fail before training starts, like a misconfigured callback.
        try:
            check_protocol(self._rnn)
        except ValueError as error:
            raise ValueError(f"BifurcationMonitor: {error}") from None
        if trainer is None or not trainer.is_global_zero:
            return
        mode, threads, warning = _trainer.resolve_mode(trainer, self.mode, self.worker)
        if warning is not None:
            self._warn("threads", f"{_OWNER}: {warning}")
        if threads is not None and self._threads_before is None:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
            if self.verbose:
                rank_zero_info(f"{_OWNER}: training uses {threads} torch thread(s) instead of {self._threads_before} "
                               "during fit, so that the analysis has a core of its own (mode='sync' or 'async' keeps "
                               "torch's setting)")
        # The worker process starts now, before the first snapshot (a fresh interpreter needs 1-2 s for torch).
        self._session = MonitorSession.open(self._settings(), self._rnn, device=_trainer.training_device(trainer),
                                            mode=mode, warn=self._warn, previous=self._session,
                                            stop=lambda: bool(getattr(trainer, "received_sigterm", False)))
        self._session.training_threads = None if self._threads_before is None else (self._threads_before, threads)
        if self._restored is not None:  # restored before setup (Lightning restores after it)
            self._session.load_state_dict(self._restored)
            self._restored = None

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        root = trainer.log_dir if self.jsonl_path is None else None  # a collective under DDP: every rank asks
        if not trainer.is_global_zero or self._session is None:
            return
        self._parameters = None
        if self.jsonl_path is not None:
            folder, name = Path(self.jsonl_path).parent, Path(self.jsonl_path).name
        else:
            if root is None:  # a logger without a folder of its own (no save_dir): Lightning's default root
                root = fresh_run_dir(trainer.default_root_dir)
            folder, name = (Path(root) if trainer.loggers else fresh_run_dir(root)), "events.jsonl"
        self.log_dir = str(folder)
        layout = custom_scalars_layout("bifurcation/loss", range(1, self.max_order + 1))
        self._session.start_fit(Dashboard(trainer.loggers, folder, name), layout, _trainer.last_step(trainer))

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if trainer.is_global_zero and self._session is not None:
            started = time.perf_counter()
            if self._parameters is None:  # listed once a fit: walking the module tree each step costs more
                self._parameters = list(pl_module.parameters())
            self._pending_grad_norm = gradient_norm(self._parameters)
            self._session.overhead.hook_seconds += time.perf_counter() - started

    @override
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self._session is not None and self._session.has_unpublished:
            started = time.perf_counter()
            self._session.publish()
            self._session.overhead.hook_seconds += time.perf_counter() - started

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        session = self._session
        if session is None or trainer.sanity_checking or not trainer.is_global_zero or _trainer.accumulating(trainer, pl_module):
            return
        step = _trainer.lightning_step(trainer)
        if session.history and session.history[-1][0] == step:
            return  # several optimizers, or manual optimization: one record per logged step
        started = time.perf_counter()
        session.step_ended(started)
        loss = finite_or_none(_trainer.step_loss(trainer, outputs, self.loss_key))
        session.note_step(step, loss, finite_or_none(self._pending_grad_norm))
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            self._submit(step)
        session.collect()  # in sync mode the step's own result: logged before the next backward pass
        session.hook_ended(started)

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        session = self._session
        if session is None or self.every_n_epochs is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs or not session.history:
            return
        step = int(session.history[-1][0])  # the epoch's last optimizer step: the same step convention
        if session.monitored(step):
            return  # analysed already (an epoch of batches that never stepped the optimizer)
        started = time.perf_counter()
        self._submit(step)
        session.collect()
        session.hook_ended(started)

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._session is None or not trainer.is_global_zero or self._session.dashboard is None:
            return
        summary = self._session.finish()
        if summary is not None:
            self.summary = summary
            if self.verbose:
                rank_zero_info(summary_line(summary, show_all_events=self.show_all_events))

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # an interrupted fit must not leave a worker process behind

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        if self._session is not None:
            self._session.close_runner()
            if self._session.dashboard is not None:
                self._session.dashboard.close_files()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._session is None:  # saved before fit started: what was restored, unchanged
            return dict(self._restored or {})
        return self._session.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._session is not None:  # Lightning restores callbacks after setup: the session is open already
            self._session.load_state_dict(state_dict)
        else:
            self._restored = state_dict

    # ------------------------------------------------------------------------------------------ public results

    @property
    def session(self) -> MonitorSession | None:
        """The run's account on global rank zero: records, history, counts, where the analysis runs and what it
        cost (None before the first fit's ``setup`` and on other ranks)."""
        return self._session

    @property
    def active_mode(self) -> str | None:
        """``"async"`` or ``"sync"`` once fit has started (``"auto"`` resolved; ``"sync"`` after a fallback)."""
        return self._session.mode if self._session is not None else None

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per analysed or skipped step (as written to ``events.jsonl``), in step order."""
        return [record.to_json() for record in self._session.records] if self._session is not None else []

    @property
    def events(self) -> list[BifurcationEvent]:
        """All verified bifurcation events so far, in step order."""
        return self._session.events if self._session is not None else []

    @property
    def cycles(self) -> CycleSet | None:
        """The cycle set of the last analysed step."""
        return self._session.cycles if self._session is not None else None

    @property
    def n_skipped(self) -> int:
        return self._session.n_skipped if self._session is not None else 0

    @property
    def dropped_steps(self) -> list[int]:
        """Monitored steps never analysed: with the latest-wins ``queue_size`` the worker dropped them, or the
        fit-end drain timed out.  Each lies inside the step bracket of the next analysed step."""
        return list(self._session.dropped) if self._session is not None else []

    @property
    def worker_processes(self) -> list[int]:
        """The process ids of every worker process this monitor started (empty in sync mode)."""
        return self._session.worker_processes() if self._session is not None else []

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
        runner = self._session.closed_runner if self._session is not None else None
        return runner is None or runner.wait_closed(timeout_s)

    # ------------------------------------------------------------------------------------------ wiring

    def _settings(self) -> SessionSettings:
        return SessionSettings(
            max_order=self.max_order, every_n_steps=self.every_n_steps, every_n_epochs=self.every_n_epochs,
            jump_window=self.jump_window, jump_warmup_steps=self.jump_warmup_steps, jump_min_change=self.jump_min_change,
            jump_scales=self.jump_scales, log_figures_every_n_steps=self.log_figures_every_n_steps,
            max_attractor_period=self.max_attractor_period, show_all_events=self.show_all_events, seed=self.seed,
            max_tracked_cycles=self.max_tracked_cycles, finder_kwargs=self.finder_kwargs, time_budget_s=self.time_budget_s,
            localize_events=self.localize_events, worker=self.worker, queue_size=self.queue_size,
            drain_timeout_s=self.drain_timeout_s,
        )

    def _submit(self, step: int) -> None:
        """Snapshot the RNN at ``step`` (a copy unless it is analysed at once) and hand it over."""
        session = self._session
        loss, grad_norm = session.history[-1][1], session.history[-1][2]
        try:
            reference = _trainer.reference_states(self._module, self._rnn.state_dim)
        except Exception as error:
            self._warn("reference states", f"BifurcationMonitor ignores the module's reference states: {error}")
            reference = None
        try:
            snapshot = take_snapshot(self._rnn, step, loss=loss, grad_norm=grad_norm, reference=reference,
                                     copy=not isinstance(session.runner, InlineRunner))
        except Exception as error:  # the monitor must never take the training run down
            session.record_skip(step, loss, f"{type(error).__name__}: {error}")
            return
        session.submit(snapshot)

    def _warn(self, category: str, message: str) -> None:
        warn_once(self._warned)(category, message)
