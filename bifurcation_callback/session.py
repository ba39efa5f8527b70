"""MonitorSession: the account of one monitored training run, without Lightning.

The callback hands the session what happens in training (a step with its loss, a snapshot to analyse, the end
of fit); the session submits snapshots to its :class:`~bifurcation_callback.runner.Runner`, turns the runner's
outcomes into :class:`~bifurcation_callback.analysis.StepRecord` objects in step order, counts what was analysed,
skipped and dropped (one vocabulary, one place), writes through the :class:`~bifurcation_callback.dashboard.Dashboard`
and at the end computes the summary, including the monitor's real cost to training (:class:`OverheadAccount`).
Everything here is testable with a bare analyser and no Trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .analysis import Snapshot, StepAnalyser, StepRecord, StepResult
from .bifurcations import BIFURCATION_KINDS, BifurcationEvent
from .cycles import CycleSet
from .dashboard import Dashboard, events_markdown, fold_events, running_scalars, summary_scalars, summary_markdown
from ._pace import PaceWatch, step_spans
from ._trainer import user_stacklevel
from .loss_jumps import summarise_run
from .runner import InlineRunner, Outcome, ProcessRunner, RenderJob, Runner

__all__ = ["MonitorSession", "OverheadAccount", "SessionSettings"]

# At most this many accepted results wait for a backward pass to be logged in (see MonitorSession.publish).
MAX_UNPUBLISHED = 4

# Fewer training steps than this with the worker idle (or working) leave the contention unmeasured.
MIN_STEPS_FOR_CONTENTION = 8
# A worker that has not idled once in this many training steps is made to idle (new snapshots held back, not
# dropped) for MIN_STEPS_FOR_CONTENTION steps, once per fit: else the slowdown beside it stays unmeasured.
PROBE_AFTER_BUSY_STEPS = 30
# A probe that has not seen enough idle steps after this many training steps gives up (the snapshots go on).
PROBE_MAX_STEPS = 1000
# The first steps of a fit are slower (allocations, caches) and the worker idles through them waiting for its
# first batch: timed as idle steps they made the contention of a never-idling worker look like none.
ACCOUNT_WARMUP_STEPS = 10

# How long a worker process may take to write the fit-end figures after fit (with drain_timeout_s=None).
FIGURES_TIMEOUT_S = 60.0
# A projected fit-end wait longer than this (or than drain_timeout_s) is warned about while training runs.
PACE_WARN_WAIT_S = 30.0


@dataclasses.dataclass(frozen=True)
class SessionSettings:
    """The monitor's arguments the session needs (validated by ``BifurcationMonitor``)."""

    max_order: int
    every_n_steps: int | None
    every_n_epochs: int | None
    jump_window: int | None
    jump_warmup_steps: int
    jump_min_change: float
    jump_scales: tuple[int, ...]
    log_figures_every_n_steps: int
    max_attractor_period: int
    show_all_events: bool
    seed: int
    max_tracked_cycles: int = 8
    finder_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    time_budget_s: float | None = None
    localize_events: bool = False
    worker: str = "process"
    queue_size: int | None = None
    drain_timeout_s: float | None = 60.0


