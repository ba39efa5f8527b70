"""Loss-jump and gradient-spike detection, and their correlation with bifurcation events.

Pure numpy: nothing here imports torch, lightning or tensorboard, so every function is testable on plain
arrays and the callback only wires them together.

Three public functions share one robust-statistics core (``_robust_zscores``: median and MAD scaled by
1.4826, with a floor on the scale so that a noiseless series never divides by zero):

- ``detect_loss_jumps`` flags sudden changes in ``log(loss)`` (robust z-score of its first differences
  *and* a minimum relative change of the loss) and returns ``LossJump`` records;
- ``detect_spikes`` flags values far above their typical level on a log scale (gradient norms);
- ``correlate`` measures how often jumps (or spikes) have a bifurcation event nearby and tests that
  against randomly placed events (permutation p-value), returning a ``Correlation``.

``summarise_run`` applies all three to one training run's per-step history (what the monitor reports at
fit end), returning a ``RunSummary``.

Step convention: a change between the losses logged at ``steps[i-1]`` and ``steps[i]`` is reported at
``steps[i]``, the first step at the new level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
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

# Converts a median absolute deviation into a standard-deviation estimate for Gaussian data.
_MAD_TO_SIGMA = 1.4826

# Below this many finite values the median/MAD are too unreliable to call anything an outlier.
_MIN_FINITE_POINTS = 5

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
    """A sudden change of the training loss.

    Attributes
    ----------
    step : int
        Training step of the first loss at the new level (the largest single change when several
        consecutive steps changed in the same direction).
    size : float
        Signed change of ``log(loss)`` over the whole jump (sum over merged consecutive steps);
        ``exp(size)`` is the loss ratio after/before.  ``inf`` when the loss became non-finite.
    direction : {"up", "down"}
        ``"up"`` when the loss increased, one of ``JUMP_DIRECTIONS``.
    zscore : float
        Robust z-score of the largest single change in the jump (``inf`` for a non-finite loss).

    Examples
    --------
    >>> jump = LossJump(step=120, size=-0.7, direction="down", zscore=-9.5)
    >>> LossJump.from_dict(jump.to_dict()) == jump
    True
    """

    step: int
    size: float
    direction: Literal["up", "down"]
    zscore: float

    def __post_init__(self) -> None:
        if self.direction not in JUMP_DIRECTIONS:
            raise ValueError(f"direction must be one of {JUMP_DIRECTIONS}, got {self.direction!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (non-finite floats become the strings ``"inf"``, ``"nan"``).

        Returns
        -------
        dict
            Keys ``step``, ``size``, ``direction``, ``zscore``.

        Examples
        --------
        >>> LossJump(step=5, size=float("inf"), direction="up", zscore=float("inf")).to_dict()
        {'step': 5, 'size': 'inf', 'direction': 'up', 'zscore': 'inf'}
        """
        return {
            "step": int(self.step),
            "size": _float_to_json(self.size),
            "direction": self.direction,
            "zscore": _float_to_json(self.zscore),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossJump:
        """Rebuild a ``LossJump`` from ``to_dict`` output.

        Parameters
        ----------
        data : dict
            As produced by ``to_dict`` (possibly after a JSON round trip).

        Returns
        -------
        LossJump

        Raises
        ------
        ValueError
            If ``direction`` is not one of ``JUMP_DIRECTIONS``.

        Examples
        --------
        >>> LossJump.from_dict({"step": 3, "size": 0.9, "direction": "up", "zscore": 7.0}).step
        3
        """
        return cls(
            step=int(data["step"]),
            size=float(data["size"]),
            direction=data["direction"],
            zscore=float(data["zscore"]),
        )


@dataclass(frozen=True)
class Correlation:
    """How well bifurcation events line up with loss jumps (or gradient spikes).

    Attributes
    ----------
    jumps_explained : float
        Fraction of jumps with at least one event within ``±window`` steps (0 when there are no jumps).
    events_with_jump : float
        Fraction of events with at least one jump within ``±window`` steps (0 when there are no events).
    mean_lag : float or None
        Mean of ``jump step − nearest event step`` over the jumps that have an event within the window
        (positive: the event came first); ``None`` when no jump has one.
    n_jumps, n_events : int
        Number of jumps and events compared.
    p_value : float
        Permutation-test p-value of ``jumps_explained`` against events placed uniformly at random;
        ``1.0`` when there are no jumps or no events.
    window : int
        Half-width of the matching window in steps.
    n_permutations : int
        Number of random event placements in the null distribution.
    step_range : tuple of int
        Inclusive ``(first, last)`` step range the null events were drawn from.

    Examples
    --------
    >>> c = correlate([10, 52], [12, 50, 90], window=3, n_permutations=99)
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
    def from_dict(cls, data: dict[str, Any]) -> Correlation:
        """Rebuild a ``Correlation`` from ``to_dict`` output.

        Parameters
        ----------
        data : dict
            As produced by ``to_dict`` (possibly after a JSON round trip).

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


def _event_steps(items: Iterable[Any], name: str) -> np.ndarray:
    # Accept plain step numbers or any record with a `.step` (LossJump, BifurcationEvent, ...).
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ValueError(f"{name} must be an iterable of ints or of objects with a .step, got {items!r}")
    steps = []
    for position, item in enumerate(items):
        step = getattr(item, "step", item)
        if not _is_integer(step):
            raise ValueError(
                f"{name}[{position}] must be an int or have an int .step attribute, got {item!r}"
            )
        steps.append(int(step))
    return np.asarray(steps, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# Robust-statistics core (shared by detect_loss_jumps and detect_spikes)
# ----------------------------------------------------------------------------------------------------


def _robust_zscores(
    values: np.ndarray, *, scale_floor: float, baseline_window: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(zscores, centers)``: ``(x - median) / max(1.4826 * MAD, scale_floor)``.

    With ``baseline_window`` the median and MAD are taken over a centred sliding window (truncated at
    the ends), so a slowly drifting baseline does not make every early or late point an outlier.
    ``values`` must be finite.
    """
    if baseline_window is None:
        centers = np.full(values.shape, np.median(values))
        deviations = np.abs(values - centers)
        scales = np.full(values.shape, _MAD_TO_SIGMA * np.median(deviations))
    else:
        half = baseline_window // 2
        # NaN padding lets nanmedian truncate the window at both ends without special cases.
        padded = np.pad(values, half, constant_values=np.nan)
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
        centers = np.nanmedian(windows, axis=1)
        scales = _MAD_TO_SIGMA * np.nanmedian(np.abs(windows - centers[:, None]), axis=1)
    scales = np.maximum(scales, scale_floor)
    return (values - centers) / scales, centers


def _merge_runs(flagged: np.ndarray, signs: np.ndarray) -> list[np.ndarray]:
    """Group consecutive flagged indices with the same sign; return each group's indices.

    A transient spike (up then immediately down) stays two groups: merging opposite changes would
    report one jump of roughly zero size.
    """
    indices = np.flatnonzero(flagged)
    if indices.size == 0:
        return []
    breaks = (np.diff(indices) != 1) | (np.diff(signs[indices]) != 0)
    return np.split(indices, np.flatnonzero(breaks) + 1)


# ----------------------------------------------------------------------------------------------------
# Public detection functions
# ----------------------------------------------------------------------------------------------------


def detect_loss_jumps(
    losses: Sequence[float] | np.ndarray,
    steps: Sequence[int] | np.ndarray | None = None,
    *,
    z_threshold: float = 5.0,
    min_relative_change: float = 0.25,
    baseline_window: int | None = None,
) -> list[LossJump]:
    """Find sudden jumps of the training loss.

    The series is analysed on a log scale: ``d[i] = log(loss[i]) - log(loss[i-1])``.  A step is flagged
    when both

    - its robust z-score ``(d - median(d)) / (1.4826 * MAD(d))`` exceeds ``z_threshold`` in absolute
      value (the scale is floored so that a noiseless trend, whose MAD is ~0, never divides by zero), and
    - the loss changed by more than ``min_relative_change`` in either direction, measured symmetrically as
      ``max(a, b) / min(a, b) - 1 = expm1(|d|)`` so that doubling and halving count the same.

    Consecutive flagged steps that change in the same direction are merged into one jump, reported at
    the step of the largest single change, with ``size`` the total log-change of the run.

    Special values
        * **Non-finite losses** (NaN, ±inf) are dropped from the statistics; the change across a gap
          is measured between the finite losses on either side.  Each transition from a finite loss to a
          non-finite one is reported as an ``"up"`` jump at the first non-finite step with
          ``size = zscore = inf`` (divergence is the largest loss jump there is).  Leading non-finite
          values are ignored.
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
        Strictly increasing training steps of ``losses``; default ``0, 1, ..., N-1``.
    z_threshold : float, default 5.0
        Minimum absolute robust z-score of a log-change (> 0).
    min_relative_change : float, default 0.25
        Minimum relative change of the loss, ``expm1(|d|)`` (>= 0); 0.25 means at least 25 %.
    baseline_window : int or None, default None
        If given (>= 3), median and MAD come from a centred sliding window of that many log-changes
        instead of the whole series, for curves whose typical step-to-step change drifts strongly.

    Returns
    -------
    list of LossJump
        Sorted by step.

    Raises
    ------
    ValueError
        If ``losses`` is not 1-D or has a non-positive finite value; if ``steps`` has the wrong length,
        is not integer or not strictly increasing; if a threshold is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> losses = np.exp(-0.01 * np.arange(100))   # smooth decay: no jumps
    >>> detect_loss_jumps(losses)
    []
    >>> losses[60:] /= 4                            # the loss drops fourfold at step 60
    >>> [(j.step, j.direction, round(j.size, 3)) for j in detect_loss_jumps(losses)]
    [(60, 'down', -1.396)]
    >>> detect_loss_jumps([1.0, 0.9, 0.8, float("nan")])    # too short for statistics, but diverged
    [LossJump(step=3, size=inf, direction='up', zscore=inf)]
    """
    loss_array = _as_value_array(losses, "losses")
    step_array = _as_step_array(steps, loss_array.shape[0], "losses")
    z_threshold = _check_positive_number("z_threshold", z_threshold, allow_zero=False)
    min_relative_change = _check_positive_number("min_relative_change", min_relative_change, allow_zero=True)
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

    finite_steps = step_array[finite]
    if finite_steps.size >= _MIN_FINITE_POINTS:
        log_changes = np.diff(np.log(loss_array[finite]))
        scale_floor = max(_RELATIVE_SCALE_FLOOR * float(np.median(np.abs(log_changes))), _ABSOLUTE_SCALE_FLOOR)
        zscores, _ = _robust_zscores(log_changes, scale_floor=scale_floor, baseline_window=baseline_window)
        flagged = (np.abs(zscores) > z_threshold) & (np.expm1(np.abs(log_changes)) > min_relative_change)
        for run in _merge_runs(flagged, np.sign(log_changes)):
            peak = run[np.argmax(np.abs(log_changes[run]))]
            size = float(np.sum(log_changes[run]))
            jumps.append(
                LossJump(
                    step=int(finite_steps[peak + 1]),
                    size=size,
                    direction="up" if size > 0 else "down",
                    zscore=float(zscores[peak]),
                )
            )
    return sorted(jumps, key=lambda jump: jump.step)


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
    times the median level.  Only upward deviations count.  Consecutive spike steps form one spike,
    reported at its highest value.

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
            log_values[usable], scale_floor=_ABSOLUTE_SCALE_FLOOR, baseline_window=baseline_window
        )
        flagged[usable] = (zscores > z_threshold) & (log_values[usable] - centers > math.log(min_ratio))
        strength[usable] = log_values[usable]
    runs = _merge_runs(flagged, np.ones(flagged.shape))
    return [int(step_array[run[np.argmax(strength[run])]]) for run in runs]


# ----------------------------------------------------------------------------------------------------
# Correlation with events
# ----------------------------------------------------------------------------------------------------


def _signed_lags_to_nearest(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return ``query - nearest target`` for every query in every row of targets.

    ``queries`` has shape ``(Q,)``, ``targets`` shape ``(R, T)`` with ``T >= 1``; the result has shape
    ``(R, Q)``.  On a tie the earlier target wins (positive lag: the target came first).  All rows are
    searched at once by shifting each row by a stride larger than any in-row distance, so one sorted
    1-D array and a single ``searchsorted`` serve every row (the permutation test uses thousands of rows).
    """
    n_rows = targets.shape[0]
    base = min(int(queries.min()), int(targets.min()))
    span = max(int(queries.max()), int(targets.max())) - base
    # Row r occupies [r * stride, r * stride + span]: a neighbour from another row is more than `span`
    # away, every row has a target within `span`, so the nearest neighbour is always in the same row.
    stride = 2 * span + 1
    offsets = np.arange(n_rows, dtype=np.int64)[:, None] * stride
    keys = (np.sort(targets, axis=1) - base + offsets).ravel()
    shifted_queries = queries[None, :] - base + offsets
    positions = np.searchsorted(keys, shifted_queries)
    # Clipping at the array ends just repeats the one existing neighbour.
    left = keys[np.clip(positions - 1, 0, keys.size - 1)]
    right = keys[np.clip(positions, 0, keys.size - 1)]
    lag_left = shifted_queries - left
    lag_right = shifted_queries - right
    return np.where(np.abs(lag_left) <= np.abs(lag_right), lag_left, lag_right)


def correlate(
    event_steps: Iterable[Any],
    jump_steps: Iterable[Any],
    *,
    window: int,
    n_permutations: int = 1000,
    seed: int | None = 0,
    step_range: tuple[int, int] | None = None,
) -> Correlation:
    """Measure how well events (e.g. bifurcations) line up with jumps (loss jumps or grad-norm spikes).

    A jump is *explained* when some event lies within ``±window`` steps of it.  The test statistic is the
    fraction of explained jumps; its null distribution places the same number of events uniformly at
    random (integer steps in ``step_range``, with replacement) ``n_permutations`` times, and
    ``p = (1 + #{null >= observed}) / (1 + n_permutations)``.

    With no jumps or no events nothing can be matched: both fractions are 0, ``mean_lag`` is ``None``
    and ``p_value`` is 1.0.

    Parameters
    ----------
    event_steps : iterable of int or of objects with an int ``.step``
        Steps of the events, e.g. ``BifurcationEvent`` objects.
    jump_steps : iterable of int or of objects with an int ``.step``
        Steps of the jumps, e.g. ``detect_loss_jumps`` output or ``detect_spikes`` output.
    window : int
        Half-width of the matching window in steps (>= 0).
    n_permutations : int, default 1000
        Number of random placements in the null distribution (>= 1).
    seed : int or None, default 0
        Seed of the ``numpy.random.Generator`` that places the null events (``None``: fresh entropy).
    step_range : (int, int), optional
        Inclusive range of steps where events could have occurred, ideally the training steps that were
        monitored; default ``min .. max`` over all given event and jump steps.

    Returns
    -------
    Correlation

    Raises
    ------
    ValueError
        If a step is not an int, ``window`` is negative, ``n_permutations`` < 1, ``seed`` is not an int
        or ``step_range`` is not an increasing pair of ints.

    Examples
    --------
    >>> result = correlate([8, 51, 300], [10, 50, 100], window=3, step_range=(0, 400))
    >>> round(result.jumps_explained, 3), round(result.events_with_jump, 3), result.mean_lag
    (0.667, 0.667, 0.5)
    >>> result.p_value < 0.05
    True
    """
    events = _event_steps(event_steps, "event_steps")
    jumps = _event_steps(jump_steps, "jump_steps")
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
        all_steps = np.concatenate([events, jumps])
        first, last = (int(all_steps.min()), int(all_steps.max())) if all_steps.size else (0, 0)

    if events.size == 0 or jumps.size == 0:
        return Correlation(
            jumps_explained=0.0,
            events_with_jump=0.0,
            mean_lag=None,
            n_jumps=int(jumps.size),
            n_events=int(events.size),
            p_value=1.0,
            window=int(window),
            n_permutations=int(n_permutations),
            step_range=(first, last),
        )

    jump_lags = _signed_lags_to_nearest(jumps, events[None, :])[0]
    jump_matched = np.abs(jump_lags) <= window
    event_matched = np.abs(_signed_lags_to_nearest(events, jumps[None, :])[0]) <= window
    n_explained = int(np.count_nonzero(jump_matched))

    rng = np.random.default_rng(seed)
    null_events = rng.integers(first, last, size=(n_permutations, events.size), endpoint=True)
    null_explained = np.count_nonzero(np.abs(_signed_lags_to_nearest(jumps, null_events)) <= window, axis=1)
    p_value = (1 + int(np.count_nonzero(null_explained >= n_explained))) / (1 + n_permutations)

    return Correlation(
        jumps_explained=n_explained / jumps.size,
        events_with_jump=float(np.count_nonzero(event_matched)) / events.size,
        mean_lag=float(np.mean(jump_lags[jump_matched])) if n_explained else None,
        n_jumps=int(jumps.size),
        n_events=int(events.size),
        p_value=float(p_value),
        window=int(window),
        n_permutations=int(n_permutations),
        step_range=(first, last),
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict.  A fraction with nothing to count (no jumps, no events) is ``None``, as is the
        p-value with no jumps: undefined, not 0 and 1."""
        return {
            "loss_jumps": [jump.to_dict() for jump in self.loss_jumps],
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
    event_steps: Iterable[int],
    *,
    window: int,
    warmup_steps: int = 0,
    min_relative_change: float = 1.0,
    n_permutations: int = 1000,
) -> RunSummary:
    """Find the loss jumps and gradient spikes of a run and correlate them with its bifurcation events.

    Parameters
    ----------
    history : iterable of (step, loss, grad_norm)
        One row per training step, in step order; ``loss`` / ``grad_norm`` may be None (not recorded or not
        finite).
    event_steps : iterable of int
        Steps of the bifurcation events.
    window : int
        Half-width of the matching window in steps (>= 0).
    warmup_steps : int, default 0
        Loss jumps are looked for only at steps more than this many steps after the first one: a fresh
        model's first updates are learning, not jumps.
    min_relative_change : float, default 1.0
        Passed to ``detect_loss_jumps``.
    n_permutations : int, default 1000
        Passed to ``correlate``.

    Returns
    -------
    RunSummary
        The permutation null draws events from the run's steps ``(first, last)``.

    Examples
    --------
    >>> history = [(s, 1.0 if s < 30 else 4.0, 1.0) for s in range(60)]
    >>> summary = summarise_run(history, [29], window=2, warmup_steps=5)
    >>> [(jump.step, jump.direction) for jump in summary.loss_jumps], summary.jump_correlation.jumps_explained
    ([(30, 'up')], 1.0)
    """
    rows = [(int(row[0]), row[1], row[2]) for row in history]
    events = [int(step) for step in event_steps]
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
            )
        except ValueError as error:  # e.g. a negative loss has no log
            note = str(error)
    norms = [(step, norm) for step, _, norm in rows if norm]
    spikes = detect_spikes([norm for _, norm in norms], [step for step, _ in norms]) if norms else []
    return RunSummary(
        loss_jumps=tuple(jumps),
        jump_correlation=correlate(
            events, [jump.step for jump in jumps], window=window, n_permutations=n_permutations, step_range=step_range
        ),
        grad_spike_steps=tuple(spikes),
        grad_spike_correlation=correlate(
            events, spikes, window=window, n_permutations=n_permutations, step_range=step_range
        ),
        note=note,
    )
