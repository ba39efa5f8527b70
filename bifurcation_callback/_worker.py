"""The analysis end of a worker (a process started by ``runner.ProcessRunner``, or a thread): frames in,
batches of snapshots analysed, figure jobs drawn, frames out.  ``RenderJob`` is defined here (the runner
re-exports it) because both ends use it.

A worker process exits when the connection closes or its training process dies, even in the middle of an
analysis nobody will read; only figures it writes itself (the fit-end figures) are finished first.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import os
import pickle
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Any

from .analysis import Snapshot, StepAnalyser, skipped_result

__all__ = ["HEADER", "RenderJob", "mkl_bitwise", "receive", "send", "serve", "serve_forked", "serve_socket"]

HEADER = struct.Struct(">Q")


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


def serve(fd: int) -> None:
    """The main of a worker process started as a fresh interpreter (``python -c``): load the analyser sent on
    socket ``fd``, then analyse what arrives until the training process closes the connection or dies."""
    _worker_signals()
    connection = socket.socket(fileno=fd)
    connection.setblocking(True)
    try:
        _, path, payload, options, parent_pid = receive(connection)
        sys.path[:] = path
        analyser = pickle.loads(payload)
    except (EOFError, OSError):
        return
    except Exception as error:
        send(connection, ("failed", f"the worker process cannot load the analyser: {type(error).__name__}: {error}"))
        return
    _serve_ready(connection, analyser, options, parent_pid)


def serve_forked(connection: socket.socket, analyser: StepAnalyser, options: dict[str, Any], parent_pid: int) -> None:
    """The main of a worker process forked from the training process: torch, the package and the analyser are
    there already, so it is ready in milliseconds instead of the 1-2 s a fresh interpreter takes to import torch.
    The caller ends the process with ``os._exit`` whatever happens: it must never return into the training code."""
    gc.freeze()  # the training process's objects are never traversed here, so their memory pages stay shared
    _worker_signals()
    os.environ.update(options["environment"])
    _serve_ready(connection, analyser, options, parent_pid)


def _worker_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle; it closes us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the training's handler (Lightning's)


def _serve_ready(connection: socket.socket, analyser: StepAnalyser, options: dict[str, Any], parent_pid: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    # A forked worker inherits numpy's OpenBLAS pool as training sized it (every core), whose spinning second
    # thread took 2 s of CPU from training over a 300-step fit: one thread in every BLAS and OpenMP library.
    threadpool_limits(1)
    bitwise = mkl_bitwise()
    if options.get("niceness"):
        try:
            os.nice(options["niceness"])
        except OSError:  # a platform without priorities: run as is
            pass
    send(connection, ("ready", os.getpid(), bitwise))
    serve_socket(connection, analyser, options["queue_size"], options["max_batch"], parent_pid,
                 min_batch=options["min_batch"], batch_wait_s=options["batch_wait_s"])


# MKL's conditional numerical reproducibility (mkl_cbwr.h): the branch and mode bits of mkl_cbwr_get/set.
_MKL_CBWR_BRANCH, _MKL_CBWR_ALL, _MKL_CBWR_AUTO, _MKL_CBWR_STRICT = 1, -1, 2, 0x10000


def mkl_bitwise() -> bool | None:
    """Put MKL in strict conditional-reproducibility mode if it is not yet, and say whether it is now.

    In strict mode MKL's small products round the same whatever the operands' memory alignment, so steps
    analysed in one batch give bitwise the records of steps analysed one at a time.  A fresh worker
    interpreter gets the mode from ``MKL_CBWR`` (``runner.worker_environment``); a forked one can set it only
    when MKL has not run in the training process before the fork (MKL then refuses the change, and this returns
    False).  ``torch`` exports MKL's own setter (``mkl_serv_cbwr_set``) from its CPU library; a torch without
    MKL has none (None).

    Examples
    --------
    >>> mkl_bitwise() in (True, False, None)
    True
    """
    import ctypes

    import torch

    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_mode, set_mode = library.mkl_serv_cbwr_get, library.mkl_serv_cbwr_set
    except (OSError, AttributeError):
        return None
    get_mode.argtypes = set_mode.argtypes = [ctypes.c_int]
    get_mode.restype = set_mode.restype = ctypes.c_int
    if not get_mode(_MKL_CBWR_ALL) & _MKL_CBWR_STRICT:
        branch = get_mode(_MKL_CBWR_BRANCH)  # the user's (MKL_CBWR), or "off" (MKL's fastest): then AUTO
        set_mode(max(branch, _MKL_CBWR_AUTO) | _MKL_CBWR_STRICT)
    return bool(get_mode(_MKL_CBWR_ALL) & _MKL_CBWR_STRICT)


def serve_socket(
    connection: socket.socket,
    analyser: StepAnalyser,
    queue_size: int | None,
    max_batch: int,
    parent_pid: int | None = None,
    *,
    min_batch: int = 1,
    batch_wait_s: float = 0.0,
) -> None:
    """Analyse snapshots in batches (all that wait, at most ``max_batch``), draw figure jobs, until EOF.

    With fewer than ``min_batch`` snapshots waiting, the worker waits up to ``batch_wait_s`` for more before it
    analyses them: a step costs 2.2x as much analysed alone as in a batch of 8, so a worker that analysed each
    step as it came would stay busy beside training (and slow it) for no gain but a few steps' lag.  A
    ``("flush",)`` frame (the fit-end drain, a probe) means nothing more comes soon: analyse what waits now."""
    analyser.cycles.progress = False  # nobody waits for the first search here: no progress bar beside training
    inbox: queue.Queue = queue.Queue()
    current: list[Any] = [None]  # the item being worked on (the reader lets detached figures finish)
    reader = threading.Thread(target=_read_frames, args=(connection, inbox, current, parent_pid), name="worker-reader", daemon=True)
    reader.start()
    waiting: collections.deque = collections.deque()
    analysed = 0
    while True:
        if not waiting:
            waiting.append(inbox.get())
        while True:
            try:
                waiting.append(inbox.get_nowait())
            except queue.Empty:
                break
        _wait_for_a_batch(inbox, waiting, min_batch, batch_wait_s)
        if None in waiting:  # the connection closed: only figures the worker writes itself are still wanted
            for entry in waiting:  # frames of every shape: a flush is a 1-tuple
                if entry is not None and entry[0] == "job" and entry[1].log_dirs:
                    current[0] = entry[1]
                    _run_job(connection, entry[1], analyser)
            return
        if waiting[0][0] == "flush":
            waiting.popleft()
            continue
        if waiting[0][0] == "state":
            analyser.load_state_dict(waiting.popleft()[1])
            continue
        if waiting[0][0] == "job":
            job = waiting.popleft()[1]
            current[0] = job
            _run_job(connection, job, analyser)
            current[0] = None
            continue
        batch = [waiting.popleft()]
        while not batch[0][2] and waiting and waiting[0] is not None and waiting[0][0] == "snapshot" and not waiting[0][2]:
            if len(batch) >= max_batch:
                break
            batch.append(waiting.popleft())
        batch = [entry[1] for entry in batch]
        dropped: list[int] = []
        if queue_size is not None and len(batch) > queue_size:  # latest wins; the run's first step is kept
            keep_first = analysed == 0
            dropped = [s.step for s in batch[keep_first:-queue_size]]
            batch = batch[:keep_first] + batch[-queue_size:]
        analysed += len(batch)
        current[0] = batch
        send(connection, ("started", [s.step for s in batch]))
        started = time.perf_counter()
        try:
            results = analyser.analyse_batch(batch)
        except Exception as error:
            if os.environ.get("BIFURCATION_MONITOR_DEBUG"):
                traceback.print_exc()
            results = [skipped_result(s, f"{type(error).__name__}: {error}") for s in batch]
        state = pickle.dumps(analyser.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
        current[0] = None
        if not send(connection, ("results", results, state, time.perf_counter() - started, dropped)):
            return


def _wait_for_a_batch(inbox: queue.Queue, waiting: collections.deque, min_batch: int, batch_wait_s: float) -> None:
    """Take frames from ``inbox`` into ``waiting`` until ``min_batch`` snapshots head it, anything else arrives
    (EOF, a flush, a job, a state: those are not kept waiting), or ``batch_wait_s`` has passed."""
    deadline = time.monotonic() + batch_wait_s

    def ready() -> bool:
        if any(entry is None or entry[0] != "snapshot" or entry[2] for entry in waiting):
            return True  # a flush or EOF, a job or state after the snapshots, or a step analysed alone anyway
        return len(waiting) >= min_batch

    while waiting and not ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            waiting.append(inbox.get(timeout=remaining))
        except queue.Empty:
            return


def _run_job(connection: socket.socket, job: RenderJob, analyser: StepAnalyser) -> None:
    try:
        images, error = job.run(analyser), None
    except Exception as failure:
        images, error = {}, f"{type(failure).__name__}: {failure}"
        if job.log_dirs:  # nobody waits for this reply: say it here
            print(f"BifurcationMonitor's worker could not write the figures of step {job.step}: {error}", file=sys.stderr, flush=True)
    send(connection, ("figures", job.step, images, error))


def _read_frames(connection: socket.socket, inbox: queue.Queue, current: list[Any], parent_pid: int | None) -> None:
    """The worker's reader thread: frames into ``inbox``.  A worker process exits at once at EOF or when its
    training process is gone, unless it still has detached figures to write (the fit-end figures it writes
    itself, a bounded job): an analysis nobody will read is not finished.  A worker thread just stops."""
    buffer = bytearray()
    detached = False
    while True:
        try:
            readable, _, _ = select.select([connection], [], [], 1.0)
        except (OSError, ValueError):
            readable = [connection]
        orphaned = parent_pid is not None and os.getppid() != parent_pid
        if not readable and not orphaned:
            continue
        try:
            chunk = connection.recv(1 << 20) if readable else b""
        except OSError:
            chunk = b""
        buffer += chunk
        while len(buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer)
            if len(buffer) < HEADER.size + size:
                break
            message = pickle.loads(bytes(buffer[HEADER.size : HEADER.size + size]))
            del buffer[: HEADER.size + size]
            detached = detached or (message[0] == "job" and bool(message[1].log_dirs))
            inbox.put(message)
        if not chunk or orphaned:
            item = current[0]
            if parent_pid is not None and not detached and not (isinstance(item, RenderJob) and item.log_dirs):
                os._exit(0)
            inbox.put(None)
            return


def receive(connection: socket.socket) -> Any:
    """One frame, blocking (the worker's start)."""
    header = _read_exactly(connection, HEADER.size)
    (size,) = HEADER.unpack(header)
    return pickle.loads(_read_exactly(connection, size))


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise EOFError("the connection closed")
        data += chunk
    return bytes(data)


def send(connection: socket.socket, message: Any) -> bool:
    """One frame, blocking; False when the training process has closed the connection."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        connection.sendall(HEADER.pack(len(payload)) + payload)
    except OSError:
        return False
    return True

