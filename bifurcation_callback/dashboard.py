"""Everything the monitor writes and how it is formatted: logger scalars (``LOGGED_METRICS``, ``step_scalars``,
``summary_scalars``), TensorBoard text/figures/layout, ``events.jsonl``, ``summary.json`` and the fit-end summary
table (``summary_markdown``).

This is the only module that touches loggers.  Scalars go to every logger in ``trainer.loggers``
(TensorBoard, CSV, anything with ``log_metrics``); text, figures and the custom-scalars layout only to
loggers whose ``experiment`` is a TensorBoard ``SummaryWriter``.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._jsonl import read_jsonl
from ._trainer import user_stacklevel
from .attractors import ATTRACTOR_KINDS
from .bifurcations.events import is_qualitative

__all__ = [
    "LOGGED_METRICS",
    "Dashboard",
    "custom_scalars_layout",
    "events_markdown",
    "fold_events",
    "read_jsonl",
    "add_images",
    "analysis_scalars",
    "running_scalars",
    "summary_line",
    "summary_markdown",
    "summary_scalars",
    "step_counts",
    "fresh_run_dir",
    "clear_run_files",
]

# Every scalar the monitor logs ({k}: order, {id}: track id of a cycle).  BifurcationMonitor's docstring lists
# them and a test checks the emitted tags against this list.
LOGGED_METRICS: dict[str, str] = {
    "bifurcation/loss": "the step's own training loss (`loss_key` when logged on_step at this step, else the step output)",
    "bifurcation/grad_norm": "L2 norm of all gradients before the optimizer step",
    "bifurcation/n_cycles/order_{k}": "number of k-cycles (fixed points for k = 1)",
    "bifurcation/n_stable/order_{k}": "number of stable k-cycles",
    "bifurcation/n_cycles/total": "all cycles up to max_order",
    "bifurcation/n_stable/total": "all stable cycles up to max_order",
    "bifurcation/exhaustive/order_{k}": "1 when the k-cycle count is proved complete (every region sequence enumerated), 0 when it is a lower bound (heuristic search)",
    "bifurcation/max_abs_eig/order_{k}": "largest |multiplier| over the k-cycles",
    "bifurcation/max_abs_eig/cycle_{id}": "largest |multiplier| of one tracked cycle (tracks 0 .. max_tracked_cycles - 1 of the run)",
    "bifurcation/min_unit_distance": "min over cycles and multipliers of ||λ| − 1|: small = stability change near",
    "bifurcation/min_border_margin": "min distance of a cycle point to a switching plane: small = border collision near",
    "bifurcation/event": "number of bifurcation events at this step (0 otherwise): markers on the loss chart",
    "bifurcation/events_total": "cumulative number of events",
    "bifurcation/attractor/kind": "kind of the followed attractor, as its index in attractors.ATTRACTOR_KINDS (0 fixed point, 1 cycle, 2 chaotic, 3 quasi-periodic, 4 unresolved, 5 divergent)",
    "bifurcation/attractor/period": "period of the followed attractor (any period up to max_attractor_period; absent when not periodic)",
    "bifurcation/attractor/max_abs_eig": "largest |multiplier| of the followed attractor's cycle (absent when not periodic)",
    "bifurcation/attractor/lyapunov": "largest Lyapunov exponent of the followed attractor (exact for a cycle: log|λ|max / period)",
    "bifurcation/attractor/n_attractors": "number of distinct attractors reached from the starting states",
    "bifurcation/monitor_ms": "time of the cycle search, the attractor analysis and the comparison at this step",
    "bifurcation/skipped": "cumulative number of monitored steps skipped (errors, NaN weights, a worker that died)",
    "bifurcation/dropped": "cumulative number of monitored steps the async worker did not analyse (it was busy: latest wins; 0 in sync mode)",
    "bifurcation/lag_steps": "training steps between this step and the step at which its result was logged (0 in sync mode)",
    "bifurcation/jumps_explained": "at fit end: fraction of loss jumps with an event within jump_window steps (not logged without jumps)",
    "bifurcation/events_with_jump": "at fit end: fraction of events with a loss jump within jump_window steps (not logged without events)",
    "bifurcation/p_value": "at fit end: permutation-test p-value of jumps_explained (not logged without jumps)",
    "bifurcation/n_loss_jumps": "at fit end: number of loss jumps detected",
}


def _summary_writer_types() -> tuple[type, ...]:
    types: list[type] = []
    try:
        from torch.utils.tensorboard import SummaryWriter

        types.append(SummaryWriter)
    except ImportError:  # tensorboard not installed: only plain scalars are written
        pass
    try:
        from tensorboardX import SummaryWriter as SummaryWriterX

        types.append(SummaryWriterX)
    except ImportError:
        pass
    return tuple(types)


def custom_scalars_layout(loss_tag: str, orders: Sequence[int]) -> dict:
    """The TensorBoard custom-scalars layout: loss and bifurcation markers on one chart, counts beside.

    Examples
    --------
    >>> sorted(custom_scalars_layout("bifurcation/loss", [1, 2])["bifurcations"])
    ['attractor', 'cycles per order', 'largest |multiplier| per order', 'loss and bifurcation events']
    """
    return {
        "bifurcations": {
            "loss and bifurcation events": [
                "Multiline",
                [loss_tag, "bifurcation/event", "bifurcation/n_cycles/total", "bifurcation/n_stable/total"],
            ],
            "cycles per order": ["Multiline", [f"bifurcation/n_cycles/order_{k}" for k in orders]],
            "largest |multiplier| per order": ["Multiline", [f"bifurcation/max_abs_eig/order_{k}" for k in orders]],
            # The attractor at any period: a period curve that jumps is an attractor change the counts per
            # order (bounded by max_order) cannot show.
            "attractor": [
                "Multiline",
                ["bifurcation/attractor/period", "bifurcation/attractor/max_abs_eig", "bifurcation/attractor/lyapunov"],
            ],
        }
    }


def fold_events(events: Iterable[Mapping[str, Any]], *, show_all: bool = False) -> tuple[list[Mapping[str, Any]], int]:
    """Split events into those a table shows and the number folded into a count.

    By default only qualitative events (``bifurcations.events.is_qualitative``) are shown and border
    collisions that left the cycle's stability unchanged are counted; ``show_all=True`` shows every event.

    Examples
    --------
    >>> crossing = {"kind": "border_collision", "stable_before": True, "stable_after": True}
    >>> shown, folded = fold_events([{"kind": "appearance"}, crossing])
    >>> [e["kind"] for e in shown], folded
    (['appearance'], 1)
    >>> len(fold_events([crossing], show_all=True)[0])
    1
    """
    events = list(events)
    if show_all:
        return events, 0
    shown = [event for event in events if is_qualitative(event)]
    return shown, len(events) - len(shown)


def _folded_note(n_folded: int) -> str:
    return f"{n_folded} border crossing{'s' if n_folded != 1 else ''} folded"


def events_markdown(events: Iterable[Mapping[str, Any]], *, show_all: bool = False) -> str:
    """A Markdown table of events (TensorBoard renders text summaries as Markdown).

    Border collisions that left the cycle's stability unchanged are folded into one line under the table
    unless ``show_all`` (see ``fold_events``).

    Examples
    --------
    >>> print(events_markdown([{"step": 3, "kind": "appearance", "order": 2, "description": "a 2-cycle appeared"}]))
    | step | kind | order | what happened |
    |---:|---|---:|---|
    | 3 | appearance | 2 | a 2-cycle appeared |
    >>> crossing = {"step": 3, "kind": "border_collision", "order": 1, "stable_before": False, "stable_after": False}
    >>> print(events_markdown([crossing]).splitlines()[-1])
    and 1 border crossing folded (stability unchanged; show_all_events=True lists them)
    """
    shown, n_folded = fold_events(events, show_all=show_all)
    rows = ["| step | kind | order | what happened |", "|---:|---|---:|---|"]
    for event in shown:
        kind = event["kind"] + (f" ({event['crossing']})" if event.get("crossing") else "")
        rows.append(f"| {event['step']} | {kind} | {event['order']} | {event.get('description', '')} |")
    if n_folded:
        rows += ["", f"and {_folded_note(n_folded)} (stability unchanged; show_all_events=True lists them)"]
    return "\n".join(rows)


def analysis_scalars(record: Any) -> dict[str, float | None]:
    """The scalars that follow from one step's analysis alone (``StepRecord.scalars``): the record's own values
    and its ``cycle_scalars``, computed where the analysis runs, so a worker process sends numbers, not cycles."""
    scalars: dict[str, float | None] = {
        "bifurcation/loss": record.loss,
        "bifurcation/grad_norm": record.grad_norm,
        **record.cycle_scalars,
        "bifurcation/event": float(len(record.verified_events)),
        "bifurcation/monitor_ms": record.finder_ms + record.compare_ms + (record.attractor_ms or 0.0),
    }
    attractor = record.attractor
    if attractor is not None:
        scalars["bifurcation/attractor/kind"] = float(ATTRACTOR_KINDS.index(attractor["kind"]))
        scalars["bifurcation/attractor/period"] = attractor["period"]
        scalars["bifurcation/attractor/max_abs_eig"] = attractor["spectral_radius"]
        scalars["bifurcation/attractor/lyapunov"] = attractor["largest_lyapunov"]
        scalars["bifurcation/attractor/n_attractors"] = float(attractor["n_attractors"])
    return scalars


def running_scalars(record: Mapping[str, Any], *, n_events: int, n_skipped: int, n_dropped: int = 0) -> dict[str, float | None]:
    """The scalars the training process counts over the run: cumulative events, skipped and dropped steps,
    and the step's lag behind training."""
    return {
        "bifurcation/events_total": float(n_events),
        "bifurcation/skipped": float(n_skipped),
        "bifurcation/dropped": float(n_dropped),
        "bifurcation/lag_steps": record.lag_steps,
    }


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """The fit-end scalars; an undefined fraction or p-value (None in the summary) is not logged.

    Examples
    --------
    >>> summary_scalars({"loss_jumps": [], "jump_correlation": {"jumps_explained": None, "events_with_jump": 0.5,
    ...                  "p_value": None}})["bifurcation/n_loss_jumps"]
    0.0
    """
    correlation = summary["jump_correlation"]
    return {
        "bifurcation/jumps_explained": correlation["jumps_explained"],
        "bifurcation/events_with_jump": correlation["events_with_jump"],
        "bifurcation/p_value": correlation["p_value"],
        "bifurcation/n_loss_jumps": float(len(summary["loss_jumps"])),
    }


