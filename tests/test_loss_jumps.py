"""Tests for bifurcation_callback.loss_jumps: jump/spike detection and event correlation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bifurcation_callback.loss_jumps import (
    JUMP_DIRECTIONS,
    Correlation,
    LossJump,
    _signed_lags_to_nearest,
    correlate,
    detect_loss_jumps,
    detect_spikes,
    summarise_run,
)

SEEDS = range(25)
MATCH_TOLERANCE = 1  # a detection counts if it is within ±1 step of a planted jump


def planted_jump_curve(
    seed: int, *, n_steps: int = 400, noise: float = 0.05, n_jumps: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Exponential decay with multiplicative lognormal noise and sudden ×/÷ (2..5) jumps at known steps."""
    rng = np.random.default_rng(seed)
    decay_rate = rng.uniform(0.002, 0.01)
    log_loss = math.log(2.0) - decay_rate * np.arange(n_steps) + rng.normal(0.0, noise, n_steps)
    # Keep planted jumps apart so that "within ±1 step" identifies a single planted jump.
    planted = np.sort(rng.choice(np.arange(20, n_steps - 20, 25), size=n_jumps, replace=False))
    for step in planted:
        log_loss[step:] += rng.choice([-1.0, 1.0]) * math.log(rng.uniform(2.0, 5.0))
    return np.exp(log_loss), planted


def precision_recall(detected: list[list[int]], planted: list[np.ndarray]) -> tuple[float, float]:
    """Aggregate precision and recall over several series, matching within MATCH_TOLERANCE."""
    true_positives = false_positives = false_negatives = 0
    for found, truth in zip(detected, planted):
        hits = [any(abs(step - t) <= MATCH_TOLERANCE for t in truth) for step in found]
        true_positives += sum(hits)
        false_positives += len(hits) - sum(hits)
        false_negatives += sum(not any(abs(step - t) <= MATCH_TOLERANCE for step in found) for t in truth)
    return true_positives / (true_positives + false_positives), true_positives / (true_positives + false_negatives)


# ----------------------------------------------------------------------------------------------------
# detect_loss_jumps
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.02, 0.05, 0.1])
def test_planted_jumps_are_found_with_high_precision_and_recall(noise: float) -> None:
    detected, planted = [], []
    for seed in SEEDS:
        losses, truth = planted_jump_curve(seed, noise=noise)
        detected.append([jump.step for jump in detect_loss_jumps(losses)])
        planted.append(truth)
    precision, recall = precision_recall(detected, planted)
    assert precision >= 0.9 and recall >= 0.9, f"noise={noise}: precision={precision:.3f} recall={recall:.3f}"


def test_planted_jump_direction_and_size_are_reported() -> None:
    losses = np.exp(-0.005 * np.arange(200))
    losses[50:] *= 3.0
    losses[120:] /= 5.0
    jumps = detect_loss_jumps(losses)
    assert [(jump.step, jump.direction) for jump in jumps] == [(50, "up"), (120, "down")]
    assert jumps[0].size == pytest.approx(math.log(3.0) - 0.005)
    assert jumps[1].size == pytest.approx(-math.log(5.0) - 0.005)
    assert jumps[0].zscore > 0 > jumps[1].zscore


def test_steps_argument_maps_jumps_to_training_steps() -> None:
    losses = np.exp(-0.01 * np.arange(100))
    losses[40:] /= 4.0
    steps = 1000 + 10 * np.arange(100)
    assert [jump.step for jump in detect_loss_jumps(losses, steps)] == [1400]


@pytest.mark.parametrize("decay_rate", [0.001, 0.05, math.log(2.0)])
def test_exact_exponential_decay_has_no_jumps(decay_rate: float) -> None:
    # The largest rate halves the loss every step: a 100 % relative change, but perfectly regular.
    assert detect_loss_jumps(np.exp(-decay_rate * np.arange(300))) == []


@pytest.mark.parametrize("seed", range(10))
def test_decay_with_small_noise_has_no_jumps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    losses = np.exp(-0.01 * np.arange(1000) + rng.normal(0.0, 0.01, 1000))
    assert detect_loss_jumps(losses) == []


