"""analyse_checkpoints: a finished run's checkpoints to the monitor's picture, in parallel, on a cluster when needed.

The work splits in two.  **Independent, per checkpoint** (:func:`analyse_checkpoint`, a pure function of the file
and :class:`CheckpointSettings`, so any ``concurrent.futures``-like executor can run it: a local process pool,
Dask, Ray, submitit): read the model and the training step, search its cycles with ``find_cycles`` (statuses per
order), and find the attractors its orbits reach from random states and from its stable cycles
(``find_attractors``).  **Sequential, in checkpoint order** (this process): the monitor's own
:class:`~bifurcation_callback.analysis.StepAnalyser` with that work in place of its per-step search and
simulation (``analyse_batch(..., searched=..., attractor_reports=...)``), i.e. the previous checkpoint's cycles
re-solved with the next weights and followed across switching planes, every appearance and disappearance
checked against the other checkpoint's weights (``bifurcations.compare_snapshots``), track ids, and the
attractor followed from checkpoint to checkpoint by identity (``AttractorTracker.follow``).  A cycle one
checkpoint's search missed is therefore carried in from the previous checkpoint or reported as a late
discovery, never as a bifurcation.  The records then go through the monitor's :class:`~bifurcation_callback.session.MonitorSession`
and :class:`~bifurcation_callback.dashboard.Dashboard`: ``events.jsonl``, ``summary.json`` and TensorBoard
event files in the monitor's layout.

A checkpoint saved after ``N`` optimizer steps (Lightning's ``global_step``) holds the weights the monitor
records at step ``N - 1``, so online and offline records of one run line up.  Results do not depend on the
executor or the number of workers: each checkpoint's search is seeded by ``seed + step``.  Finished analyses
are cached (keyed by the file's content, the settings and the package's version and sources), so a re-run
analyses only new or changed checkpoints, and a run stopped halfway resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ._checks import check_finder_kwargs, require_bool, require_int, require_int_sequence, require_real
from .analysis import Snapshot, StepAnalyser, StepRecord, skipped_result
from .attractors import AttractorReport, find_attractors
from .checkpoints import CheckpointError, checkpoint_step, model_from_checkpoint, read_checkpoint
from .cycles import CycleSet, _one_cpu_thread, _resolve_orders, find_cycles
from .dashboard import Dashboard, clear_run_files, custom_scalars_layout
from .loss_jumps import DEFAULT_JUMP_SCALES
from .models import model_tensors
from .run_logs import GRAD_NORM_TAGS, read_loss_history
from .runner import InlineRunner
from .session import MonitorSession, SessionSettings, warn_once
from .tracking import AttractorTracker

__all__ = [
    "EXECUTORS",
    "GRAD_NORM_TAGS",
    "CheckpointAnalysis",
    "CheckpointSettings",
    "OfflineRun",
    "analyse_checkpoint",
    "analyse_checkpoints",
    "checkpoint_files",
    "read_loss_history",
]

# The executors analyse_checkpoints builds itself (name -> what it is): the CLI's --executor choices and the
# validation error read this.  Any object with submit(fn, *args) works too (Ray, submitit, your own).
EXECUTORS: dict[str, str] = {
    "process": "a pool of `workers` local processes (1: this process)",
    "dask": "Dask distributed: the scheduler at `scheduler`, else a local cluster of `workers` processes",
}
# Checkpoints tracked together in one batched call of the sequential pass (results do not depend on it).
TRACKING_BATCH = 16
# Where the cache of finished checkpoint analyses goes inside the output folder.
CACHE_FOLDER = "checkpoint_cache"
_OWNER = "analyse_checkpoints"


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """Everything one checkpoint's analysis depends on besides the file (part of its cache key).

    Attributes
    ----------
    orders : tuple of int
        Cycle orders searched.
    seed : int
        The search at step ``s`` is seeded by ``seed + s``.
    finder_kwargs : dict
        ``find_cycles`` options (``tracking.FINDER_KEYS``), already checked.
    model_class, config, prefix
        How the model is read (``checkpoints.load_model``).
    max_attractor_period : int
        Longest attractor period detected (0: no attractor analysis).
    """

    orders: tuple[int, ...]
    seed: int = 0
    finder_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_class: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    prefix: str | None = None
    max_attractor_period: int = 256

    def cache_key(self, content_digest: str) -> str:
        """The cache key of a file with this content under these settings and this code of the package (its
        version and its source files: a development checkout's edits are a new version too).

        Examples
        --------
        >>> settings = CheckpointSettings(orders=(1, 2))
        >>> settings.cache_key("ab") == CheckpointSettings(orders=(1, 2)).cache_key("ab") != settings.cache_key("cd")
        True
        """
        from . import __version__

        fields = {**dataclasses.asdict(self), "finder_kwargs": {k: str(v) for k, v in sorted(self.finder_kwargs.items())}}
        code = {"version": __version__, "source": _source_digest()}
        text = json.dumps({"content": content_digest, "settings": fields, "code": code}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """SHA-256 of the package's Python sources (a few hundred kB: milliseconds, once per process)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass
class CheckpointAnalysis:
    """One checkpoint analysed on its own: what a worker sends back, and what the cache keeps.

    Attributes
    ----------
    path : str
    step : int or None
        The monitor's step of these weights: the checkpoint's ``global_step - 1`` (None when unreadable).
    model : torch.nn.Module or None
        The model read from the checkpoint (None when no model could be read from it).
    cycles : CycleSet or None
        ``find_cycles`` of the model (None when unreadable or skipped).
    attractors : AttractorReport or None
        The attractors reached from random states (seeded by the step) and from the stable cycles' points; None
        without the attractor analysis or when it failed (``attractor_error`` says why).
    hyperparameters : dict or None
        The checkpoint's ``hyper_parameters`` (Lightning's ``save_hyperparameters``), JSON-ready.
    unreadable : str or None
        Why the file or its step could not be read (the checkpoint is left out, with a warning).
    skipped : str or None
        Why its model could not be read or analysed (no model found, NaN weights, ...): a ``skipped`` record at
        its step, as the monitor records a step it could not analyse.
    seconds : float
        Wall time of the cycle search and the attractor analysis.
    """

    path: str
    step: int | None = None
    model: Any = None
    cycles: CycleSet | None = None
    hyperparameters: dict[str, Any] | None = None
    unreadable: str | None = None
    skipped: str | None = None
    attractors: AttractorReport | None = None
    attractor_error: str | None = None
    seconds: float = 0.0


def analyse_checkpoint(path: str | Path, settings: CheckpointSettings) -> CheckpointAnalysis:
    """Read one checkpoint and search its cycles: the independent part of :func:`analyse_checkpoints`.

    A pure function of the file and ``settings`` (it never raises for a bad file: the reason comes back in
    ``unreadable`` or ``skipped``), picklable by reference, so any executor can run it anywhere the package
    and the file can be reached.

    Examples
    --------
    >>> import tempfile
    >>> from bifurcation_callback.models import CHECKPOINT_MODEL_KEY, PLRNN, model_to_state
    >>> model = PLRNN(1)
    >>> with torch.no_grad():  # z' = 0.5 z + 1: one stable fixed point, z = 2
    ...     _ = model.A.fill_(0.5), model.h.fill_(1.0)
    >>> path = Path(tempfile.mkdtemp()) / "epoch=0-step=10.ckpt"
    >>> torch.save({"global_step": 10, CHECKPOINT_MODEL_KEY: model_to_state(model)}, path)
    >>> analysis = analyse_checkpoint(path, CheckpointSettings(orders=(1, 2)))
    >>> analysis.step, analysis.cycles.counts(), analysis.cycles.statuses
    (9, {1: 1, 2: 0}, {1: 'exhaustive', 2: 'exhaustive'})
    >>> analyse_checkpoint(path.with_name("gone.ckpt"), CheckpointSettings(orders=(1,))).unreadable
    'no such file'
    """
    path = str(path)
    try:
        checkpoint = read_checkpoint(path)
        step = checkpoint_step(checkpoint, path) - 1
    except CheckpointError as error:
        return CheckpointAnalysis(path, unreadable=_without_path(str(error), path))
    hyperparameters = _json_ready(checkpoint.get("hyper_parameters")) if isinstance(checkpoint, dict) else None
    analysis = CheckpointAnalysis(path, step, hyperparameters=hyperparameters)
    started = time.perf_counter()
    try:
        analysis.model = model_from_checkpoint(
            checkpoint, path, model_class=settings.model_class, config=dict(settings.config), prefix=settings.prefix
        )
        analysis.cycles = find_cycles(analysis.model, max(settings.orders), orders=settings.orders,
                                      seed=settings.seed + step, **settings.finder_kwargs)
    except Exception as error:  # no model, NaN weights, a user model's error: a skipped record says why, as in the monitor
        analysis.skipped = f"{type(error).__name__}: {_without_path(str(error), path)}"
    if analysis.cycles is not None and settings.max_attractor_period:
        try:
            analysis.attractors = _attractors(analysis.model, analysis.cycles, step, settings)
        except Exception as error:  # costs the checkpoint its attractor only, as in the monitor
            analysis.attractor_error = f"{type(error).__name__}: {error}"
    analysis.seconds = time.perf_counter() - started
    return analysis


def _attractors(model: Any, cycles: CycleSet, step: int, settings: CheckpointSettings) -> AttractorReport:
    """What the model's orbits reach from the monitor's random starting states for this step and from every stable
    cycle (so each attractor the search found is in the report), with the long transient of a first step."""
    tracker = AttractorTracker(settings.max_attractor_period, seed=settings.seed)
    stable = [cycle.points[0] for cycle in cycles if cycle.is_stable]
    states = tracker.starting_states(model, step, reference=np.asarray(stable) if stable else None)
    return find_attractors(model, states, max_period=tracker.max_period, n_transient=4 * tracker.n_transient,
                           n_window=2 * tracker.max_period)


def _without_path(message: str, path: str) -> str:
    """A checkpoint error's message without the file name it starts with (the caller names the file)."""
    return message.removeprefix(f"{path}: ")


def _analyse_chunk(paths: Sequence[str], settings: CheckpointSettings) -> list[CheckpointAnalysis]:
    """The task an executor runs: a few checkpoints, one after the other, on one CPU thread (a worker per core:
    a second intra-op thread per worker would only compete with the other workers)."""
    with _one_cpu_thread(torch.device("cpu")):
        return [analyse_checkpoint(path, settings) for path in paths]


@dataclasses.dataclass
class OfflineRun:
    """What :func:`analyse_checkpoints` produced.

    Attributes
    ----------
    records : list of StepRecord
        One per analysed checkpoint, in step order (``record.checkpoint`` names its file).
    summary : dict
        ``summary.json``: the monitor's summary plus ``offline`` (how the checkpoints were analysed) and
        ``hyperparameters`` (the last checkpoint's).
    out : Path or None
        The output folder.
    left_out : dict of str to str
        Checkpoint files without a record, and why (unreadable, a step another file has, another model).
    n_analysed, n_cached : int
        Checkpoints searched in this call, and taken from the cache.
    """

    records: list[StepRecord]
    summary: dict[str, Any]
    out: Path | None
    left_out: dict[str, str]
    n_analysed: int
    n_cached: int


def analyse_checkpoints(
    checkpoints: str | Path | Sequence[str | Path],
    *,
    out: str | Path | None = None,
    max_order: int = 4,
    orders: Sequence[int] | None = None,
    logs: str | Path | None = None,
    loss_key: str = "train_loss",
    executor: str | Any = "process",
    workers: int = 1,
    scheduler: str | None = None,
    chunk_size: int = 1,
    model_class: str | None = None,
    config: Mapping[str, Any] | None = None,
    prefix: str | None = None,
    seed: int = 0,
    finder_kwargs: Mapping[str, Any] | None = None,
    max_attractor_period: int = 256,
    max_tracked_cycles: int = 8,
    jump_window: int | None = None,
    jump_warmup_steps: int = 20,
    jump_min_change: float = 1.0,
    jump_scales: Sequence[int] = DEFAULT_JUMP_SCALES,
    show_all_events: bool = False,
    cache: bool = True,
    progress: bool = True,
) -> OfflineRun:
    """Analyse a finished run's checkpoints as the monitor would have, in parallel, and write the monitor's files.

    Each checkpoint is read and its cycles searched independently (:func:`analyse_checkpoint`, run by
    ``executor``); then, in step order, the monitor's analyser tracks the cycles from checkpoint to checkpoint
    (the previous checkpoint's cycles re-solved with the next weights, appearances and disappearances checked
    against both checkpoints' weights, so a cycle one search missed is no bifurcation), follows the attractor
    and detects the events.  Loss jumps come from the run's logs and are correlated with the events as the
    monitor does.  The checkpoint of ``global_step`` ``N`` is recorded at step ``N - 1``, the monitor's step of
    those weights.

    Parameters
    ----------
    checkpoints : path or sequence of paths
        Checkpoint files (Lightning's, or any ``torch.save`` dict with ``global_step`` or a ``step=N`` file
        name) and folders, searched recursively for ``*.ckpt``.
    out : path, optional
        Folder for ``events.jsonl`` (one record per checkpoint, with its path), ``summary.json``, TensorBoard
        event files and the cache; what an earlier analysis wrote there is replaced.  None writes nothing.
    max_order, orders
        Search orders ``1 .. max_order``, or exactly ``orders``.
    logs : path, optional
        The run's TensorBoard event files or CSV ``metrics.csv`` (a file, or the folder of one run): the loss
        at every logged step, for the records and the loss jumps (and the gradient norm, where the run logged one:
        ``GRAD_NORM_TAGS``).  Without it the records have no loss and there are no loss jumps.
    loss_key : str
        The loss metric in ``logs`` (``loss_key`` or ``loss_key + "_step"``).
    executor : str or executor
        ``"process"`` (default), ``"dask"`` (``EXECUTORS``), or any object with ``submit(fn, *args)`` returning
        a future with ``result()`` (``concurrent.futures.Executor``, Dask's ``client.get_executor()``,
        submitit's ``AutoExecutor``, a Ray adapter): it is used as it is and not shut down.
    workers : int
        Processes of the ``"process"`` pool (1: in this process) or of a local Dask cluster.
    scheduler : str, optional
        Address of a running Dask scheduler (``executor="dask"``), e.g. ``"tcp://10.0.0.1:8786"``.
    chunk_size : int
        Checkpoints per submitted task (more per task: fewer jobs for a batch system such as Slurm).
    model_class, config, prefix
        How to read the model, as ``bifurcation-callback find`` reads it (``checkpoints.load_model``).
    seed : int
        The search of the checkpoint at step ``s`` is ``find_cycles(..., seed=seed + s)``.
    finder_kwargs : dict, optional
        ``find_cycles`` options: ``n_starts``, ``inner``, ``outer``, ``exhaustive_limit``, ``dtype``, ``device``.
    max_attractor_period, max_tracked_cycles, jump_window, jump_warmup_steps, jump_min_change, jump_scales, show_all_events
        As for ``BifurcationMonitor`` (``jump_window`` defaults to 5 times the median distance between
        checkpoints).
    cache : bool
        Keep each finished checkpoint analysis in ``out/checkpoint_cache`` and reuse it when the file's content,
        the settings and the package (version and sources) are the same.
    progress : bool
        Progress bars (stderr) over the checkpoints.

    Returns
    -------
    OfflineRun

    Raises
    ------
    ValueError
        A bad argument (the message names it and what is allowed), no checkpoint found, ``logs`` without the
        loss, no readable checkpoint, or a Dask scheduler that cannot be reached.

    Warns
    -----
    RuntimeWarning
        For every checkpoint left out (unreadable, a step another checkpoint has, another model than the
        others) and every skipped one; the others are analysed.

    Examples
    --------
    >>> import tempfile
    >>> from bifurcation_callback.models import CHECKPOINT_MODEL_KEY, PLRNN, model_to_state
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = PLRNN(1)
    >>> for step, a in [(10, 0.5), (20, -1.5)]:  # the fixed point's multiplier a crosses -1: a flip
    ...     with torch.no_grad():
    ...         _ = model.A.fill_(a), model.h.fill_(1.0)
    ...     torch.save({"global_step": step, CHECKPOINT_MODEL_KEY: model_to_state(model)}, folder / f"step={step}.ckpt")
    >>> run = analyse_checkpoints(folder, max_order=2, max_attractor_period=0, progress=False)
    >>> [(r.step, r.n_cycles, [e["kind"] for e in r.verified_events]) for r in run.records]
    [(9, {1: 1, 2: 0}, []), (19, {1: 1, 2: 0}, ['stability_change'])]
    >>> run.records[1].events[0]["step_interval"], run.records[1].checkpoint == str(folder / "step=20.ckpt")
    ([9, 19], True)
    """
    started = time.perf_counter()
    settings = CheckpointSettings(
        orders=_resolve_orders(max_order, orders),
        seed=require_int("seed", seed, 0, owner=_OWNER),
        finder_kwargs=check_finder_kwargs(finder_kwargs, owner=_OWNER),
        model_class=_text("model_class", model_class, optional=True),
        config=dict(config or {}),
        prefix=_text("prefix", prefix, optional=True),
        max_attractor_period=require_int("max_attractor_period", max_attractor_period, 0, owner=_OWNER),
    )
    session_settings = SessionSettings(
        max_order=max(settings.orders),
        every_n_steps=None,
        every_n_epochs=None,
        jump_window=require_int("jump_window", jump_window, 0, optional=True, owner=_OWNER),
        jump_warmup_steps=require_int("jump_warmup_steps", jump_warmup_steps, 0, owner=_OWNER),
        jump_min_change=require_real("jump_min_change", jump_min_change, minimum=0.0, owner=_OWNER),
        jump_scales=require_int_sequence("jump_scales", jump_scales, 1, owner=_OWNER),
        log_figures_every_n_steps=0,
        max_attractor_period=settings.max_attractor_period,
        show_all_events=require_bool("show_all_events", show_all_events, owner=_OWNER),
        seed=settings.seed,
        max_tracked_cycles=require_int("max_tracked_cycles", max_tracked_cycles, 0, owner=_OWNER),
        finder_kwargs=dict(settings.finder_kwargs),
    )
    workers = require_int("workers", workers, 1, owner=_OWNER)
    chunk_size = require_int("chunk_size", chunk_size, 1, owner=_OWNER)
    loss_key = _text("loss_key", loss_key)
    cache, progress = require_bool("cache", cache, owner=_OWNER), require_bool("progress", progress, owner=_OWNER)
    _check_executor(executor, scheduler)
    files = checkpoint_files(checkpoints)
    out = Path(out) if out is not None else None
    history = read_loss_history(logs, loss_key, exclude=out) if logs is not None else None

    left_out: dict[str, str] = {}
    cache_folder = out / CACHE_FOLDER if out is not None and cache else None
    analyses, n_analysed, n_cached = _independent_part(
        files, settings, executor, workers, scheduler, chunk_size, cache_folder, progress, left_out
    )
    independent_s = time.perf_counter() - started
    analyses = _in_step_order(analyses, left_out)
    for path, why in left_out.items():
        warnings.warn(f"{_OWNER} leaves out {path}: {why}", RuntimeWarning, stacklevel=2)
    analysed = [analysis for analysis in analyses if analysis.cycles is not None]
    if not analysed:
        reasons = {analysis.skipped for analysis in analyses} | set(left_out.values())
        raise ValueError(f"none of the {len(files)} checkpoints could be analysed: {'; '.join(sorted(reasons))}")

    analyser = StepAnalyser(
        analysed[0].model, max_order=max(settings.orders), orders=settings.orders, max_tracked_cycles=max_tracked_cycles,
        seed=settings.seed, finder_kwargs=settings.finder_kwargs, max_attractor_period=settings.max_attractor_period,
    )
    offline = {
        "n_checkpoints": len(files),
        "n_analysed": n_analysed,
        "n_cached": n_cached,
        "left_out": dict(left_out),
        "executor": executor if isinstance(executor, str) else type(executor).__name__,
        "workers": workers if isinstance(executor, str) and scheduler is None else None,
        "orders": list(settings.orders),
        "seed": settings.seed,
        "finder_kwargs": {key: str(value) for key, value in settings.finder_kwargs.items()},
        "logs": str(logs) if logs is not None else None,
        "loss_key": loss_key if logs is not None else None,
        "independent_seconds": independent_s,  # reading and searching, in parallel
    }
    records, summary = _write_run(out, analyses, analyser, session_settings, history, offline, started, progress)
    return OfflineRun(records, summary, out, left_out, n_analysed, n_cached)


def _write_run(
    out: Path | None, analyses: list[CheckpointAnalysis], analyser: StepAnalyser, settings: SessionSettings,
    history: list[tuple[int, float | None, float | None]] | None, offline: dict[str, Any], started: float,
    progress: bool,
) -> tuple[list[StepRecord], dict[str, Any]]:
    """The sequential pass through the monitor's session, which writes the records, the summary (with the
    ``offline`` fields and the hyperparameters) and the figures to ``out``, as the monitor writes its run folder."""
    if out is not None:
        clear_run_files(out)  # a re-run replaces the earlier files: TensorBoard would show every curve twice
    tensorboard = _TensorBoardFolder(out) if out is not None else None
    dashboard = Dashboard([tensorboard] if tensorboard is not None else [], out)
    try:
        dashboard.log_layout(custom_scalars_layout("bifurcation/loss", analyser.cycles.orders))
        dashboard.rewrite_records([], resumed=True)
        session = MonitorSession(settings, analyser, InlineRunner(analyser), dashboard, warn_once(set()))
        session.mode = "offline"
        tracking_started = time.perf_counter()
        losses = {int(step): (loss, grad_norm) for step, loss, grad_norm in history or ()}
        _sequential_part(analyses, analyser, session, losses, progress)
        offline["sequential_seconds"] = time.perf_counter() - tracking_started  # tracking, in step order
        # Without logs the run's steps are known only at the checkpoints (their losses are not).
        session.history = [list(row) for row in history] if history else [[a.step, None, None] for a in analyses]
        summary = session.summary(time.perf_counter() - started)
        summary.update(
            monitor_overhead=None,  # nothing ran beside training
            hyperparameters=next((a.hyperparameters for a in reversed(analyses) if a.hyperparameters), None),
            offline={**offline, "wall_seconds": time.perf_counter() - started},
        )
        if session.records:
            session.request_figures(summary["final_step"] or 0, summary["loss_jumps"])
            session.collect()
        session.publish()
        session.write_summary(summary)
        dashboard.flush()
    finally:
        dashboard.close_files()
        if tensorboard is not None:
            tensorboard.experiment.close()
    return list(session.records), summary


# ---------------------------------------------------------------------------------------------- inputs


def checkpoint_files(checkpoints: str | Path | Sequence[str | Path]) -> list[Path]:
    """The checkpoint files named by ``checkpoints``: files as given, folders searched recursively for
    ``*.ckpt`` (sorted), each file once.

    Raises
    ------
    ValueError
        A path that does not exist, or no checkpoint at all.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b/epoch=0-step=20.ckpt", "a/epoch=0-step=10.ckpt", "notes.txt"):
    ...     (folder / name).parent.mkdir(exist_ok=True)
    ...     _ = (folder / name).write_text("")
    >>> [path.relative_to(folder).as_posix() for path in checkpoint_files(folder)]
    ['a/epoch=0-step=10.ckpt', 'b/epoch=0-step=20.ckpt']
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise ValueError(f"{_OWNER}: no checkpoint files or folders given")
    found: dict[Path, Path] = {}  # resolved -> as named: a file named twice is analysed once
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(path.rglob("*.ckpt")):
                if file.is_file():
                    found.setdefault(file.resolve(), file)
        elif path.is_file():
            found.setdefault(path.resolve(), path)
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not found:
        raise ValueError(f"no *.ckpt file under {', '.join(map(str, paths))} (pass checkpoint files or their folders)")
    return sorted(found.values())




# ---------------------------------------------------------------------------------------------- independent part


def _check_executor(executor: object, scheduler: str | None) -> None:
    if isinstance(executor, str):
        if executor not in EXECUTORS:
            raise ValueError(f"{_OWNER}: executor must be one of {', '.join(map(repr, EXECUTORS))} or an object with "
                             f"submit(fn, *args), got {executor!r}")
    elif not callable(getattr(executor, "submit", None)):
        raise ValueError(f"{_OWNER}: executor must be one of {', '.join(map(repr, EXECUTORS))} or an object with "
                         f"submit(fn, *args), got a {type(executor).__name__}")
    if scheduler is not None and executor != "dask":
        raise ValueError(f"{_OWNER}: scheduler is the address of a Dask scheduler, for executor='dask' (got executor={executor!r})")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler):
        raise ValueError(f"{_OWNER}: scheduler must be an address such as 'tcp://host:8786', got {scheduler!r}")


@contextlib.contextmanager
def _executor(executor: str | Any, workers: int, scheduler: str | None) -> Iterator[Any]:
    """The executor to submit to (None: run in this process)."""
    if not isinstance(executor, str):
        yield executor  # the caller's: used as it is, and not shut down
    elif executor == "process" and workers == 1:
        yield None
    elif executor == "process":
        # spawn: a fresh interpreter per worker (forking a process that ran torch's thread pools can hang).
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        with _shut_down_on_exit(pool.shutdown):
            yield pool
    else:
        with _dask_executor(workers, scheduler) as client_executor:
            yield client_executor


@contextlib.contextmanager
def _shut_down_on_exit(shutdown: Callable[..., None]) -> Iterator[None]:
    """Wait for the workers at a normal exit; on an error or Ctrl-C cancel what has not started (the cache
    keeps what finished)."""
    try:
        yield
    except BaseException:
        shutdown(wait=False, cancel_futures=True)
        raise
    shutdown(wait=True)


@contextlib.contextmanager
def _dask_executor(workers: int, scheduler: str | None) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(f"{_OWNER}: executor='dask' needs Dask's distributed scheduler: pip install distributed") from None
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler))
            except (OSError, TimeoutError, ValueError) as error:
                raise ValueError(f"{_OWNER}: cannot reach the Dask scheduler at {scheduler!r} ({error})") from None
        yield client.get_executor()


def _independent_part(
    files: list[Path], settings: CheckpointSettings, executor: str | Any, workers: int, scheduler: str | None,
    chunk_size: int, cache_folder: Path | None, progress: bool, left_out: dict[str, str],
) -> tuple[list[CheckpointAnalysis], int, int]:
    """Every readable checkpoint's analysis (from the cache, or run by the executor), the number analysed now
    and the number taken from the cache; unreadable files go to ``left_out``."""
    keys: dict[str, str] = {}
    analyses: list[CheckpointAnalysis] = []
    for path in files:
        try:
            keys[str(path)] = settings.cache_key(_file_digest(path))
        except OSError as error:
            left_out[str(path)] = f"cannot be read ({error})"
            continue
        cached = _cache_get(cache_folder, keys[str(path)])
        if cached is not None:
            analyses.append(dataclasses.replace(cached, path=str(path)))  # the same content may have moved
    n_cached = len(analyses)
    # Workers get absolute paths (a cluster's workers need not share this process's working directory); the
    # analyses come back under the names the caller gave.
    given = {str(Path(path).resolve()): path for path in keys if path not in {a.path for a in analyses}}
    todo = list(given)
    chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
    bar = tqdm(total=len(files), initial=n_cached + len(files) - len(keys), desc="checkpoints", unit="ckpt",
               disable=not progress)

    def finished(results: list[CheckpointAnalysis]) -> None:
        for analysis in results:
            analysis.path = given[analysis.path]
            if analysis.unreadable is not None:
                left_out[analysis.path] = analysis.unreadable
            else:
                _cache_put(cache_folder, keys[analysis.path], analysis)
                analyses.append(analysis)
        bar.update(len(results))

    with bar, (_executor(executor, workers, scheduler) if chunks else contextlib.nullcontext()) as pool:
        if pool is None:  # in this process (or nothing to do: no cluster is started for that)
            for chunk in chunks:
                finished(_analyse_chunk(chunk, settings))
        else:
            _run(pool, chunks, settings, finished)
    return analyses, len(analyses) - n_cached, n_cached


def _run(pool: Any, chunks: list[list[str]], settings: CheckpointSettings,
         finished: Callable[[list[CheckpointAnalysis]], None]) -> None:
    """Submit every chunk, hand each one's analyses to ``finished`` as they come in (in submission order for
    futures that are not ``concurrent.futures.Future``, e.g. submitit's jobs)."""
    submitted = [(pool.submit(_analyse_chunk, chunk, settings), chunk) for chunk in chunks]
    by_future = {id(future): chunk for future, chunk in submitted}
    futures = [future for future, _ in submitted]
    if all(isinstance(future, concurrent.futures.Future) for future in futures):
        futures = list(concurrent.futures.as_completed(futures))
    for future in futures:
        chunk = by_future[id(future)]
        try:
            results = future.result()
        except Exception as error:  # the executor's failure (a worker that died): these checkpoints only
            results = [CheckpointAnalysis(path, unreadable=f"its analysis failed in the executor ({type(error).__name__}: {error})")
                       for path in chunk]
        finished(results)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_get(folder: Path | None, key: str) -> CheckpointAnalysis | None:
    """The cached analysis, or None (no cache, not there, or an entry that cannot be read: analysed again)."""
    if folder is None:
        return None
    try:
        with open(folder / f"{key}.pkl", "rb") as handle:
            cached = pickle.load(handle)
    except Exception:  # missing, truncated by a crash, or written by another version
        return None
    return cached if isinstance(cached, CheckpointAnalysis) else None


def _cache_put(folder: Path | None, key: str, analysis: CheckpointAnalysis) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{key}.pkl.{os.getpid()}.tmp"
    with open(partial, "wb") as handle:
        pickle.dump(analysis, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, folder / f"{key}.pkl")  # whole or not at all, even when the run is killed


# ---------------------------------------------------------------------------------------------- sequential part


def _in_step_order(analyses: list[CheckpointAnalysis], left_out: dict[str, str]) -> list[CheckpointAnalysis]:
    """The analyses sorted by step, one per step and all of one model; the others go to ``left_out``."""
    ordered = sorted(analyses, key=lambda analysis: (analysis.step, analysis.path))
    first = next((analysis for analysis in ordered if analysis.model is not None), None)
    kept: list[CheckpointAnalysis] = []
    for analysis in ordered:
        if kept and analysis.step == kept[-1].step:
            left_out[analysis.path] = f"its step {analysis.step} is {kept[-1].path}'s too (e.g. last.ckpt)"
        elif analysis.model is not None and _structure(analysis.model) != _structure(first.model):
            left_out[analysis.path] = (f"another model than {first.path}'s ({_describe(analysis.model)} vs "
                                       f"{_describe(first.model)})")
        else:
            kept.append(analysis)
    return kept


def _structure(model: Any) -> tuple[Any, ...]:
    return (type(model), tuple(tuple(tensor.shape) for tensor in model_tensors(model)))


def _describe(model: Any) -> str:
    shapes = ", ".join("x".join(map(str, tensor.shape)) for tensor in model_tensors(model))
    return f"{type(model).__name__} with tensors {shapes}"


def _sequential_part(analyses: list[CheckpointAnalysis], analyser: StepAnalyser, session: MonitorSession,
                     losses: Mapping[int, tuple[float | None, float | None]], progress: bool) -> None:
    """Track, in step order and in batches, with each checkpoint's own search in place of the analyser's."""
    analyser.cycles.progress = False  # the searches ran already
    batch: list[tuple[Snapshot, CheckpointAnalysis]] = []

    def flush() -> None:
        snapshots = [snapshot for snapshot, _ in batch]
        results = analyser.analyse_batch(snapshots, searched=[analysis.cycles for _, analysis in batch],
                                         attractor_reports=[analysis.attractors for _, analysis in batch])
        for (snapshot, analysis), result in zip(batch, results):
            result.record.checkpoint = analysis.path
            session.add_result(result, snapshot)
        batch.clear()

    with _one_cpu_thread(torch.device("cpu")), tqdm(total=len(analyses), desc="tracking", unit="ckpt", delay=2.0,
                                                    disable=not progress) as bar:
        for analysis in analyses:
            loss, grad_norm = losses.get(analysis.step, (None, None))
            model = analysis.model
            tensors = [tensor.detach().cpu().numpy() for tensor in model_tensors(model)] if model is not None else []
            snapshot = Snapshot(analysis.step, loss, grad_norm, tensors)
            if analysis.skipped is not None:
                if batch:
                    flush()
                result = skipped_result(snapshot, analysis.skipped)
                result.record.checkpoint = analysis.path
                session.add_result(result, snapshot)
            else:
                batch.append((snapshot, analysis))
                if len(batch) == TRACKING_BATCH:
                    flush()
            bar.update(1)
        if batch:
            flush()


class _TensorBoardFolder:
    """A TensorBoard run folder in the shape the dashboard writes to (a logger's ``experiment``), without Lightning."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.experiment = SummaryWriter(str(folder))


# ---------------------------------------------------------------------------------------------- helpers


def _text(name: str, value: object, *, optional: bool = False) -> Any:
    if (optional and value is None) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"{_OWNER}: {name} must be a non-empty string{' or None' if optional else ''}, got {value!r}")


def _json_ready(value: Any) -> Any:
    """``value`` with everything JSON cannot hold as its ``str`` (hyperparameters may hold any object)."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return str(value)