class OverheadAccount:
    """What the monitor costs training, measured where training runs.

    Three parts: the monitor's own time on the training thread (``hook_seconds``: hooks, and in sync mode the
    analysis itself), the fit-end wait for the last analyses and figures (``drain_seconds``), and the
    slowdown of training while a worker analyses beside it (``contention_seconds``): every training step is
    timed, and the steps taken while the worker worked are compared with those taken while it idled (medians,
    the monitor's own hook time taken out).  When training took too few steps of either kind the contention is
    unknown (None) and the overhead counts the first two parts only (a lower bound, said so in the summary).

    When "auto" gave training fewer torch threads for the fit (``thread_change``), a fourth part: what that
    change itself cost or saved (``thread_change_seconds``, negative when training ran faster on fewer
    threads), from steps taken with the user's own threads while the worker idled, against idle steps with the
    fit's threads, over every step taken with the fit's threads.  Unmeasured, it is left out and the summary
    says so.

    Examples
    --------
    >>> account = OverheadAccount()
    >>> for busy in [False] * 10 + [True] * 10:
    ...     account.step(0.11 if busy else 0.10, busy=busy, hook_s=0.0)
    >>> round(account.contention_seconds, 3)
    0.1
    >>> account.thread_change = True  # 10 idle steps of 0.10 s with the fit's threads, 0.12 s with the user's
    >>> for _ in range(10):
    ...     account.step(0.12, busy=False, hook_s=0.0, user_threads=True)
    >>> round(account.thread_change_seconds, 3)  # the 20 steps with the fit's threads saved 0.02 s each
    -0.4
    """

    def __init__(self) -> None:
        self.hook_seconds = 0.0
        self.drain_seconds = 0.0
        self.fit_seconds = 0.0
        self.thread_change = False  # training runs with other torch threads than the user's during the fit
        self.previous_fits = {"hook": 0.0, "drain": 0.0, "fit": 0.0, "contention": 0.0, "threads": 0.0}
        self._busy: list[float] = []
        self._idle: list[float] = []
        self._user_threads: list[float] = []  # idle steps with the user's own threads

    def step(self, seconds: float, *, busy: bool, hook_s: float, user_threads: bool = False) -> None:
        """One training step took ``seconds`` (between two batch ends), ``hook_s`` of them in the monitor;
        ``user_threads``: with the user's torch threads, not the fit's."""
        if user_threads:
            if not busy:  # beside a busy worker the user's threads measure contention, not their own speed
                self._user_threads.append(max(seconds - hook_s, 0.0))
            return
        (self._busy if busy else self._idle).append(max(seconds - hook_s, 0.0))

    @property
    def n_idle_steps(self) -> int:
        return len(self._idle)

    @property
    def n_busy_steps(self) -> int:
        return len(self._busy)

    @property
    def n_user_thread_steps(self) -> int:
        return len(self._user_threads)

    @property
    def contention_seconds(self) -> float | None:
        if not self._busy:
            return 0.0
        if len(self._idle) < MIN_STEPS_FOR_CONTENTION or len(self._busy) < MIN_STEPS_FOR_CONTENTION:
            return None
        slowdown = statistics.median(self._busy) - statistics.median(self._idle)
        return max(slowdown, 0.0) * len(self._busy)

    @property
    def thread_change_seconds(self) -> float | None:
        """What the fit's torch threads cost training against the user's (negative: saved); 0 without a thread
        change, None while unmeasured."""
        if not self.thread_change:
            return 0.0
        if len(self._user_threads) < MIN_STEPS_FOR_CONTENTION or len(self._idle) < MIN_STEPS_FOR_CONTENTION:
            return None
        per_step = statistics.median(self._idle) - statistics.median(self._user_threads)
        return per_step * (len(self._busy) + len(self._idle))

    def fields(self, fit_seconds: float) -> dict[str, Any]:
        """The summary's timing fields over every fit of the run (a resumed run's earlier fits included)."""
        contention, threads = self.contention_seconds, self.thread_change_seconds
        hook = self.previous_fits["hook"] + self.hook_seconds
        drain = self.previous_fits["drain"] + self.drain_seconds
        fit = self.previous_fits["fit"] + fit_seconds
        measured = self.previous_fits["contention"] + (contention or 0.0)
        thread_change = self.previous_fits["threads"] + (threads or 0.0)
        cost = hook + drain + measured + thread_change
        # fit_seconds ends where the drain begins, so training alone took fit + drain - cost.
        without_monitor = fit + drain - cost
        return {
            "monitor_seconds": hook,
            "drain_seconds": drain,
            "contention_seconds": None if contention is None else measured,
            "thread_change_seconds": None if threads is None else thread_change,
            "fit_seconds": fit,
            "monitor_overhead": cost / without_monitor if without_monitor > 1e-3 * max(fit, 1e-9) else None,
            "overhead_is_lower_bound": contention is None,
            "steps_with_worker_busy": len(self._busy),
            "steps_with_worker_idle": len(self._idle),
            "steps_with_user_threads": len(self._user_threads),
        }

    def state_dict(self, fit_seconds: float) -> dict[str, float]:
        fields = self.fields(fit_seconds)
        return {"hook": fields["monitor_seconds"], "drain": fields["drain_seconds"], "fit": fields["fit_seconds"],
                "contention": fields["contention_seconds"] or 0.0, "threads": fields["thread_change_seconds"] or 0.0}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.previous_fits = {key: float(state.get(key, 0.0)) for key in ("hook", "drain", "fit", "contention", "threads")}


