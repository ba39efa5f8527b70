"""AnalysisWorker: runs a StepAnalyser off the training thread, so training never waits for the analysis.

The training thread only hands over snapshots (:meth:`AnalysisWorker.submit`) and picks up finished results
(:meth:`AnalysisWorker.collect`).  A dispatcher thread in the training process feeds the analysis one
snapshot at a time, either to a **worker process** (default: a fresh Python interpreter with one CPU thread,
so the analysis shares no GIL with training) or to the analyser in a **thread** of the training process.

- *Latest wins*: at most ``queue_size`` snapshots wait; when the analysis falls behind, the oldest waiting
  one is dropped (``submit`` returns it so the caller can count it).  The next analysed step is compared with
  the last analysed one, so the brackets of its events reach back over the dropped steps.
- *Faults*: an exception in the analysis comes back as an ``"error"`` message (the step is skipped); a dead
  worker process comes back as ``"lost"`` for the step it was analysing and is restarted from the last
  analysed step's state; after ``max_restarts`` restarts the worker gives up (``"fallback"``) and the caller
  analyses the remaining snapshots itself (:meth:`take_queue`, :attr:`state`).
- *Checkpoints*: :meth:`pending` lists every snapshot not yet collected (finished but uncollected, in flight,
  waiting) and :attr:`state` is the analyser's state after the last collected step: together they are what
  a resumed run needs to lose and repeat no step.

Why not ``multiprocessing``'s ``spawn``: it imports the user's ``__main__`` script again in the child, so a
training script without an ``if __name__ == "__main__":`` guard would start training a second time in the
worker.  The worker is started as ``python -c`` with a socket instead and receives the analyser pickled (a
model class defined in ``__main__`` cannot be unpickled there: the worker then runs in a thread, with a note).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .analysis import Snapshot, StepAnalyser, StepResult

__all__ = ["WORKER_KINDS", "AnalysisWorker", "RenderJob", "WorkerMessage", "WORKER_ENV"]

WORKER_KINDS: tuple[str, ...] = ("process", "thread")

# Set in the worker process's environment (tests use it to crash only the worker, never the training process).
WORKER_ENV = "BIFURCATION_MONITOR_WORKER"

# How long a worker process may take to import torch and the package and load the analyser.
STARTUP_TIMEOUT_S = 120.0


@dataclasses.dataclass
class WorkerMessage:
    """One finished snapshot (or a change of the worker itself), in submission order.

    Attributes
    ----------
    kind : str
        ``"result"`` (``result`` set), ``"error"`` (the analysis raised: ``error``), ``"lost"`` (the worker
        process died while analysing it: ``error``), ``"figures"`` (a :class:`RenderJob`'s ``images`` for
        ``step``), ``"note"`` (something to warn about: ``error``) or ``"fallback"`` (the worker gave up; the
        caller analyses the rest itself).
    snapshot : Snapshot or None
    result : StepResult or None
    error : str or None
    category : str
        Warning category of a note.
    analysis_s : float
        Wall time of the analysis in the worker.
    """

    kind: str
    snapshot: Snapshot | None = None
    result: StepResult | None = None
    images: dict[str, Any] | None = None
    step: int | None = None
    error: str | None = None
    category: str = "worker"
    analysis_s: float = 0.0
    state: dict[str, Any] | None = None


@dataclasses.dataclass
class RenderJob:
    """Figures to draw where the analysis runs: ``plots.render_figures`` with ``arguments``, logged at ``step``.

    With ``snapshot`` and no ``orbits`` in the arguments, the orbits under the cycles are sampled from the
    snapshot's model (``plots.sample_orbits``).
    """

    step: int
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot: Snapshot | None = None
    seed: int = 0

    def run(self, analyser: StepAnalyser) -> dict[str, Any]:
        """The images (tag → RGB array); ``analyser`` provides the model for sampled orbits."""
        from .plots import render_figures, sample_orbits

        arguments = dict(self.arguments)
        if self.snapshot is not None and not arguments.get("orbits") and arguments.get("cycles") is not None:
            arguments["orbits"] = sample_orbits(analyser.load(self.snapshot), arguments["cycles"], seed=self.seed)
        return render_figures(**arguments)


class WorkerLost(RuntimeError):
    """The worker process died or stopped answering."""


class AnalysisWorker:
    """Analyse snapshots in the background, newest first when behind.

    Parameters
    ----------
    analyser : StepAnalyser
        With the state the analysis starts from.  The thread kind uses it; the process kind sends a pickled
        copy to the worker process (and to a restarted one, with the last analysed step's state).
    kind : {"process", "thread"}
    queue_size : int or None
        Snapshots that may wait while one is analysed (None: no limit, nothing is ever dropped).
    max_restarts : int
        Restarts of a dead worker process before the worker gives up.
    warm_figures : bool
        Let a worker process start matplotlib (fonts, caches) in a background thread while it analyses, so
        the first :class:`RenderJob` (at fit end, while training waits) does not pay for it.

    Examples
    --------
    >>> from bifurcation_callback.analysis import take_snapshot
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> worker = AnalysisWorker(StepAnalyser(model, max_order=1, max_attractor_period=0), kind="thread")
    >>> worker.submit(take_snapshot(model, 0)) is None  # nothing dropped
    True
    >>> worker.drain(timeout_s=60)
    True
    >>> [(message.kind, message.result.record["n_cycles"]) for message in worker.collect()]
    [('result', {'1': 1})]
    >>> worker.close()
    """

    def __init__(
        self,
        analyser: StepAnalyser,
        *,
        kind: str = "process",
        queue_size: int | None = 1,
        max_restarts: int = 1,
        warm_figures: bool = False,
    ) -> None:
        if kind not in WORKER_KINDS:
            raise ValueError(f"AnalysisWorker: kind must be one of {list(WORKER_KINDS)}, got {kind!r}")
        self.analyser = analyser
        self.kind = kind
        self.queue_size = queue_size
        self.max_restarts = max_restarts
        self.warm_figures = warm_figures
        self.restarts = 0
        self.pids: list[int] = []  # every worker process started
        self.failed = False
        self.analysis_seconds = 0.0
        self._state = analyser.state_dict()  # after the last collected message
        self._latest_state = self._state  # after the last finished analysis
        self._queue: collections.deque[Snapshot | RenderJob] = collections.deque()
        self._in_flight: Snapshot | RenderJob | None = None
        self._outbox: collections.deque[WorkerMessage] = collections.deque()
        self._condition = threading.Condition()
        self._closing = False
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._socket: socket.socket | None = None
        self._process_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bifurcation-monitor-dispatcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ training side

    def submit(self, snapshot: Snapshot, *, force: bool = False) -> Snapshot | None:
        """Queue a snapshot; returns the waiting snapshot it displaced (latest wins), if any.  ``force`` queues
        without displacing (snapshots restored from a checkpoint)."""
        with self._condition:
            dropped = None
            waiting = [index for index, item in enumerate(self._queue) if isinstance(item, Snapshot)]
            if not force and self.queue_size is not None and len(waiting) >= self.queue_size:
                dropped = self._queue[waiting[0]]
                del self._queue[waiting[0]]
            self._queue.append(snapshot)
            self._condition.notify_all()
        return dropped

    def submit_job(self, job: RenderJob) -> None:
        """Queue figures to draw after the snapshots queued so far (never dropped)."""
        with self._condition:
            self._queue.append(job)
            self._condition.notify_all()

    def collect(self) -> list[WorkerMessage]:
        """The messages finished since the last call, in submission order."""
        with self._condition:
            messages = list(self._outbox)
            self._outbox.clear()
            for message in messages:
                if message.state is not None:
                    self._state = message.state
        return messages

    def pending(self) -> list[Snapshot]:
        """Every submitted snapshot whose message has not been collected, oldest first."""
        with self._condition:
            finished = [m.snapshot for m in self._outbox if m.snapshot is not None]
            items = finished + [self._in_flight] + list(self._queue)
            return [item for item in items if isinstance(item, Snapshot)]

    @property
    def state(self) -> dict[str, Any]:
        """The analyser's state after the last collected step."""
        with self._condition:
            return self._state

    @property
    def busy(self) -> bool:
        with self._condition:
            return bool(self._queue or self._in_flight is not None)

    def drain(self, timeout_s: float | None) -> bool:
        """Wait until every submitted snapshot is analysed (or the worker gave up); False after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            while (self._queue or self._in_flight is not None) and not self.failed and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._condition.wait(remaining if remaining is None else min(remaining, 1.0))
            return True

    def take_queue(self) -> list[Snapshot | RenderJob]:
        """Remove and return what is waiting (after a fallback, or when giving up at a drain timeout)."""
        with self._condition:
            queued = list(self._queue)
            self._queue.clear()
            return queued

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the dispatcher and the worker process; never waits longer than about ``timeout_s``."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._stop_process(timeout_s, wait=False)
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------------------------------ dispatcher

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closing:
                    self._condition.wait()
                if self._closing:
                    break
                snapshot = self._in_flight = self._queue.popleft()
            messages = self._analyse(snapshot)
            with self._condition:
                self._in_flight = None
                if self._closing:
                    break
                for message in messages:
                    if message.snapshot is not None:
                        message.state = message.state or self._latest_state
                        self._latest_state = message.state
                    self.failed = self.failed or message.kind == "fallback"
                self._outbox.extend(messages)
                self._condition.notify_all()
                if self.failed:
                    break
        self._stop_process(1.0, wait=False)

    def _analyse(self, item: Snapshot | RenderJob) -> list[WorkerMessage]:
        started = time.perf_counter()
        if self.kind == "thread":
            try:
                payload = item.run(self.analyser) if isinstance(item, RenderJob) else self.analyser.analyse(item)
            except Exception as error:
                return [self._message(item, "error", f"{type(error).__name__}: {error}", self.analyser.state_dict(), 0.0)]
            seconds = time.perf_counter() - started
            return [self._message(item, "done", payload, self.analyser.state_dict(), seconds)]
        try:
            connection = self._connected()
            if isinstance(item, Snapshot):
                item.wait()
            connection.send_bytes(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            kind, payload, state, seconds = pickle.loads(connection.recv_bytes())
        except _CannotStart as error:  # the analyser cannot live in another process: analyse in this one
            self.kind = "thread"
            self.analyser.load_state_dict(self._latest_state)
            note = WorkerMessage("note", error=f"BifurcationMonitor analyses in a thread instead of a worker process: {error}")
            return [note, *self._analyse(item)]
        except (EOFError, OSError, WorkerLost) as error:
            return self._lost(item, error)
        except Exception as error:  # the dispatcher must outlive anything: a broken reply costs one step
            return [self._message(item, "error", f"{type(error).__name__}: {error}", None, 0.0)]
        return [self._message(item, kind, payload, state, seconds)]

    def _message(self, item: Snapshot | RenderJob, kind: str, payload: Any, state: Any, seconds: float) -> WorkerMessage:
        """The message for a finished item: ``kind`` "done" (``payload`` is the result or the images) or
        "error" (``payload`` is the error text)."""
        if isinstance(item, RenderJob):
            if kind == "error":
                return WorkerMessage("note", error=f"BifurcationMonitor draws no figures at step {item.step}: {payload}",
                                     category="figures")
            return WorkerMessage("figures", images=payload, step=item.step)
        self.analysis_seconds += seconds
        if kind == "error":
            return WorkerMessage("error", item, error=payload, analysis_s=seconds, state=state)
        return WorkerMessage("result", item, payload, analysis_s=seconds, state=state)

    def _lost(self, item: Snapshot | RenderJob, error: BaseException) -> list[WorkerMessage]:
        code = self._stop_process(1.0)
        snapshot = item if isinstance(item, Snapshot) else None
        what = f"analysing step {item.step}" if snapshot is not None else f"drawing the figures of step {item.step}"
        reason = f"the analysis worker process died (exit code {code}) while {what}"
        if self._closing:
            return [WorkerMessage("lost", snapshot, error=reason)]
        if self.restarts >= self.max_restarts:
            return [
                WorkerMessage("lost", snapshot, error=reason),
                WorkerMessage(
                    "fallback",
                    error=f"{reason} after {self.restarts} restart(s): the rest of the run is analysed on the training "
                    "thread (mode='sync')",
                ),
            ]
        self.restarts += 1
        return [WorkerMessage("lost", snapshot, error=f"{reason} ({type(error).__name__}); a new worker process takes over")]

    def _connected(self) -> Connection:
        if self._connection is not None:
            return self._connection
        try:
            self.analyser.load_state_dict(self._latest_state)
            payload = pickle.dumps(self.analyser, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            raise _CannotStart(f"the RNN cannot be pickled ({type(error).__name__}: {error})") from None
        if b"__main__" in payload:
            raise _CannotStart("the RNN's class is defined in __main__, which a worker process cannot import")
        parent, child = socket.socketpair()
        environment = {**os.environ, WORKER_ENV: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [sys.executable, "-c", f"from bifurcation_callback.worker import serve; serve({child.fileno()})"]
        process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=environment, cwd=os.getcwd())
        child.close()
        connection = Connection(os.dup(parent.fileno()))
        with self._process_lock:
            self._process, self._connection, self._socket = process, connection, parent
            self.pids.append(process.pid)
        if self._closing:
            raise WorkerLost("closed while starting")
        connection.send_bytes(pickle.dumps((list(sys.path), payload, self.warm_figures), protocol=pickle.HIGHEST_PROTOCOL))
        if not connection.poll(STARTUP_TIMEOUT_S):
            raise WorkerLost(f"the worker process did not start within {STARTUP_TIMEOUT_S:.0f} s")
        kind, detail = pickle.loads(connection.recv_bytes())
        if kind != "ready":
            self._stop_process(1.0)
            raise _CannotStart(detail)
        return connection

    def _stop_process(self, timeout_s: float, *, wait: bool = True) -> int | None:
        """Stop the worker process (if any) and return its exit code: shutting the socket down ends a blocked
        receive on either side, so the worker exits and a dispatcher waiting for it wakes up."""
        with self._process_lock:
            process, connection, sock = self._process, self._connection, self._socket
            self._process = self._connection = self._socket = None
        for closable in (sock, connection):
            if closable is None:
                continue
            try:
                if closable is sock:
                    sock.shutdown(socket.SHUT_RDWR)
                closable.close()
            except OSError:
                pass
        if process is None:
            return None
        if not wait:  # fit end: the worker exits on its own; a daemon thread reaps it (killed if it hangs)
            threading.Thread(target=_reap, args=(process, timeout_s), name="bifurcation-monitor-reaper", daemon=True).start()
            return None
        return _reap(process, timeout_s)


def _reap(process: subprocess.Popen, timeout_s: float) -> int:
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class _CannotStart(RuntimeError):
    """The analyser cannot be analysed in a worker process (unpicklable, or its class lives in __main__)."""


def serve(fd: int) -> None:
    """The worker process's main loop: load the analyser, then analyse every snapshot received on ``fd`` until
    the training process closes the connection."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it closes us
    torch.set_num_threads(1)
    connection = Connection(fd)
    try:
        path, payload, warm_figures = pickle.loads(connection.recv_bytes())
        sys.path[:] = path
        analyser = pickle.loads(payload)
    except EOFError:
        return
    except Exception as error:
        connection.send_bytes(pickle.dumps(("failed", f"the worker process cannot load the analyser: {type(error).__name__}: {error}")))
        return
    connection.send_bytes(pickle.dumps(("ready", os.getpid())))
    # matplotlib's start (imports, font cache) runs beside the analyses, so the fit-end figures are quick.
    warming = threading.Thread(target=_warm_figures, name="warm-figures", daemon=True) if warm_figures else None
    if warming is not None:
        warming.start()
    while True:
        try:
            item = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        started = time.perf_counter()
        if warming is not None and isinstance(item, RenderJob):
            warming.join()
        try:
            payload = item.run(analyser) if isinstance(item, RenderJob) else analyser.analyse(item)
            reply: tuple[str, Any] = ("done", payload)
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}")
            if os.environ.get("BIFURCATION_MONITOR_DEBUG"):
                traceback.print_exc()
        seconds = time.perf_counter() - started
        state = analyser.state_dict() if not isinstance(item, RenderJob) else None
        try:
            connection.send_bytes(pickle.dumps((*reply, state, seconds), protocol=pickle.HIGHEST_PROTOCOL))
        except (EOFError, OSError):
            return


def _warm_figures() -> None:
    try:
        from .plots import render_figures

        render_figures(None, [{"step": 0, "loss": 1.0, "n_cycles": {"1": 1}, "events": []}], [[0, 1.0, None]])
    except Exception:  # a real figure job reports any problem
        pass
