"""The ``bifurcation-callback compare`` table: finished runs read back and compared side by side.

:func:`collect_runs` reads every run's ``summary.json`` (with the demo's ``demo.json`` and the hyperparameters
beside it) and :func:`comparison_table` renders them, one row per run and the mean per method; :func:`method_tests`
tests GTF against BPTT over seeds.  ``demo.run_demo`` prints its table through the very same functions, so
``bifurcation-callback compare <logdir>`` reproduces it exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._jsonl import read_jsonl
from .dashboard import step_counts

__all__ = [
    "ATTRACTOR_SPLIT_KINDS",
    "DEMO_METHODS",
    "collect_runs",
    "comparison_table",
    "group_runs",
    "method_tests",
    "split_by_attractor",
]

# method label -> DSRModule training mode; the table lists methods in this order.
DEMO_METHODS: dict[str, str] = {"BPTT": "bptt", "GTF": "gtf"}
# What a summary.json written by BifurcationMonitor holds (at least): key -> accepted JSON types.
_SUMMARY_SCHEMA: dict[str, tuple[type, ...]] = {
    "n_monitored_steps": (int,),
    "n_events": (int,),
    "events_by_kind": (dict,),
    "loss_jumps": (list,),
    "jump_correlation": (dict,),
    "final_loss": (int, float, type(None)),
}


# ---------------------------------------------------------------------------------------------- reading back


def collect_runs(paths: Sequence[str | Path]) -> list[dict]:
    """Every ``summary.json`` under ``paths`` (files or folders, searched recursively), with the
    ``demo.json`` beside it when there is one, and the run's hyperparameters: those an offline analysis
    copied from the checkpoints into its summary, else Lightning's ``hparams.yaml`` beside it.

    Returns
    -------
    list of dict
        ``{"name": folder relative to the common root of all run folders, "path": folder,
        "summary": dict, "demo": dict or None, "hyperparameters": dict or None, "attractor_split":
        split_by_attractor of the events.jsonl beside it, or None, "last_step_skipped": bool}``, sorted by
        method (as in :data:`DEMO_METHODS`; read from ``demo.json`` or the hyperparameters' ``training``), seed,
        path.  Runs that share a leaf folder name (``a/version_0``, ``b/version_0``) keep distinct names.

    Raises
    ------
    ValueError
        A path that does not exist, an unreadable JSON file, a ``summary.json`` that BifurcationMonitor
        did not write (missing keys or wrong types), or no ``summary.json`` at all.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "summary.json":
            found[path.resolve()] = None
        elif path.is_dir():
            for summary in sorted(path.rglob("summary.json")):
                found[summary.resolve()] = None
        elif path.exists():
            raise ValueError(f"{path}: not a folder or a summary.json file")
        else:
            raise ValueError(f"{path}: no such file or folder")
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise ValueError(f"no summary.json found under {where} (BifurcationMonitor writes it when fit ends)")
    folders = [summary_path.parent for summary_path in found]
    root = Path(os.path.commonpath([folder.parent for folder in folders]))
    runs = []
    for summary_path, folder in zip(found, folders):
        demo_path = folder / "demo.json"
        events, last_skipped = _read_events(folder / "events.jsonl")
        summary = _check_summary(summary_path, _read_json(summary_path))
        runs.append(
            {
                "name": folder.relative_to(root).as_posix(),
                "path": str(folder),
                "summary": summary,
                "demo": _read_json(demo_path) if demo_path.is_file() else None,
                "hyperparameters": summary.get("hyperparameters") or _read_hparams(folder / "hparams.yaml"),
                "attractor_split": None if events is None else split_by_attractor(events),
                "last_step_skipped": last_skipped,
            }
        )
    order = {method: k for k, method in enumerate(DEMO_METHODS)}

    def key(run: dict) -> tuple:
        seed = _run_seed(run)
        return (order.get(_run_method(run), len(order)), math.inf if seed is None else seed, run["path"])

    return sorted(runs, key=key)


def _read_hparams(path: Path) -> dict | None:
    """Lightning's ``hparams.yaml`` as a dict (Python-specific YAML tags read as plain values), or None."""
    if not path.is_file():
        return None
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else loader.construct_scalar(node)

    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader with plain constructors
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


# DSRModule's training modes as the table labels them (the demo's labels, else the mode in capitals).
def _method_label(training: Any) -> str | None:
    labels = {mode: label for label, mode in DEMO_METHODS.items()}
    return labels.get(training, training.upper()) if isinstance(training, str) and training else None


def _run_method(run: Mapping[str, Any]) -> str | None:
    """The run's training method: ``demo.json``'s, else its hyperparameters' ``training``, else None."""
    demo = run.get("demo") or {}
    return demo.get("method") or _method_label((run.get("hyperparameters") or {}).get("training"))


def _run_seed(run: Mapping[str, Any]) -> int | None:
    demo = run.get("demo") or {}
    seed = demo.get("seed", (run.get("hyperparameters") or {}).get("seed"))
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


# Hyperparameters that identify a replicate or the method, not a setting: left out of the settings that group runs.
_NOT_SETTINGS = ("training", "seed", "seeds")


def _run_settings(run: Mapping[str, Any]) -> dict[str, str]:
    """What the run was trained and analysed with, as text: its hyperparameters (or the demo's configuration),
    the analysis' ``max_order`` and ``max_attractor_period``, and whether it was analysed by the monitor during
    training or offline from checkpoints."""
    hyperparameters = run.get("hyperparameters") or (run.get("demo") or {}).get("config") or {}
    settings = {key: json.dumps(value, sort_keys=True, default=str) for key, value in hyperparameters.items()
                if key not in _NOT_SETTINGS}
    summary = run["summary"]
    for key in ("max_order", "max_attractor_period"):
        if summary.get(key) is not None:
            settings[key] = json.dumps(summary[key])
    # A run analysed during training and the same run analysed from its checkpoints are two analyses of one
    # training, never replicates to average.
    settings["analysis"] = "offline" if summary.get("mode") == "offline" else "monitor"
    return settings


def group_runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each run's group: its training method and the settings that differ between the runs (seeds are
    replicates, never a setting); a run whose method is unknown is a group of its own, named by its folder.

    Examples
    --------
    >>> summary = {"max_order": 4}
    >>> runs = [{"name": f"r{k}", "summary": summary, "hyperparameters": {"training": training, "alpha": alpha}}
    ...         for k, (training, alpha) in enumerate([("gtf", 0.1), ("gtf", 0.1), ("gtf", 0.3), ("bptt", 0.1)])]
    >>> group_runs(runs)
    ['GTF (alpha=0.1)', 'GTF (alpha=0.1)', 'GTF (alpha=0.3)', 'BPTT (alpha=0.1)']
    >>> group_runs(runs[:2] + [{"name": "old_run", "summary": summary}])
    ['GTF', 'GTF', 'old_run']
    """
    methods = [_run_method(run) for run in runs]
    settings = [_run_settings(run) for run in runs]
    known = [setting for setting, method in zip(settings, methods) if method is not None]
    keys = sorted({key for setting in known for key in setting})
    varying = [key for key in keys if len({setting.get(key) for setting in known}) > 1]
    labels = []
    for run, setting, method in zip(runs, settings, methods):
        if method is None:
            labels.append(run.get("name") or Path(run["path"]).name)
            continue
        shown = ", ".join(f"{key}={setting[key]}" for key in varying if key in setting)
        labels.append(f"{method} ({shown})" if shown else method)
    return labels


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_summary(path: Path, summary: dict) -> dict:
    """``summary`` if it has the keys and types of ``_SUMMARY_SCHEMA``, else ``ValueError`` naming the file."""
    for key, types in _SUMMARY_SCHEMA.items():
        value = summary.get(key, _MISSING)
        if value is _MISSING or not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            problem = "no" if value is _MISSING else f"a {type(value).__name__} as"
            raise ValueError(
                f"{path}: not a BifurcationMonitor summary.json ({problem} {key!r}; expected keys "
                f"{', '.join(_SUMMARY_SCHEMA)})"
            )
    return summary


_MISSING = object()


# ---------------------------------------------------------------------------------------------- the table

# Short column headers of the event kinds (the legend names them); a kind not listed here shows its name.
_KIND_HEADERS = {
    "appearance": "appear",
    "disappearance": "vanish",
    "stability_change": "stab.chg",
    "border_collision": "border",
    "degenerate": "degen",
    "attractor_change": "attr.chg",
}
# Event kinds the table splits into events of the attractor and the rest (see split_by_attractor).
ATTRACTOR_SPLIT_KINDS = ("border_collision", "degenerate")


def _kind_header(kind: str) -> str:
    """Column header of an event kind of ``BIFURCATION_KINDS``: its abbreviation, else its name with spaces."""
    return _KIND_HEADERS.get(kind, kind.replace("_", " "))


def split_by_attractor(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Count the events of each kind in ``ATTRACTOR_SPLIT_KINDS``, split into those of the attractor and the rest.

    An event is *of the attractor* when its cycle is stable before or after it (``stable_before`` or
    ``stable_after`` true: a stable cycle is an attractor) and it is qualitative
    (``bifurcations.events.is_qualitative``): a stable cycle that merely moved across a switching plane,
    staying stable with the same number of unstable multipliers, is no bifurcation of the attractor.  The
    rest: events of saddles and repellers, and those mere crossings.  Other kinds are ignored.

    Parameters
    ----------
    events : iterable of dict
        Event records as in ``events.jsonl`` (``BifurcationEvent.to_dict()``).

    Returns
    -------
    dict
        ``{kind: {"attractor": n, "rest": n}}`` for every kind of ``ATTRACTOR_SPLIT_KINDS``.

    Examples
    --------
    >>> split_by_attractor([{"kind": "degenerate", "stable_before": True, "stable_after": None},
    ...                     {"kind": "degenerate", "stable_before": False, "stable_after": False},
    ...                     {"kind": "appearance", "stable_after": True}])
    {'border_collision': {'attractor': 0, 'rest': 0}, 'degenerate': {'attractor': 1, 'rest': 1}}
    """
    from .bifurcations.events import is_qualitative

    counts = {kind: {"attractor": 0, "rest": 0} for kind in ATTRACTOR_SPLIT_KINDS}
    for event in events:
        if event.get("kind") in counts:
            stable = event.get("stable_before") is True or event.get("stable_after") is True
            of_attractor = stable and is_qualitative(event)
            counts[event["kind"]]["attractor" if of_attractor else "rest"] += 1
    return counts


