"""Whether the analysis keeps up with training, and what the end of the fit will wait for when it does not.

A worker that analyses fewer steps per second than training takes builds a queue that grows for the whole fit,
and the fit-end wait (``drain_timeout_s``) then either lasts long or runs out and drops the rest.  ``PaceWatch``
tells early: from how much the number of snapshots waiting rose over the last ``WINDOW`` batch ends (less the
largest batch seen finishing in them, so that the sawtooth of batches never looks like a trend), training's
median step time and the fit's last step, it projects the queue and the wait at fit end.  Private:
``session.MonitorSession`` warns once per fit with its message; ``step_spans`` words the steps a fit end dropped.
"""

from __future__ import annotations

import collections
import math
import statistics
from dataclasses import dataclass

__all__ = ["PaceProjection", "PaceWatch", "step_spans"]

# Batch ends looked at (the queue rises and falls by a batch at a time: a long window averages that out).
WINDOW = 512
# Batch ends before the first projection, and between two.
MIN_SAMPLES = 64
EVERY = 32


@dataclass(frozen=True)
class PaceProjection:
    """The fit end as the last ``WINDOW`` batch ends foretell it.

    Attributes
    ----------
    pace : float
        The share of the monitored steps the analysis gets through in the time training takes to make them
        (below 1: the queue grows); rounded up by the sawtooth allowance (see ``PaceWatch``).
    waiting : int
        Snapshots waiting now.
    remaining_steps : int
        Training steps left in the fit.
    waiting_at_end : int
        Snapshots projected to wait when training ends, should the pace stay as it is.
    step_seconds : float
        Training's median step time over the window.
    analysis_seconds : float
        The analysis' time per monitored step (as it ran beside training; inf when it finished hardly any).
    wait_seconds : float
        The projected fit-end wait for the snapshots waiting then (inf: the analysis finished hardly any).
    every_n_steps : int
        The monitor's setting the projection assumed.
    """

    pace: float
    waiting: int
    remaining_steps: int
    waiting_at_end: int
    step_seconds: float
    analysis_seconds: float
    wait_seconds: float
    every_n_steps: int = 1

    def message(self, drain_timeout_s: float | None) -> str:
        """The warning ``MonitorSession`` gives, with what the user can do about it.

        Examples
        --------
        >>> print(PaceProjection(0.5, 40, 1000, 540, 0.02, 0.04, 21.6).message(10.0))
        BifurcationMonitor: the analysis keeps about 50 % of training's pace (40 ms per monitored step against 20 ms per training step): 40 steps wait now and, at this pace, about 540 will when training ends in 1000 steps, ~22 s of analysis, more than drain_timeout_s=10.0 allows (the rest would be dropped). every_n_steps=2 halves the work; queue_size=1 keeps up by dropping older waiting steps; drain_timeout_s=None waits for all.
        """
        if drain_timeout_s is None:
            limit = "all waited for at fit end (drain_timeout_s=None)"
        elif self.wait_seconds > drain_timeout_s:
            limit = f"more than drain_timeout_s={drain_timeout_s} allows (the rest would be dropped)"
        else:
            limit = f"within drain_timeout_s={drain_timeout_s}"
        if self.pace < 0.05:  # hardly a result in the window: no per-step time to quote
            pace = "the analysis got through hardly any of the recent steps"
            fewer = "every_n_steps reduces the work (queue_size=1 keeps up by dropping older waiting steps)"
        else:
            factor = max(2, math.ceil(1.0 / self.pace))
            pace = (f"the analysis keeps about {100 * self.pace:.0f} % of training's pace ("
                    f"{1e3 * self.analysis_seconds:.0f} ms per monitored step against {1e3 * self.step_seconds:.0f} ms "
                    "per training step)")
            fewer = (f"every_n_steps={factor * self.every_n_steps} {'halves' if factor == 2 else 'cuts'} the work; "
                     "queue_size=1 keeps up by dropping older waiting steps")
        wait = f"~{self.wait_seconds:.0f} s of analysis" if math.isfinite(self.wait_seconds) else "a wait with no end in sight"
        return (f"BifurcationMonitor: {pace}: {self.waiting} steps wait now and, at this pace, about {self.waiting_at_end} will "
                f"when training ends in {self.remaining_steps} steps, {wait}, {limit}. "
                f"{fewer}; drain_timeout_s=None waits for all.")

