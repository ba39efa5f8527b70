"""AttractorTracker: the attractor followed at any period from one monitored step to the next, without
Lightning.  Private: ``tracking`` exports it beside ``CycleTracker``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._checks import require_int
from ._stack import ModelStack
from .attractors import Attractor, AttractorReport, _canonical_key, attractor_label, find_attractors_many
from .bifurcations import BifurcationEvent
from .cycles import Cycle, _solve_sequences, follow_cycle
from .models import model_tensors, search_radius

__all__ = ["ATTRACTOR_PREVIOUS_POINTS", "ATTRACTOR_RANDOM_STATES", "ATTRACTOR_REFERENCE_STATES", "AttractorTracker",
           "TrackedAttractor"]

# Starting states per attractor analysis: the previous attractor's points (continuity), data states the
# LightningModule exposes, and a few random ones (other basins).
ATTRACTOR_PREVIOUS_POINTS = 8
ATTRACTOR_REFERENCE_STATES = 8
ATTRACTOR_RANDOM_STATES = 4


@dataclasses.dataclass(frozen=True)
class TrackedAttractor:
    """What one attractor analysis produced.

    Attributes
    ----------
    step : int
    report : AttractorReport
        Every attractor reached from the starting states.
    primary : Attractor or None
        The attractor followed from step to step: the one the previous primary's points reach; without
        them (first step, or after a divergent one) the most-reached bounded attractor.
    event : BifurcationEvent or None
        An ``attractor_change`` when the primary's kind or period differs from the previous step's.
    attractor_ms : float
    """

    step: int
    report: AttractorReport
    primary: Attractor | None
    event: BifurcationEvent | None
    attractor_ms: float


def _same_points(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-12, atol=0.0))


def _cycle_points(cycle: Cycle) -> np.ndarray:
    """A few of a cycle's points (at most ``ATTRACTOR_PREVIOUS_POINTS``, evenly spaced), as float64."""
    return np.asarray(cycle.points[:: max(1, len(cycle.points) // ATTRACTOR_PREVIOUS_POINTS)], dtype=np.float64)


class AttractorTracker:
    """Follow the attractor of one piecewise-linear model across training steps, at any period up to
    ``max_period`` (the cycle search is bounded by ``max_order``; the attractor is not).

    Each update simulates the model from the previous attractor's points, from ``reference`` states (e.g.
    training data in state space) and from a few random states (own generator, seeded by ``seed + step``), and
    classifies what they reach (``attractors.find_attractors``): the stable cycles of any order, chaotic,
    quasi-periodic or divergent orbits.  The *primary* attractor is the one the previous primary's points reach
    (the most-reached bounded one when there are none), so a change of kind or period there is an
    ``attractor_change`` event.

    Parameters
    ----------
    max_period : int
        Longest period detected.
    seed : int
        Base seed of the random starting states.
    n_transient : int
        Steps discarded before periodicity is tested once a previous attractor seeds the states (the first
        analysis discards ``4 * n_transient``).

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import ShallowPLRNN
    >>> model = ShallowPLRNN(1, 1)  # z' = -0.5 z + w relu(z) + 1
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(-0.5), model.W1.fill_(0.0), model.W2.fill_(1.0), model.h2.zero_(), model.h1.fill_(1.0)
    >>> tracker = AttractorTracker(max_period=8)
    >>> primary = tracker.update(model, step=0).primary  # w = 0: the stable fixed point 2/3
    >>> attractor_label(primary.kind, primary.period)
    'fixed point'
    >>> with torch.no_grad():
    ...     _ = model.W1.fill_(-1.0)  # slope -1.5 right of 0: the fixed point is unstable, a 2-cycle attracts
    >>> tracker.update(model, step=1).event.description
    'attractor changed from fixed point to 2-cycle'
    """

    def __init__(self, max_period: int = 256, *, seed: int = 0, n_transient: int = 256) -> None:
        self.max_period = require_int("max_period", max_period, 1, owner="AttractorTracker")
        self.seed = require_int("seed", seed, 0, owner="AttractorTracker")
        self.n_transient = require_int("n_transient", n_transient, 0, owner="AttractorTracker")
        self.reset()

    def reset(self) -> None:
        """Forget the previous attractor."""
        self.previous: dict[str, Any] | None = None  # kind, period, points (list of lists), step
        self.previous_step: int | None = None

    def starting_states(self, model: Any, step: int, reference: Any = None, previous_points: Any = None) -> torch.Tensor:
        """The batch of starting states of an update (float64): ``previous_points`` (by default the previous
        primary attractor's), then ``reference`` states, then random ones."""
        dim = model.state_dim
        points = self._previous_points() if previous_points is None else previous_points
        parts = []
        if len(points):
            parts.append(torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, dim))
        if reference is not None:
            states = torch.as_tensor(reference, dtype=torch.float64).reshape(-1, dim).cpu()
            states = states[torch.isfinite(states).all(-1)]
            if len(states):
                index = torch.linspace(0, len(states) - 1, min(len(states), ATTRACTOR_REFERENCE_STATES)).long()
                parts.append(states[index])
        generator = torch.Generator().manual_seed(self.seed + step)
        radius = search_radius(model)
        parts.append((2 * torch.rand(ATTRACTOR_RANDOM_STATES, dim, generator=generator, dtype=torch.float64) - 1) * radius)
        return torch.cat(parts)

    def update(self, model: Any, step: int, reference: Any = None) -> TrackedAttractor:
        """Analyse the attractor of ``model`` at ``step``.

        Parameters
        ----------
        model : PiecewiseLinear
        step : int
        reference : array-like, shape (..., M), optional
            States to start from besides the previous attractor (e.g. training data mapped to state space).

        Raises
        ------
        ValueError
            Non-finite weights or states; the previous attractor is kept.
        """
        if isinstance(model, torch.nn.Module):
            stack = ModelStack(model, [model_tensors(model)], dtype=torch.float64, device=torch.device("cpu"))
        else:
            stack = ModelStack.single(model, dtype=torch.float64, device=torch.device("cpu"))
        return self.update_many(stack, [step], [reference])[0]

    def update_many(self, stack: ModelStack, steps: Sequence[int], references: Sequence[Any] | None = None) -> list[TrackedAttractor]:
        """Analyse the attractors of consecutive snapshots (one per step of ``steps``) with their orbits simulated
        together; the same results as calling :meth:`update` for each step in turn.

        Each step starts from the attractor the step before reached, which a batch does not know in advance: the
        batch first starts every step from the attractor before the batch, then repeats the steps whose
        starting points turned out different with the points their predecessor reached, until every step
        started from exactly the points a one-at-a-time analysis gives it (a step whose predecessor reached the
        same cycle needs no repeat: the cycle's points are solved exactly).  A repeat takes the steps up to the
        first whose predecessor reached an orbit rather than a cycle (one step at a time on quasi-periodic or
        chaotic dynamics).  Usually one or two rounds; never more rounds than steps.
        """
        steps = [int(step) for step in steps]
        references = list(references) if references is not None else [None] * len(steps)
        if self.previous is None and stack.n_steps > 1:  # the first analysis runs alone (a longer transient)
            return self.update_many(stack.select([0]), steps[:1], references[:1]) + self.update_many(
                stack.select(range(1, stack.n_steps)), steps[1:], references[1:]
            )
        started = time.perf_counter()
        n_steps = stack.n_steps
        models = [stack.model(i) for i in range(n_steps)]
        n_transient = self.n_transient if self.previous is not None else 4 * self.n_transient
        expected, known = self._expected_points(models[:-1], stack.dtype, stack.device)
        starts: list[Any] = [self._previous_points()] + expected  # where each step starts in the next round
        used: list[Any] = [None] * n_steps  # where each step started when it was last simulated
        known.append({})
        reached: list[tuple[AttractorReport, Attractor | None, np.ndarray | None]] = [None] * n_steps  # type: ignore[list-item]
        final, todo = 0, list(range(n_steps))
        while final < n_steps:
            for i in todo:
                used[i] = starts[i]
            states = [self.starting_states(models[i], steps[i], references[i], used[i]) for i in todo]
            reports = find_attractors_many(
                stack if len(todo) == n_steps else stack.select(todo),
                [batch.to(device=stack.device, dtype=stack.dtype) for batch in states],
                max_period=self.max_period,
                n_transient=n_transient,
                n_window=2 * self.max_period,
                width=ATTRACTOR_PREVIOUS_POINTS + ATTRACTOR_REFERENCE_STATES + ATTRACTOR_RANDOM_STATES,
                known_cycles=[known[i] for i in todo],
            )
            for i, report in zip(todo, reports):
                primary = self._primary(report, followed=len(used[i]) > 0)
                reached[i] = (report, primary, self._points_of(primary))
            # A step is done once it started from the points its (done) predecessors lead to.  To rounding: a
            # cycle's points solved alone or among other sequences may differ in the last bit, which changes
            # nothing the step reports (the attractor reached is solved exactly from its region sequence).
            while final < n_steps and _same_points(used[final], self._points_before(final, reached)):
                final += 1
            # The next round goes from the first step not done up to the first that starts from a predecessor's
            # orbit rather than a cycle: an orbit's points move whenever its step is simulated from other points,
            # so the steps after it would be simulated for nothing (on quasi-periodic dynamics every step is such
            # a step, and a batch of n repeated n, n - 1, ... 1 steps).
            end = min(final + 1, n_steps)
            while end < n_steps and reached[end - 1][1] is not None and reached[end - 1][1].cycle is not None:
                end += 1
            todo = list(range(final, end))
            for i in todo:
                starts[i] = self._points_before(i, reached)
        elapsed_ms = 1e3 * (time.perf_counter() - started) / n_steps
        return [self._advance(step, report, primary, points, elapsed_ms) for step, (report, primary, points) in zip(steps, reached)]

    def follow(self, report: AttractorReport, step: int, *, attractor_ms: float = 0.0) -> TrackedAttractor:
        """Move on to ``step`` with attractors found elsewhere, without simulating (``offline.analyse_checkpoints``
        finds each checkpoint's attractors on its own, in parallel, from random states and its stable cycles).

        The primary is the attractor of ``report`` that continues the previous one by identity rather than by
        where the previous points go: the cycle with the previous cycle's region sequence, else the bounded
        attractor nearest to the previous points (a period doubling, a cycle that crossed a switching plane),
        else, without previous points, the most-reached bounded one, as at a first step.  A change of kind or
        period is an ``attractor_change`` event, as in :meth:`update_many`.

        Examples
        --------
        >>> from bifurcation_callback.attractors import find_attractors
        >>> from bifurcation_callback.models import PLRNN
        >>> model = PLRNN(1)
        >>> with torch.no_grad():  # z' = 0.5 z + 1: the stable fixed point 2
        ...     _ = model.A.fill_(0.5), model.h.fill_(1.0)
        >>> tracker = AttractorTracker(max_period=4)
        >>> tracker.follow(find_attractors(model, [[0.0], [5.0]], max_period=4), step=0).primary.period
        1
        >>> with torch.no_grad():  # z' = -1.5 z + 1 around 0.4: unstable, orbits escape
        ...     _ = model.A.fill_(-1.5)
        >>> tracker.follow(find_attractors(model, [[0.0], [5.0]], max_period=4), step=1).event.description
        'attractor changed from fixed point to divergent'
        """
        primary = self._continuation(report)
        return self._advance(step, report, primary, self._points_of(primary), attractor_ms)

    def _continuation(self, report: AttractorReport) -> Attractor | None:
        codes = (self.previous or {}).get("codes")
        if codes is not None:
            key = _canonical_key(np.asarray(codes, dtype=bool))
            same = [attractor for attractor in report.attractors if attractor.cycle is not None and attractor.cycle.key == key]
            if same:
                return same[0]
        points = self._previous_points()
        bounded = [attractor for attractor in report.attractors if attractor.kind != "divergent" and len(attractor.orbit)]
        if not len(points) or not bounded:
            return self._primary(report, followed=False)

        def distance(attractor: Attractor) -> float:  # mean distance of the previous points to the orbit
            gaps = np.linalg.norm(points[:, None, :] - np.asarray(attractor.orbit, dtype=np.float64)[None], axis=-1)
            return float(np.nanmean(gaps.min(axis=1)))

        return min(bounded, key=distance)

    def _advance(self, step: int, report: AttractorReport, primary: Attractor | None, points: np.ndarray | None,
                 attractor_ms: float) -> TrackedAttractor:
        """The step's result: its event against the previous primary, which ``primary`` then becomes."""
        event = self._change(primary, step)
        if primary is not None:
            self.previous = {"kind": primary.kind, "period": primary.period, "stable": primary.is_stable,
                             "points": points.tolist(),
                             "codes": primary.cycle.codes.astype(int).tolist() if primary.cycle is not None else None}
            self.previous_step = step
        return TrackedAttractor(step, report, primary, event, attractor_ms)

    def _expected_points(self, models: list, dtype: torch.dtype, device: torch.device) -> tuple[list[np.ndarray], list[dict]]:
        """Per model (a stack's steps, in its ``dtype`` on ``device``), the points the step after it would start
        from if the previous attractor, a cycle, persists there: its region sequence solved with that model's
        weights (exactly what the analysis of that step yields when it reaches the cycle, so most batches need a
        single round), followed into new regions when it crossed a switching plane.  The previous points
        otherwise.  Also per model the cycle solved (by key; empty when none), which that step's attractor search
        then need not solve again."""
        codes = (self.previous or {}).get("codes")
        fallback = self._previous_points()
        expected: list[np.ndarray] = []
        known: list[dict] = []
        cycle: Cycle | None = None
        for model in models:
            known.append({})
            if codes is None:
                expected.append(fallback)
                continue
            solved = _solve_sequences(model, np.asarray(codes, dtype=bool)[None], dtype, device)
            if not solved and cycle is not None:
                moved = [c for c in follow_cycle(model, cycle, dtype=dtype) if c.is_stable]
                solved = _solve_sequences(model, moved[0].codes[None], dtype, device) if moved else []
            if not solved:
                codes = None
                expected.append(fallback)
                continue
            cycle, codes = solved[0], solved[0].codes
            expected.append(_cycle_points(cycle))
            known[-1][cycle.key] = cycle
        return expected, known

    def _previous_points(self) -> np.ndarray:
        points = self.previous["points"] if self.previous is not None else []
        return np.asarray(points, dtype=np.float64).reshape(len(points), -1) if len(points) else np.zeros((0, 0))

    def _points_before(self, index: int, reached: list) -> np.ndarray:
        """The points step ``index`` starts from: those of the latest earlier step of the batch with a primary
        attractor, else the previous attractor's."""
        for earlier in range(index - 1, -1, -1):
            if reached[earlier] is not None and reached[earlier][1] is not None:
                return reached[earlier][2]
        return self._previous_points()

    @staticmethod
    def _points_of(primary: Attractor | None) -> np.ndarray | None:
        """The points the next step starts from: a few of the cycle's points, or the orbit's last ones; none
        after a divergent attractor (they lead nowhere: the next step looks for an attractor afresh)."""
        if primary is None:
            return None
        if primary.cycle is not None:
            return _cycle_points(primary.cycle)
        points = primary.orbit[-ATTRACTOR_PREVIOUS_POINTS:]
        points = points[np.isfinite(points).all(-1)] if primary.kind != "divergent" else points[:0]
        return np.asarray(points, dtype=np.float64)

    @staticmethod
    def _primary(report: AttractorReport, *, followed: bool) -> Attractor | None:
        """The attractor the previous one's points (the first starting states) reach; without them, the
        most-reached attractor that is not divergent (divergent only when nothing else was reached)."""
        if not report.attractors:
            return None
        if followed:
            return report.attractors[report.labels[0]]
        bounded = [attractor for attractor in report.attractors if attractor.kind != "divergent"]
        return (bounded or list(report.attractors))[0]

    def _change(self, primary: Attractor | None, step: int) -> BifurcationEvent | None:
        if self.previous is None or primary is None:
            return None
        before = (self.previous["kind"], self.previous["period"])
        if (primary.kind, primary.period) == before:
            return None
        return BifurcationEvent(
            "attractor_change",
            primary.period or 0,
            step=step,
            step_interval=(self.previous_step, step),
            stable_before=self.previous.get("stable"),
            stable_after=primary.is_stable,
            point=tuple(float(v) for v in primary.orbit[-1]) if len(primary.orbit) else None,
            description=f"attractor changed from {attractor_label(*before)} to {attractor_label(primary.kind, primary.period)}",
        )

    def state_dict(self) -> dict[str, Any]:
        """The previous primary attractor (kind, period, points) and its step: JSON-friendly."""
        return {"previous": self.previous, "previous_step": self.previous_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reset()
        self.previous = state.get("previous")
        self.previous_step = state.get("previous_step")