def _fraction(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _event_counts(summary: Mapping[str, Any], show_all: bool) -> tuple[dict[str, int], int]:
    """Events per kind that occurred and the number folded: border crossings that left stability unchanged
    (``n_border_crossings`` in the summary) come out of ``border_collision`` unless ``show_all``."""
    counts = {kind: n for kind, n in summary["events_by_kind"].items() if n}
    n_folded = 0 if show_all else summary.get("n_border_crossings", 0)
    if n_folded:
        counts["border_collision"] = counts.get("border_collision", 0) - n_folded
    return {kind: n for kind, n in counts.items() if n}, n_folded


def summary_markdown(summary: Mapping[str, Any], *, show_all_events: bool = False) -> str:
    """The fit-end summary as a Markdown table (TensorBoard text tab, CLI ``compare``).

    A fraction with nothing to count (no loss jumps, no events) reads ``n/a``.  Border crossings that left
    stability unchanged (``n_border_crossings``) are folded into a count unless ``show_all_events``.

    Examples
    --------
    >>> summary = {"n_monitored_steps": 3, "n_skipped": 0, "n_events": 0, "events_by_kind": {}, "loss_jumps": [],
    ...            "monitor_overhead": 0.1, "jump_correlation": {"jumps_explained": None, "p_value": None,
    ...            "events_with_jump": None, "mean_lag": None}}
    >>> print(summary_markdown(summary).splitlines()[10])
    | jumps with an event nearby | n/a |
    """
    correlation = summary["jump_correlation"]
    counts, n_folded = _event_counts(summary, show_all_events)
    monitored, analysed, skipped, dropped = step_counts(summary)
    kinds = ", ".join([f"{kind}: {n}" for kind, n in counts.items()] + [_folded_note(n_folded)] * bool(n_folded))
    lag = correlation.get("mean_lag")
    explained = _fraction(correlation["jumps_explained"])
    if correlation["jumps_explained"] is not None and correlation["p_value"] is not None:
        explained += f" (p = {correlation['p_value']:.3g})"
    rows = [
        ("monitored steps", monitored),
        ("analysed steps", analysed),
        ("skipped steps", skipped),
        ("dropped steps", dropped),
        ("analysis", _where(summary)),
        ("final attractor", _attractor_text(summary)),
        ("bifurcation events", f"{summary['n_events']} ({kinds or 'none'})"),
        ("loss jumps", len(summary["loss_jumps"])),
        ("jumps with an event nearby", explained),
        ("events with a jump nearby", _fraction(correlation["events_with_jump"])),
        ("mean lag jump − event (steps)", "—" if lag is None else f"{lag:.1f}"),
        ("monitor overhead", _overhead_text(summary)),
    ]
    if summary.get("n_late_discoveries"):
        rows.append(("late discoveries (cycles missed at the step before: not events)", summary["n_late_discoveries"]))
    return "\n".join(["| quantity | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows])


def summary_line(summary: Mapping[str, Any], *, show_all_events: bool = False) -> str:
    """The fit-end summary in one line, as the monitor prints it on rank zero.

    Undefined quantities (no loss jumps: nothing to explain) read ``n/a``.

    Examples
    --------
    >>> summary = {"n_events": 12, "events_by_kind": {"appearance": 3, "stability_change": 2, "border_collision": 7},
    ...            "n_border_crossings": 7, "loss_jumps": [{}] * 4, "monitor_overhead": 0.08,
    ...            "jump_correlation": {"jumps_explained": 0.75, "p_value": 0.02},
    ...            "n_monitored_steps": 300, "n_analysed_steps": 299, "n_skipped": 1, "n_dropped_steps": 0}
    >>> print(summary_line(summary))
    BifurcationMonitor: 12 events (3 appearance, 2 stability change, 7 border crossings folded), 4 loss jumps, 3/4 with an event nearby (p = 0.02), 299 of 300 monitored steps analysed, 1 skipped, overhead 8.0 %
    >>> summary.update(loss_jumps=[], jump_correlation={"jumps_explained": None, "p_value": None})
    >>> print(summary_line(summary).split(", ", 3)[-1])
    0 loss jumps, n/a with an event nearby, 299 of 300 monitored steps analysed, 1 skipped, overhead 8.0 %
    """
    correlation = summary["jump_correlation"]
    n_events = summary["n_events"]
    counts, n_folded = _event_counts(summary, show_all_events)
    parts = [f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items()] + [_folded_note(n_folded)] * bool(n_folded)
    kinds = ", ".join(parts)
    events = f"{n_events} event{'s' if n_events != 1 else ''}" + (f" ({kinds})" if kinds else "")
    n_jumps = len(summary["loss_jumps"])
    explained = "n/a with an event nearby"
    if correlation["jumps_explained"] is not None and n_jumps:
        explained = f"{round(correlation['jumps_explained'] * n_jumps)}/{n_jumps} with an event nearby"
        if correlation.get("p_value") is not None:
            explained += f" (p = {correlation['p_value']:.2g})"
    jumps = f"{n_jumps} loss jump{'s' if n_jumps != 1 else ''}"
    monitored, analysed, skipped, dropped = step_counts(summary)
    steps = f"{analysed} of {monitored} monitored steps analysed"
    steps += f", {skipped} skipped" * bool(skipped) + f", {dropped} dropped" * bool(dropped)
    attractor = f", final attractor: {_attractor_text(summary)}" if summary.get("final_attractor") else ""
    return f"BifurcationMonitor: {events}, {jumps}, {explained}, {steps}, overhead {_overhead_text(summary)}{attractor}"


def step_counts(summary: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(monitored, analysed, skipped, dropped) steps of a summary; a summary written before ``n_analysed_steps``
    existed used ``n_monitored_steps`` for the analysed ones.

    Examples
    --------
    >>> step_counts({"n_monitored_steps": 10, "n_analysed_steps": 7, "n_skipped": 1, "n_dropped_steps": 2})
    (10, 7, 1, 2)
    >>> step_counts({"n_monitored_steps": 7, "n_skipped": 1, "n_dropped_steps": 2})  # an older summary.json
    (10, 7, 1, 2)
    """
    skipped, dropped = summary.get("n_skipped") or 0, summary.get("n_dropped_steps") or 0
    if "n_analysed_steps" in summary:
        return summary["n_monitored_steps"], summary["n_analysed_steps"], skipped, dropped
    analysed = summary.get("n_monitored_steps") or 0
    return analysed + skipped + dropped, analysed, skipped, dropped


def _overhead_text(summary: Mapping[str, Any]) -> str:
    """'2.1 %', with what it leaves out: the slowdown beside a worker ('lower bound') or the effect of the fewer
    torch threads "auto" gave training, when they could not be measured; 'n/a' when nothing ran beside training
    (an offline analysis of checkpoints)."""
    if summary.get("monitor_overhead") is None:
        return "n/a"
    unmeasured = []
    if summary.get("overhead_is_lower_bound"):
        unmeasured.append("the slowdown of training beside the worker")
    if summary.get("training_threads") and "thread_change_seconds" in summary and summary["thread_change_seconds"] is None:
        unmeasured.append("what training's fewer torch threads cost or saved")
    text = f"{100 * summary['monitor_overhead']:.1f} %"
    if unmeasured:  # one note: a short fit may miss both measurements
        bound = "lower bound: " if summary.get("overhead_is_lower_bound") else ""
        text += f" ({bound}{' and '.join(unmeasured)} {'were' if len(unmeasured) > 1 else 'was'} not measured)"
    return text


def _where(summary: Mapping[str, Any]) -> str:
    """Where the analysis ran: 'sync', 'async (worker process)', with restarts and a fallback if any."""
    mode = summary.get("mode") or "sync"
    offline = summary.get("offline")
    if offline:
        workers = f" × {offline['workers']}" if offline.get("workers") else ""
        return f"offline ({offline['n_checkpoints']} checkpoints, {offline['executor']}{workers})"
    worker = summary.get("worker")
    if worker is None:
        return mode
    text = f"{mode} (worker {worker['kind']}"
    if worker.get("restarts"):
        text += f", restarted {worker['restarts']}×"
    if worker.get("fell_back_to_sync"):
        text += ", then sync after it died"
    return text + ")"


def _attractor_text(summary: Mapping[str, Any]) -> str:
    """'16-cycle (stable, 1 of 2 attractors)', or n/a when the attractor was not analysed."""
    attractor = summary.get("final_attractor")
    if not attractor:
        return "n/a"
    stability = {True: "stable", False: "not stable"}.get(attractor.get("stable"), "")
    others = f"{attractor['n_attractors']} attractors found" if attractor.get("n_attractors", 1) > 1 else ""
    details = ", ".join(part for part in (stability, others) if part)
    return attractor["label"] + (f" ({details})" if details else "")


def fresh_run_dir(root: str | Path, name: str = "bifurcation_monitor") -> Path:
    """``<root>/<name>/version_<n>`` with the smallest ``n`` not used yet (Lightning's own logger convention), so
    a run without a logger never overwrites the files of an earlier one.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> fresh_run_dir(root).name
    'version_0'
    >>> (Path(root) / "bifurcation_monitor" / "version_0").mkdir(parents=True)
    >>> fresh_run_dir(root).name
    'version_1'
    """
    parent = Path(root) / name
    version = 0
    while (parent / f"version_{version}").exists():
        version += 1
    return parent / f"version_{version}"


# What the monitor writes into a run folder besides TensorBoard's event files (events.out.tfevents.*).
RUN_FILES: tuple[str, ...] = ("events.jsonl", "summary.json")
_EVENT_FILE_PREFIX = "events.out.tfevents."


def clear_run_files(folder: str | Path, extra: Sequence[str] = ()) -> None:
    """Remove what an earlier run wrote into ``folder`` (``RUN_FILES``, TensorBoard event files and the files
    named in ``extra``) and nothing else, so a run written there again does not show every curve twice.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("summary.json", "events.out.tfevents.1.host", "notes.txt"):
    ...     _ = (folder / name).write_text("")
    >>> clear_run_files(folder)
    >>> sorted(path.name for path in folder.iterdir())
    ['notes.txt']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (path.name in RUN_FILES or path.name in extra or path.name.startswith(_EVENT_FILE_PREFIX)):
            path.unlink()


# events.jsonl is flushed at most this often while training (and always at fit end and on close).
JSONL_FLUSH_EVERY_S = 1.0


class Dashboard:
    """Writes the monitor's records to a list of Lightning loggers and to files in ``log_dir``.

    Parameters
    ----------
    loggers : sequence of Lightning loggers
        Usually ``trainer.loggers``; may be empty (then only the files are written).
    log_dir : path or None
        Folder for ``events.jsonl`` and ``summary.json``; None writes no files.
    jsonl_name : str
        File name of the per-step record stream.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> dashboard = Dashboard([], folder)
    >>> dashboard.rewrite_records([])
    >>> dashboard.write_record({"step": 1, "n_cycles": 2})
    >>> dashboard.flush()  # records reach the file at most a second later while training, at once on flush
    >>> read_jsonl(Path(folder) / "events.jsonl")
    [{'step': 1, 'n_cycles': 2}]
    """

    def __init__(self, loggers: Sequence[Any], log_dir: str | Path | None, jsonl_name: str = "events.jsonl") -> None:
        self.loggers = list(loggers)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.jsonl_path = self.log_dir / jsonl_name if self.log_dir is not None else None
        self._jsonl: Any = None
        self._flushed_at = 0.0
        writer_types = _summary_writer_types()
        is_tensorboard = [
            bool(writer_types) and isinstance(getattr(logger, "experiment", None), writer_types)
            for logger in self.loggers
        ]
        self.writers = [logger.experiment for logger, tb in zip(self.loggers, is_tensorboard) if tb]
        self.other_loggers = [logger for logger, tb in zip(self.loggers, is_tensorboard) if not tb]

    @property
    def has_tensorboard(self) -> bool:
        return bool(self.writers)

    def local_tensorboard_dirs(self) -> tuple[str, ...] | None:
        """The run directory of every TensorBoard writer when each is a local directory, where another
        process can add an event file of its own (the worker's fit-end figures); None otherwise (a remote
        ``s3://`` or ``gs://`` log dir, a writer that does not say)."""
        dirs = []
        for writer in self.writers:
            get_logdir = getattr(writer, "get_logdir", None)
            log_dir = get_logdir() if callable(get_logdir) else None
            if not isinstance(log_dir, str) or "://" in log_dir or not Path(log_dir).is_dir():
                return None
            dirs.append(str(Path(log_dir).resolve()))
        return tuple(dirs) or None

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Scalars to every logger; non-finite values are dropped (TensorBoard and CSV choke on them)."""
        clean = {tag: float(value) for tag, value in scalars.items() if value is not None and math.isfinite(value)}
        if not clean:
            return
        for writer in self.writers:
            _add_scalars_as_one_event(writer, clean, step)
        for logger in self.other_loggers:
            logger.log_metrics(clean, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        for writer in self.writers:
            writer.add_text(tag, text, global_step=step)

    def log_images(self, images: Mapping[str, Any], step: int) -> None:
        """RGB images (tag → (H, W, 3) uint8 array, e.g. from ``plots.render_figures``) to every TensorBoard
        logger."""
        for writer in self.writers:
            add_images(writer, images, step)

    def log_layout(self, layout: dict) -> None:
        # Written once per run directory at fit start; a layout written elsewhere shows an empty tab.
        for writer in self.writers:
            writer.add_custom_scalars(layout)

    def flush(self) -> None:
        self.close_files()
        for writer in self.writers:
            writer.flush()
        for logger in self.loggers:
            save = getattr(logger, "save", None)
            if callable(save):
                save()

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Append one JSON line to ``events.jsonl``."""
        self._write_lines([record], mode="a")

    def rewrite_records(self, records: Iterable[Mapping[str, Any]], *, resumed: bool = False) -> None:
        """Replace ``events.jsonl`` by ``records`` (at fit start, and on resume so steps are neither lost nor
        doubled).  Replacing an existing file of another run (``resumed=False``) warns."""
        if not resumed and self.jsonl_path is not None and self.jsonl_path.exists():
            warnings.warn(
                f"BifurcationMonitor overwrites {self.jsonl_path} (and summary.json beside it) left by an earlier run; "
                "pass a new jsonl_path or a logger with a fresh version to keep it",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        self._write_lines(records, mode="w")
        self.close_files()  # the next record opens it again to append; a dashboard discarded now leaks nothing

    def _write_lines(self, records: Iterable[Mapping[str, Any]], mode: str) -> None:
        if self.jsonl_path is None:
            return
        if mode == "w" or self._jsonl is None:
            self.close_files()
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open between records (opening the file per record cost a third of a millisecond per step).
            self._jsonl = open(self.jsonl_path, mode, encoding="utf-8")
        for record in records:
            self._jsonl.write(json.dumps(record, default=_json_default) + "\n")
        # Readers (tail -f, scripts) see the records within a second; a flush per record cost a tenth of a
        # millisecond per step on the training thread.
        if mode == "w" or time.monotonic() - self._flushed_at > JSONL_FLUSH_EVERY_S:
            self._jsonl.flush()
            self._flushed_at = time.monotonic()

    def close_files(self) -> None:
        """Close ``events.jsonl`` (a later record opens it again, appending)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def write_summary(self, summary: Mapping[str, Any]) -> Path | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2, default=_json_default))
        return path


def add_images(writer: Any, images: Mapping[str, Any], step: int) -> None:
    """RGB images (tag → (H, W, 3) uint8 array) to one TensorBoard writer: what ``Dashboard.log_images``
    does for each logger and a worker process for the run folders it writes to itself."""
    for tag, image in images.items():
        writer.add_image(tag, image, global_step=step, dataformats="HWC")


def _add_scalars_as_one_event(writer: Any, scalars: Mapping[str, float], step: int) -> None:
    """Write all of a step's scalars as one TensorBoard event (one Summary with many values).

    ``add_scalar`` costs about 75 µs per tag (one event each); a step's ~25 tags in one event cost about a
    tenth of that.  TensorBoard reads both forms alike.  Writers without torch's file-writer API get
    ``add_scalar`` per tag.
    """
    file_writer = getattr(writer, "_get_file_writer", None)
    if file_writer is None or not _is_torch_writer(writer):
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()])
    file_writer().add_summary(summary, step)


def _is_torch_writer(writer: Any) -> bool:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return False
    return isinstance(writer, SummaryWriter)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
