"""Loss jumps against bifurcation events: correlation with brackets and a permutation test, and a run's summary.

Pure numpy/scipy: nothing here imports torch, lightning or tensorboard, so every function is testable on
plain arrays and the callback only wires them together.

- ``detect_loss_jumps`` / ``detect_spikes`` (from ``jump_detection``, re-exported here) find abrupt changes of the
  loss at several time scales and spikes of the gradient norm.
- ``correlate`` measures how often jumps (or spikes) fall within ``window`` steps of a bifurcation event's
  bracket ``(lo, hi)`` and tests that against the same brackets moved to random places (permutation
  p-value), returning a ``Correlation``.
- ``summarise_run`` applies all three to one training run's per-step history (what the monitor reports at
  fit end), returning a ``RunSummary``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .jump_detection import (
    DEFAULT_JUMP_SCALES,
    JUMP_DIRECTIONS,
    LossJump,
    _check_positive_number,
    _check_scales,
    _is_integer,
    _scale_applies,
    detect_loss_jumps,
    detect_spikes,
)

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

# The null distribution of correlate is evaluated in chunks of permutations of at most this many
# (permutation, jump, event) comparisons, which bounds its memory for runs with many events.
_COMPARISONS_PER_CHUNK = 1 << 22


# ----------------------------------------------------------------------------------------------------
# Result containers
# ----------------------------------------------------------------------------------------------------


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
