"""AnalysisWorker: runs a StepAnalyser off the training thread, so training never waits for the analysis.

The training thread hands over snapshots (:meth:`AnalysisWorker.submit`) and picks up finished results
(:meth:`AnalysisWorker.collect`); both calls only do non-blocking socket work.  The analysis itself runs at
the other end of a socket pair, one item at a time, in a **worker process** (default: a fresh Python
interpreter with one CPU thread, so it shares no GIL with training) or in a **thread** of the training
process.  There is no dispatcher thread on the training side: each ``submit`` / ``collect`` call receives a
finished reply if there is one and sends the next item, so the training process spends a few microseconds
per step on the worker and never competes with training for the GIL.

- *Latest wins*: at most ``queue_size`` snapshots wait; when the analysis falls behind, the oldest waiting
  one is dropped (``submit`` returns it so the caller can count it).  The next analysed step is compared with
  the last analysed one, so the brackets of its events reach back over the dropped steps.
- *Faults*: an exception in the analysis comes back as an ``"error"`` message (the step is skipped); a dead
  worker process comes back as ``"lost"`` for the item it was working on and is restarted from the last
  analysed step's state; after ``max_restarts`` restarts the worker gives up (``"fallback"``) and the caller
  analyses the remaining snapshots itself (:meth:`take_queue`, :attr:`state`).
- *Checkpoints*: :meth:`pending` lists every snapshot not yet collected (finished but uncollected, in flight,
  waiting) and :attr:`state` is the analyser's state after the last collected step: together they are what
  a resumed run needs to lose and repeat no step.

Why not ``multiprocessing``'s ``spawn``: it imports the user's ``__main__`` script again in the child, so a
training script without an ``if __name__ == "__main__":`` guard would start training a second time in the
worker.  The worker is started as ``python -c`` instead and receives the analyser pickled with cloudpickle,
which sends a model class defined in ``__main__`` by value.  An analyser that cannot be pickled at all is
analysed in a thread, with a note.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from .analysis import Snapshot, StepAnalyser, StepResult

__all__ = ["WORKER_KINDS", "WORKER_ENV", "AnalysisWorker", "RenderJob", "WorkerMessage"]

WORKER_KINDS: tuple[str, ...] = ("process", "thread")

# Set in the worker process's environment (tests use it to crash only the worker, never the training process).
WORKER_ENV = "BIFURCATION_MONITOR_WORKER"

# How long a worker process may take to import torch and the package and load the analyser.
STARTUP_TIMEOUT_S = 120.0


@dataclasses.dataclass
class RenderJob:
    """Figures to draw where the analysis runs: ``plots.render_figures`` with ``arguments``, logged at ``step``.

    With ``snapshot`` and no ``orbits`` in the arguments, the orbits under the cycles are sampled from the
    snapshot's model (``plots.sample_orbits``).  With ``log_dirs`` the images are written where they are
    drawn, to a TensorBoard event file of their own in each of these run directories, and nothing comes
    back: the fit-end figures of a worker process, which the training process does not wait for.
    """

    step: int
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    snapshot: Snapshot | None = None
    seed: int = 0
    log_dirs: tuple[str, ...] = ()

    def run(self, analyser: StepAnalyser) -> dict[str, Any]:
        """The images (tag → RGB array; empty once written to ``log_dirs``); ``analyser`` provides the model for
        sampled orbits."""
        from .plots import render_figures, sample_orbits

        arguments = dict(self.arguments)
        if self.snapshot is not None and not arguments.get("orbits") and arguments.get("cycles") is not None:
            arguments["orbits"] = sample_orbits(analyser.load(self.snapshot), arguments["cycles"], seed=self.seed)
        images = render_figures(**arguments)
        if not self.log_dirs:
            return images
        from torch.utils.tensorboard import SummaryWriter

        from .dashboard import add_images

        for log_dir in self.log_dirs:
            writer = SummaryWriter(log_dir)
            try:
                add_images(writer, images, self.step)
            finally:
                writer.close()
        return {}


@dataclasses.dataclass
class WorkerMessage:
    """One finished item (or a change of the worker itself), in submission order.

    Attributes
    ----------
    kind : str
        ``"result"`` (``result`` set), ``"error"`` (the analysis raised: ``error``), ``"lost"`` (the worker
        process died while working on it: ``error``), ``"figures"`` (a :class:`RenderJob`'s ``images`` for
        ``step``), ``"note"`` (something to warn about: ``error``, ``category``) or ``"fallback"`` (the worker
        gave up; the caller analyses the rest itself).
    snapshot : Snapshot or None
        The analysed (or lost) snapshot.
    analysis_s : float
        Wall time of the analysis in the worker.
    state : dict, bytes or None
        The analyser's state after this snapshot (from a worker process still pickled: :attr:`AnalysisWorker.state`
        unpickles it when it is read).
    """

    kind: str
    snapshot: Snapshot | None = None
    result: StepResult | None = None
    images: dict[str, Any] | None = None
    step: int | None = None
    error: str | None = None
    category: str = "worker"
    analysis_s: float = 0.0
    state: dict[str, Any] | bytes | None = None


class _CannotStart(RuntimeError):
    """The analyser cannot be analysed in a worker process (it cannot be pickled or unpickled)."""


class AnalysisWorker:
    """Analyse snapshots beside training, newest first when behind.

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
    >>> import torch
    >>> from bifurcation_callback.analysis import take_snapshot
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(2)
    >>> with torch.no_grad():  # z' = 0.5 z + 0.1: one stable fixed point
    ...     _ = model.A.fill_(0.5), model.W.zero_(), model.h.fill_(0.1)
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
        # After the last collected message, and after the last finished analysis; a worker process sends it
        # pickled with every result and it is unpickled only when read (a checkpoint, a restart, a fallback).
        self._state: dict[str, Any] | bytes = analyser.state_dict()
        self._latest_state: dict[str, Any] | bytes = self._state
        self._queue: collections.deque[Snapshot | RenderJob] = collections.deque()
        self._in_flight: Snapshot | RenderJob | None = None
        self._outbox: collections.deque[WorkerMessage] = collections.deque()
        self._connection: Connection | None = None
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._starting_since: float | None = None  # a worker process that has not said "ready" yet
        self._exiting: subprocess.Popen | None = None  # the last process closed without waiting
        self._poller: Any = None  # select.poll on the connection, where the platform has it

    # ------------------------------------------------------------------------------------------ training side

    def start(self) -> None:
        """Start the worker now (a process takes about a second to import torch; the first snapshot should
        not wait for that)."""
        if self._connection is None and not self.failed:
            self._connect()

    def submit(self, snapshot: Snapshot, *, force: bool = False) -> Snapshot | None:
        """Queue a snapshot; returns the waiting snapshot it displaced (latest wins), if any.  ``force`` queues
        without displacing (snapshots restored from a checkpoint)."""
        dropped = None
        waiting = [index for index, item in enumerate(self._queue) if isinstance(item, Snapshot)]
        if self._in_flight is None and waiting:
            # Nothing in flight (the worker is starting, or idle until this call): the oldest snapshot goes next,
            # so the first monitored step is analysed even when the worker takes a second to start.
            waiting = waiting[1:]
        if not force and self.queue_size is not None and len(waiting) >= self.queue_size:
            dropped = self._queue[waiting[0]]
            del self._queue[waiting[0]]
        self._queue.append(snapshot)
        self._pump()
        return dropped

    def submit_job(self, job: RenderJob) -> None:
        """Queue figures to draw after the snapshots queued so far (never dropped)."""
        self._queue.append(job)
        self._pump()

    def collect(self, *, progress: bool = True) -> list[WorkerMessage]:
        """The messages finished since the last call, in submission order (``progress``: first receive and send
        what is ready; False only hands over what has already arrived)."""
        if progress:
            self._pump()
        messages = list(self._outbox)
        self._outbox.clear()
        for message in messages:
            if message.state is not None:
                self._state = message.state
        return messages

    def pending(self) -> list[Snapshot]:
        """Every submitted snapshot whose message has not been collected, oldest first."""
        items = [m.snapshot for m in self._outbox] + [self._in_flight] + list(self._queue)
        return [item for item in items if isinstance(item, Snapshot)]

    @property
    def state(self) -> dict[str, Any]:
        """The analyser's state after the last collected step."""
        self._state = _unpickled(self._state)
        return self._state

    @property
    def n_waiting(self) -> int:
        """Snapshots in flight or waiting (not yet finished)."""
        return sum(isinstance(item, Snapshot) for item in [self._in_flight, *self._queue])

    @property
    def starting(self) -> bool:
        """Whether a worker process has been started but has not said it is ready yet (it imports torch and
        the package and loads the analyser: a second or more)."""
        return self._starting_since is not None

    @property
    def busy(self) -> bool:
        return bool(self._queue or self._in_flight is not None)

    def drain(self, timeout_s: float | None) -> bool:
        """Wait until every queued item is finished (or the worker gave up); False after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.busy and not self.failed:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self._connection is not None and (self._in_flight is not None or self._starting_since is not None):
                try:
                    self._connection.poll(1.0 if remaining is None else min(remaining, 1.0))
                except (OSError, EOFError):
                    pass  # a broken connection: _pump's receive finds it and counts the worker as lost
            elif self._connection is not None:
                time.sleep(0.002)  # waiting for a copy from CUDA to complete
            self._pump()
        return True

    def take_queue(self) -> list[Snapshot | RenderJob]:
        """Remove and return what is waiting (after a fallback, or when giving up at a drain timeout)."""
        queued = list(self._queue)
        self._queue.clear()
        return queued

    @property
    def writing_detached(self) -> bool:
        """Whether the only unfinished item is a :class:`RenderJob` with ``log_dirs`` that a worker process is
        drawing: it writes its images itself, so :meth:`close` can leave it to finish."""
        job = self._in_flight
        return not self._queue and isinstance(job, RenderJob) and bool(job.log_dirs) and self._process is not None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker without waiting for it: the socket is shut down (the worker sees EOF and exits) and
        a worker process is reaped by a daemon thread (killed if it has not exited after ``timeout_s``).  An
        item the process is working on is finished first; only a :class:`RenderJob` that writes its own
        images (:attr:`writing_detached`) has any effect then: :meth:`wait_closed` waits for it."""
        self._queue.clear()
        self._in_flight = None
        self._disconnect(timeout_s, wait=False)

    def wait_closed(self, timeout_s: float | None = None) -> bool:
        """Wait until a closed worker process has exited (after writing detached figures); False after
        ``timeout_s``.  True at once for a thread or a worker that never started a process."""
        process = self._exiting
        if process is None:
            return True
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    # ------------------------------------------------------------------------------------------ the protocol

    def _pump(self) -> None:
        """Make progress without blocking: start the worker if needed, receive a finished reply, send the next
        item."""
        while not self.failed:
            if self._connection is None:
                if not self.busy:
                    return
                self._connect()
                continue
            if self._starting_since is not None and not self._ready():
                return
            if self._in_flight is not None:
                if not self._poll():
                    return
                self._receive()
                continue
            if not self._queue:
                return
            head = self._queue[0]
            if isinstance(head, Snapshot) and not head.is_ready():
                return  # a copy from CUDA still on its way: sent at a later call, the training thread never waits
            self._send(self._queue.popleft())

    def _poll(self) -> bool:
        try:
            if self._poller is not None:  # a tenth of Connection.poll's cost, paid at every training step
                return bool(self._poller.poll(0))
            return self._connection.poll(0)
        except (OSError, EOFError, ValueError):
            return True  # _receive sees the broken connection

    def _send(self, item: Snapshot | RenderJob) -> None:
        self._in_flight = item
        try:
            if isinstance(item, Snapshot):
                item.wait()
            self._connection.send_bytes(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        except (OSError, EOFError) as error:
            self._lost(error)

    def _receive(self) -> None:
        item = self._in_flight
        try:
            kind, payload, state, seconds = pickle.loads(self._connection.recv_bytes())
        except (OSError, EOFError) as error:
            self._lost(error)
            return
        except Exception as error:  # an unreadable reply costs one item, never the run
            kind, payload, state, seconds = "error", f"{type(error).__name__}: {error}", None, 0.0
        self._in_flight = None
        self._outbox.append(self._message(item, kind, payload, state, seconds))

    def _message(self, item: Snapshot | RenderJob, kind: str, payload: Any, state: Any, seconds: float) -> WorkerMessage:
        if isinstance(item, RenderJob):
            if kind == "error":
                text = f"BifurcationMonitor draws no figures at step {item.step}: {payload}"
                return WorkerMessage("note", error=text, category="figures")
            return WorkerMessage("figures", images=payload, step=item.step)
        self._latest_state = state if state is not None else self._latest_state
        if kind == "error":
            return WorkerMessage("error", item, error=payload, analysis_s=seconds, state=self._latest_state)
        return WorkerMessage("result", item, payload, analysis_s=seconds, state=self._latest_state)

    def _lost(self, error: BaseException) -> None:
        """The worker process died (or its connection broke) while working on the item in flight."""
        item, self._in_flight = self._in_flight, None
        code = self._disconnect(1.0, wait=True)
        snapshot = item if isinstance(item, Snapshot) else None
        if item is None:
            what = "starting"
        elif snapshot is not None:
            what = f"analysing step {item.step}"
        else:
            what = f"drawing the figures of step {item.step}"
        reason = f"the analysis worker process died (exit code {code}) while {what}"
        if self.restarts >= self.max_restarts:
            self._outbox.append(WorkerMessage("lost", snapshot, error=reason, state=self._latest_state))
            self._outbox.append(WorkerMessage(
                "fallback",
                error=f"{reason} after {self.restarts} restart(s): the rest of the run is analysed on the training "
                "thread (mode='sync')",
            ))
            self.failed = True
            return
        self.restarts += 1
        text = f"{reason} ({type(error).__name__}); a new worker process takes over"
        self._outbox.append(WorkerMessage("lost", snapshot, error=text, state=self._latest_state))

    # ------------------------------------------------------------------------------------------ endpoints

    def _connect(self) -> None:
        """Start the analysis end of a new socket pair: a worker process, or a thread with the analyser."""
        parent, child = socket.socketpair()
        self._open(parent)
        if self.kind == "process":
            try:
                self._start_process(child)
                return
            except _CannotStart as error:  # analyse in this process instead
                self._disconnect(1.0, wait=True)
                self.kind = "thread"
                self._outbox.append(WorkerMessage(
                    "note", error=f"BifurcationMonitor analyses in a thread instead of a worker process: {error}"
                ))
                parent, child = socket.socketpair()
                self._open(parent)
        self.analyser.load_state_dict(_unpickled(self._latest_state))
        connection = Connection(child.detach())
        self._thread = threading.Thread(
            target=_serve_connection, args=(connection, self.analyser, False), name="bifurcation-monitor-worker",
            daemon=True,
        )
        self._thread.start()

    def _open(self, parent: socket.socket) -> None:
        self._socket = parent
        self._connection = Connection(os.dup(parent.fileno()))
        self._poller = select.poll() if hasattr(select, "poll") else None  # not on Windows
        if self._poller is not None:
            self._poller.register(self._connection.fileno(), select.POLLIN)

    def _start_process(self, child: socket.socket) -> None:
        try:
            self.analyser.load_state_dict(_unpickled(self._latest_state))
            # cloudpickle sends a class defined in the user's __main__ script by value: the worker cannot import
            # that script (importing it could start the training again) and needs the class all the same.
            payload = cloudpickle.dumps(self.analyser, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            child.close()
            raise _CannotStart(f"the RNN cannot be pickled ({type(error).__name__}: {error})") from None
        environment = {**os.environ, WORKER_ENV: "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        command = [sys.executable, "-c", f"from bifurcation_callback.worker import serve; serve({child.fileno()})"]
        try:
            self._process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=environment, cwd=os.getcwd())
        except (OSError, ValueError) as error:  # no process here (limits, a sandbox, no pass_fds on Windows): a thread
            child.close()
            raise _CannotStart(f"no worker process could be started ({type(error).__name__}: {error})") from None
        child.close()
        self.pids.append(self._process.pid)
        self._starting_since = time.monotonic()
        try:  # the payload is small; the worker reads it as soon as its interpreter is up
            self._connection.send_bytes(pickle.dumps((list(sys.path), payload, self.warm_figures), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:
            self._lost(error)

    def _ready(self) -> bool:
        """Whether a starting worker process has answered (reading its answer); a process that cannot load
        the analyser makes the worker fall back to a thread, one that died or hangs counts as lost."""
        if not self._poll():
            if time.monotonic() - self._starting_since > STARTUP_TIMEOUT_S:
                self._lost(TimeoutError(f"no answer within {STARTUP_TIMEOUT_S:.0f} s"))
            return False
        self._starting_since = None
        try:
            kind, detail = pickle.loads(self._connection.recv_bytes())
        except (OSError, EOFError) as error:
            self._lost(error)
            return False
        if kind == "ready":
            return True
        self._disconnect(1.0, wait=True)
        self.kind = "thread"
        self._outbox.append(WorkerMessage("note", error=f"BifurcationMonitor analyses in a thread instead of a worker process: {detail}"))
        return False

    def _disconnect(self, timeout_s: float, *, wait: bool) -> int | None:
        """Close the socket (the worker sees EOF and exits); returns the process's exit code when waited for."""
        process, connection, sock = self._process, self._connection, self._socket
        self._process = self._connection = self._socket = self._poller = None
        self._starting_since = None
        for closable in (sock, connection):
            if closable is None:
                continue
            try:
                if closable is sock:
                    sock.shutdown(socket.SHUT_RDWR)
                closable.close()
            except OSError:
                pass
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


def _reap(process: subprocess.Popen, timeout_s: float) -> int:
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# ---------------------------------------------------------------------------------------------- the analysis end


def serve(fd: int) -> None:
    """The worker process's main: load the analyser sent on socket ``fd``, then analyse what arrives until the
    training process closes the connection."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it closes us
    torch.set_num_threads(1)
    connection = Connection(fd)
    try:
        path, payload, warm_figures = pickle.loads(connection.recv_bytes())
        sys.path[:] = path
        analyser = pickle.loads(payload)
    except (EOFError, OSError):
        return
    except Exception as error:
        detail = f"the worker process cannot load the analyser: {type(error).__name__}: {error}"
        connection.send_bytes(pickle.dumps(("failed", detail)))
        return
    connection.send_bytes(pickle.dumps(("ready", os.getpid())))
    _serve_connection(connection, analyser, warm_figures)


def _serve_connection(connection: Connection, analyser: StepAnalyser, warm_figures: bool) -> None:
    """Answer every item (Snapshot or RenderJob) with (kind, payload, analyser state, seconds)."""
    analyser.cycles.progress = False  # nobody waits for the first search here: no progress bar beside training
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
            reply: tuple[str, Any] = ("done", item.run(analyser) if isinstance(item, RenderJob) else analyser.analyse(item))
        except Exception as error:
            reply = ("error", f"{type(error).__name__}: {error}")
            if os.environ.get("BIFURCATION_MONITOR_DEBUG"):
                traceback.print_exc()
            if isinstance(item, RenderJob) and item.log_dirs:  # nobody waits for this reply: say it here
                print(f"BifurcationMonitor's worker could not write the figures of step {item.step}: {reply[1]}",
                      file=sys.stderr, flush=True)
        state = pickle.dumps(analyser.state_dict(), protocol=pickle.HIGHEST_PROTOCOL) if isinstance(item, Snapshot) else None
        try:
            connection.send_bytes(pickle.dumps((*reply, state, time.perf_counter() - started), protocol=pickle.HIGHEST_PROTOCOL))
        except (EOFError, OSError):
            return


def _unpickled(state: dict[str, Any] | bytes) -> dict[str, Any]:
    return pickle.loads(state) if isinstance(state, bytes) else state


def _warm_figures() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the fit-end figures write with it)

        from .plots import render_figures

        render_figures(None, [{"step": 0, "loss": 1.0, "n_cycles": {"1": 1}, "events": []}], [[0, 1.0, None]])
    except Exception:  # a real figure job reports any problem
        pass