class PaceWatch:
    """Sample the queue at every batch end; every ``EVERY`` samples (after ``MIN_SAMPLES``) project the fit end.

    Parameters
    ----------
    last_step : int or None
        The fit's last step (None when unknown: no projection).
    every_n_steps : int
        One snapshot every that many training steps.

    Examples
    --------
    >>> watch = PaceWatch(last_step=999)  # training: 20 ms a step; the queue grows by one every other step
    >>> projections = [watch.sample(step, waiting=step // 2, now=0.02 * step) for step in range(200)]
    >>> last = [p for p in projections if p is not None][-1]
    >>> round(last.pace, 2), last.remaining_steps, last.waiting_at_end, round(last.wait_seconds)
    (0.5, 808, 497, 20)
    >>> watch = PaceWatch(last_step=999)  # batches of 8 that keep up: the queue saws between 0 and 7
    >>> [p.waiting_at_end for p in (watch.sample(s, s % 8, 0.02 * s) for s in range(200)) if p is not None]
    [7, 7, 7, 7, 7]
    """

    def __init__(self, last_step: int | None, every_n_steps: int = 1) -> None:
        self.last_step = last_step
        self.every_n_steps = every_n_steps
        self._samples: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=WINDOW)
        self._since = 0

    def sample(self, step: int, waiting: int, now: float) -> PaceProjection | None:
        """Note that ``waiting`` snapshots wait after training ``step`` (at time ``now``, seconds); a projection
        every ``EVERY`` samples once ``MIN_SAMPLES`` are in, else None."""
        self._samples.append((int(step), int(waiting), float(now)))
        self._since += 1
        if self.last_step is None or len(self._samples) < MIN_SAMPLES or self._since < EVERY:
            return None
        self._since = 0
        steps, queue, times = zip(*self._samples)
        span = steps[-1] - steps[0]
        if span <= 0:
            return None
        # The queue rises step by step and falls by a batch at a time: between any two batch ends it may differ
        # from its trend by up to the largest batch the window saw finish, so that is taken off its rise (a worker
        # that keeps up is never projected to fall behind; one that falls behind is, a little late).
        swing = max([0] + [before - after for before, after in zip(queue, queue[1:])])
        growth = max(queue[-1] - queue[0] - swing, 0) / span  # snapshots per training step, at least
        submitted = 1.0 / self.every_n_steps  # snapshots per training step
        analysed = max(submitted - growth, 1e-3 * submitted)  # per training step, at most
        gaps = [(b - a) / (j - i) for (i, a), (j, b) in zip(zip(steps, times), zip(steps[1:], times[1:])) if j > i]
        step_seconds = statistics.median(gaps) if gaps else 0.0
        remaining = max(self.last_step - steps[-1], 0)
        at_end = max(round(queue[-1] + remaining * growth), 0)
        pace = min(analysed / submitted, 1.0)
        per_snapshot = step_seconds / analysed if pace >= 0.05 else math.inf  # hardly a result: no time to quote
        wait = at_end * per_snapshot if at_end else 0.0
        return PaceProjection(pace, queue[-1], remaining, at_end, step_seconds, per_snapshot, wait, self.every_n_steps)


def step_spans(steps: list[int]) -> str:
    """Steps as runs, for a message: ``[1, 2, 3, 7]`` → ``"1-3, 7"`` (at most 5 runs, then a count).

    Examples
    --------
    >>> step_spans([1, 2, 3, 7, 9, 10])
    '1-3, 7, 9-10'
    """
    runs: list[list[int]] = []
    for step in sorted(steps):
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    shown = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:5])
    return shown + (f" and {len(runs) - 5} more runs" if len(runs) > 5 else "")
