"""Loss-jump and gradient-spike detection, and their correlation with bifurcation events.

Pure numpy/scipy: nothing here imports torch, lightning or tensorboard, so every function is testable on
plain arrays and the callback only wires them together.

- ``detect_loss_jumps`` flags abrupt changes of ``log(loss)`` at several time scales (``DEFAULT_JUMP_SCALES``:
  1, 3, 10 and 30 losses).  At scale ``h`` the statistic is the change of the mean log-loss between the
  ``h`` losses before a step and the ``h`` losses from it on (a moving-sum, "MOSUM", change-point statistic;
  ``h = 1`` is the plain step-to-step change), judged by a robust z-score against the run's own changes *at
  that scale* and near that step, and by a minimum relative size.  One change seen at several scales is one
  ``LossJump``, recorded at the shortest scale that saw it.
- ``detect_spikes`` flags values far above their typical level on a log scale (gradient norms).
- ``correlate`` measures how often jumps (or spikes) fall within ``window`` steps of a bifurcation event's
  bracket ``(lo, hi)`` and tests that against the same brackets moved to random places (permutation
  p-value), returning a ``Correlation``.

Both detectors share one robust-statistics core (``_robust_zscores``: median and MAD scaled by 1.4826, over
the whole series with iterative 3-sigma clipping, or over a sliding window judged against its noisier half;
with a floor on the scale so that a noiseless series never divides by zero).

``summarise_run`` applies all three to one training run's per-step history (what the monitor reports at
fit end), returning a ``RunSummary``.

Step convention: a change between the losses logged at ``steps[i-1]`` and ``steps[i]`` is reported at
``steps[i]``, the first step at the new level.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.ndimage import median_filter

from ._checks import require_int_sequence

__all__ = [
    "DEFAULT_JUMP_SCALES",
    "JUMP_DIRECTIONS",
    "LossJump",
    "Correlation",
    "detect_loss_jumps",
    "detect_spikes",
    "correlate",
    "RunSummary",
    "summarise_run",
]

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

# The null distribution of correlate is evaluated in chunks of permutations of at most this many
# (permutation, jump, event) comparisons, which bounds its memory for runs with many events.
_COMPARISONS_PER_CHUNK = 1 << 22


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


@dataclass(frozen=True)
class Correlation:
    """How well bifurcation events line up with loss jumps (or gradient spikes).

    An event is a bracket ``(lo, hi)`` of steps (the event happened after step ``lo`` and by step ``hi``;
    ``lo == hi`` for an event known to the step); a jump is a step.

    Attributes
    ----------
    jumps_explained : float
        Fraction of jumps that lie within ``window`` steps of some event's bracket, i.e. in
        ``[lo - window, hi + window]`` (0 when there are no jumps).
    events_with_jump : float
        Fraction of events with at least one jump within ``window`` steps of their bracket (0 when there are
        no events).
    mean_lag : float or None
        Mean over the explained jumps of the signed distance from the nearest bracket: ``jump - hi`` after
        it (positive: the event came first), ``jump - lo`` before it, 0 inside it; ``None`` when no jump is
        explained.
    n_jumps, n_events : int
        Number of jumps and events compared.
    p_value : float
        Permutation-test p-value of ``jumps_explained``: the fraction (with the observed placement counted
        once) of ``n_permutations`` placements of the same brackets, each moved as a whole to a uniformly
        random position in ``step_range``, that explain at least as many jumps.  ``1.0`` when there are no
        jumps or no events.
    window : int
        Matching distance in steps.
    n_permutations : int
        Number of random placements in the null distribution.
    step_range : tuple of int
        Inclusive ``(first, last)`` step range the null brackets were placed in.
    chance_explained : float or None, default None
        Mean of ``jumps_explained`` over the null placements: the fraction expected by chance, to read
        ``jumps_explained`` against (wide brackets and a wide window explain much by chance).  ``None`` when
        there are no jumps or no events, and in JSON written before it existed.

    Examples
    --------
    >>> c = correlate([10, (50, 54)], [12, 50, 90], window=3, n_permutations=99)
    >>> Correlation.from_dict(c.to_dict()) == c
    True
    """

    jumps_explained: float
    events_with_jump: float
    mean_lag: float | None
    n_jumps: int
    n_events: int
    p_value: float
    window: int
    n_permutations: int
    step_range: tuple[int, int]
    chance_explained: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict with every attribute (``step_range`` as a list).

        Returns
        -------
        dict

        Examples
        --------
        >>> correlate([], [5], window=2).to_dict()["p_value"]
        1.0
        """
        data = asdict(self)
        data["step_range"] = list(self.step_range)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Correlation:
        """Rebuild a ``Correlation`` from ``to_dict`` output.

        Parameters
        ----------
        data : dict
            As produced by ``to_dict`` (possibly after a JSON round trip); ``chance_explained`` may be
            missing (older files).

        Returns
        -------
        Correlation

        Examples
        --------
        >>> c = correlate([1], [1], window=0, n_permutations=9)
        >>> Correlation.from_dict(c.to_dict()).jumps_explained
        1.0
        """
        mean_lag = data["mean_lag"]
        chance = data.get("chance_explained")
        first, last = data["step_range"]
        return cls(
            jumps_explained=float(data["jumps_explained"]),
            events_with_jump=float(data["events_with_jump"]),
            mean_lag=None if mean_lag is None else float(mean_lag),
            n_jumps=int(data["n_jumps"]),
            n_events=int(data["n_events"]),
            p_value=float(data["p_value"]),
            window=int(data["window"]),
            n_permutations=int(data["n_permutations"]),
            step_range=(int(first), int(last)),
            chance_explained=None if chance is None else float(chance),
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


def _check_iterable(items: Any, name: str, wanted: str) -> None:
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise ValueError(f"{name} must be an iterable of {wanted}, got {items!r}")


_JUMP_ITEMS = "ints or of objects with an int .step"
_EVENT_ITEMS = "int steps, (lo, hi) brackets of ints with lo <= hi, or events with a .step_interval or .step"


def _jump_steps(items: Iterable[Any], name: str) -> np.ndarray:
    # Plain step numbers, records with a `.step` (LossJump, ...) or their dicts (summary.json's loss_jumps).
    _check_iterable(items, name, _JUMP_ITEMS)
    steps = []
    for position, item in enumerate(items):
        step = item.get("step") if isinstance(item, Mapping) else getattr(item, "step", item)
        if not _is_integer(step):
            raise ValueError(f"{name}[{position}] must be an int or have an int .step attribute, got {item!r}")
        steps.append(int(step))
    return np.asarray(steps, dtype=np.int64)


def _bracket_of(item: Any) -> tuple[int, int] | None:
    # A bifurcation event (object or its dict) carries its bracket; a bare step is the bracket (s, s).
    if isinstance(item, Mapping):
        value = item.get("step_interval", item.get("step"))
    elif hasattr(item, "step_interval"):
        value = item.step_interval
    else:
        value = getattr(item, "step", item)
    if _is_integer(value):
        return int(value), int(value)
    is_pair = isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2
    if is_pair and all(_is_integer(bound) for bound in value) and value[0] <= value[1]:
        return int(value[0]), int(value[1])
    return None


def _event_brackets(items: Iterable[Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(lows, highs)``, int arrays of the events' brackets (``lo == hi`` for a bare step)."""
    _check_iterable(items, name, _EVENT_ITEMS)
    brackets = []
    for position, item in enumerate(items):
        bracket = _bracket_of(item)
        if bracket is None:
            raise ValueError(
                f"{name}[{position}] must be an int step, a (lo, hi) pair of ints with lo <= hi, or an event "
                f"with a .step_interval or .step, got {item!r}"
            )
        brackets.append(bracket)
    lows_highs = np.asarray(brackets, dtype=np.int64).reshape(-1, 2)
    return lows_highs[:, 0], lows_highs[:, 1]


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


# ----------------------------------------------------------------------------------------------------
# Correlation with events
# ----------------------------------------------------------------------------------------------------


def _lags_to_brackets(points: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> np.ndarray:
    """Signed distances, shape ``(P, E)``: ``point - hi`` after a bracket, ``point - lo`` before it, 0 inside."""
    points = points[:, None]
    return np.where(points > highs, points - highs, np.where(points < lows, points - lows, 0))


def _nearest_lags(lags: np.ndarray) -> np.ndarray:
    """Each row's lag of smallest magnitude; on a tie the positive one (the earlier event)."""
    # Lags are integers, so 2|lag| - [lag > 0] orders by magnitude first and puts the positive lag first.
    order_key = 2 * np.abs(lags) - (lags > 0)
    return lags[np.arange(lags.shape[0]), np.argmin(order_key, axis=1)]


def _count_explained(points: np.ndarray, lows: np.ndarray, highs: np.ndarray, window: int) -> np.ndarray:
    """For each row of brackets (``lows``/``highs`` of shape ``(R, E)``): how many points lie within
    ``window`` of some bracket of that row; shape ``(R,)``."""
    rows_per_chunk = max(1, _COMPARISONS_PER_CHUNK // (points.size * lows.shape[1]))
    counts = []
    for start in range(0, lows.shape[0], rows_per_chunk):
        low = lows[start : start + rows_per_chunk, None, :] - window
        high = highs[start : start + rows_per_chunk, None, :] + window
        near = (points[None, :, None] >= low) & (points[None, :, None] <= high)
        counts.append(np.count_nonzero(near.any(axis=2), axis=1))
    return np.concatenate(counts)


def correlate(
    events: Iterable[Any],
    jumps: Iterable[Any],
    *,
    window: int,
    n_permutations: int = 1000,
    seed: int | None = 0,
    step_range: tuple[int, int] | None = None,
) -> Correlation:
    """Measure how well events (e.g. bifurcations) line up with jumps (loss jumps or grad-norm spikes).

    Each event is a bracket ``(lo, hi)``: it happened after step ``lo`` and by step ``hi`` (the monitor's
    ``step_interval``; a bare step ``s`` is ``(s, s)``).  A jump is *explained* when it lies within
    ``window`` steps of some event's bracket, in ``[lo - window, hi + window]``: a wide bracket (steps
    dropped, an order only searched heuristically) explains more, honestly, since the event may have
    happened anywhere in it.

    The test statistic is the number of explained jumps.  Its null distribution moves every bracket as a
    whole, keeping its width, to a uniformly random position in ``step_range`` (its ``lo`` uniform on
    ``first .. last - width``, independently per event and permutation) ``n_permutations`` times, and
    applies the same rule to the same jumps; ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.
    So ``p`` answers: if the events' timing had nothing to do with the jumps, each bracket equally likely
    anywhere in the run, how often would as many jumps be explained?  It is exact (valid at every level,
    slightly conservative because the count is discrete) under that null, whatever the jumps are and at
    whatever scale they were detected.  It does not separate a causal link from a common cause: events and
    jumps that both crowd into one phase of training (a fast early descent) give a small p too.

    With no jumps or no events nothing can be matched: both fractions are 0, ``mean_lag`` and
    ``chance_explained`` are ``None`` and ``p_value`` is 1.0.

    Parameters
    ----------
    events : iterable
        Each an int step, a ``(lo, hi)`` pair of ints with ``lo <= hi``, an object with a
        ``.step_interval`` (``BifurcationEvent``) or an int ``.step``, or a dict with ``"step_interval"`` or
        ``"step"`` (the monitor's event records).
    jumps : iterable of int or of objects with an int ``.step``
        Steps of the jumps, e.g. ``detect_loss_jumps`` output (or its dicts) or ``detect_spikes`` output.
    window : int
        Matching distance in steps (>= 0).
    n_permutations : int, default 1000
        Number of random placements in the null distribution (>= 1).
    seed : int or None, default 0
        Seed of the ``numpy.random.Generator`` that places the null brackets (``None``: fresh entropy).
    step_range : (int, int), optional
        Inclusive range of steps where events could have occurred, ideally the training steps that were
        monitored; default ``min .. max`` over all given brackets and jump steps.

    Returns
    -------
    Correlation

    Raises
    ------
    ValueError
        If an event is not a step, bracket or event record, a jump step is not an int, ``window`` is
        negative, ``n_permutations`` < 1, ``seed`` is not an int or ``step_range`` is not an increasing
        pair of ints.

    Examples
    --------
    >>> result = correlate([8, (48, 53), 300], [10, 50, 100], window=3, step_range=(0, 400))
    >>> round(result.jumps_explained, 3), round(result.events_with_jump, 3), result.mean_lag
    (0.667, 0.667, 1.0)
    >>> result.p_value < 0.05, round(result.chance_explained, 2)
    (True, 0.06)
    """
    lows, highs = _event_brackets(events, "events")
    jump_steps = _jump_steps(jumps, "jumps")
    if not _is_integer(window) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")
    if not _is_integer(n_permutations) or n_permutations < 1:
        raise ValueError(f"n_permutations must be an int >= 1, got {n_permutations!r}")
    if seed is not None and not _is_integer(seed):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if step_range is not None:
        if (
            not isinstance(step_range, (tuple, list))
            or len(step_range) != 2
            or not all(_is_integer(bound) for bound in step_range)
            or step_range[0] > step_range[1]
        ):
            raise ValueError(f"step_range must be a pair of ints (first, last) with first <= last, got {step_range!r}")
        first, last = int(step_range[0]), int(step_range[1])
    else:
        all_steps = np.concatenate([lows, highs, jump_steps])
        first, last = (int(all_steps.min()), int(all_steps.max())) if all_steps.size else (0, 0)

    if lows.size == 0 or jump_steps.size == 0:
        return Correlation(
            jumps_explained=0.0,
            events_with_jump=0.0,
            mean_lag=None,
            n_jumps=int(jump_steps.size),
            n_events=int(lows.size),
            p_value=1.0,
            window=int(window),
            n_permutations=int(n_permutations),
            step_range=(first, last),
        )

    lags = _lags_to_brackets(jump_steps, lows, highs)
    near = np.abs(lags) <= window
    jump_matched = near.any(axis=1)
    n_explained = int(np.count_nonzero(jump_matched))

    rng = np.random.default_rng(seed)
    widths = highs - lows
    # A bracket wider than the range cannot move; it stays at the range's start.
    null_lows = rng.integers(first, np.maximum(first, last - widths), size=(n_permutations, lows.size), endpoint=True)
    null_explained = _count_explained(jump_steps, null_lows, null_lows + widths, window)
    p_value = (1 + int(np.count_nonzero(null_explained >= n_explained))) / (1 + n_permutations)

    return Correlation(
        jumps_explained=n_explained / jump_steps.size,
        events_with_jump=float(np.count_nonzero(near.any(axis=0))) / lows.size,
        mean_lag=float(np.mean(_nearest_lags(lags)[jump_matched])) if n_explained else None,
        n_jumps=int(jump_steps.size),
        n_events=int(lows.size),
        p_value=float(p_value),
        window=int(window),
        n_permutations=int(n_permutations),
        step_range=(first, last),
        chance_explained=float(np.mean(null_explained)) / jump_steps.size,
    )


# ----------------------------------------------------------------------------------------------------
# One run's summary
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """Loss jumps, gradient spikes and their correlation with bifurcation events over one training run.

    Attributes
    ----------
    loss_jumps : tuple of LossJump
        Jumps of the per-step loss after the warm-up.
    jump_correlation : Correlation
        Events against loss jumps.
    grad_spike_steps : tuple of int
        Steps where the gradient norm spiked.
    grad_spike_correlation : Correlation
        Events against gradient spikes.
    note : str or None
        Why no jumps could be looked for (e.g. a negative loss has no logarithm), else None.
    jump_scales : tuple of int, default ()
        The scales at which jumps were looked for: the requested ones that the run was long enough for
        (scale ``h`` needs ``6 h - 1`` losses after the warm-up).

    Examples
    --------
    >>> summary = summarise_run([(0, 1.0, None), (1, 0.9, None)], [], window=2)
    >>> summary.to_dict()["jump_correlation"]["jumps_explained"] is None  # no jumps: undefined, not 0
    True
    """

    loss_jumps: tuple[LossJump, ...]
    jump_correlation: Correlation
    grad_spike_steps: tuple[int, ...]
    grad_spike_correlation: Correlation
    note: str | None = None
    jump_scales: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict.  A fraction with nothing to count (no jumps, no events) is ``None``, as are the
        p-value and the chance level with no jumps: undefined, not 0 and 1.

        Returns
        -------
        dict
            ``loss_jumps`` (``LossJump.to_dict`` entries), ``n_loss_jumps``, ``loss_jump_scales`` (the scales
            looked at), ``n_loss_jumps_by_scale`` (``{str(scale): count}`` over those scales and the scales of
            the jumps found), ``loss_jump_note``, ``jump_correlation`` and ``grad_spike_correlation``
            (``Correlation.to_dict`` with undefined entries ``None``), ``grad_spike_steps``.

        Examples
        --------
        >>> history = [(s, 1.0 if s < 30 else 4.0, 1.0) for s in range(60)]
        >>> data = summarise_run(history, [(28, 30)], window=2).to_dict()
        >>> data["n_loss_jumps"], data["n_loss_jumps_by_scale"], data["jump_correlation"]["jumps_explained"]
        (1, {'1': 1, '3': 0, '10': 0}, 1.0)
        """
        by_scale = Counter(jump.scale for jump in self.loss_jumps)
        return {
            "loss_jumps": [jump.to_dict() for jump in self.loss_jumps],
            "n_loss_jumps": len(self.loss_jumps),
            "loss_jump_scales": list(self.jump_scales),
            "n_loss_jumps_by_scale": {str(scale): by_scale[scale] for scale in sorted({*self.jump_scales, *by_scale})},
            "loss_jump_note": self.note,
            "jump_correlation": _defined_only(self.jump_correlation),
            "grad_spike_steps": list(self.grad_spike_steps),
            "grad_spike_correlation": _defined_only(self.grad_spike_correlation),
        }


def _defined_only(correlation: Correlation) -> dict[str, Any]:
    data = correlation.to_dict()
    if correlation.n_jumps == 0:
        data["jumps_explained"] = data["p_value"] = None
    if correlation.n_events == 0:
        data["events_with_jump"] = None
    return data


def summarise_run(
    history: Iterable[Sequence[Any]],
    events: Iterable[Any],
    *,
    window: int,
    warmup_steps: int = 0,
    min_relative_change: float = 1.0,
    scales: Sequence[int] = DEFAULT_JUMP_SCALES,
    n_permutations: int = 1000,
) -> RunSummary:
    """Find the loss jumps and gradient spikes of a run and correlate them with its bifurcation events.

    Parameters
    ----------
    history : iterable of (step, loss, grad_norm)
        One row per training step, in step order; ``loss`` / ``grad_norm`` may be None (not recorded or not
        finite).
    events : iterable
        The bifurcation events: brackets ``(lo, hi)``, bare steps (``(s, s)``), ``BifurcationEvent`` objects
        or their dicts, as ``correlate`` accepts.
    window : int
        Matching distance in steps between a jump and an event's bracket (>= 0).
    warmup_steps : int, default 0
        Loss jumps are looked for only at steps more than this many steps after the first one (>= 0): a fresh
        model's first updates are learning, not jumps.
    min_relative_change : float, default 1.0
        Passed to ``detect_loss_jumps`` (>= 0): by default a jump at least doubles or halves the loss.
    scales : sequence of int, default ``DEFAULT_JUMP_SCALES``
        Passed to ``detect_loss_jumps``.
    n_permutations : int, default 1000
        Passed to ``correlate``.

    Returns
    -------
    RunSummary
        The permutation null places the brackets in the run's steps ``(first, last)``.

    Raises
    ------
    ValueError
        If ``warmup_steps``, ``min_relative_change``, ``scales``, ``window`` or ``n_permutations`` is out of
        range, or an event is not a step, bracket or event.  Losses that cannot be analysed (a non-positive
        loss) are no error: ``note`` says why no jumps were looked for.

    Examples
    --------
    >>> history = [(s, 1.0 if s < 30 else 4.0, 1.0) for s in range(60)]
    >>> summary = summarise_run(history, [(25, 29)], window=2, warmup_steps=5)
    >>> [(jump.step, jump.direction, jump.scale) for jump in summary.loss_jumps]
    [(30, 'up', 1)]
    >>> summary.jump_correlation.jumps_explained, summary.jump_correlation.mean_lag
    (1.0, 1.0)
    """
    if not _is_integer(warmup_steps) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    min_relative_change = _check_positive_number("min_relative_change", min_relative_change, allow_zero=True)
    scales = _check_scales(scales)
    rows = [(int(row[0]), row[1], row[2]) for row in history]
    brackets = list(events)
    step_range = (rows[0][0], rows[-1][0]) if rows else (0, 0)
    after_warmup = [(step, loss) for step, loss, _ in rows if loss is not None and step > step_range[0] + warmup_steps]
    jumps: list[LossJump] = []
    note = None
    if after_warmup:
        try:
            jumps = detect_loss_jumps(
                [loss for _, loss in after_warmup],
                [step for step, _ in after_warmup],
                min_relative_change=min_relative_change,
                scales=scales,
            )
        except ValueError as error:  # the arguments are valid, so the losses are not: a negative loss has no log
            note = str(error)
    n_finite = int(np.count_nonzero(np.isfinite(np.asarray([loss for _, loss in after_warmup], dtype=np.float64))))
    norms = [(step, norm) for step, _, norm in rows if norm]
    spikes = detect_spikes([norm for _, norm in norms], [step for step, _ in norms]) if norms else []
    return RunSummary(
        loss_jumps=tuple(jumps),
        jump_correlation=correlate(
            brackets, jumps, window=window, n_permutations=n_permutations, step_range=step_range
        ),
        grad_spike_steps=tuple(spikes),
        grad_spike_correlation=correlate(
            brackets, spikes, window=window, n_permutations=n_permutations, step_range=step_range
        ),
        note=note,
        jump_scales=tuple(scale for scale in scales if note is None and _scale_applies(scale, n_finite)),
    )