def _read_events(path: Path) -> tuple[list[dict] | None, bool]:
    """Every event of an ``events.jsonl`` (one record per monitored step), or None when there is no such file,
    and whether the monitor skipped the last step it was to analyse (e.g. a model with NaN weights)."""
    if not path.is_file():
        return None, False
    records = read_jsonl(path)
    events = [event for record in records for event in record.get("events") or []]
    return events, bool(records) and "skipped" in records[-1]


def _kinds(runs: Sequence[dict]) -> list[str]:
    from .bifurcations import BIFURCATION_KINDS

    extra = {k for run in runs for k in run["summary"].get("events_by_kind", {}) if k not in BIFURCATION_KINDS}
    return list(BIFURCATION_KINDS) + sorted(extra)


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value


def _fmt(value: float | None, spec: str, missing: str = "n/a") -> str:
    if value is None:
        return missing
    if math.isnan(value):
        return "diverged"
    if math.isinf(value):
        return "inf"
    return format(value, spec)


def _final_attractor(run: dict) -> str | None:
    """The label of the monitor's ``final_attractor`` ("4-cycle", "fixed point", "chaotic", "none"), "skipped"
    when the monitor could not analyse the last monitored step (the summary then has none; summaries of older
    versions held an earlier step's), or None where the summary has no attractor analysis (an older monitor,
    or ``max_attractor_period=0``)."""
    summary = run["summary"]
    if "final_attractor" not in summary or not summary.get("max_attractor_period", 1):
        return None
    if run.get("last_step_skipped"):
        return "skipped"
    from .attractors import attractor_label

    attractor = summary["final_attractor"]
    if not attractor:
        return attractor_label(None)
    return attractor.get("label") or attractor_label(attractor.get("kind"), attractor.get("period"))