def test_constant_loss_has_no_jumps_but_a_step_on_it_is_found() -> None:
    assert detect_loss_jumps(np.full(50, 0.3)) == []
    losses = np.full(50, 0.3)
    losses[30:] = 0.1
    assert [(jump.step, jump.direction) for jump in detect_loss_jumps(losses)] == [(30, "down")]


def test_consecutive_changes_in_one_direction_merge_into_one_jump() -> None:
    losses = np.exp(-0.01 * np.arange(100))
    losses[50:] /= 2.0
    losses[51:] /= 3.0  # the drop is spread over steps 50 and 51, the larger part at 51
    (jump,) = detect_loss_jumps(losses)
    assert jump.step == 51
    assert jump.size == pytest.approx(-math.log(6.0) - 0.02)


def test_transient_spike_is_an_up_jump_followed_by_a_down_jump() -> None:
    losses = np.exp(-0.01 * np.arange(100))
    losses[60] *= 10.0
    assert [(jump.step, jump.direction) for jump in detect_loss_jumps(losses)] == [(60, "up"), (61, "down")]


def test_divergence_to_nan_or_inf_is_an_infinite_up_jump() -> None:
    losses = np.exp(-0.01 * np.arange(50))
    losses[40:] = np.nan
    assert detect_loss_jumps(losses) == [LossJump(step=40, size=math.inf, direction="up", zscore=math.inf)]
    losses[40:] = np.inf
    assert [jump.step for jump in detect_loss_jumps(losses)] == [40]


def test_isolated_nan_is_reported_and_the_change_across_it_is_measured() -> None:
    losses = np.exp(-0.01 * np.arange(80))
    losses[30] = np.nan
    losses[31:] /= 4.0  # the drop happens across the NaN gap
    jumps = detect_loss_jumps(losses)
    assert [(jump.step, jump.direction) for jump in jumps] == [(30, "up"), (31, "down")]
    assert math.isinf(jumps[0].size)
    assert jumps[1].size == pytest.approx(-math.log(4.0) - 0.02)


def test_leading_and_only_non_finite_values_are_ignored() -> None:
    losses = np.exp(-0.01 * np.arange(50))
    losses[:5] = np.nan
    assert detect_loss_jumps(losses) == []
    assert detect_loss_jumps([np.nan] * 10) == []


@pytest.mark.parametrize("losses", [[], [1.0], [1.0, 10.0], [1.0, 1.0, 100.0, 1.0]])
def test_short_series_give_no_jumps(losses: list[float]) -> None:
    assert detect_loss_jumps(losses) == []


def test_short_series_still_reports_divergence() -> None:
    assert [jump.step for jump in detect_loss_jumps([1.0, 0.5, np.nan])] == [2]


def test_baseline_window_follows_a_changing_trend() -> None:
    # Fast initial decay, then a slow one: the global median change is the slow rate, so the fast phase
    # looks like one long drop; a local baseline sees it as the trend it is.
    rng = np.random.default_rng(0)
    log_changes = np.where(np.arange(300) < 60, -0.3, -0.002) + rng.normal(0.0, 0.01, 300)
    losses = np.exp(np.cumsum(log_changes))
    losses[200:] *= 3.0
    assert detect_loss_jumps(losses)[0].step < 60
    assert [jump.step for jump in detect_loss_jumps(losses, baseline_window=21)] == [200]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(min_value=1e-6, max_value=1e6), st.sampled_from([math.nan, math.inf, -math.inf])),
        max_size=60,
    )
)
def test_detect_loss_jumps_never_crashes_and_reports_given_steps(losses: list[float]) -> None:
    steps = 3 * np.arange(len(losses)) + 7
    jumps = detect_loss_jumps(losses, steps)
    reported = [jump.step for jump in jumps]
    assert reported == sorted(reported)
    assert set(reported) <= set(steps.tolist())
    assert all(jump.direction in JUMP_DIRECTIONS for jump in jumps)


# ----------------------------------------------------------------------------------------------------
# detect_spikes
# ----------------------------------------------------------------------------------------------------


def test_planted_grad_norm_spikes_are_found() -> None:
    detected, planted = [], []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        grad_norms = np.exp(rng.normal(0.0, 0.2, 500))
        truth = np.sort(rng.choice(np.arange(10, 490, 20), size=5, replace=False))
        grad_norms[truth] *= rng.uniform(5.0, 50.0, size=5)
        detected.append(detect_spikes(grad_norms))
        planted.append(truth)
    precision, recall = precision_recall(detected, planted)
    assert precision >= 0.9 and recall >= 0.9, f"precision={precision:.3f} recall={recall:.3f}"


