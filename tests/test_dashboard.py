"""dashboard.py without a Trainer: step and summary scalars, the summary table, output folders, files."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from bifurcation_callback.analysis import StepRecord, cycle_scalars
from bifurcation_callback.cycles import find_cycles
from bifurcation_callback.dashboard import (
    LOGGED_METRICS,
    Dashboard,
    events_markdown,
    fold_events,
    fresh_run_dir,
    read_jsonl,
    running_scalars,
    summary_line,
    summary_markdown,
    summary_scalars,
)

from .problems import plrnn

PATTERNS = [re.compile("^" + re.sub(r"\\\{\w+\\\}", r"\\d+", re.escape(key)) + "$") for key in LOGGED_METRICS]


class RecordingLogger:
    """A non-TensorBoard logger: gets the scalars only."""

    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((dict(metrics), step))


def record(**overrides) -> StepRecord:
    base = {"step": 3, "loss": 0.5, "grad_norm": None, "events": [{}], "finder_ms": 2.0, "compare_ms": 1.0, "lag_steps": 2}
    return StepRecord(**{**base, **overrides})


def summary(jumps_explained=None, p_value=None, events_with_jump=None, n_jumps=0):
    return {
        "n_monitored_steps": 11,
        "n_analysed_steps": 10,
        "n_skipped": 1,
        "n_events": 2,
        "events_by_kind": {"appearance": 2, "disappearance": 0},
        "loss_jumps": [{"step": 3}] * n_jumps,
        "monitor_overhead": 0.25,
        "jump_correlation": {
            "jumps_explained": jumps_explained,
            "events_with_jump": events_with_jump,
            "p_value": p_value,
            "mean_lag": None,
        },
    }


def test_step_scalars_are_documented_and_count_the_cycles():
    cycles = find_cycles(plrnn(A=[0.5, 0.6], W=[[0.0, -0.4], [0.3, 0.0]], h=[0.2, -0.1]), max_order=2)
    step = record(cycle_scalars=cycle_scalars(cycles, {0: 0.5, 3: 1.5}),
                  events=[{"kind": "appearance"}, {"kind": "appearance", "verified": False}])
    scalars = {**step.scalars(), **running_scalars(step, n_events=4, n_skipped=1)}
    assert all(any(p.match(tag) for p in PATTERNS) for tag in scalars), sorted(scalars)
    assert scalars["bifurcation/n_cycles/total"] == len(cycles)
    assert scalars["bifurcation/event"] == 1.0 and scalars["bifurcation/events_total"] == 4.0  # verified events only
    assert scalars["bifurcation/monitor_ms"] == 3.0 and scalars["bifurcation/lag_steps"] == 2
    assert {t: v for t, v in scalars.items() if "/cycle_" in t} == {
        "bifurcation/max_abs_eig/cycle_0": 0.5,
        "bifurcation/max_abs_eig/cycle_3": 1.5,
    }


@pytest.mark.parametrize(
    "fields, explained, events",
    [
        ({}, "n/a", "n/a"),
        ({"events_with_jump": 0.0}, "n/a", "0.00"),
        ({"jumps_explained": 0.5, "p_value": 0.0123, "events_with_jump": 1.0, "n_jumps": 2}, "0.50 (p = 0.0123)", "1.00"),
    ],
)
def test_summary_markdown_shows_n_a_for_undefined_fractions(fields, explained, events):
    table = summary_markdown(summary(**fields))
    assert f"| jumps with an event nearby | {explained} |" in table
    assert f"| events with a jump nearby | {events} |" in table
    assert "| bifurcation events | 2 (appearance: 2) |" in table


def test_undefined_summary_scalars_are_not_logged():
    logger = RecordingLogger()
    Dashboard([logger], None).log_scalars(summary_scalars(summary(events_with_jump=0.0)), step=9)
    assert logger.calls == [({"bifurcation/events_with_jump": 0.0, "bifurcation/n_loss_jumps": 0.0}, 9)]


def test_fresh_run_dir_never_reuses_a_folder(tmp_path):
    first = fresh_run_dir(tmp_path)
    first.mkdir(parents=True)
    second = fresh_run_dir(tmp_path)
    assert (first.name, second.name) == ("version_0", "version_1")
    assert first.parent == second.parent == tmp_path / "bifurcation_monitor"


def test_overwriting_an_earlier_runs_records_warns_but_a_resume_does_not(tmp_path):
    Dashboard([], tmp_path).rewrite_records([{"step": 0}])
    with pytest.warns(UserWarning, match="overwrites .*events.jsonl"):
        Dashboard([], tmp_path).rewrite_records([])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dashboard([], tmp_path).rewrite_records([{"step": 0}], resumed=True)
    assert read_jsonl(tmp_path / "events.jsonl") == [{"step": 0}]


def test_summary_json_holds_null_for_undefined_fractions(tmp_path):
    path = Dashboard([], tmp_path).write_summary(summary())
    assert json.loads(path.read_text())["jump_correlation"]["jumps_explained"] is None


CROSSING = {"step": 7, "kind": "border_collision", "order": 1, "description": "fixed point crossed (stays stable)",
            "stable_before": True, "stable_after": True, "n_unstable_before": 0, "n_unstable_after": 0}
BIRTH = {"step": 7, "kind": "appearance", "order": 2, "description": "stable 2-cycle appeared",
         "stable_before": None, "stable_after": True}


def test_events_table_folds_border_crossings_unless_all_are_asked_for():
    assert fold_events([CROSSING, BIRTH, CROSSING]) == ([BIRTH], 2)
    table = events_markdown([CROSSING, BIRTH, CROSSING])
    assert "| 7 | appearance | 2 | stable 2-cycle appeared |" in table and "fixed point crossed" not in table
    assert table.endswith("and 2 border crossings folded (stability unchanged; show_all_events=True lists them)")
    everything = events_markdown([CROSSING, BIRTH, CROSSING], show_all=True)
    assert everything.count("| 7 | border_collision | 1 |") == 2 and "folded" not in everything


def folded_summary(**overrides):
    base = summary(jumps_explained=0.75, p_value=0.0213, events_with_jump=0.5, n_jumps=4)
    base.update(n_events=12, n_border_crossings=7, events_by_kind={
        "appearance": 3, "disappearance": 0, "stability_change": 2, "border_collision": 7, "degenerate": 0})
    base.update(overrides)
    return base


def test_summary_table_folds_border_crossings_and_show_all_lists_them():
    assert "| bifurcation events | 12 (appearance: 3, stability_change: 2, 7 border crossings folded) |" in (
        summary_markdown(folded_summary()))
    assert "| bifurcation events | 12 (appearance: 3, stability_change: 2, border_collision: 7) |" in (
        summary_markdown(folded_summary(), show_all_events=True))
    # A qualitative border collision (here 1 of 8) keeps its own count beside the folded ones.
    mixed = folded_summary(n_events=13, events_by_kind={"appearance": 3, "stability_change": 2, "border_collision": 8})
    assert "(appearance: 3, stability_change: 2, border_collision: 1, 7 border crossings folded)" in summary_markdown(mixed)
    # Summaries written before folding existed have no n_border_crossings: nothing is folded.
    old = folded_summary()
    del old["n_border_crossings"]
    assert "border_collision: 7" in summary_markdown(old)


@pytest.mark.parametrize(
    "overrides, show_all, expected",
    [
        ({}, False, "BifurcationMonitor: 12 events (3 appearance, 2 stability change, 7 border crossings folded), "
                    "4 loss jumps, 3/4 with an event nearby (p = 0.021), 10 of 11 monitored steps analysed, 1 skipped, overhead 25.0 %"),
        ({}, True, "BifurcationMonitor: 12 events (3 appearance, 2 stability change, 7 border collision), "
                   "4 loss jumps, 3/4 with an event nearby (p = 0.021), 10 of 11 monitored steps analysed, 1 skipped, overhead 25.0 %"),
        ({"n_events": 0, "n_border_crossings": 0, "events_by_kind": {"appearance": 0}, "loss_jumps": [],
          "jump_correlation": {"jumps_explained": None, "p_value": None, "events_with_jump": None, "mean_lag": None}},
         False, "BifurcationMonitor: 0 events, 0 loss jumps, n/a with an event nearby, 10 of 11 monitored steps analysed, 1 skipped, overhead 25.0 %"),
        ({"loss_jumps": [{"step": 3}], "jump_correlation": {"jumps_explained": 0.0, "p_value": None,
                                                              "events_with_jump": 0.0, "mean_lag": None}},
         False, "BifurcationMonitor: 12 events (3 appearance, 2 stability change, 7 border crossings folded), "
                "1 loss jump, 0/1 with an event nearby, 10 of 11 monitored steps analysed, 1 skipped, overhead 25.0 %"),
    ],
)
def test_summary_line(overrides, show_all, expected):
    assert summary_line(folded_summary(**overrides), show_all_events=show_all) == expected


def test_summary_line_says_in_one_note_what_the_overhead_leaves_out():
    threads = {"training_threads": {"before": 2, "during_fit": 1}, "thread_change_seconds": None}
    line = summary_line(folded_summary(overhead_is_lower_bound=True, **threads))
    assert line.endswith("overhead 25.0 % (lower bound: the slowdown of training beside the worker and what "
                         "training's fewer torch threads cost or saved were not measured)")
    assert summary_line(folded_summary(**threads)).endswith(
        "overhead 25.0 % (what training's fewer torch threads cost or saved was not measured)")
    assert summary_line(folded_summary(overhead_is_lower_bound=True)).endswith(
        "overhead 25.0 % (lower bound: the slowdown of training beside the worker was not measured)")
    measured = folded_summary(**{**threads, "thread_change_seconds": -0.5})
    assert summary_line(measured).endswith("overhead 25.0 %")


def test_local_tensorboard_dirs_only_for_writers_in_local_folders(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    class Logger:
        def __init__(self, experiment):
            self.experiment = experiment

    class RemoteWriter(SummaryWriter):  # a SummaryWriter type, as Dashboard recognises them
        def __init__(self, log_dir):
            self.remote = log_dir

        def get_logdir(self):
            return self.remote

    local = SummaryWriter(str(tmp_path / "run"))
    try:
        assert Dashboard([Logger(local)], tmp_path).local_tensorboard_dirs() == (str((tmp_path / "run").resolve()),)
        remote = Dashboard([Logger(local), Logger(RemoteWriter("s3://bucket/run"))], tmp_path)
        assert remote.local_tensorboard_dirs() is None  # one writer another process cannot reach: none
        assert Dashboard([], tmp_path).local_tensorboard_dirs() is None
    finally:
        local.close()