def _row_values(run: dict, kinds: Sequence[str]) -> dict[str, Any]:
    """Raw numbers of one run (None when the saved files do not have them)."""
    summary, demo = run["summary"], run["demo"] or {}
    correlation = summary.get("jump_correlation") or {}
    n_jumps = len(summary.get("loss_jumps") or [])
    explained = _number(correlation.get("jumps_explained")) or 0.0
    by_kind = summary.get("events_by_kind") or {}
    final_loss = summary.get("final_loss")
    # The monitor stores a non-finite loss as None; a run with losses but no finite final one diverged.
    if final_loss is None and summary.get("n_monitored_steps", 0) + summary.get("n_skipped", 0) > 0:
        final_loss = math.nan
    attractor = _final_attractor(run)
    split = run.get("attractor_split")
    final_step = summary.get("final_step")
    return {
        "method": _run_method(run) or run.get("name") or Path(run["path"]).name,
        "seed": _run_seed(run),
        # Analysed steps of all training steps (the monitor's every_n_steps, dropped steps, or the checkpoints).
        "analysed": step_counts(summary)[1],
        "steps": final_step + 1 if isinstance(final_step, int) else None,
        "final_loss": _number(final_loss),
        "D_stsp": _number(demo.get("D_stsp")),
        "D_H": _number(demo.get("D_H")),
        "attractor": attractor,
        "attractor_changes": None if attractor is None else int(summary.get("n_attractor_changes") or 0),
        "jumps": n_jumps,
        "kinds": {kind: int(by_kind.get(kind, 0)) for kind in kinds},
        "split": {f"{kind}/{part}": split[kind][part] for kind in split for part in split[kind]} if split else None,
        "explained": int(round(explained * n_jumps)),
        "p": _number(correlation.get("p_value")),
        "overhead": _number(summary.get("monitor_overhead")),
    }