def test_spikes_special_values() -> None:
    grad_norms = np.ones(40)
    grad_norms[[5, 6]] = [20.0, 40.0]  # one spike over two steps, reported at its peak
    grad_norms[10] = 0.0  # a step without gradient is neither a spike nor part of the statistics
    grad_norms[20] = np.nan
    grad_norms[30] = 0.01  # unusually low is not a spike
    assert detect_spikes(grad_norms, steps=np.arange(40) * 2) == [12, 40]


def test_spikes_need_min_ratio() -> None:
    grad_norms = np.ones(40)
    grad_norms[15] = 1.5  # infinitely many robust sigmas (MAD = 0) but only 1.5× the usual level
    assert detect_spikes(grad_norms) == []
    assert detect_spikes(grad_norms, min_ratio=1.2) == [15]


def test_spikes_short_series_reports_only_non_finite() -> None:
    assert detect_spikes([1.0, 100.0, np.inf]) == [2]


# ----------------------------------------------------------------------------------------------------
# correlate
# ----------------------------------------------------------------------------------------------------


def test_colocated_events_are_significant() -> None:
    rng = np.random.default_rng(1)
    jumps = np.sort(rng.choice(np.arange(50, 5000), size=12, replace=False))
    events = jumps + rng.integers(-3, 4, size=jumps.size)
    result = correlate(events.tolist(), jumps.tolist(), window=5, step_range=(0, 5000))
    assert result.jumps_explained >= 0.9
    assert result.events_with_jump >= 0.9
    assert result.p_value < 0.01


def test_independent_events_are_not_significant() -> None:
    rng = np.random.default_rng(2)
    jumps = rng.integers(0, 5000, size=12).tolist()
    events = rng.integers(0, 5000, size=15).tolist()
    result = correlate(events, jumps, window=5, step_range=(0, 5000))
    assert result.p_value > 0.05


def test_hand_made_fractions_and_mean_lag() -> None:
    result = correlate([8, 51, 300], [10, 50, 100], window=3, n_permutations=50, step_range=(0, 400))
    assert result.jumps_explained == pytest.approx(2 / 3)
    assert result.events_with_jump == pytest.approx(2 / 3)
    assert result.mean_lag == pytest.approx(((10 - 8) + (50 - 51)) / 2)
    assert (result.n_jumps, result.n_events, result.window, result.step_range) == (3, 3, 3, (0, 400))


def test_lag_tie_prefers_the_earlier_event() -> None:
    assert correlate([18, 22], [20], window=2, n_permutations=10).mean_lag == 2.0


def test_window_is_inclusive() -> None:
    assert correlate([7], [10], window=3, n_permutations=10).jumps_explained == 1.0
    assert correlate([6], [10], window=3, n_permutations=10).jumps_explained == 0.0


def test_p_value_follows_the_permutation_formula() -> None:
    # A single step range: every null placement explains the jump, so p = (1 + n) / (1 + n) = 1.
    assert correlate([5], [5], window=0, n_permutations=99, step_range=(5, 5)).p_value == 1.0
    result = correlate([5], [5], window=0, n_permutations=99, step_range=(0, 10**6))
    assert result.p_value == pytest.approx(1 / 100)


def test_same_seed_same_p_value() -> None:
    first = correlate([1, 40, 77], [3, 41, 90], window=2, seed=7)
    assert correlate([1, 40, 77], [3, 41, 90], window=2, seed=7) == first


@dataclass(frozen=True)
class FakeEvent:
    step: int


def test_accepts_objects_with_a_step_attribute() -> None:
    jumps = [LossJump(step=10, size=-1.0, direction="down", zscore=-8.0)]
    result = correlate([FakeEvent(9)], jumps, window=1, n_permutations=10)
    assert result.jumps_explained == 1.0 and result.mean_lag == 1.0