class MonitorSession:
    """One monitored run: submissions, outcomes, records, publishing and the summary.

    Parameters
    ----------
    settings : SessionSettings
    analyser : StepAnalyser
        The analysis (a worker process gets a copy; after the worker stops this one takes its state over).
    runner : Runner
        Where the analysis runs.
    dashboard : Dashboard or None
        Where records go (None: nowhere yet, e.g. before fit start).
    warn : callable
        ``warn(category, message)``: the monitor warns once per category.
    """

    def __init__(self, settings: SessionSettings, analyser: StepAnalyser | None, runner: Runner | None,
                 dashboard: Dashboard | None, warn: Callable[[str, str], None]) -> None:
        self.settings = settings
        self.analyser = analyser
        self.runner = runner
        self.dashboard = dashboard
        self.warn = warn
        self.start_error = ""
        self.records: list[StepRecord] = []
        # [step, loss, grad norm] of every training step: loss jumps are found at full resolution even when the
        # cycle search runs only every n steps.
        self.history: list[list[float | None]] = []
        self.skip_reasons: Counter[str] = Counter()
        self.dropped: list[int] = []
        self.n_events = 0
        self.overhead = OverheadAccount()
        self._training_threads: tuple[int, int] | None = None
        self.last: tuple[Snapshot | None, StepResult] | None = None
        self.restored_cycles: CycleSet | None = None
        self.runner_summaries: list[dict[str, Any]] = []
        self.mode = "sync" if isinstance(runner, InlineRunner) or runner is None else "async"
        self.closed_runner: Runner | None = None
        self._unpublished: list[Callable[[], None]] = []
        self._fit_started: float | None = None
        self._restored_analysis: tuple[dict[str, Any], list[Snapshot]] | None = None
        # (time, hook seconds, worker busy, user's threads) at the last batch end
        self._step_clock: tuple[float, float, bool, bool] | None = None
        self._held: list[Snapshot] = []  # snapshots held back while the worker idles for a probe
        # "waiting", then "holding" (since step count _probe_since), "user_threads" (training on the user's torch
        # threads while the worker idles, after a thread change only), then "done".
        self._probe = "waiting"
        self._probe_since = 0
        self.pace: PaceWatch | None = None  # a worker that falls behind is told about once per fit
        self.warmup_steps = ACCOUNT_WARMUP_STEPS  # steps of a fit left out of the step-time account
        self._steps_this_fit = 0

    @property
    def training_threads(self) -> tuple[int, int] | None:
        """(torch threads before, during fit) when "auto" made room for the worker, else None."""
        return self._training_threads

    @training_threads.setter
    def training_threads(self, threads: tuple[int, int] | None) -> None:
        self._training_threads = threads
        self.overhead.thread_change = threads is not None and threads[0] != threads[1]

    @classmethod
    def open(cls, settings: SessionSettings, rnn: Any, *, device: Any, mode: str, warn: Callable[[str, str], None],
             previous: MonitorSession | None = None, stop: Callable[[], bool] | None = None) -> MonitorSession:
        """A session for a fit: the analyser of ``rnn`` (continuing from ``previous``, a finished fit of the same
        monitor), analysed in ``mode`` (``"sync"`` or ``"async"``; on the GPU when ``device`` is CUDA).  The worker
        process starts at once; a model that cannot be analysed gets every step skipped.  ``stop()`` is asked
        during an analysis in this process (sync mode): True interrupts it (the step is skipped)."""
        session = cls(settings, None, None, None, warn)
        if previous is not None:  # a second fit with the same monitor continues from the first one's last step
            session.records, session.history, session.dropped = previous.records, previous.history, previous.dropped
            session.skip_reasons, session.n_events, session.last = previous.skip_reasons, previous.n_events, previous.last
            session.overhead.load_state_dict(previous.overhead.state_dict(0.0))
        finder_kwargs = dict(settings.finder_kwargs)
        if getattr(device, "type", "cpu") == "cuda" and "device" not in finder_kwargs:  # the training GPU (more search)
            finder_kwargs["device"] = device
        try:
            session.analyser = StepAnalyser(
                rnn, max_order=settings.max_order, max_tracked_cycles=settings.max_tracked_cycles, seed=settings.seed,
                finder_kwargs=finder_kwargs, time_budget_s=settings.time_budget_s,
                localize_events=settings.localize_events, max_attractor_period=settings.max_attractor_period,
            )
            if previous is not None and previous.analyser is not None:
                session.analyser.load_state_dict(previous.analyser.state_dict())
            session.analyser.stop = stop
        except Exception as error:  # e.g. a model that cannot be copied: every step is skipped, training goes on
            session.start_error = f"{type(error).__name__}: {error}"
            warn("no analysis", f"BifurcationMonitor cannot analyse this model ({session.start_error}); every monitored step is skipped")
            return session
        if mode == "sync":
            session.runner = InlineRunner(session.analyser)
            return session
        session.runner = ProcessRunner(session.analyser, kind=settings.worker, queue_size=settings.queue_size)
        session.mode = "async"
        try:
            session.runner.start()
        except Exception as error:  # never into training: analyse in sync instead
            session.fall_back(f"BifurcationMonitor's worker failed ({type(error).__name__}: {error}); the rest of the "
                              "run is analysed on the training thread (mode='sync')")
        return session

    # ------------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the records, the loss history, the counts, the analyser's state after the last
        analysed step and every snapshot not analysed yet (so no step is lost or analysed twice)."""
        self.collect()  # what is finished becomes records; the rest is saved as pending snapshots
        self.publish()  # the run folder holds what the checkpoint holds
        if self._restored_analysis is not None:  # saved before fit start: what was restored, unchanged
            analyser_state, pending = self._restored_analysis
        elif self.runner is not None:
            # A probe's held snapshots are saved with the rest (a checkpoint holds every step not analysed yet)
            # and stay held: checkpoints every few steps must not keep a probe from ever measuring.
            analyser_state, pending = self.runner.state, [*self.runner.pending(), *self._held]
        else:
            analyser_state, pending = self.analyser.state_dict() if self.analyser else {}, []
        return {
            "tracker": analyser_state.get("tracker"),
            "attractor": analyser_state.get("attractor"),
            "pending": [snapshot.to_dict() for snapshot in pending],
            "records": [record.to_json() for record in self.records],
            "history": self.history,
            "skip_reasons": dict(self.skip_reasons),
            "dropped": list(self.dropped),
            "overhead": self.overhead.state_dict(self.fit_elapsed()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output: the records and counts now, the analyser's state and the pending
        snapshots when the fit starts (:meth:`start_fit`)."""
        # Checkpoints written before the tracker was split out hold its fields at the top level.
        tracker = state.get("tracker", state)
        previous = (tracker or {}).get("previous")
        self.records = [StepRecord.from_json(record) for record in state.get("records", [])]
        self.history = [list(entry) for entry in state.get("history", [])]
        self.skip_reasons = Counter(state.get("skip_reasons", {}))
        self.dropped = [int(step) for step in state.get("dropped", [])]
        self.overhead.load_state_dict(state.get("overhead") or {})
        self.restored_cycles = CycleSet.from_dict(previous) if previous is not None else None
        self.n_events = sum(len(r.verified_events) for r in self.records)
        pending = [Snapshot.from_dict(entry) for entry in state.get("pending", [])]
        self._restored_analysis = ({"tracker": tracker, "attractor": state.get("attractor")}, pending)

    def start_fit(self, dashboard: Dashboard, layout: dict[str, Any], last_step: int | None = None) -> None:
        """Fit start: the dashboard (with its layout), the records written afresh (a resumed run's replace what the
        interrupted run wrote after its checkpoint), and a restored analyser state with its pending snapshots.
        ``last_step``: the fit's last step, for the projection of the fit-end wait (``_pace``)."""
        self._fit_started, self._step_clock, self._steps_this_fit = time.perf_counter(), None, 0
        every, latest_wins = self.settings.every_n_steps, self.settings.queue_size is not None
        self.pace = PaceWatch(last_step, every) if every and not latest_wins and self.mode == "async" else None
        self.dashboard = dashboard
        dashboard.log_layout(layout)
        restored, self._restored_analysis = self._restored_analysis, None
        dashboard.rewrite_records([r.to_json() for r in self.records], resumed=restored is not None)
        if restored is not None and self.runner is not None:
            self.runner.load_state(restored[0])
            for snapshot in restored[1]:  # steps a checkpoint saved before they were analysed: none is lost
                self.submit(snapshot)

    # ------------------------------------------------------------------------------------------ training

    def fit_elapsed(self) -> float:
        return 0.0 if self._fit_started is None else time.perf_counter() - self._fit_started

    def step_ended(self, now: float) -> None:
        """Account the training step that just ended: its duration, the monitor's hooks in it, and whether a
        worker was analysing meanwhile (``OverheadAccount``)."""
        if self._step_clock is not None:
            then, hook_then, busy, user_threads = self._step_clock
            self._steps_this_fit += 1
            if self._steps_this_fit > self.warmup_steps:
                self.overhead.step(now - then, busy=busy, hook_s=self.overhead.hook_seconds - hook_then,
                                   user_threads=user_threads)

    def hook_ended(self, started: float) -> None:
        """The monitor's batch-end hook that began at ``started`` is done: its time, and the clock of the next step."""
        self._steer_probe(self.runner)
        runner = self.runner  # after the probe: handing held snapshots over can fall back to sync
        now = time.perf_counter()
        self.overhead.hook_seconds += now - started
        worker = runner is not None and not isinstance(runner, InlineRunner)
        busy = worker and (runner.working or runner.starting)
        self._step_clock = (now, self.overhead.hook_seconds, busy, self._probe == "user_threads")
        if self.pace is not None and worker and self.history:
            projection = self.pace.sample(int(self.history[-1][0]), runner.n_waiting + len(self._held), now)
            timeout = self.settings.drain_timeout_s
            if projection is not None and projection.wait_seconds > min(PACE_WARN_WAIT_S, math.inf if timeout is None else timeout):
                self.warn("pace", projection.message(timeout))
                self.pace = None  # once per fit

    def _steer_probe(self, runner: Runner | None) -> None:
        """Once per fit, hold new snapshots back while the worker finishes what it has, so that training's step
        time beside an idle worker is measured too: when the worker never idles, and after "auto" changed
        training's threads, to time a few steps with the user's own threads (``OverheadAccount``); then hand the
        snapshots over, oldest first."""
        account = self.overhead
        steps = account.n_busy_steps + account.n_idle_steps + account.n_user_thread_steps
        if self._probe == "waiting":
            never_idled = account.n_idle_steps < MIN_STEPS_FOR_CONTENTION and account.n_busy_steps >= PROBE_AFTER_BUSY_STEPS
            threads_unmeasured = account.thread_change and steps >= PROBE_AFTER_BUSY_STEPS
            if runner is not None and not isinstance(runner, InlineRunner) and not runner.starting and (never_idled or threads_unmeasured):
                self._probe, self._probe_since = "holding", steps
                runner.flush()  # what it has is all it gets for a while: no waiting for a fuller batch
        elif self._probe == "done":
            return
        elif steps - self._probe_since >= PROBE_MAX_STEPS:
            self.release_held()
        elif self._probe == "holding" and account.n_idle_steps >= MIN_STEPS_FOR_CONTENTION:
            if not account.thread_change:
                self.release_held()
            elif not runner.working:  # the user's threads beside a working one would measure contention
                self._probe = "user_threads"
                torch.set_num_threads(self.training_threads[0])
        elif self._probe == "user_threads" and account.n_user_thread_steps >= MIN_STEPS_FOR_CONTENTION:
            self.release_held()

    def release_held(self) -> None:
        """End a probe: training's threads back to the fit's, the held snapshots to the runner, oldest first."""
        if self._probe == "user_threads":
            torch.set_num_threads(self.training_threads[1])
        if self._probe in ("holding", "user_threads"):
            self._probe = "done"
        held, self._held = self._held, []
        for snapshot in held:
            self.submit(snapshot)

    def monitored(self, step: int) -> bool:
        """Whether ``step`` was handed to the analysis already (analysed, waiting or dropped)."""
        pending = {s.step for s in self.runner.pending()} if self.runner is not None else set()
        return step in {r.step for r in self.records} | pending | set(self.dropped) | {s.step for s in self._held}

    def note_step(self, step: int, loss: float | None, grad_norm: float | None) -> None:
        self.history.append([step, loss, grad_norm])

    def submit(self, snapshot: Snapshot) -> None:
        """Hand a step's snapshot to the runner (a failing worker machinery falls back to sync)."""
        if self._probe in ("holding", "user_threads") and not isinstance(self.runner, InlineRunner):
            self._held.append(snapshot)
            return
        if self.runner is None:  # the analyser could not be built at fit start (the warning said why)
            self.record_skip(snapshot.step, snapshot.loss, f"no analysis: {self.start_error}")
            return
        try:
            self.runner.submit(snapshot)
        except Exception as error:  # the worker's own machinery (sockets, processes) failed: go on in sync
            self.fall_back(f"BifurcationMonitor's worker failed ({type(error).__name__}: {error}); the rest of the "
                           "run is analysed on the training thread (mode='sync')", extra=[snapshot])

    def collect(self) -> None:
        """Take what the runner finished (never blocks)."""
        if self.runner is None:
            return
        try:
            outcomes = self.runner.poll()
        except Exception as error:  # never into training: the rest of the run is analysed in sync
            self.fall_back(f"BifurcationMonitor's worker failed ({type(error).__name__}: {error}); the rest of the "
                           "run is analysed on the training thread (mode='sync')")
            return
        for outcome in outcomes:
            self.accept(outcome)

    def accept(self, outcome: Outcome) -> None:
        """One outcome of the runner: a record, dropped steps, figures, a note or the worker's fallback."""
        try:
            if outcome.kind == "result":
                self._accept_result(outcome)
            elif outcome.kind == "dropped":
                self.dropped.extend(outcome.steps)
            elif outcome.kind == "figures":  # PNG-encoded and checksummed by TensorBoard: logged like results
                self._publish_later(functools.partial(self.dashboard.log_images, outcome.images, outcome.step))
            elif outcome.kind == "note":
                self.warn(outcome.category, outcome.message)
            elif outcome.kind == "fallback":
                self.fall_back(f"BifurcationMonitor: {outcome.message}")
        except Exception as error:  # publishing must not take the training run down either
            self.warn("publish", f"BifurcationMonitor could not log a result: {type(error).__name__}: {error}")

    def _accept_result(self, outcome: Outcome) -> None:
        record = outcome.result.record
        if record.skipped is None:
            now = self.history[-1][0] if self.history else record.step
            taken_at = outcome.snapshot.taken_at if outcome.snapshot is not None else time.perf_counter()
            record.lag_ms = 1e3 * (time.perf_counter() - taken_at)
            record.lag_steps = int(now) - record.step
        self.add_result(outcome.result, outcome.snapshot)

    def add_result(self, result: StepResult, snapshot: Snapshot | None = None) -> None:
        """A step's result: a skipped one is counted and written at once (``record_skip``); an analysed one is
        warned about, counted, and written at the next :meth:`publish` (figures requested every
        ``log_figures_every_n_steps`` records).  ``accept`` calls it for the runner's results (after measuring
        their lag behind training); ``offline.analyse_checkpoints`` for a finished run's."""
        record = result.record
        if record.skipped is not None:
            self.record_skip(record.step, record.loss, record.skipped, record=record)
            return
        for category, text in result.notes:
            self.warn(category, text)
        self.records.append(record)
        self.n_events += len(record.verified_events)
        self.last = (snapshot, result)
        running = running_scalars(record, n_events=self.n_events, n_skipped=self.n_skipped, n_dropped=len(self.dropped))
        started = time.perf_counter()
        every = self.settings.log_figures_every_n_steps
        if every and len(self.records) % every == 0:
            self.request_figures(record.step)
        record.figures_ms = 1e3 * (time.perf_counter() - started)
        self._publish_later(functools.partial(self._publish, record, running))

    def record_skip(self, step: int, loss: float | None, reason: str, *, record: StepRecord | None = None) -> None:
        self.publish()  # events.jsonl stays in step order
        category = reason.split(":")[0]
        self.skip_reasons[category] += 1
        self.warn(category, f"BifurcationMonitor skipped step {step}: {reason}")
        record = record or StepRecord(step, loss, skipped=reason)
        self.records.append(record)
        if self.dashboard is not None:
            self.dashboard.write_record(record.to_json())
            self.dashboard.log_scalars({"bifurcation/skipped": float(self.n_skipped)}, step)

    def fall_back(self, message: str, extra: list[Snapshot] = ()) -> None:
        """The worker gave up or its machinery failed: analyse what it did not finish, and the rest of the run,
        on the training thread."""
        runner = self.runner
        if runner is None or isinstance(runner, InlineRunner):
            return
        self.warn("worker fallback", message)
        for outcome in self._poll_quietly(runner):  # results that arrived before the failure come first
            if outcome.kind != "fallback":
                self.accept(outcome)
        snapshots, jobs = runner.take_pending()
        state = runner.state
        runner.close()
        self.runner_summaries.append({**runner.summary(), "fell_back_to_sync": True})
        self.analyser.load_state_dict(state)
        self.runner, self.mode = InlineRunner(self.analyser), "sync"
        for snapshot in [*snapshots, *extra]:
            self.runner.submit(snapshot)
        self.release_held()
        for job in jobs:
            self.runner.submit_job(job)
        self.collect()

    @staticmethod
    def _poll_quietly(runner: Runner) -> list[Outcome]:
        try:
            return runner.poll()
        except Exception:
            return []

    # ------------------------------------------------------------------------------------------ publishing

    def _publish_later(self, write: Callable[[], None]) -> None:
        self._unpublished.append(write)
        if len(self._unpublished) >= MAX_UNPUBLISHED:  # no backward comes (manual optimization without one)
            self.publish()

    @property
    def has_unpublished(self) -> bool:
        return bool(self._unpublished)

    @property
    def n_unpublished(self) -> int:
        """Accepted results (and figures) not yet written: they go out at the next backward pass."""
        return len(self._unpublished)

    def publish(self) -> None:
        """Write the accepted results (and figures) to the loggers and ``events.jsonl``, in step order.

        The callback calls this from ``on_before_backward`` rather than where the results arrive: TensorBoard's
        writer thread then computes its (pure-Python) checksums of these events while the backward pass runs
        without the GIL, instead of taking the GIL from the training thread.  Also before a skipped step's
        record, a checkpoint, and the summary at fit end, so nothing is lost or out of order.
        """
        pending, self._unpublished = self._unpublished, []
        for write in pending:
            try:
                write()
            except Exception as error:  # publishing must not take the training run down
                self.warn("publish", f"BifurcationMonitor could not log a result: {type(error).__name__}: {error}")

    def _publish(self, record: StepRecord, running: dict[str, float | None]) -> None:
        dashboard = self.dashboard
        if dashboard is None:
            return
        started = time.perf_counter()
        dashboard.log_scalars({**record.scalars(), **running}, record.step)
        shown = fold_events(record.verified_events, show_all=self.settings.show_all_events)[0]
        if shown:  # a step of folded crossings only: no text
            dashboard.log_text("bifurcation/events", events_markdown(record.verified_events, show_all=self.settings.show_all_events), record.step)
        record.publish_ms = 1e3 * (time.perf_counter() - started)
        dashboard.write_record(record.to_json())

    # ------------------------------------------------------------------------------------------ figures

    def request_figures(self, step: int, loss_jumps: list[dict[str, Any]] = (), *, log_dirs: tuple[str, ...] = ()) -> None:
        """The state space of the last analysed step (its cycles, the orbits under them, the step's reference
        states) and the timeline up to now, drawn where the analysis runs (with ``log_dirs`` a worker process
        writes them itself)."""
        dashboard = self.dashboard
        if dashboard is None or not dashboard.has_tensorboard or self.runner is None:
            return
        snapshot, result = self.last if self.last is not None else (None, None)
        arguments = {
            "cycles": self.cycles,
            # The timeline needs steps, cycle counts and events only: a slim copy keeps the job small.
            "records": [{"step": r.step, "n_cycles": {str(k): n for k, n in r.n_cycles.items()},
                         "events": r.verified_events} for r in self.records if r.skipped is None],
            "history": [list(entry) for entry in self.history],
            "loss_jumps": list(loss_jumps),
            "orbits": result.orbits if result is not None else [],
            "reference": snapshot.reference if snapshot is not None else None,
        }
        # Without the attractor analysis the orbits under the cycles are sampled from the step's model.
        sampled = snapshot if self.settings.max_attractor_period == 0 else None
        self.runner.submit_job(RenderJob(step, arguments, sampled, self.settings.seed, log_dirs))

    # ------------------------------------------------------------------------------------------ fit end

    def finish(self) -> dict[str, Any] | None:
        """Fit end: wait (at most ``drain_timeout_s``) for the analyses still running, write the summary and the
        fit-end figures, stop the worker.  Waiting is part of the fit's wall time the monitor costs.  Returns the
        summary (None when it could not be computed, with a warning)."""
        fit_seconds = self.fit_elapsed()
        started = time.perf_counter()
        self.release_held()
        self.drain()
        summary = None
        try:
            summary = self.summary(fit_seconds)
            if self.records and self.last is not None:  # a worker process writes them itself, after fit returns
                process = isinstance(self.runner, ProcessRunner) and self.runner.kind == "process"
                log_dirs = (self.dashboard.local_tensorboard_dirs() or ()) if process else ()
                self.request_figures(summary["final_step"] or 0, summary["loss_jumps"], log_dirs=log_dirs)
        except Exception as error:  # a broken summary must not hide the training result
            self.warn("summary", f"BifurcationMonitor could not write its summary: {error}")
        self.close_runner(finish_figures=True)
        self.publish()
        self.overhead.drain_seconds += time.perf_counter() - started
        if summary is not None:
            try:
                summary = {**summary, **self.timing_fields(fit_seconds)}
                self.write_summary(summary)
            except Exception as error:
                self.warn("summary", f"BifurcationMonitor could not write its summary: {error}")
                summary = None
        self.dashboard.flush()
        return summary

    def drain(self) -> None:
        """Wait (at most ``drain_timeout_s``) until the runner has analysed every snapshot, with a progress bar
        when that takes more than 2 s; what it has not reached by then is counted as dropped."""
        from tqdm import tqdm

        if self.runner is None:
            return
        timeout = self.settings.drain_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        total = self.runner.n_waiting
        with tqdm(total=total, desc="BifurcationMonitor: analysing the queued steps", unit="step", delay=2.0,
                  leave=False, disable=total < 2) as bar:
            while True:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    done = self.runner.drain(0.5 if remaining is None else min(remaining, 0.5))
                except Exception as error:  # the worker's machinery failed at the last moment: finish in sync
                    self.fall_back(f"BifurcationMonitor's worker failed ({type(error).__name__}: {error}); the rest "
                                   "of the run is analysed on the training thread (mode='sync')")
                    done = True
                self.collect()
                bar.update(max(total - self.runner.n_waiting - bar.n, 0))
                if done or (remaining is not None and remaining <= 0):
                    break
        if done:
            return
        waiting, _ = self.runner.take_pending()
        unanalysed = [snapshot.step for snapshot in waiting]
        self.dropped.extend(unanalysed)
        self.warn("drain", f"BifurcationMonitor: the worker had not analysed {len(unanalysed)} steps "
                  f"({step_spans(unanalysed)}) after drain_timeout_s={timeout}; they are counted as dropped")

    def close_runner(self, *, finish_figures: bool = False) -> None:
        """Stop a worker and make the analyser in this process hold the state of the last analysed step again: a
        checkpoint saved after fit (``trainer.save_checkpoint``) or a second fit continues from there.  A worker
        process still writing the fit-end figures is left to finish them (``BifurcationMonitor.wait_for_figures``)."""
        runner = self.runner
        if runner is None or isinstance(runner, InlineRunner):
            self.collect()  # figures drawn in the hook come back as outcomes too
            return
        timeout = FIGURES_TIMEOUT_S if self.settings.drain_timeout_s is None else max(self.settings.drain_timeout_s, 5.0)
        if finish_figures:  # figures that come back (a thread's, periodic ones) go through this process's logger
            runner.drain(timeout)
        self.collect()
        runner.close(timeout if finish_figures else 5.0)
        self.collect()
        self.runner_summaries.append(runner.summary())
        self.analyser.load_state_dict(runner.state)
        self.runner, self.closed_runner = InlineRunner(self.analyser), runner

    # ------------------------------------------------------------------------------------------ results

    @property
    def cycles(self) -> CycleSet | None:
        """The cycle set of the last analysed step."""
        # Read from the result only now: a worker process's results unpickle their cycles when first read.
        return self.last[1].cycles if self.last is not None else self.restored_cycles

    @property
    def n_skipped(self) -> int:
        return sum(self.skip_reasons.values())

    def worker_processes(self) -> list[int]:
        """The process ids of every worker process of this run (empty when the analysis ran in the hook)."""
        summaries = self.runner_summaries + ([self.runner.summary()] if self.runner is not None else [])
        return [pid for summary in summaries if summary for pid in summary.get("processes", [])]

    def summary(self, fit_seconds: float) -> dict[str, Any]:
        """The fit-end summary (JSON-ready), from the records and the loss history."""
        analysed = [r for r in self.records if r.skipped is None]
        events = [e for r in analysed for e in r.verified_events]
        run = summarise_run(
            self.history,
            events,  # verified events only, each with its bracket
            window=self._jump_window(analysed),
            warmup_steps=self.settings.jump_warmup_steps,
            min_relative_change=self.settings.jump_min_change,
            scales=self.settings.jump_scales,
        )
        losses = [loss for _, loss, _ in self.history if loss is not None]
        by_kind = Counter(e["kind"] for e in events)
        lags = sorted(r.lag_steps for r in analysed if r.lag_steps is not None)
        batches = [r.batch_size for r in analysed]
        n_monitored = len(self.records) + len(self.dropped)
        cycles = self.cycles
        return {
            "max_order": self.settings.max_order,
            "every_n_steps": self.settings.every_n_steps,
            "every_n_epochs": self.settings.every_n_epochs,
            "n_monitored_steps": n_monitored,
            "n_analysed_steps": len(analysed),
            "n_skipped": self.n_skipped,
            "skip_reasons": dict(self.skip_reasons),
            "n_dropped_steps": len(self.dropped),
            "analysed_fraction": len(analysed) / n_monitored if n_monitored else None,
            "lag_steps_median": float(statistics.median(lags)) if lags else None,
            "lag_steps_max": lags[-1] if lags else None,
            "batch_size_median": float(statistics.median(batches)) if batches else None,
            "final_step": int(self.history[-1][0]) if self.history else None,
            "final_loss": losses[-1] if losses else None,
            "final_cycles": cycles.to_dict() if cycles is not None else None,
            # The last monitored step's attractor; None when that step was skipped or its analysis failed, never
            # an older step's attractor presented as the final one.
            "final_attractor": self.records[-1].attractor if self.records else None,
            "max_attractor_period": self.settings.max_attractor_period,
            "n_attractor_changes": by_kind.get("attractor_change", 0),
            "n_events": len(events),
            "n_unverified_events": sum(len(r.events) - len(r.verified_events) for r in analysed),
            "n_late_discoveries": sum(len(r.late_discoveries) for r in analysed),
            "events_by_kind": {kind: by_kind.get(kind, 0) for kind in BIFURCATION_KINDS},
            "n_border_crossings": sum(fold_events(r.verified_events)[1] for r in analysed),
            **run.to_dict(),
            "jump_warmup_steps": self.settings.jump_warmup_steps,
            "jump_min_change": self.settings.jump_min_change,
            "jump_scales": list(self.settings.jump_scales),
            **self.timing_fields(fit_seconds),
        }

    def timing_fields(self, fit_seconds: float) -> dict[str, Any]:
        """Where the analysis ran (``mode``, ``worker``) and what it cost training (``OverheadAccount``)."""
        worker = self.runner_summaries[-1] if self.runner_summaries else (self.runner.summary() if self.runner else None)
        threads = None if self.training_threads is None else dict(zip(("before", "during_fit"), self.training_threads))
        return {"mode": self.mode, "worker": worker, "training_threads": threads, **self.overhead.fields(fit_seconds)}

    def _jump_window(self, analysed: list[StepRecord]) -> int:
        if self.settings.jump_window is not None:
            return self.settings.jump_window
        # every_n_epochs: 5 analyses' worth of steps, as 5 * every_n_steps is for every_n_steps.
        steps = [record.step for record in analysed]
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        return 5 * (int(statistics.median(gaps)) if gaps else (steps[0] + 1 if steps else 1))

    def write_summary(self, summary: dict[str, Any]) -> None:
        dashboard = self.dashboard
        step = summary["final_step"] or 0
        dashboard.log_scalars(summary_scalars(summary), step)
        dashboard.log_text("bifurcation/summary", summary_markdown(summary, show_all_events=self.settings.show_all_events), step)
        dashboard.write_summary(summary)

    @property
    def events(self) -> list[BifurcationEvent]:
        return [BifurcationEvent.from_dict(e) for record in self.records for e in record.verified_events]


def warn_once(warned: set[str]) -> Callable[[str, str], None]:
    """A ``warn(category, message)`` that warns once per category (a NaN model would warn at every step): a
    ``RuntimeWarning`` whose text starts with "BifurcationMonitor" (one prefix to filter them all by), located
    at the user's line that led to it (``user_stacklevel``)."""

    def warn(category: str, message: str) -> None:
        if category not in warned:
            warned.add(category)
            prefix = "" if message.startswith("BifurcationMonitor") else "BifurcationMonitor: "
            warnings.warn(f"{prefix}{message} (further warnings of this kind are suppressed)", RuntimeWarning,
                          stacklevel=user_stacklevel())

    return warn