def _table_values(runs: Sequence[dict], kinds: Sequence[str]) -> list[dict[str, Any]]:
    """``_row_values`` of every run, with ``method`` its group (``group_runs``)."""
    return [{**_row_values(run, kinds), "method": group} for run, group in zip(runs, group_runs(runs))]


def _coverage(analysed: float, steps: float | None) -> str:
    """'300/1500 (20 %)': analysed steps of the training steps."""
    if not steps:
        return "n/a"
    return f"{analysed:g}/{steps:g} ({100 * analysed / steps:.3g} %)"


def _coverage_note(values: Sequence[dict[str, Any]]) -> str:
    """A warning when the runs analysed very different fractions of their steps (their event counts differ
    for that reason alone), else ''."""
    fractions = [v["analysed"] / v["steps"] for v in values if v["steps"]]
    if len(fractions) < 2 or max(fractions) <= 2 * min(fractions):
        return ""
    return (f"Note: these runs were analysed at {100 * min(fractions):.3g} % to {100 * max(fractions):.3g} % of their "
            "training steps (column 'analysed'): a run analysed at fewer steps reports fewer events, with wider "
            "brackets, and fewer jumps with an event nearby; compare runs analysed alike.")


def _split_columns() -> list[tuple[str, str]]:
    """(key in a row's ``split``, header) of the split columns: "border att", "border rest", ..."""
    return [(f"{kind}/{part}", f"{_kind_header(kind)} {part[:4]}") for kind in ATTRACTOR_SPLIT_KINDS for part in ("attractor", "rest")]


def _count_kinds(kinds: Sequence[str]) -> list[str]:
    """The kinds with one plain count column: not split, and not attractor_change (its own column)."""
    return [kind for kind in kinds if kind not in ATTRACTOR_SPLIT_KINDS and kind != "attractor_change"]


def _cells(values: dict[str, Any], kinds: Sequence[str], *, seed: str, counts_spec: str = "d") -> list[str]:
    jumps = values["jumps"]
    fraction = values.get("fraction")
    if fraction is None:
        fraction = f"{values['explained']}/{_fmt(jumps, counts_spec)}"
        if jumps:
            fraction += f" ({values['explained'] / jumps:.2f})"
    overhead = values["overhead"]
    split = values["split"]
    return [
        str(values["method"]),
        seed,
        _coverage(values["analysed"], values["steps"]),
        _fmt(values["final_loss"], ".4g"),
        _fmt(values["D_stsp"], ".3f"),
        _fmt(values["D_H"], ".3f"),
        values["attractor"] or "n/a",
        _fmt(values["attractor_changes"], counts_spec),
        _fmt(jumps, counts_spec),
        *[_fmt(values["kinds"][kind], counts_spec) for kind in _count_kinds(kinds)],
        *[_fmt(None if split is None else split[key], counts_spec) for key, _ in _split_columns()],
        fraction,
        _fmt(values["p"], ".3g"),
        _fmt(None if overhead is None else 100 * overhead, ".1f") + (" %" if overhead is not None else ""),
    ]


def _most_common_attractor(labels: Sequence[str | None]) -> str | None:
    """"4-cycle 7/10": the most frequent final attractor (first seen wins a tie) and in how many runs."""
    if any(label is None for label in labels):
        return None
    counts = Counter(labels)
    label = max(counts, key=lambda name: (counts[name], -labels.index(name)))
    return f"{label} {counts[label]}/{len(labels)}"