@pytest.mark.parametrize(("events", "jumps"), [([], [1, 2]), ([1, 2], []), ([], [])])
def test_no_events_or_no_jumps_give_p_one(events: list[int], jumps: list[int]) -> None:
    result = correlate(events, jumps, window=5)
    assert (result.jumps_explained, result.events_with_jump, result.mean_lag, result.p_value) == (0.0, 0.0, None, 1.0)
    assert (result.n_events, result.n_jumps) == (len(events), len(jumps))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-50, 50), min_size=1, max_size=8),
    st.lists(st.lists(st.integers(-50, 50), min_size=1, max_size=6), min_size=1, max_size=4).map(
        lambda rows: [row[: min(map(len, rows))] for row in rows]
    ),
)
def test_vectorised_nearest_lags_match_brute_force(queries: list[int], targets: list[list[int]]) -> None:
    lags = _signed_lags_to_nearest(np.asarray(queries), np.asarray(targets))
    for row, row_targets in enumerate(targets):
        for column, query in enumerate(queries):
            # Nearest target; on a tie the earlier one (the larger, positive lag).
            expected = max((query - target for target in row_targets), key=lambda lag: (-abs(lag), lag))
            assert lags[row, column] == expected


# ----------------------------------------------------------------------------------------------------
# Serialisation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "jump",
    [
        LossJump(step=3, size=-0.7, direction="down", zscore=-6.2),
        LossJump(step=9, size=math.inf, direction="up", zscore=math.inf),
    ],
)
def test_loss_jump_round_trips_through_strict_json(jump: LossJump) -> None:
    assert LossJump.from_dict(json.loads(json.dumps(jump.to_dict(), allow_nan=False))) == jump


@pytest.mark.parametrize(("events", "jumps"), [([10, 52], [12, 50, 90]), ([], [4])])
def test_correlation_round_trips_through_strict_json(events: list[int], jumps: list[int]) -> None:
    result = correlate(events, jumps, window=3, n_permutations=20)
    assert Correlation.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False))) == result


# ----------------------------------------------------------------------------------------------------
# Bad input: one case per argument, the message names the argument and the bad value
# ----------------------------------------------------------------------------------------------------

GOOD_LOSSES = np.exp(-0.01 * np.arange(20))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"losses": np.ones((4, 4))}, "losses must be 1-D"),
        ({"losses": ["a", "b"]}, "losses must be a 1-D sequence of real numbers"),
        ({"losses": [1.0, 0.0, 2.0, 1.0, 1.0]}, r"losses must be > 0 .*losses\[1\]=0.0"),
        ({"losses": [1.0, -2.0, 2.0, 1.0, 1.0]}, r"losses\[1\]=-2.0"),
        ({"steps": np.arange(19)}, r"steps must have the same length as losses \(20\), got 19"),
        (
            {"steps": np.r_[0:10, 5:15]},
            r"steps must be strictly increasing, got steps\[9\]=9 followed by steps\[10\]=5",
        ),
        ({"steps": np.arange(20.0)}, "steps must be integers"),
        ({"steps": np.ones((20, 1), dtype=int)}, "steps must be 1-D"),
        ({"z_threshold": 0.0}, "z_threshold must be a finite number > 0, got 0.0"),
        ({"z_threshold": math.nan}, "z_threshold must be a finite number > 0, got nan"),
        ({"z_threshold": "5"}, "z_threshold must be a real number, got '5'"),
        ({"min_relative_change": -0.1}, r"min_relative_change must be a finite number >= 0, got -0.1"),
        ({"baseline_window": 2}, "baseline_window must be None or an int >= 3, got 2"),
        ({"baseline_window": 5.0}, "baseline_window must be None or an int >= 3, got 5.0"),
    ],
)
def test_detect_loss_jumps_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"losses": GOOD_LOSSES} | kwargs
    with pytest.raises(ValueError, match=message):
        detect_loss_jumps(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": [1.0, -1.0, 1.0]}, r"values must be >= 0, got values\[1\]=-1.0"),
        ({"steps": [0, 1]}, r"steps must have the same length as values \(3\), got 2"),
        ({"z_threshold": -1}, "z_threshold must be a finite number > 0, got -1"),
        ({"min_ratio": 0.5}, "min_ratio must be a finite number >= 1, got 0.5"),
        ({"baseline_window": 1}, "baseline_window must be None or an int >= 3, got 1"),
    ],
)
def test_detect_spikes_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"values": [1.0, 2.0, 1.0]} | kwargs
    with pytest.raises(ValueError, match=message):
        detect_spikes(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_steps": [1, 2.5]}, r"event_steps\[1\] must be an int or have an int .step attribute, got 2.5"),
        ({"event_steps": 5}, "event_steps must be an iterable"),
        ({"jump_steps": [FakeEvent(1.0)]}, r"jump_steps\[0\] must be an int or have an int .step attribute"),
        ({"window": -1}, "window must be an int >= 0, got -1"),
        ({"window": 2.0}, "window must be an int >= 0, got 2.0"),
        ({"n_permutations": 0}, "n_permutations must be an int >= 1, got 0"),
        ({"seed": "0"}, "seed must be an int or None, got '0'"),
        (
            {"step_range": (10, 0)},
            r"step_range must be a pair of ints \(first, last\) with first <= last, got \(10, 0\)",
        ),
        ({"step_range": (0,)}, r"step_range must be a pair of ints"),
    ],
)
def test_correlate_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"event_steps": [1, 5], "jump_steps": [2, 9], "window": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        correlate(**arguments)


