"""Loss-jump and gradient-spike detection: abrupt changes of a training run's loss at several time scales.

Pure numpy/scipy: nothing here imports torch, lightning or tensorboard.

- ``detect_loss_jumps`` flags abrupt changes of ``log(loss)`` at several time scales (``DEFAULT_JUMP_SCALES``:
  1, 3, 10 and 30 losses).  At scale ``h`` the statistic is the change of the mean log-loss between the
  ``h`` losses before a step and the ``h`` losses from it on (a moving-sum, "MOSUM", change-point statistic;
  ``h = 1`` is the plain step-to-step change), judged by a robust z-score against the run's own changes *at
  that scale* and near that step, and by a minimum relative size.  One change seen at several scales is one
  ``LossJump``, recorded at the shortest scale that saw it.
- ``detect_spikes`` flags values far above their typical level on a log scale (gradient norms).

Both detectors share one robust-statistics core (``_robust_zscores``: median and MAD scaled by 1.4826, over
the whole series with iterative 3-sigma clipping, or over a sliding window judged against its noisier half;
with a floor on the scale so that a noiseless series never divides by zero).  ``loss_jumps`` correlates what
they find with bifurcation events.

Step convention: a change between the losses logged at ``steps[i-1]`` and ``steps[i]`` is reported at
``steps[i]``, the first step at the new level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._checks import require_int_sequence

__all__ = ["DEFAULT_JUMP_SCALES", "JUMP_DIRECTIONS", "LossJump", "detect_loss_jumps", "detect_spikes"]

# The single list of valid jump directions: read by LossJump validation, from_dict and the docs.
JUMP_DIRECTIONS: tuple[str, ...] = ("up", "down")

# Time scales (in consecutive losses) at which loss jumps are looked for: a step, a handful, tens of steps.
# Roughly geometric (ratio ~3), so a change spread over L <= 30 steps has a scale within a factor ~2 of L, where
# the window-mean statistic keeps most of its size (a ramp of L <= h steps keeps 1 - L/(4h) of it) and of its
# signal-to-noise.  Measured on synthetic runs (docs/concepts.md): adding 100 doubled the false jumps of smooth
# fast-then-slow decays (the run's curvature at that scale) and found nothing the 30-step scale missed.
DEFAULT_JUMP_SCALES: tuple[int, ...] = (1, 3, 10, 30)

# Converts a median absolute deviation into a standard-deviation estimate for Gaussian data.
_MAD_TO_SIGMA = 1.4826

# Below this many finite values the median/MAD are too unreliable to call anything an outlier.
_MIN_FINITE_POINTS = 5

# A scale h is used only on a series of at least 6h losses: its changes then number at least 4h + 1, so the
# 2h - 1 changes that one jump elevates are under half of those the noise is estimated from.
_LOSSES_PER_SCALE = 6

# At scale h a change is judged only where h - 1 more losses flank its two windows on each side, and a run
# of outliers whose peak is the first or last change judged is dropped: near the ends a curving trend (the fast
# first descent slowing down) has no ordinary neighbours on one side and reads as a change.  h = 1 has no
# window for a trend to bend inside: it is judged everywhere, as before the scales existed.
_FLANK_PER_SCALE = 1

# At scale h the noise is estimated from a window of at least this many times h changes: the changes at one
# step overlap their 2h - 1 neighbours, so the window holds ~16 independent h-step changes.
_NOISE_WINDOW_PER_SCALE = 16

# Default noise window (changes) of detect_loss_jumps: local enough to follow the noise of a loss that falls
# 100-fold within a run (the forced loss of GTF moves by 0.2 % per step early and by 30 % late), long
# enough for a MAD that varies by under 10 %.
_DEFAULT_BASELINE_WINDOW = 200

# Iterative sigma clipping of a whole-series estimate: values beyond 3 robust sigmas are left out and the
# median/MAD recomputed, so that a big change does not inflate the noise it is judged against.
_CLIP_SIGMAS = 3.0
_MAX_CLIP_ROUNDS = 10

# Floors on the robust scale.  A smooth exponential decay has (numerically) constant log-differences, so
# its MAD is ~0 and rounding noise would get enormous z-scores; the floor keeps such a series quiet.
# The relative part scales with the typical magnitude of the log-differences, the absolute part covers a
# constant series (typical magnitude 0).  Both are far below any change worth calling a jump.
_RELATIVE_SCALE_FLOOR = 1e-3
_ABSOLUTE_SCALE_FLOOR = 1e-9


# ----------------------------------------------------------------------------------------------------
# Result containers
# ----------------------------------------------------------------------------------------------------


def _float_to_json(value: float) -> float | str:
    # Strict JSON has no inf/nan; store them as strings that float() reads back.
    return value if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class LossJump:
    """An abrupt change of the training loss.

    Attributes
    ----------
    step : int
        Training step of the first loss at the new level (where the change was largest, in robust
        z-scores, when it spans several steps).
    size : float
        Signed change of the mean ``log(loss)`` between the ``scale`` losses before the change and the
        ``scale`` losses after it (for ``scale == 1``: the total log-change over consecutive steps that
        changed in the same direction); ``exp(size)`` is the ratio of the (geometric mean) loss
        after/before, the run's ordinary trend over those steps included.  ``inf`` when the loss became
        non-finite.
    direction : {"up", "down"}
        ``"up"`` when the loss increased, one of ``JUMP_DIRECTIONS``.
    zscore : float
        Robust z-score of the change at ``step``, against the run's changes at this scale (``inf`` for a
        non-finite loss).
    scale : int, default 1
        The shortest time scale, in consecutive losses, at which the change was detected: 1 for a change
        from one step to the next, ``h`` for a change between two windows of ``h`` losses.  Divergence to
        a non-finite loss has scale 1.

    Raises
    ------
    ValueError
        If ``direction`` is not one of ``JUMP_DIRECTIONS`` or ``scale`` is not an int >= 1.

    Examples
    --------
    >>> jump = LossJump(step=120, size=-0.7, direction="down", zscore=-9.5, scale=10)
    >>> LossJump.from_dict(jump.to_dict()) == jump
    True
    """

    step: int
    size: float
    direction: Literal["up", "down"]
    zscore: float
    scale: int = 1

    def __post_init__(self) -> None:
        if self.direction not in JUMP_DIRECTIONS:
            raise ValueError(f"direction must be one of {JUMP_DIRECTIONS}, got {self.direction!r}")
        if not _is_integer(self.scale) or self.scale < 1:
            raise ValueError(f"scale must be an int >= 1, got {self.scale!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (non-finite floats become the strings ``"inf"``, ``"nan"``).

        Returns
        -------
        dict
            Keys ``step``, ``size``, ``direction``, ``zscore``, ``scale``.

        Examples
        --------
        >>> LossJump(step=5, size=float("inf"), direction="up", zscore=float("inf")).to_dict()
        {'step': 5, 'size': 'inf', 'direction': 'up', 'zscore': 'inf', 'scale': 1}
        """
        return {
            "step": int(self.step),
            "size": _float_to_json(self.size),
            "direction": self.direction,
            "zscore": _float_to_json(self.zscore),
            "scale": int(self.scale),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossJump:
        """Rebuild a ``LossJump`` from ``to_dict`` output.

        Parameters
        ----------
        data : dict
            As produced by ``to_dict`` (possibly after a JSON round trip).  Without ``scale`` (written before
            jumps had scales, when every jump was a one-step change) the scale is 1.

        Returns
        -------
        LossJump

        Raises
        ------
        ValueError
            If ``direction`` is not one of ``JUMP_DIRECTIONS`` or ``scale`` is not an int >= 1.

        Examples
        --------
        >>> LossJump.from_dict({"step": 3, "size": 0.9, "direction": "up", "zscore": 7.0}).scale
        1
        """
        return cls(
            step=int(data["step"]),
            size=float(data["size"]),
            direction=data["direction"],
            zscore=float(data["zscore"]),
            scale=data.get("scale", 1),
        )


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_positive_number(name: str, value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _check_baseline_window(baseline_window: int | None) -> None:
    if baseline_window is not None and (not _is_integer(baseline_window) or baseline_window < 3):
        raise ValueError(f"baseline_window must be None or an int >= 3, got {baseline_window!r}")


def _as_value_array(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a 1-D sequence of real numbers, got {type(values).__name__}") from error
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _as_step_array(steps: Any, n_values: int, values_name: str) -> np.ndarray:
    if steps is None:
        return np.arange(n_values, dtype=np.int64)
    array = np.asarray(steps)
    if array.ndim != 1:
        raise ValueError(f"steps must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"steps must be integers, got dtype {array.dtype}")
    if array.shape[0] != n_values:
        raise ValueError(f"steps must have the same length as {values_name} ({n_values}), got {array.shape[0]}")
    array = array.astype(np.int64)
    if np.any(np.diff(array) <= 0):
        bad = int(np.flatnonzero(np.diff(array) <= 0)[0])
        raise ValueError(
            f"steps must be strictly increasing, got steps[{bad}]={array[bad]} "
            f"followed by steps[{bad + 1}]={array[bad + 1]}"
        )
    return array


def _check_scales(scales: Any) -> tuple[int, ...]:
    return require_int_sequence("scales", scales, 1)


# ----------------------------------------------------------------------------------------------------
# Robust-statistics core (shared by detect_loss_jumps and detect_spikes)
# ----------------------------------------------------------------------------------------------------


def _clipped_center_and_sigma(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-sigma of ``values`` after iterative clipping at ``_CLIP_SIGMAS`` robust sigmas.

    ``scipy.stats.sigmaclip`` clips around the mean and standard deviation, which the very outliers being
    clipped inflate; this is the median/MAD version (as astropy's ``sigma_clip(cenfunc="median",
    stdfunc="mad_std")``).  Clipping stops when the kept set stops changing or would fall under half.
    """
    kept = values
    for _ in range(_MAX_CLIP_ROUNDS):
        center = float(np.median(kept))
        sigma = _MAD_TO_SIGMA * float(np.median(np.abs(kept - center)))
        inside = np.abs(values - center) <= _CLIP_SIGMAS * sigma
        n_inside = int(np.count_nonzero(inside))
        if 2 * n_inside < values.size or n_inside == kept.size:
            break
        kept = values[inside]
    return center, sigma


def _robust_zscores(values: np.ndarray, *, scale_floor: float, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(zscores, centers)``: ``(x - center) / max(sigma, scale_floor)`` with robust center and sigma.

    Without ``window`` (or when it covers the series) center and sigma are the median and MAD-sigma of the
    whole series, clipped iteratively at 3 sigmas.  With it, center is the median of a centred sliding
    window and sigma the larger of the MAD-sigmas of the window's halves before and after the value: where
    the noise changes (a loss that falls 100-fold gets relatively noisier), a value is judged by the
    noisier side, not by a mixture that the quiet side dominates.  Windows are reflected at the ends.
    ``values`` must be finite.
    """
    if window is None or window >= values.size:
        center, sigma = _clipped_center_and_sigma(values)
        return (values - center) / max(sigma, scale_floor), np.full(values.shape, center)
    # Imported here: scipy.ndimage takes 0.2 s to import, which the monitor's worker process (it imports the
    # package) would pay at every start, before its first analysis.
    from scipy.ndimage import median_filter

    centers = median_filter(values, size=window | 1, mode="reflect")
    half = (window // 2) | 1
    half_sigmas = _MAD_TO_SIGMA * median_filter(np.abs(values - centers), size=half, mode="reflect")
    # The half window centred `shift` away covers the `half` values just before (after) this one.
    shift = half // 2 + 1
    index = np.arange(values.size)
    before = half_sigmas[np.maximum(index - shift, 0)]
    after = half_sigmas[np.minimum(index + shift, values.size - 1)]
    return (values - centers) / np.maximum(np.maximum(before, after), scale_floor), centers


def _merge_runs(flagged: np.ndarray, signs: np.ndarray, *, max_gap: int = 1) -> list[np.ndarray]:
    """Group flagged indices with the same sign at most ``max_gap`` apart; return each group's indices.

    A transient spike (up then immediately down) stays two groups: merging opposite changes would
    report one jump of roughly zero size.
    """
    indices = np.flatnonzero(flagged)
    if indices.size == 0:
        return []
    breaks = (np.diff(indices) > max_gap) | (np.diff(signs[indices]) != 0)
    return np.split(indices, np.flatnonzero(breaks) + 1)


# ----------------------------------------------------------------------------------------------------
# Loss jumps at several time scales
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ScaleJump:
    """One change found at one scale, in positions of the finite losses."""

    index: int  # the first loss at the new level
    first: int  # the first loss the detection's windows use ...
    stop: int  # ... and one past the last
    size: float
    zscore: float
    scale: int


def _scale_applies(scale: int, n_losses: int) -> bool:
    return n_losses >= max(_MIN_FINITE_POINTS, _LOSSES_PER_SCALE * scale - 1)


def _window_means(cumulative: np.ndarray, starts: Any, scale: int) -> Any:
    return (cumulative[starts + scale] - cumulative[starts]) / scale


def _jumps_at_scale(
    log_losses: np.ndarray,
    scale: int,
    *,
    z_threshold: float,
    min_relative_change: float,
    baseline_window: int | None,
) -> list[_ScaleJump]:
    """The changes of ``log_losses`` (finite, in step order) that stand out at one scale."""
    n_losses = log_losses.size
    if not _scale_applies(scale, n_losses):
        return []
    cumulative = np.concatenate(([0.0], np.cumsum(log_losses)))
    splits = np.arange(scale, n_losses - scale + 1)
    changes = _window_means(cumulative, splits, scale) - _window_means(cumulative, splits - scale, scale)
    window = None if baseline_window is None else max(baseline_window, _NOISE_WINDOW_PER_SCALE * scale)
    scale_floor = max(_RELATIVE_SCALE_FLOOR * float(np.median(np.abs(changes))), _ABSOLUTE_SCALE_FLOOR)
    zscores, _ = _robust_zscores(changes, scale_floor=scale_floor, window=window)
    flank = _FLANK_PER_SCALE * (scale - 1)
    judged = (splits >= scale + flank) & (splits <= n_losses - scale - flank)
    # Changes at one step share data with those up to `scale` steps away: a gap that short is one change.
    runs = _merge_runs(judged & (np.abs(zscores) > z_threshold), np.sign(zscores), max_gap=scale)
    edges = np.flatnonzero(judged)[[0, -1]] if scale > 1 and judged.any() else ()
    jumps = []
    for run in runs:
        peak = run[np.argmax(np.abs(zscores[run]))]
        # Outliers that grow up to the first or last change judged may be the trend still curving at the
        # run's ends (a fast first descent that slows down): a change is a bump that falls off on both sides.
        if peak in edges:
            continue
        first_split, last_split = int(splits[run[0]]), int(splits[run[-1]])
        size = float(
            _window_means(cumulative, last_split, scale) - _window_means(cumulative, first_split - scale, scale)
        )
        # An outlier against a steep trend need not move the loss at all (a descent that pauses): the loss
        # itself must change, in the outlier's direction and by the minimum amount.
        if size * zscores[run[0]] <= 0 or math.expm1(abs(size)) <= min_relative_change:
            continue
        jumps.append(
            _ScaleJump(
                index=int(splits[peak]),
                first=first_split - scale,
                stop=last_split + scale,
                size=size,
                zscore=float(zscores[peak]),
                scale=scale,
            )
        )
    return jumps


def _merge_across_scales(jumps: Iterable[_ScaleJump]) -> list[_ScaleJump]:
    """Keep one detection per change: a detection is dropped when a finer-scale one in the same direction
    lies among the losses its windows span (a step function shows at every scale; its finest detection
    locates it best and says how abrupt it was)."""
    kept: list[_ScaleJump] = []
    for jump in sorted(jumps, key=lambda candidate: candidate.scale):
        if not any(other.size * jump.size > 0 and jump.first < other.index < jump.stop for other in kept):
            kept.append(jump)
    return kept


# ----------------------------------------------------------------------------------------------------
# Public detection functions
# ----------------------------------------------------------------------------------------------------


def detect_loss_jumps(
    losses: Sequence[float] | np.ndarray,
    steps: Sequence[int] | np.ndarray | None = None,
    *,
    z_threshold: float = 5.0,
    min_relative_change: float = 0.25,
    scales: Sequence[int] = DEFAULT_JUMP_SCALES,
    baseline_window: int | None = _DEFAULT_BASELINE_WINDOW,
) -> list[LossJump]:
    """Find abrupt changes of the training loss at several time scales.

    The series is analysed on a log scale, ``x = log(loss)``.  At scale ``h`` the change at position ``i``
    is the difference of window means

        ``c_h[i] = mean(x[i : i+h]) - mean(x[i-h : i])``

    (a moving-sum change-point statistic, Eichinger & Kirch 2018; ``c_1`` is the step-to-step change).
    Averaging ``h`` losses divides their independent noise by ``sqrt(h)``, so a drop spread over tens of
    steps, invisible between single noisy steps, stands out at ``h`` of that order.  A change is flagged
    at scale ``h`` when both

    - its robust z-score ``(c_h - median) / (1.4826 * MAD)`` exceeds ``z_threshold`` in absolute value.
      Median and MAD are those of the run's own changes at the same scale, near the same step: over a
      sliding window of ``max(baseline_window, 16 h)`` changes (the median follows the trend; the MAD is
      the larger of those of the window's halves before and after the step, so a change into a noisier
      phase is judged by the noisier side), or over the whole series, iteratively clipped at 3 sigmas,
      when that is shorter or ``baseline_window`` is None.  An ordinary decay, fast or slow, changes the
      loss by about the same amount in every window near it: it is the median, not an outlier;
    - the loss moved in that direction by more than ``min_relative_change``, measured symmetrically
      (``max(a, b) / min(a, b) - 1``, so doubling and halving count the same) between the mean log-loss of
      the ``h`` losses before the flagged steps and that of the ``h`` losses after them.

    Flagged changes in one direction at most ``h`` steps apart are one jump, reported at its largest
    z-score with ``size`` the change over all of them.  A change shows at every scale at and above its
    duration: detections in the same direction whose windows contain a finer scale's jump are merged into
    it, so each jump is reported once, with ``scale`` the shortest scale that saw it.

    Scale ``h`` is used only on series of at least ``6 h - 1`` finite losses.  For ``h > 1`` it judges a
    change only where ``h - 1`` more losses flank its windows on both sides, and drops outliers that peak
    at the first or last change it judges: near the ends a curving trend (a fast first descent slowing
    down) has no ordinary neighbours on one side to be told apart from.  A change within ``2 h - 1``
    losses of either end is therefore seen only at finer scales.

    Special values
        * **Non-finite losses** (NaN, ±inf) are dropped from the statistics; the change across a gap
          is measured between the finite losses on either side.  Each transition from a finite loss to a
          non-finite one is reported as an ``"up"`` jump at the first non-finite step with
          ``size = zscore = inf`` and scale 1 (divergence is the largest loss jump there is).  Leading
          non-finite values are ignored.
        * **Fewer than 5 finite losses**: the median/MAD are meaningless, so no z-score jumps are
          reported (the result is empty unless the loss became non-finite).
        * **Non-positive finite losses**: ``log`` is undefined, so a ``ValueError`` is raised; shift
          such losses (e.g. a negative log-likelihood) to be positive before calling.
        * **Constant loss**: no jumps.

    Parameters
    ----------
    losses : array_like of float, shape (N,)
        Loss values in step order.
    steps : array_like of int, shape (N,), optional
        Strictly increasing training steps of ``losses``; default ``0, 1, ..., N-1``.  Scales count
        losses, not steps: with a loss at every step they are the same.
    z_threshold : float, default 5.0
        Minimum absolute robust z-score of a change (> 0), at every scale.
    min_relative_change : float, default 0.25
        Minimum relative change of the loss, ``expm1(|size|)`` (>= 0); 0.25 means at least 25 %.
    scales : sequence of int, default ``DEFAULT_JUMP_SCALES`` = (1, 3, 10, 30)
        Window lengths ``h`` in losses (distinct ints >= 1).  ``(1,)`` gives the one-step detector.
    baseline_window : int or None, default 200
        Shortest sliding window (>= 3 changes) for the median and MAD; scale ``h`` uses
        ``max(baseline_window, 16 h)``.  None: the whole series at every scale, for a run whose noise
        level does not change.

    Returns
    -------
    list of LossJump
        Sorted by step.

    Raises
    ------
    ValueError
        If ``losses`` is not 1-D or has a non-positive finite value; if ``steps`` has the wrong length,
        is not integer or not strictly increasing; if a threshold, ``scales`` or ``baseline_window`` is
        out of range.

    Examples
    --------
    >>> import numpy as np
    >>> losses = np.exp(-0.01 * np.arange(100))   # smooth decay: no jumps
    >>> detect_loss_jumps(losses)
    []
    >>> losses[60:] /= 4                            # the loss drops fourfold at step 60
    >>> [(j.step, j.direction, round(j.size, 3), j.scale) for j in detect_loss_jumps(losses)]
    [(60, 'down', -1.396, 1)]
    >>> noisy = np.exp(np.random.default_rng(0).normal(0.0, 0.2, 300))   # per-batch noise of ±20-30 %
    >>> noisy[140:] *= np.exp(np.linspace(0.0, -1.0, 25)).tolist() + [np.exp(-1.0)] * 135
    >>> [(j.step, j.direction, j.scale) for j in detect_loss_jumps(noisy)]  # ÷2.7 within 25 steps
    [(152, 'down', 30)]
    >>> detect_loss_jumps([1.0, 0.9, 0.8, float("nan")])    # too short for statistics, but diverged
    [LossJump(step=3, size=inf, direction='up', zscore=inf, scale=1)]
    """
    loss_array = _as_value_array(losses, "losses")
    step_array = _as_step_array(steps, loss_array.shape[0], "losses")
    z_threshold = _check_positive_number("z_threshold", z_threshold, allow_zero=False)
    min_relative_change = _check_positive_number("min_relative_change", min_relative_change, allow_zero=True)
    scales = _check_scales(scales)
    _check_baseline_window(baseline_window)

    finite = np.isfinite(loss_array)
    if np.any(loss_array[finite] <= 0):
        bad = int(np.flatnonzero(finite & (loss_array <= 0))[0])
        raise ValueError(
            f"losses must be > 0 (the analysis uses log(loss)), got losses[{bad}]={float(loss_array[bad])!r}; "
            "shift the losses to be positive first"
        )

    jumps = [
        LossJump(step=int(step_array[i]), size=math.inf, direction="up", zscore=math.inf)
        for i in np.flatnonzero(~finite[1:] & finite[:-1]) + 1
    ]
    log_losses = np.log(loss_array[finite])
    finite_steps = step_array[finite]
    found = _merge_across_scales(
        jump
        for scale in scales
        for jump in _jumps_at_scale(
            log_losses,
            scale,
            z_threshold=z_threshold,
            min_relative_change=min_relative_change,
            baseline_window=baseline_window,
        )
    )
    jumps += [
        LossJump(
            step=int(finite_steps[jump.index]),
            size=jump.size,
            direction="up" if jump.size > 0 else "down",
            zscore=jump.zscore,
            scale=jump.scale,
        )
        for jump in found
    ]
    return sorted(jumps, key=lambda jump: (jump.step, jump.scale))


def detect_spikes(
    values: Sequence[float] | np.ndarray,
    steps: Sequence[int] | np.ndarray | None = None,
    *,
    z_threshold: float = 5.0,
    min_ratio: float = 2.0,
    baseline_window: int | None = None,
) -> list[int]:
    """Find steps where a positive quantity (typically the gradient norm) spikes far above its usual level.

    Works on ``log(values)`` itself (not its differences): a step is a spike when its robust z-score
    ``(log v - median) / (1.4826 * MAD)`` exceeds ``z_threshold`` *and* ``v`` is at least ``min_ratio``
    times the median level (median and MAD of the whole series, clipped at 3 sigmas, or of a sliding window
    judged by its noisier half, as in ``detect_loss_jumps``).  Only upward deviations count.  Consecutive
    spike steps form one spike, reported at its highest value.

    Special values
        * **Non-finite values** (NaN, ±inf: an overflowing gradient) are always reported as spikes and
          are excluded from the statistics.
        * **Zeros** (e.g. a step with no gradient) are excluded from the statistics and never spikes.
        * **Fewer than 5 positive finite values**: no statistics, so only non-finite values are reported.

    Parameters
    ----------
    values : array_like of float, shape (N,)
        Non-negative values in step order, e.g. gradient norms.
    steps : array_like of int, shape (N,), optional
        Strictly increasing training steps of ``values``; default ``0, 1, ..., N-1``.
    z_threshold : float, default 5.0
        Minimum robust z-score of ``log(value)`` (> 0).
    min_ratio : float, default 2.0
        Minimum ratio of the value to the median level (>= 1).
    baseline_window : int or None, default None
        If given (>= 3), median and MAD come from a centred sliding window of that many values.

    Returns
    -------
    list of int
        Spike steps in increasing order, ready for ``correlate``.

    Raises
    ------
    ValueError
        If ``values`` is not 1-D or has a negative value; if ``steps`` has the wrong length, is not
        integer or not strictly increasing; if a threshold is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> grad_norms = np.full(50, 1.0) * np.exp(0.05 * np.sin(np.arange(50)))
    >>> grad_norms[[20, 35]] = [30.0, np.inf]
    >>> detect_spikes(grad_norms, steps=np.arange(50) * 10)
    [200, 350]
    """
    value_array = _as_value_array(values, "values")
    step_array = _as_step_array(steps, value_array.shape[0], "values")
    z_threshold = _check_positive_number("z_threshold", z_threshold, allow_zero=False)
    min_ratio = _check_positive_number("min_ratio", min_ratio, allow_zero=True)
    if min_ratio < 1:
        raise ValueError(f"min_ratio must be a finite number >= 1, got {min_ratio!r}")
    _check_baseline_window(baseline_window)

    finite = np.isfinite(value_array)
    if np.any(value_array[finite] < 0):
        bad = int(np.flatnonzero(finite & (value_array < 0))[0])
        raise ValueError(f"values must be >= 0, got values[{bad}]={float(value_array[bad])!r}")

    # Non-finite values are spikes by definition; give them infinite strength so they win their run.
    log_values = np.full(value_array.shape, -np.inf)
    strength = np.full(value_array.shape, np.inf)
    flagged = ~finite
    usable = finite & (value_array > 0)
    if np.count_nonzero(usable) >= _MIN_FINITE_POINTS:
        log_values[usable] = np.log(value_array[usable])
        zscores, centers = _robust_zscores(
            log_values[usable], scale_floor=_ABSOLUTE_SCALE_FLOOR, window=baseline_window
        )
        flagged[usable] = (zscores > z_threshold) & (log_values[usable] - centers > math.log(min_ratio))
        strength[usable] = log_values[usable]
    runs = _merge_runs(flagged, np.ones(flagged.shape))
    return [int(step_array[run[np.argmax(strength[run])]]) for run in runs]
