"""Where the analysis runs: in the training hook, or in a worker process beside training (on the CPU or on the
training GPU), behind one interface.

A runner takes :class:`~bifurcation_callback.analysis.Snapshot` objects (:meth:`Runner.submit`) and hands back
:class:`Outcome` objects in step order (:meth:`Runner.poll`): every submitted step comes back exactly once, as a
result (analysed, or skipped with a reason) or, only with the opt-in latest-wins queue or after a drain timeout,
as dropped.  That is the one place dropped and skipped steps are decided; the monitor only counts outcomes.

* :class:`InlineRunner` analyses each snapshot at once, in the caller's thread (``mode="sync"``).
* :class:`ProcessRunner` sends the snapshots to a worker process (or, for a model that cannot be pickled, a
  thread) and never waits for it: every call only does non-blocking socket work.  The worker takes **all** the
  snapshots that are waiting when it is free and analyses them as one batch
  (:meth:`~bifurcation_callback.analysis.StepAnalyser.analyse_batch`), so it catches up instead of dropping
  steps; the records are those of analysing the steps one at a time.

How a worker process starts (``start_method``): by default the first one is forked from the training
process (Linux, analysis on the CPU, at most ``FORK_MAX_RESIDENT_BYTES`` resident): it has torch, the package
and the analyser already and is ready in ~10 ms, where a fresh interpreter spends 1-2 s importing torch while
the snapshots of the first 50-100 training steps pile up.  A forked worker touches none of the training
process's objects but the analyser (as torch's DataLoader workers do), sets one torch thread, and ends with
``os._exit``.  Restarts, GPU analysis and larger processes start a fresh interpreter (``python -c``), not
``multiprocessing``'s spawn: spawn imports the user's ``__main__`` script again in the child, so a training
script without an ``if __name__ == "__main__":`` guard would start training a second time in the worker.  That
worker receives the analyser pickled with cloudpickle, which sends a model class defined in ``__main__`` by
value.  Either worker exits when the connection closes or its training process dies, even in the middle of an
analysis.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from typing import Any

import cloudpickle

from ._worker import HEADER, RenderJob, serve_forked, serve_socket
from .analysis import Snapshot, StepAnalyser, StepResult, skipped_result

__all__ = ["FORK_MAX_RESIDENT_BYTES", "RUNNER_KINDS", "START_METHODS", "WORKER_ENV", "InlineRunner", "Outcome", "ProcessRunner", "RenderJob", "Runner", "worker_environment"]

# Where the analysis can run: "inline" (in the hook) or a worker "process" / "thread".
RUNNER_KINDS: tuple[str, ...] = ("inline", "process", "thread")

# Set in the worker process's environment (tests use it to crash only the worker, never the training process).
WORKER_ENV = "BIFURCATION_MONITOR_WORKER"

# How long a worker process may take to import torch and the package and load the analyser.
STARTUP_TIMEOUT_S = 120.0

# How a worker process starts (``ProcessRunner``'s ``start_method``).
START_METHODS: tuple[str, ...] = ("auto", "fork", "exec")

# "auto" forks a worker from a training process of at most this resident size, else starts a fresh interpreter.
FORK_MAX_RESIDENT_BYTES = 4 << 30

# The most snapshots a worker analyses in one batch (a long backlog is analysed in batches of this size).
MAX_BATCH = 64
# With fewer snapshots waiting a free worker waits up to BATCH_WAIT_S for more (docs/benchmarks.md: a step costs
# ~45 ms analysed alone, ~25 ms in a batch of 4, ~20 ms in one of 8, ~19 ms in one of 16).
MIN_BATCH = 8
BATCH_WAIT_S = 1.0



@dataclasses.dataclass
class Outcome:
    """One finished item, in submission order.

    Attributes
    ----------
    kind : str
        ``"result"`` (``result`` set; a skipped step's record says why), ``"dropped"`` (``steps`` never analysed:
        latest wins, or a drain that timed out), ``"figures"`` (``images`` of ``step``), ``"note"`` (``message``
        to warn about, ``category``) or ``"fallback"`` (the worker gave up: the caller analyses the rest itself).
    snapshot : Snapshot or None
        The analysed snapshot of a result.
    analysis_s : float
        Wall time of the analysis of a result's batch, shared equally by its steps.
    """

    kind: str
    snapshot: Snapshot | None = None
    result: StepResult | None = None
    steps: tuple[int, ...] = ()
    images: dict[str, Any] | None = None
    step: int | None = None
    message: str = ""
    category: str = "worker"
    analysis_s: float = 0.0


class Runner:
    """The interface every runner implements (see the module docstring).

    Attributes
    ----------
    kind : str
        One of ``RUNNER_KINDS``.
    state : dict
        The analyser's state after the last result handed out by :meth:`poll` (what a checkpoint saves).
    """

    kind = "inline"

    def __init__(self, analyser: StepAnalyser) -> None:
        self.analyser = analyser
        self._state: dict[str, Any] | bytes = analyser.state_dict()

    @property
    def state(self) -> dict[str, Any]:
        if isinstance(self._state, bytes):  # from a worker process: unpickled only when read
            self._state = pickle.loads(self._state)
        return self._state

    def start(self) -> None:
        """Get ready before the first snapshot (a worker process takes 10 ms forked, 1-2 s as a fresh interpreter)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from an analyser state (a resumed run's), before the first snapshot."""
        self.analyser.load_state_dict(state)
        self._state = state

    def submit(self, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def submit_job(self, job: RenderJob) -> None:
        raise NotImplementedError

    def poll(self) -> list[Outcome]:
        """The outcomes finished since the last call, in submission order (never blocks)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Nothing more comes soon: a worker waiting for a fuller batch analyses what waits now."""

    def drain(self, timeout_s: float | None) -> bool:
        """Wait until everything submitted is finished; False after ``timeout_s``."""
        return True

    def pending(self) -> list[Snapshot]:
        """Every submitted snapshot whose outcome :meth:`poll` has not handed out, oldest first."""
        return []

    @property
    def n_waiting(self) -> int:
        return len(self.pending())

    @property
    def busy(self) -> bool:
        """Whether anything submitted is unfinished (a drain waits for it)."""
        return False

    @property
    def working(self) -> bool:
        """Whether the analysis computes now or starts at once, beside training: contention happens then."""
        return self.busy

    @property
    def starting(self) -> bool:
        """Whether a worker process has been started but has not said it is ready yet."""
        return False

    def take_pending(self) -> tuple[list[Snapshot], list[RenderJob]]:
        """Stop analysing and hand back what is not finished (for a fallback or a drain timeout)."""
        return [], []

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the runner (a worker process finishes only detached figures, see ``RenderJob.log_dirs``)."""

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        """Wait until a closed worker process has exited; False after ``timeout_s``."""
        return True

    def summary(self) -> dict[str, Any] | None:
        """Where the analysis ran, for the fit-end summary (None for the inline runner)."""
        return None


class InlineRunner(Runner):
    """Analyses each snapshot when it is submitted, in the caller's thread.

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.analysis import take_snapshot
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> runner = InlineRunner(StepAnalyser(model, max_order=1, max_attractor_period=0))
    >>> runner.submit(take_snapshot(model, 0, copy=False))
    >>> [(outcome.kind, outcome.result.record.step) for outcome in runner.poll()]
    [('result', 0)]
    """

    def __init__(self, analyser: StepAnalyser) -> None:
        super().__init__(analyser)
        self._outbox: collections.deque[Outcome] = collections.deque()

    def submit(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        try:
            (result,) = self.analyser.analyse_batch([snapshot])
        except Exception as error:  # the monitor must never take the training run down
            result = skipped_result(snapshot, f"{type(error).__name__}: {error}")
        self._state = self.analyser.state_dict()
        self._outbox.append(Outcome("result", snapshot, result, analysis_s=time.perf_counter() - started))

    def submit_job(self, job: RenderJob) -> None:
        try:
            self._outbox.append(Outcome("figures", images=job.run(self.analyser), step=job.step))
        except Exception as error:  # figures must not cost the run its records
            self._outbox.append(Outcome(
                "note", message=f"BifurcationMonitor draws no figures at step {job.step}: {type(error).__name__}: {error}",
                category="figures",
            ))

    def poll(self) -> list[Outcome]:
        outcomes = list(self._outbox)
        self._outbox.clear()
        return outcomes


_FLUSH = "flush"  # in ProcessRunner._unsent: a flush frame goes to the worker after the items before it


class _CannotStart(RuntimeError):
    """The analyser cannot be analysed in a worker process (it cannot be pickled or unpickled)."""


def worker_environment() -> dict[str, str]:
    """The environment of a worker process: one OpenMP/MKL thread (the worker has one core), and MKL's
    conditional bitwise reproducibility in strict mode (``MKL_CBWR``: the user's branch, ``AUTO`` when unset,
    with ``STRICT``): without it MKL's small matrix products round differently depending on the operands'
    memory alignment, and steps analysed together differed from steps analysed one at a time in the last bit
    of an eigenvalue (2 of 120 README-model steps).

    Examples
    --------
    >>> worker_environment()["OMP_NUM_THREADS"]
    '1'
    """
    branch = os.environ.get("MKL_CBWR", "AUTO")  # the user's branch (the demo pins COMPATIBLE), made strict
    strict = branch if "STRICT" in branch.upper() else f"{branch},STRICT"
    return {**os.environ, WORKER_ENV: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": strict}


class ProcessRunner(Runner):
    """Analyses beside training, in a worker process (default) or a thread, all waiting snapshots in one batch.

    Parameters
    ----------
    analyser : StepAnalyser
        With the state the analysis starts from.  The thread kind uses it; the process kind sends a pickled
        copy to the worker process (and to a restarted one, with the state after the last result).
    kind : {"process", "thread"}
    queue_size : int or None
        None (default): every snapshot is analysed.  An int: latest wins, at most that many waiting snapshots
        are analysed when the worker gets to them, older ones are dropped (``Outcome`` ``"dropped"``).
    max_restarts : int
        Restarts of a dead worker process before the runner gives up (``"fallback"``).
    max_batch : int
        The most snapshots analysed in one batch.
    min_batch, batch_wait_s : int, float
        A free worker with fewer than ``min_batch`` snapshots waiting waits up to ``batch_wait_s`` seconds for
        more (not with latest wins): batches are cheaper per step, so the worker idles more beside training, for
        a few more steps of lag.  :meth:`drain` (and :meth:`flush`) make it analyse what waits at once.
    niceness : int
        Added to a worker process's scheduling niceness (``os.nice``): 19 makes it run only on CPU time training
        leaves free, for training whose threads may use every core.
    start_method : {"auto", "fork", "exec"}
        How a worker process starts.  ``"fork"``: a copy of this process (``os.fork``), ready in milliseconds,
        with the analyser as it is here.  ``"exec"``: a fresh interpreter (``python -c``) that imports torch and
        unpickles the analyser, 1-2 s.  ``"auto"`` (default) forks the first worker on Linux when the analysis
        runs on the CPU, CUDA is not initialised here, and this process's resident memory is at most
        ``FORK_MAX_RESIDENT_BYTES`` (a forked worker keeps the pages training writes afterwards alive: up to
        training's working set again); restarts and everything else exec.

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.analysis import take_snapshot
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> with torch.no_grad():  # z' = 0.5 z + 0.1: one stable fixed point
    ...     _ = model.A.fill_(0.5), model.W.zero_(), model.h.fill_(0.1)
    >>> runner = ProcessRunner(StepAnalyser(model, max_order=1, max_attractor_period=0), kind="thread")
    >>> for step in range(3):
    ...     runner.submit(take_snapshot(model, step))
    >>> runner.drain(timeout_s=60)
    True
    >>> [(outcome.kind, outcome.result.record.n_cycles) for outcome in runner.poll()]
    [('result', {1: 1}), ('result', {1: 1}), ('result', {1: 1})]
    >>> runner.close()
    """

    def __init__(
        self,
        analyser: StepAnalyser,
        *,
        kind: str = "process",
        queue_size: int | None = None,
        max_restarts: int = 1,
        max_batch: int = MAX_BATCH,
        min_batch: int = MIN_BATCH,
        batch_wait_s: float = BATCH_WAIT_S,
        niceness: int = 0,
        start_method: str = "auto",
    ) -> None:
        if kind not in ("process", "thread"):
            raise ValueError(f"ProcessRunner: kind must be 'process' or 'thread', got {kind!r}")
        if start_method not in START_METHODS:
            raise ValueError(f"ProcessRunner: start_method must be one of {START_METHODS}, got {start_method!r}")
        super().__init__(analyser)
        self.kind = kind
        self.queue_size = queue_size
        self.max_restarts = max_restarts
        self.max_batch = max_batch
        self.min_batch = 1 if queue_size is not None else max(1, min(min_batch, max_batch))
        self.batch_wait_s = batch_wait_s
        self.niceness = niceness
        self.start_method = start_method
        self.restarts = 0
        self.pids: list[int] = []  # every worker process started
        self.start_methods: list[str] = []  # how each was started: "fork" or "exec"
        self.bitwise: bool | None = None  # the last worker's MKL strict mode (``_worker.mkl_bitwise``)
        self.failed = False
        self._submitted: collections.OrderedDict[int, Snapshot] = collections.OrderedDict()  # no outcome yet
        self._unsent: collections.deque[Snapshot | RenderJob | str] = collections.deque()  # str: _FLUSH
        self._jobs = 0  # figure jobs sent that still owe a reply
        self._detached: RenderJob | None = None  # fit-end figures a worker process writes itself
        self._started: tuple[int, ...] = ()  # the batch the worker is analysing (it said so)
        self._flushed_through = -1  # the last step a flush asked the worker to analyse without a fuller batch
        self._solo: set[int] = set()  # steps of a batch that killed its worker: analysed one at a time
        self._outbox: collections.deque[Outcome] = collections.deque()
        self._write = bytearray()
        self._read = bytearray()
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen | _ForkedProcess | None = None
        self._thread: threading.Thread | None = None
        self._starting_since: float | None = None
        self._exiting: subprocess.Popen | _ForkedProcess | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ training side

    def start(self) -> None:
        if self._socket is None and not self.failed:
            self._connect()

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if self._socket is not None:  # the worker already holds an analyser: it takes the state over first
            self._frame(("state", state))

    def submit(self, snapshot: Snapshot) -> None:
        self._submitted[snapshot.step] = snapshot
        self._unsent.append(snapshot)
        self._pump()

    def submit_job(self, job: RenderJob) -> None:
        self._unsent.append(job)
        self._pump()

    def poll(self) -> list[Outcome]:
        self._pump()
        outcomes = list(self._outbox)
        self._outbox.clear()
        return outcomes

    def pending(self) -> list[Snapshot]:
        return list(self._submitted.values())

    @property
    def n_waiting(self) -> int:
        return len(self._submitted)  # read at every batch end: no list of a long queue

    @property
    def busy(self) -> bool:
        return bool(self._submitted or self._jobs or self._unsent) and not self.failed

    @property
    def working(self) -> bool:
        """As of the last poll: a batch the worker said it started, figures it owes, or a batch it starts at
        once (``min_batch`` snapshots, or snapshots a flush covers).  Fewer waiting keep a free worker idle."""
        if self.failed:
            return False
        if self._started or self._jobs:
            return True
        first = next(iter(self._submitted), None)
        return first is not None and (len(self._submitted) >= self.min_batch or first <= self._flushed_through)

    @property
    def starting(self) -> bool:
        return self._starting_since is not None

    @property
    def analysing(self) -> tuple[int, ...]:
        """The steps of the batch the worker said it is analysing now (as of the last :meth:`poll`)."""
        return self._started

    def flush(self) -> None:
        if self._submitted:
            self._flushed_through = max(self._flushed_through, next(reversed(self._submitted)))
            self._unsent.append(_FLUSH)
            self._pump()

    def drain(self, timeout_s: float | None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        flushed_for = None
        while self.busy and not self._only_detached_left():
            if flushed_for != self.pids[-1:]:  # once per worker (a restarted one has not seen it)
                flushed_for = self.pids[-1:]
                self.flush()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._wait(0.5 if remaining is None else min(remaining, 0.5))
            self._pump()
        return True

    def take_pending(self) -> tuple[list[Snapshot], list[RenderJob]]:
        snapshots = list(self._submitted.values())
        jobs = [item for item in self._unsent if isinstance(item, RenderJob)]
        self._submitted.clear()
        self._unsent.clear()
        self._jobs = 0
        return snapshots, jobs

    def close(self, timeout_s: float = 5.0) -> None:
        self._submitted.clear()
        self._unsent = collections.deque(item for item in self._unsent if item is self._detached)
        self._pump()
        if self._write and self._socket is not None:  # the fit-end figures' job must reach the worker
            try:
                self._socket.settimeout(timeout_s)
                self._socket.sendall(self._write)
            except OSError:
                pass
            self._write.clear()
        self._disconnect(timeout_s, wait=False)
        self._closed = True

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        process = self._exiting
        if process is None:
            return True
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "processes": list(self.pids), "started_by": list(self.start_methods),
                "mkl_bitwise": self.bitwise, "restarts": self.restarts, "fell_back_to_sync": self.failed}

    def _only_detached_left(self) -> bool:
        """Nothing is owed but fit-end figures a worker process writes itself (nobody waits for those)."""
        return not self._submitted and self._detached is not None and self._jobs <= 1 and not any(
            item is not self._detached for item in self._unsent
        )

    # ------------------------------------------------------------------------------------------ the protocol

    def _pump(self) -> None:
        """Make progress without blocking: start the worker if needed, send what is ready, read what came."""
        if self.failed or (self._closed and self._socket is None):
            return
        if self._socket is None:
            if not self.busy:
                return
            self._connect()
            if self._socket is None:
                return
        if self._starting_since is not None and time.monotonic() - self._starting_since > STARTUP_TIMEOUT_S:
            self._lost(TimeoutError(f"no answer within {STARTUP_TIMEOUT_S:.0f} s"))
            return
        while self._unsent:
            head = self._unsent[0]
            if isinstance(head, Snapshot) and not head.is_ready():
                break  # a copy from CUDA still on its way: sent at a later call, the training thread never waits
            item = self._unsent.popleft()
            if item is _FLUSH:
                self._frame(("flush",))
                continue
            if isinstance(item, Snapshot):
                item.wait()
            else:
                self._jobs += 1
                if item.log_dirs:
                    self._detached = item
            if isinstance(item, Snapshot):
                self._frame(("snapshot", item, item.step in self._solo))
            else:
                self._frame(("job", item))
        self._pump_writes()
        self._pump_reads()

    def _frame(self, message: Any) -> None:
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._write += HEADER.pack(len(payload)) + payload

    def _pump_writes(self) -> None:
        while self._write and self._socket is not None:
            try:
                sent = self._socket.send(self._write)
            except BlockingIOError:
                return  # the worker reads as fast as it can; the rest goes at a later call
            except OSError as error:
                self._lost(error)
                return
            del self._write[:sent]

    def _pump_reads(self) -> None:
        while self._socket is not None:
            try:
                chunk = self._socket.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as error:
                self._lost(error)
                return
            if not chunk:
                self._lost(EOFError("the connection closed"))
                return
            self._read += chunk
        while len(self._read) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._read)
            if len(self._read) < HEADER.size + size:
                break
            payload = bytes(self._read[HEADER.size : HEADER.size + size])
            del self._read[: HEADER.size + size]
            try:
                message = pickle.loads(payload)
            except Exception as error:  # an unreadable reply costs its items, never the run
                message = ("note", "worker", f"BifurcationMonitor could not read a reply of its worker: {error}")
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            self._starting_since = None
            self.bitwise = message[2]
        elif kind == "failed":  # the worker process cannot load the analyser: a thread instead
            self._disconnect(1.0, wait=True)
            self.kind = "thread"
            self._outbox.append(Outcome("note", message=f"BifurcationMonitor analyses in a thread instead of a worker process: {message[1]}"))
            self._resend()
            self._connect()
        elif kind == "started":
            self._started = tuple(message[1])
        elif kind == "results":
            _, results, state, seconds, dropped = message
            self._started = ()
            if dropped:
                for step in dropped:
                    self._submitted.pop(step, None)
                self._outbox.append(Outcome("dropped", steps=tuple(dropped)))
            for result in results:
                snapshot = self._submitted.pop(result.record.step, None)
                self._outbox.append(Outcome("result", snapshot, result, analysis_s=seconds / max(len(results), 1)))
            self._state = state
        elif kind == "figures":
            self._jobs = max(self._jobs - 1, 0)
            _, step, images, error = message
            if error is None:
                self._outbox.append(Outcome("figures", images=images, step=step))
            else:
                self._outbox.append(Outcome("note", message=f"BifurcationMonitor draws no figures at step {step}: {error}", category="figures"))
        elif kind == "note":
            self._outbox.append(Outcome("note", message=message[2], category=message[1]))

    def _wait(self, timeout_s: float) -> None:
        """Block until the worker has something to say (or ``timeout_s``)."""
        if self._socket is None:
            time.sleep(min(timeout_s, 0.01))
            return
        if self._unsent and isinstance(self._unsent[0], Snapshot) and not self._unsent[0].is_ready():
            time.sleep(0.002)  # waiting for a copy from CUDA to complete
            return
        try:
            select.select([self._socket], [self._socket] if self._write else [], [], timeout_s)
        except (OSError, ValueError):
            pass  # a broken socket: the next read finds it

    def _lost(self, error: BaseException) -> None:
        """The worker died (or its connection broke): its batch is skipped, the rest goes to a new worker."""
        starting = self._starting_since is not None
        code = self._disconnect(1.0, wait=True)
        batch = [step for step in self._started if step in self._submitted]
        self._started = ()
        # One step killed it: that step is skipped.  A batch: nobody knows which step, so its steps are analysed
        # again one at a time (the next death then names the step).
        lost = [self._submitted.pop(batch[0])] if len(batch) == 1 else []
        self._solo.update(batch)
        if starting:
            what = "starting"
        elif batch:
            what = f"analysing step {batch[0]}" if len(batch) == 1 else f"analysing steps {batch}"
        else:
            what = "idle"
        reason = f"the analysis worker process died (exit code {code}) while {what}"
        for snapshot in lost:
            self._outbox.append(Outcome("result", snapshot, skipped_result(snapshot, f"worker: {reason}")))
        if self.restarts >= self.max_restarts:
            self._outbox.append(Outcome("fallback", message=f"{reason} after {self.restarts} restart(s): the rest of "
                                        "the run is analysed on the training thread (mode='sync')"))
            self.failed = True
            return
        self.restarts += 1
        self._outbox.append(Outcome("note", message=f"BifurcationMonitor: {reason} ({type(error).__name__}); a new worker process takes over"))
        self._resend()

    def _resend(self) -> None:
        """Queue every snapshot without an outcome (and the jobs not answered) again, for a new worker."""
        jobs = [item for item in self._unsent if isinstance(item, RenderJob)]
        self._unsent = collections.deque([*self._submitted.values(), *jobs])
        self._jobs = 0
        self._flushed_through = -1  # the new worker has seen no flush
        self._write.clear()
        self._read.clear()

    # ------------------------------------------------------------------------------------------ endpoints

    def _connect(self) -> None:
        """Start the analysis end of a new socket pair: a worker process, or a thread with the analyser."""
        parent, child = socket.socketpair()
        if self.kind == "process":
            try:
                self._start_process(parent, child)
                return
            except _CannotStart as error:  # analyse in this process instead
                parent.close()
                self.kind = "thread"
                self._outbox.append(Outcome("note", message=f"BifurcationMonitor analyses in a thread instead of a worker process: {error}"))
                parent, child = socket.socketpair()
        self.analyser.load_state_dict(self.state)
        self._open(parent)
        self._thread = threading.Thread(
            target=serve_socket, args=(child, self.analyser, self.queue_size, self.max_batch),
            kwargs={"min_batch": self.min_batch, "batch_wait_s": self.batch_wait_s},
            name="bifurcation-monitor-worker", daemon=True,
        )
        self._thread.start()

    def _open(self, parent: socket.socket) -> None:
        parent.setblocking(False)
        self._socket = parent

    def _start_process(self, parent: socket.socket, child: socket.socket) -> None:
        options = {"queue_size": self.queue_size, "max_batch": self.max_batch, "min_batch": self.min_batch,
                   "batch_wait_s": self.batch_wait_s, "niceness": self.niceness}
        try:
            self.analyser.load_state_dict(self.state)
            if self._forks():
                self._fork(parent, child, options)
                return
            # cloudpickle sends a class defined in the user's __main__ script by value: the worker cannot import
            # that script (importing it could start the training again) and needs the class all the same.
            payload = cloudpickle.dumps(self.analyser, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            child.close()
            raise _CannotStart(f"the RNN cannot be pickled ({type(error).__name__}: {error})") from None
        command = [sys.executable, "-c", f"from bifurcation_callback._worker import serve; serve({child.fileno()})"]
        try:
            self._process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=worker_environment(), cwd=os.getcwd())
        except (OSError, ValueError) as error:  # no process here (limits, a sandbox, no pass_fds on Windows): a thread
            child.close()
            raise _CannotStart(f"no worker process could be started ({type(error).__name__}: {error})") from None
        self._started_process(parent, child, "exec")
        self._write.clear()  # the init frame goes first (a restart frames the pending items again after it)
        self._frame(("init", list(sys.path), payload, options, os.getpid()))

    def _forks(self) -> bool:
        """Whether the worker is forked from this process (see ``start_method``): only the first worker, before
        training has started threads of its own (a restart, mid-training, starts a fresh interpreter)."""
        if self.start_method == "exec" or self.pids or not hasattr(os, "fork"):
            return False
        if self.start_method == "fork":
            return True
        # A process that has initialised CUDA is not forked even for CPU analysis: CUDA cannot be used in the
        # child, and nothing on this machine tested that the analysis never touches it.
        return (sys.platform.startswith("linux") and not self.analyser.cycles.on_gpu
                and not _cuda_initialised() and _resident_bytes() <= FORK_MAX_RESIDENT_BYTES)

    def _fork(self, parent: socket.socket, child: socket.socket, options: dict[str, Any]) -> None:
        for stream in (sys.stdout, sys.stderr):  # or the child would write the buffered text a second time
            stream.flush()
        with warnings.catch_warnings():
            # Python 3.12 warns about fork in a process with threads: the child uses none of their locks (only its
            # own objects, a socket and torch with one thread), as torch's DataLoader workers do.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the worker: it never returns into the training code
            code = 1
            try:
                parent.close()
                serve_forked(child, self.analyser, {**options, "environment": worker_environment()}, os.getppid())
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        self._process = _ForkedProcess(pid)
        self._started_process(parent, child, "fork")

    def _started_process(self, parent: socket.socket, child: socket.socket, method: str) -> None:
        child.close()
        self.pids.append(self._process.pid)
        self.start_methods.append(method)
        self._starting_since = time.monotonic()
        self._open(parent)

    def _disconnect(self, timeout_s: float, *, wait: bool) -> int | None:
        """Close the socket (the worker sees EOF and exits); returns the process's exit code when waited for."""
        process, sock = self._process, self._socket
        self._process = self._socket = None
        self._starting_since = None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            # A thread shares the analyser with the caller, who may use it next (a fallback, figures): let it end.
            self._thread.join(timeout_s)
            self._thread = None
        if process is None:
            return None
        if not wait:  # a daemon thread reaps it (killed if it hangs); nobody waits for it
            self._exiting = process
            threading.Thread(target=_reap, args=(process, timeout_s), name="bifurcation-monitor-reaper", daemon=True).start()
            return None
        return _reap(process, timeout_s)


class _ForkedProcess:
    """A forked worker, with the part of ``subprocess.Popen`` the runner uses (``pid``, ``wait``, ``kill``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its code is gone
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


def _cuda_initialised() -> bool:
    import torch

    return bool(torch.cuda.is_initialized())


def _resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _reap(process: subprocess.Popen | _ForkedProcess, timeout_s: float) -> int:
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