def _mean_row(group: list[dict[str, Any]], kinds: Sequence[str]) -> list[str]:
    from scipy.stats import combine_pvalues

    def mean(key: str) -> float | None:
        values = [v[key] for v in group]
        return None if any(v is None for v in values) else float(np.mean(values))

    # Runs without loss jumps have no p-value (nothing to associate); the others' are combined.
    p_values = [v["p"] for v in group if v["p"] is not None]
    if not p_values:
        p = None
    elif len(p_values) == 1:
        p = p_values[0]
    else:  # Fisher's method: is there evidence in any run?  (mean p-values mean nothing)
        p = float(combine_pvalues(np.clip(p_values, 1e-300, 1.0), method="fisher").pvalue)
    splits = [v["split"] for v in group]
    # Jumps with an event nearby: pooled over the seeds, k/n.
    total, explained = sum(v["jumps"] for v in group), sum(v["explained"] for v in group)
    steps = [v["steps"] for v in group]
    values = {
        "method": group[0]["method"],
        "analysed": sum(v["analysed"] for v in group),
        "steps": None if None in steps else sum(steps),
        "final_loss": mean("final_loss"),
        "D_stsp": mean("D_stsp"),
        "D_H": mean("D_H"),
        "attractor": _most_common_attractor([v["attractor"] for v in group]),
        "attractor_changes": mean("attractor_changes"),
        "jumps": float(np.mean([v["jumps"] for v in group])),
        "kinds": {kind: float(np.mean([v["kinds"][kind] for v in group])) for kind in kinds},
        "split": None if None in splits else {key: float(np.mean([s[key] for s in splits])) for key in splits[0]},
        "fraction": f"{explained}/{total}" + (f" ({explained / total:.2f})" if total else ""),
        "p": p,
        "overhead": mean("overhead"),
    }
    return _cells(values, kinds, seed="mean", counts_spec=".1f")