def test_loss_jump_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match=r"direction must be one of \('up', 'down'\), got 'sideways'"):
        LossJump(step=1, size=1.0, direction="sideways", zscore=6.0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# summarise_run
# ----------------------------------------------------------------------------------------------------


def _history(losses, norms=None, first_step: int = 0):
    norms = norms if norms is not None else [None] * len(losses)
    return [(first_step + i, loss, norm) for i, (loss, norm) in enumerate(zip(losses, norms))]


def test_summarise_run_finds_a_planted_jump_after_the_warmup_and_correlates_it() -> None:
    losses, planted = planted_jump_curve(3, n_steps=200, n_jumps=2)
    summary = summarise_run(_history(losses), [int(planted[0]) - 1], window=2, warmup_steps=10)
    assert [jump.step for jump in summary.loss_jumps] == [int(step) for step in planted]
    assert summary.jump_correlation.jumps_explained == pytest.approx(0.5)
    assert summary.jump_correlation.step_range == (0, 199)
    assert summary.note is None


def test_summarise_run_ignores_jumps_inside_the_warmup() -> None:
    losses = [9.0, 3.0, 1.0] + [1.0 * 0.999**i for i in range(60)]
    assert summarise_run(_history(losses), [], window=2, warmup_steps=5).loss_jumps == ()
    assert summarise_run(_history(losses), [], window=2, warmup_steps=0).loss_jumps  # the first drop reads as a jump


def test_summarise_run_warmup_counts_from_the_first_step_of_the_history() -> None:
    losses = [9.0, 3.0, 1.0] + [1.0] * 60
    assert summarise_run(_history(losses, first_step=1000), [], window=2, warmup_steps=5).loss_jumps == ()


def test_summarise_run_with_nothing_to_count_serialises_null_not_zero() -> None:
    data = summarise_run(_history([1.0] * 30), [4, 9], window=2).to_dict()
    correlation = data["jump_correlation"]
    assert correlation["jumps_explained"] is None and correlation["p_value"] is None
    assert correlation["events_with_jump"] == 0.0  # events exist, none has a jump: a real 0
    no_events = summarise_run(_history([1.0] * 30), [], window=2).to_dict()["jump_correlation"]
    assert no_events["events_with_jump"] is None
    json.dumps(data)  # JSON-ready


def test_summarise_run_reports_why_no_jumps_were_looked_for() -> None:
    summary = summarise_run(_history([1.0, -1.0] * 20), [], window=2)
    assert summary.loss_jumps == ()
    assert "losses must be > 0" in summary.note


def test_summarise_run_skips_missing_values_and_finds_gradient_spikes() -> None:
    norms = [1.0 + 0.01 * (i % 3) for i in range(60)]
    norms[40] = 50.0
    losses = [None if i % 7 == 0 else 1.0 for i in range(60)]
    summary = summarise_run(_history(losses, norms), [39], window=2)
    assert summary.grad_spike_steps == (40,)
    assert summary.grad_spike_correlation.jumps_explained == 1.0


def test_summarise_run_of_an_empty_history() -> None:
    summary = summarise_run([], [], window=3)
    assert summary.loss_jumps == () and summary.grad_spike_steps == ()
    assert summary.jump_correlation.step_range == (0, 0)