def comparison_table(runs: Sequence[dict]) -> str:
    """The side-by-side table of :func:`collect_runs` output, as a Markdown table (aligned for terminals).

    Runs are grouped by method and the settings that differ between them (``group_runs``); each row says how
    many of the run's training steps were analysed, and a note follows the legend when that fraction differs by
    more than a factor of 2 between runs.
    One row per run and, per group with several seeds, a ``mean`` row: arithmetic means, the most
    frequent final attractor with its count, the fraction of jumps with an event nearby pooled over seeds,
    and the p-values of the runs with loss jumps combined by Fisher's method.  ``n/a`` marks a quantity the saved files do not have
    (``D_stsp``/``D_H`` of a run that was not made by the demo, the attractor of a monitor without attractor
    analysis, the split of a run without ``events.jsonl``, the p-value of a run without loss jumps);
    ``diverged`` a non-finite final loss.
    """
    kinds = _kinds(runs)
    header = [
        "method",
        "seed",
        "analysed",
        "final loss",
        "D_stsp",
        "D_H",
        "final attractor",
        _kind_header("attractor_change"),
        "jumps",
        *[_kind_header(kind) for kind in _count_kinds(kinds)],
        *[name for _, name in _split_columns()],
        "jumps w/ ev.",
        "p",
        "overhead",
    ]
    rows: list[list[str]] = []
    values = _table_values(runs, kinds)
    methods = list(dict.fromkeys(v["method"] for v in values))
    for method in methods:
        group = [v for v in values if v["method"] == method]
        for v in group:
            rows.append(_cells(v, kinds, seed="-" if v["seed"] is None else str(v["seed"])))
        if len(group) > 1:
            rows.append(_mean_row(group, kinds))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, header.index("final attractor")}  # text columns

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    separator = "|" + "|".join("-" * (w + 2) if i in left else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    names = ", ".join(f"{_kind_header(kind)} = {kind}" for kind in kinds)
    legend = (
        "method: the training method (demo.json, or the hyperparameters' `training`) and the settings that differ "
        "between the runs; analysed = analysed steps / training steps (the monitor's every_n_steps and dropped "
        "steps, or the checkpoints of an offline analysis).  "
        f"final attractor: the monitor's followed attractor at the last monitored step; events by kind ({names}; "
        "cycles of order <= max_order, attractor changes at any period <= max_attractor_period); "
        "attr / rest: border collisions and degenerate events of the attractor (the event's cycle stable before "
        "or after, and not a mere crossing of a switching plane that changed nothing) / the others (saddles, "
        "repellers, such crossings).  jumps = loss jumps; jumps w/ ev. = loss jumps with an event "
        "within the monitor's window; p = permutation test (mean row: Fisher's combination of the runs with jumps); overhead = the "
        "monitor's cost to training: hooks, fit-end wait, slowdown beside its worker and what fewer torch threads cost or "
        "saved (n/a offline).  D_stsp, D_H on held-out data (lower is better).  Mean row: "
        "means, the most frequent final attractor (in k/n runs), jumps and analysed steps pooled."
    )
    tests = method_tests(runs)
    note = _coverage_note(values)
    return "\n".join([line(header), separator, *map(line, rows), "", legend, *(["", note] if note else []),
                      *(["", tests] if tests else [])])


# Per-run quantities that method_tests compares between the two methods: (label, key of _row_values or of its
# split, how to read it).
_TESTED = (
    ("final loss", "final_loss"),
    ("D_stsp", "D_stsp"),
    ("D_H", "D_H"),
    ("attractor changes", "attractor_changes"),
    ("border collisions of the attractor", "border_collision/attractor"),
    ("degenerate events of the attractor", "degenerate/attractor"),
    ("border collisions, rest", "border_collision/rest"),
    ("degenerate events, rest", "degenerate/rest"),
    ("loss jumps", "jumps"),
    ("jumps with an event nearby", "explained"),
)


def _teacher_label(data: str | None) -> str | None:
    """The label of a teacher data set's attractor ("teacher-16cycle" -> "16-cycle"), else None."""
    if not data or not data.startswith("teacher-") or not data.endswith("cycle"):
        return None
    period = data.removeprefix("teacher-").removesuffix("cycle")
    return f"{period}-cycle" if period.isdigit() else None


def method_tests(runs: Sequence[dict]) -> str:
    """GTF against BPTT over seeds, one line per quantity: medians and a two-sided Mann–Whitney U p-value
    (``scipy.stats.mannwhitneyu``: exact without ties, else the normal approximation with tie correction); for
    "reached the teacher's attractor" (the final attractor is the teacher's k-cycle) the counts and Fisher's exact
    test.  One block per pair of a BPTT group and a GTF group (``group_runs``: method and the settings that
    differ) with at least two runs each; empty when there is no such pair.
    """
    kinds = _kinds(runs)
    groups: dict[str, tuple[str | None, list[tuple[dict, dict]]]] = {}
    for value, run in zip(_table_values(runs, kinds), runs):
        groups.setdefault(value["method"], (_run_method(run), []))[1].append((value, run))
    first, second = DEMO_METHODS
    blocks = [
        _pair_tests(name_a, a, name_b, b)
        for name_a, (method_a, a) in groups.items() if method_a == first and len(a) >= 2
        for name_b, (method_b, b) in groups.items() if method_b == second and len(b) >= 2
    ]
    return "\n\n".join(blocks)


def _pair_tests(name_a: str, a_runs: list[tuple[dict, dict]], name_b: str, b_runs: list[tuple[dict, dict]]) -> str:
    """The tests of ``method_tests`` between two groups of (row values, run)."""
    from scipy.stats import fisher_exact, mannwhitneyu

    a, b = [v for v, _ in a_runs], [v for v, _ in b_runs]
    lines = [f"{name_a} vs {name_b} over seeds (n = {len(a)} / {len(b)}): medians, two-sided Mann–Whitney U p"]

    def read(v: dict, key: str) -> float | None:
        if "/" in key:
            return None if v["split"] is None else v["split"][key]
        return v[key]

    for label, key in _TESTED:
        x, y = [read(v, key) for v in a], [read(v, key) for v in b]
        if any(value is None or not math.isfinite(value) for value in x + y):
            lines.append(f"  {label}: n/a")
            continue
        # Exact null distribution where there are no ties, else the normal approximation with tie correction.
        method = "exact" if len(set(x + y)) == len(x + y) else "asymptotic"
        p = 1.0 if len(set(x + y)) == 1 else float(mannwhitneyu(x, y, alternative="two-sided", method=method).pvalue)
        lines.append(f"  {label}: {np.median(x):.3g} vs {np.median(y):.3g}, p = {p:.3g}")
    teachers = {(run["demo"] or {}).get("data") for _, run in a_runs + b_runs}
    teacher = _teacher_label(next(iter(teachers))) if len(teachers) == 1 else None
    if teacher is not None and all(v["attractor"] is not None for v in a + b):
        hits = [sum(v["attractor"] == teacher for v in g) for g in (a, b)]
        p = float(fisher_exact([[hits[0], len(a) - hits[0]], [hits[1], len(b) - hits[1]]]).pvalue)
        lines.append(f"  final attractor = the teacher's {teacher}: {hits[0]}/{len(a)} vs {hits[1]}/{len(b)}, Fisher's exact p = {p:.3g}")
    return "\n".join(lines)
