"""The vocabulary of bifurcations of piecewise-linear maps: match cycle sets across snapshots, classify changes.

Detection and precise location are separate steps (as in BifurcationKit): ``detect_bifurcations``
(here) compares the cycle sets of two snapshots and returns events that carry their bracket
``step_interval = (lo, hi)``; ``localize`` (in ``bifurcations.localize``) bisects along the straight
line between two weight snapshots to the sub-step position where the set of cycles changes;
``scan`` (in ``bifurcations.scan``) counts cycles and stable cycles on a 2-D parameter grid.

The vocabulary is closed: ``BIFURCATION_KINDS`` lists every ``BifurcationEvent.kind`` and
``CROSSINGS`` every ``crossing`` of a ``stability_change``.

| kind | meaning (BifurcationKit name) | what it does to gradients (paper) |
|---|---|---|
| appearance | a cycle exists after but not before (``appear``) | a new attractor can capture the trajectory: loss jump |
| disappearance | a cycle existed before but not after (``vanish``) | the attractor the loss relied on is lost: loss jump |
| stability_change | same region sequence, the number of multipliers outside the unit circle changed; ``crossing`` says how: ``+1`` (``fold``; in a PL map the cycle passes through infinity), ``-1`` (``pd``, flip / period doubling), ``complex`` (``ns``, Neimark–Sacker) | the trajectory leaves / joins the cycle; at a ``+1`` crossing of a PL map ``(I - P)^-1`` blows up, so gradients explode like at a DTB |
| border_collision | a cycle point crosses a switching plane (``bc``): the cycle persists with new region codes, or a pair of cycles appears / vanishes at the border (nonsmooth fold) | Jacobian products jump: loss jumps, discontinuous and (per the paper) vanishing gradients |
| degenerate | a cycle escapes to / comes from infinity as a real multiplier reaches +1 (the paper's degenerate transcritical bifurcation, DTB) | ‖∂L/∂θ‖ → ∞: exploding gradients (Thm 1) |
| attractor_change | the attractor the orbits follow changed kind or period (e.g. 4-cycle → fixed point, 16-cycle → chaotic), at any period; made by ``tracking.AttractorTracker``, not by ``detect_bifurcations``; ``order`` is the new period (0 when not periodic) | what the generated trajectories, and so the loss, see |

Thresholds (module constants, documented where they are defined):

* ``DEGENERATE_EIGENVALUE_GAP`` = 0.05 — a vanishing (appearing) cycle whose last (first) multipliers
  include a real one in ``(1 - 0.05, 1 + 0.05)`` is ``degenerate``.
* ``DEGENERATE_NORM_FACTOR`` = 100 — so is one whose largest point norm exceeds 100 × the typical
  norm of the other cycles (``1 +`` their median), the signature of a cycle escaping to infinity when
  snapshots are too coarse to catch the multiplier near +1.
* Pairs: two cycles of the same order that appear (or vanish) together, whose region sequences differ
  in exactly one bit under some rotation and whose ``det(I - P)`` have opposite signs, are a nonsmooth
  fold at a switching plane and are reported as two ``border_collision`` events (index theory: the two
  branches of a fold carry opposite fixed-point indices).  A single cycle born at a border with no
  partner (e.g. the 2-cycle of a piecewise-linear flip) is an ``appearance``.

This module imports neither Lightning nor TensorBoard; every function is pure.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._scyfi import NEUTRAL_TOLERANCE
from ..cycles import Cycle, CycleSet, cycle_determinant_sign, follow_cycle

__all__ = [
    "BIFURCATION_KINDS",
    "CROSSINGS",
    "MATCH_STATUSES",
    "MATCHED_BY",
    "DEGENERATE_EIGENVALUE_GAP",
    "DEGENERATE_NORM_FACTOR",
    "REAL_TOLERANCE",
    "CROSSING_RTOL",
    "Match",
    "BifurcationEvent",
    "match",
    "classify",
    "Comparison",
    "compare_snapshots",
    "detect_bifurcations",
    "is_qualitative",
]

# The closed vocabulary of events: validation, docs and the CLI read these registries.
BIFURCATION_KINDS = (
    "appearance",
    "disappearance",
    "stability_change",
    "border_collision",
    "degenerate",
    "attractor_change",
)
# How a stability_change happened: a real multiplier crossed +1 (fold), -1 (flip / period doubling),
# or a complex pair crossed |λ| = 1 (Neimark–Sacker).
CROSSINGS = ("+1", "-1", "complex")
MATCH_STATUSES = ("persisted", "appeared", "vanished")
MATCHED_BY = ("codes", "nearest")

# A vanishing / appearing cycle with a real multiplier within this distance of +1 is a DTB candidate.
DEGENERATE_EIGENVALUE_GAP = 0.05
# ... and so is one whose points are this many times farther out than the other cycles (escape to infinity).
DEGENERATE_NORM_FACTOR = 100.0
# Imaginary parts below this count as real multipliers.
REAL_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Match:
    """One cycle followed across two snapshots.

    Attributes
    ----------
    prev, curr : Cycle or None
        The cycle before and after; one of them is None when it appeared or vanished.
    status : str
        One of ``MATCH_STATUSES``: ``"persisted"``, ``"appeared"`` or ``"vanished"``.
    matched_by : str or None
        ``"codes"`` (same region sequence up to rotation), ``"nearest"`` (codes changed, points close:
        a border collision) or None for appeared / vanished cycles.
    """

    prev: Cycle | None
    curr: Cycle | None
    status: str
    matched_by: str | None = None


def _complex_list(values: tuple[complex, ...] | None) -> list[list[float]] | None:
    return None if values is None else [[float(v.real), float(v.imag)] for v in values]


def _complex_tuple(values: list | None) -> tuple[complex, ...] | None:
    return None if values is None else tuple(complex(re_, im) for re_, im in values)


@dataclass(frozen=True)
class BifurcationEvent:
    """A qualitative change of one cycle between two snapshots.

    Attributes
    ----------
    kind : str
        One of ``BIFURCATION_KINDS``.
    order : int
        Period of the cycle involved.
    step : int
        Step at which the change was first seen (the high end of the bracket).
    step_interval : tuple[int, int]
        Bracket ``(lo, hi)``: the last step before and the first step after the change.
    crossing : str or None
        For ``stability_change`` one of ``CROSSINGS``; None otherwise.
    location : float or None
        Sub-step position in ``[lo, hi]`` once localised (``localize``).
    eigenvalues_before, eigenvalues_after : tuple[complex, ...] or None
        Multipliers of the cycle before / after (None where it does not exist).
    stable_before, stable_after : bool or None
    n_unstable_before, n_unstable_after : int or None
        Number of multipliers outside the unit circle.
    point : tuple[float, ...] or None
        First point of the cycle (after if it exists, else before).
    description : str
        One human sentence.
    verified : bool
        The change is proved by both snapshots: a cycle that persisted, or a cycle that appeared (vanished) in an
        order enumerated at the other step, or whose absence there was checked with that step's weights
        (``compare_snapshots``).  False for an appearance or disappearance in an order only searched
        heuristically, without the weights to check: it may be a cycle the search missed at one step.

    Examples
    --------
    >>> import json
    >>> event = BifurcationEvent("appearance", 1, step=5, step_interval=(4, 5), point=(0.5,))
    >>> BifurcationEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    True
    """

    kind: str
    order: int
    step: int
    step_interval: tuple[int, int]
    crossing: str | None = None
    location: float | None = None
    eigenvalues_before: tuple[complex, ...] | None = None
    eigenvalues_after: tuple[complex, ...] | None = None
    stable_before: bool | None = None
    stable_after: bool | None = None
    n_unstable_before: int | None = None
    n_unstable_after: int | None = None
    point: tuple[float, ...] | None = None
    description: str = ""
    verified: bool = True

    def __post_init__(self) -> None:
        if self.kind not in BIFURCATION_KINDS:
            raise ValueError(f"kind must be one of {BIFURCATION_KINDS}, got {self.kind!r}")
        if self.crossing is not None and self.crossing not in CROSSINGS:
            raise ValueError(f"crossing must be one of {CROSSINGS} or None, got {self.crossing!r}")
        lo, hi = self.step_interval
        if lo > hi:
            raise ValueError(f"step_interval must be (lo, hi) with lo <= hi, got {self.step_interval}")
        if self.location is not None and not lo <= self.location <= hi:
            raise ValueError(f"location {self.location} lies outside its bracket {self.step_interval}")

    def to_dict(self) -> dict:
        """JSON-ready dict (complex numbers as ``[re, im]``); ``from_dict`` inverts it."""
        return {
            "kind": self.kind,
            "order": self.order,
            "step": self.step,
            "step_interval": list(self.step_interval),
            "crossing": self.crossing,
            "location": self.location,
            "eigenvalues_before": _complex_list(self.eigenvalues_before),
            "eigenvalues_after": _complex_list(self.eigenvalues_after),
            "stable_before": self.stable_before,
            "stable_after": self.stable_after,
            "n_unstable_before": self.n_unstable_before,
            "n_unstable_after": self.n_unstable_after,
            "point": None if self.point is None else list(self.point),
            "description": self.description,
            "verified": self.verified,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BifurcationEvent":
        """Inverse of ``to_dict``."""
        lo, hi = data["step_interval"]
        return cls(
            kind=data["kind"],
            order=int(data["order"]),
            step=int(data["step"]),
            step_interval=(int(lo), int(hi)),
            crossing=data.get("crossing"),
            location=None if data.get("location") is None else float(data["location"]),
            eigenvalues_before=_complex_tuple(data.get("eigenvalues_before")),
            eigenvalues_after=_complex_tuple(data.get("eigenvalues_after")),
            stable_before=data.get("stable_before"),
            stable_after=data.get("stable_after"),
            n_unstable_before=data.get("n_unstable_before"),
            n_unstable_after=data.get("n_unstable_after"),
            point=None if data.get("point") is None else tuple(float(x) for x in data["point"]),
            description=data.get("description", ""),
            verified=bool(data.get("verified", True)),
        )


# ----------------------------------------------------------------------------------------------------------------
# Matching


def _dims(cycle_set: CycleSet) -> tuple[int, int] | None:
    for cycle in cycle_set:
        return int(cycle.points.shape[1]), int(cycle.codes.shape[1])
    return None


def _max_norm(cycle: Cycle) -> float:
    return float(np.linalg.norm(cycle.points, axis=1).max()) if cycle.points.size else 0.0


def _point_distance(a: Cycle, b: Cycle) -> float:
    """Min over rotations of the max point distance, relative to ``1 +`` the larger point norm."""
    scale = 1.0 + max(_max_norm(a), _max_norm(b))
    best = math.inf
    for shift in range(a.order):
        rolled = np.roll(b.points, -shift, axis=0)
        best = min(best, float(np.linalg.norm(a.points - rolled, axis=1).max()))
    return best / scale


# A cycle that crossed a few switching planes between snapshots has moved continuously: with at most one
# flipped switch per point it is paired up to this relative distance (weights move a lot in one step).
CROSSING_RTOL = 0.5


def match(prev: CycleSet, curr: CycleSet, *, rtol: float = 1e-2, crossing_rtol: float = CROSSING_RTOL) -> list[Match]:
    """Pair the cycles of two snapshots.

    Cycles of the same order are paired first by region-code sequence up to rotation (``Cycle.key``,
    ``matched_by="codes"``), then the leftovers by nearest point sets: the smallest, over rotations, of
    the largest point distance, relative to ``1 +`` the larger point norm, when it is at most ``rtol``,
    or at most ``crossing_rtol`` when the code sequences differ in no more switches than the cycle
    has points (``matched_by="nearest"``: same cycle, new regions, i.e. a border collision).  The rest
    appeared or vanished.

    Parameters
    ----------
    prev, curr : CycleSet
        Cycle sets of the earlier and the later snapshot.
    rtol : float
        Relative distance under which two cycles with different codes are the same cycle.
    crossing_rtol : float
        Larger relative distance allowed when the codes differ in at most ``order`` switches (the cycle
        crossed a few planes between two training steps); 0 disables it.

    Returns
    -------
    list of Match
        Sorted by order; within an order persisted, then vanished, then appeared.

    Raises
    ------
    TypeError
        An argument is not a CycleSet.
    ValueError
        The sets come from models with different state dimensions or switch counts; ``rtol`` < 0.

    Examples
    --------
    >>> from bifurcation_callback.cycles import find_cycles
    >>> from bifurcation_callback.models import PLRNN
    >>> cycles = find_cycles(PLRNN(2), max_order=2)
    >>> {m.status for m in match(cycles, cycles)}
    {'persisted'}
    """
    for name, value in (("prev", prev), ("curr", curr)):
        if not isinstance(value, CycleSet):
            raise TypeError(f"{name} must be a CycleSet, got {type(value).__name__}")
    for name, value in (("rtol", rtol), ("crossing_rtol", crossing_rtol)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    dims_prev, dims_curr = _dims(prev), _dims(curr)
    if dims_prev is not None and dims_curr is not None and dims_prev != dims_curr:
        raise ValueError(
            f"cannot match cycle sets of different models: prev has state dim {dims_prev[0]} and "
            f"{dims_prev[1]} switches, curr has state dim {dims_curr[0]} and {dims_curr[1]} switches"
        )
    matches: list[Match] = []
    for order in sorted({c.order for c in prev} | {c.order for c in curr}):
        before = [c for c in prev if c.order == order]
        after = [c for c in curr if c.order == order]
        after_by_key: dict[bytes, list[int]] = {}
        for index, cycle in enumerate(after):
            after_by_key.setdefault(cycle.key, []).append(index)
        left_before: list[Cycle] = []
        used_after: set[int] = set()
        for cycle in before:
            candidates = after_by_key.get(cycle.key, [])
            if candidates:
                index = candidates.pop(0)
                used_after.add(index)
                matches.append(Match(cycle, after[index], "persisted", "codes"))
            else:
                left_before.append(cycle)
        left_after = [(i, c) for i, c in enumerate(after) if i not in used_after]
        # Greedy nearest pairing, closest pair first, so one close pair is never stolen by a far one.
        distances = sorted(
            (_point_distance(p, c), bi, ai)
            for bi, p in enumerate(left_before)
            for ai, (_, c) in enumerate(left_after)
        )
        paired_before: set[int] = set()
        paired_after: set[int] = set()
        for distance, bi, ai in distances:
            if distance > max(rtol, crossing_rtol):
                break
            if bi in paired_before or ai in paired_after:
                continue
            if distance > rtol and _code_distance(left_before[bi], left_after[ai][1]) > order:
                continue
            paired_before.add(bi)
            paired_after.add(ai)
            matches.append(Match(left_before[bi], left_after[ai][1], "persisted", "nearest"))
        matches.extend(Match(c, None, "vanished") for bi, c in enumerate(left_before) if bi not in paired_before)
        matches.extend(Match(None, c, "appeared") for ai, (_, c) in enumerate(left_after) if ai not in paired_after)
    return matches


# ----------------------------------------------------------------------------------------------------------------
# Classification


def _unstable_counts(eigenvalues: np.ndarray, tolerance: float) -> tuple[int, int, int, int]:
    """(all, positive real, negative real, complex) multipliers outside the circle of radius 1 + tolerance."""
    outside = np.abs(eigenvalues) > 1 + tolerance
    real = np.abs(eigenvalues.imag) <= REAL_TOLERANCE
    return (
        int(outside.sum()),
        int((outside & real & (eigenvalues.real > 0)).sum()),
        int((outside & real & (eigenvalues.real < 0)).sum()),
        int((outside & ~real).sum()),
    )


def _is_stable(cycle: Cycle, tolerance: float) -> bool:
    return bool(np.all(np.abs(cycle.eigenvalues) < 1 - tolerance))


def _near_plus_one(cycle: Cycle) -> bool:
    eig = cycle.eigenvalues
    real = np.abs(eig.imag) <= REAL_TOLERANCE
    return bool(np.any(real & (np.abs(eig.real - 1.0) < DEGENERATE_EIGENVALUE_GAP)))


def _ordinal(order: int) -> str:
    return "fixed point" if order == 1 else f"{order}-cycle"


def _stability_word(stable: bool) -> str:
    return "stable" if stable else "unstable"


def classify(
    prev: Cycle | None,
    curr: Cycle | None,
    *,
    step: int,
    step_interval: tuple[int, int],
    partner: Cycle | None = None,
    reference_scale: float | None = None,
    neutral_tolerance: float = NEUTRAL_TOLERANCE,
    allow_degenerate: bool = True,
) -> BifurcationEvent | None:
    """Classify what happened to one cycle between two snapshots; None when nothing qualitative did.

    * both present, same region codes: compare the multipliers outside the unit circle; a change is a
      ``stability_change`` whose ``crossing`` is ``"+1"`` / ``"-1"`` for a positive / negative real
      multiplier and ``"complex"`` for a complex pair (first of these that changed; the description lists
      all).  No change: None.
    * both present, codes changed: ``border_collision`` (stability before / after reported).
    * one missing: ``degenerate`` when the existing cycle has a real multiplier within
      ``DEGENERATE_EIGENVALUE_GAP`` of +1 or its points lie ``DEGENERATE_NORM_FACTOR`` times
      beyond ``reference_scale``; else ``border_collision`` when ``partner`` (the other cycle of a
      nonsmooth-fold pair, found by ``detect_bifurcations``) is given; else ``appearance`` /
      ``disappearance``.

    Parameters
    ----------
    prev, curr : Cycle or None
        The cycle before and after (not both None).
    step : int
        Step at which the change was seen.
    step_interval : tuple[int, int]
        Bracket ``(lo, hi)`` with ``lo <= step <= hi``.
    partner : Cycle, optional
        The cycle that appeared / vanished together with this one at a switching plane.
    reference_scale : float, optional
        Typical point norm of the other cycles (``1 +`` median); enables the escape-to-infinity test.
    neutral_tolerance : float
        Multipliers count as outside the unit circle when ``|λ| > 1 + neutral_tolerance``.
    allow_degenerate : bool
        False when the weights show that the cycle did not pass through infinity (its region sequence's
        ``det(I - P)`` kept its sign between the snapshots): it is then an appearance / disappearance (or a
        nonsmooth fold), whatever its multipliers suggest.

    Returns
    -------
    BifurcationEvent or None

    Examples
    --------
    >>> before = Cycle(1, np.array([[1.0]]), np.array([[True]]), np.array([-0.9 + 0j]))
    >>> after = Cycle(1, np.array([[1.1]]), np.array([[True]]), np.array([-1.1 + 0j]))
    >>> event = classify(before, after, step=3, step_interval=(2, 3))
    >>> event.kind, event.crossing
    ('stability_change', '-1')
    >>> classify(before, before, step=3, step_interval=(2, 3)) is None
    True
    """
    if prev is None and curr is None:
        raise ValueError("classify needs at least one of prev and curr")
    lo, hi = (int(x) for x in step_interval)
    if not lo <= step <= hi:
        raise ValueError(f"step {step} must lie in step_interval {step_interval}")
    cycle = curr if curr is not None else prev
    order = cycle.order
    common = dict(
        order=order,
        step=int(step),
        step_interval=(lo, hi),
        point=tuple(float(x) for x in cycle.points[0]),
    )
    if prev is not None:
        common.update(
            eigenvalues_before=tuple(complex(v) for v in prev.eigenvalues),
            stable_before=_is_stable(prev, neutral_tolerance),
            n_unstable_before=_unstable_counts(prev.eigenvalues, neutral_tolerance)[0],
        )
    if curr is not None:
        common.update(
            eigenvalues_after=tuple(complex(v) for v in curr.eigenvalues),
            stable_after=_is_stable(curr, neutral_tolerance),
            n_unstable_after=_unstable_counts(curr.eigenvalues, neutral_tolerance)[0],
        )
    name = _ordinal(order)

    if prev is not None and curr is not None:
        if prev.key != curr.key:
            change = (
                f"{_stability_word(common['stable_before'])} → {_stability_word(common['stable_after'])}"
                if common["stable_before"] != common["stable_after"]
                else f"stays {_stability_word(common['stable_after'])}"
            )
            return BifurcationEvent(
                kind="border_collision",
                description=f"{name} crossed a switching boundary (region sequence changed; {change})",
                **common,
            )
        before = _unstable_counts(prev.eigenvalues, neutral_tolerance)
        after = _unstable_counts(curr.eigenvalues, neutral_tolerance)
        if before[0] == after[0] and before == after:
            return None
        changed = [c for c, i in zip(CROSSINGS, (1, 2, 3)) if before[i] != after[i]]
        if not changed:  # the total changed without a sign class changing cannot happen; be safe
            return None
        crossing = changed[0]
        gained = after[0] > before[0]
        what = {"+1": "multiplier crossed +1", "-1": "multiplier crossed -1", "complex": "complex pair crossed |λ|=1"}
        verb = "lost stability" if common["stable_before"] and not common["stable_after"] else (
            "gained stability" if common["stable_after"] and not common["stable_before"] else
            ("gained an unstable direction" if gained else "lost an unstable direction")
        )
        detail = "; ".join(what[c] for c in changed)
        stable_word = _stability_word(common["stable_before"])
        return BifurcationEvent(
            kind="stability_change",
            crossing=crossing,
            description=f"{stable_word} {name} {verb}: {detail}",
            **common,
        )

    appearing = prev is None
    existing = curr if appearing else prev
    escaping = reference_scale is not None and _max_norm(existing) > DEGENERATE_NORM_FACTOR * reference_scale
    if allow_degenerate and (_near_plus_one(existing) or escaping):
        reason = "a real multiplier is near +1" if _near_plus_one(existing) else "its points are far out"
        direction = "came in from infinity" if appearing else "escaped to infinity"
        return BifurcationEvent(
            kind="degenerate",
            description=f"{name} {direction} ({reason}): degenerate transcritical bifurcation",
            **common,
        )
    stability = _stability_word(_is_stable(existing, neutral_tolerance))
    if partner is not None:
        verb = "appeared" if appearing else "vanished"
        return BifurcationEvent(
            kind="border_collision",
            description=f"{stability} {name} {verb} with a partner at a switching boundary (nonsmooth fold)",
            **common,
        )
    return BifurcationEvent(
        kind="appearance" if appearing else "disappearance",
        description=f"{stability} {name} {'appeared' if appearing else 'vanished'}",
        **common,
    )


def _code_distance(a: Cycle, b: Cycle) -> int:
    """Fewest switches that differ between the two region-code sequences, over rotations."""
    return min(int((a.codes != np.roll(b.codes, -shift, axis=0)).sum()) for shift in range(a.order))


def _index_sign(cycle: Cycle) -> float:
    # det(I - P) = prod(1 - λ): its sign is the fixed-point index of the cycle.
    return float(np.sign(np.prod(1.0 - cycle.eigenvalues).real))


def _fold_partners(cycles: list[Cycle]) -> dict[int, Cycle]:
    """Pair cycles that appear (vanish) together at a border: one code bit apart, opposite index."""
    partners: dict[int, Cycle] = {}
    for i, j in itertools.combinations(range(len(cycles)), 2):
        a, b = cycles[i], cycles[j]
        if i in partners or j in partners or a.order != b.order:
            continue
        if _index_sign(a) * _index_sign(b) < 0 and _code_distance(a, b) == 1:
            partners[i], partners[j] = b, a
    return partners


@dataclass(frozen=True)
class Comparison:
    """What changed between two snapshots (``compare_snapshots``).

    Attributes
    ----------
    matches : tuple of Match
        Every cycle of both snapshots, paired (``match``).
    events : tuple of BifurcationEvent
        The qualitative changes, in ``matches`` order.
    missed : tuple of dict
        Cycles found at one step only that the other step's weights show existed there too: the heuristic
        search missed them (``missed_at``), nothing happened.  Keys ``order``, ``missed_at``, ``found_at``,
        ``point`` and ``description``; never events.
    """

    matches: tuple[Match, ...]
    events: tuple[BifurcationEvent, ...]
    missed: tuple[dict, ...] = ()


def compare_snapshots(
    prev: CycleSet,
    curr: CycleSet,
    *,
    step: int,
    prev_step: int,
    before: Any = None,
    after: Any = None,
    rtol: float = 1e-2,
    neutral_tolerance: float = NEUTRAL_TOLERANCE,
) -> Comparison:
    """Match two snapshots' cycles, classify every change, and check the changes the cycle sets alone cannot prove.

    A cycle seen at one step only is an appearance or disappearance when its order was enumerated at the
    other step (``CycleSet.is_exhaustive``): the cycle was proved absent there.  In an order only searched
    heuristically it may just have been missed.  With the two steps' models (``before``, ``after``) that is
    checked: ``cycles.follow_cycle`` solves the cycle's region sequence, and the sequences it would have after
    crossing switching planes, with the other step's weights; a real cycle there that the other snapshot
    does not hold means the search missed it: no event, a ``missed`` entry instead.  Otherwise the event is
    ``verified``.  The weights also decide the degenerate label: a cycle "came in from infinity" (escaped to
    it) only when its region sequence's ``det(I - P)`` changed sign between the steps
    (``cycles.cycle_determinant_sign``), i.e. its solution passed through infinity.

    Parameters
    ----------
    prev, curr : CycleSet
        Cycles at ``prev_step`` and at ``step``.
    step, prev_step : int
        The steps of the two snapshots (``prev_step <= step``); every event's bracket is ``(prev_step, step)``.
    before, after : PiecewiseLinear, optional
        The models at ``prev_step`` and ``step``.  Without them appearances and disappearances in
        non-exhaustive orders are reported with ``verified=False``.
    rtol : float
        Passed to ``match``.
    neutral_tolerance : float
        Passed to ``classify``.

    Returns
    -------
    Comparison
    """
    if prev_step > step:
        raise ValueError(f"prev_step ({prev_step}) must not exceed step ({step})")
    matches = match(prev, curr, rtol=rtol)
    missed: list[dict] = []
    changed: list[Match] = []
    for m in matches:
        if m.status == "persisted":
            changed.append(m)
            continue
        appearing = m.status == "appeared"
        cycle, other_set, other_model = (m.curr, prev, before) if appearing else (m.prev, curr, after)
        if other_model is not None and not other_set.is_exhaustive(cycle.order) and _exists(other_model, cycle, other_set):
            missed_at, found_at = (prev_step, step) if appearing else (step, prev_step)
            missed.append({
                "order": cycle.order,
                "missed_at": missed_at,
                "found_at": found_at,
                "point": [float(x) for x in cycle.points[0]],
                "description": f"{_ordinal(cycle.order)} found at step {found_at} also exists at step {missed_at}, "
                "where the heuristic search missed it: not a bifurcation",
            })
            continue
        changed.append(m)
    appeared = [m.curr for m in changed if m.status == "appeared"]
    vanished = [m.prev for m in changed if m.status == "vanished"]
    appeared_partners = _fold_partners(appeared)
    vanished_partners = _fold_partners(vanished)
    norms = {id(c): _max_norm(c) for c in list(prev) + list(curr)}

    def reference(cycle: Cycle) -> float | None:
        # The escape test needs other cycles to compare against; alone, a cycle is judged by its multipliers.
        others = [n for key, n in norms.items() if key != id(cycle)]
        return 1.0 + float(np.median(others)) if others else None

    events: list[BifurcationEvent] = []
    for m in changed:
        partner, verified, allow_degenerate = None, True, True
        if m.status != "persisted":
            appearing = m.status == "appeared"
            cycle = m.curr if appearing else m.prev
            other_set, other_model = (prev, before) if appearing else (curr, after)
            verified = other_set.is_exhaustive(cycle.order) or other_model is not None
            if other_model is not None:
                allow_degenerate = cycle_determinant_sign(other_model, cycle.codes) != _own_determinant_sign(cycle)
            partner = (appeared_partners.get(appeared.index(cycle)) if appearing
                       else vanished_partners.get(vanished.index(cycle)))
        subject = m.curr if m.curr is not None else m.prev
        event = classify(
            m.prev,
            m.curr,
            step=step,
            step_interval=(prev_step, step),
            partner=partner,
            reference_scale=reference(subject) if m.status != "persisted" else None,
            neutral_tolerance=neutral_tolerance,
            allow_degenerate=allow_degenerate,
        )
        if event is not None:
            events.append(event if verified else dataclasses.replace(event, verified=False))
    return Comparison(tuple(matches), tuple(events), tuple(missed))


def _exists(model: Any, cycle: Cycle, known: CycleSet) -> bool:
    """Whether ``model`` has ``cycle`` (its own region sequence, or moved across planes) while ``known`` lacks it."""
    keys = {c.key for c in known.by_order(cycle.order)}
    for found in follow_cycle(model, cycle):
        if found.key not in keys and (found.key == cycle.key or _point_distance(found, cycle) <= CROSSING_RTOL):
            return True
    return False


def _own_determinant_sign(cycle: Cycle) -> float:
    # det(I - P) = prod(1 - λ) over the cycle's own multipliers.
    return float(np.sign(np.prod(1.0 - cycle.eigenvalues).real))


def detect_bifurcations(
    prev: CycleSet,
    curr: CycleSet,
    *,
    step: int,
    prev_step: int,
    rtol: float = 1e-2,
    neutral_tolerance: float = NEUTRAL_TOLERANCE,
) -> list[BifurcationEvent]:
    """All qualitative changes between two snapshots: ``match`` then ``classify`` for each pair
    (``compare_snapshots`` without the models, so nothing is checked against the weights).

    Parameters
    ----------
    prev, curr : CycleSet
        Cycles at ``prev_step`` and at ``step``.
    step, prev_step : int
        The steps of the two snapshots (``prev_step <= step``); every event's bracket is ``(prev_step, step)``.
    rtol : float
        Passed to ``match``.
    neutral_tolerance : float
        Passed to ``classify``.

    Returns
    -------
    list of BifurcationEvent
        Empty when nothing changed qualitatively.

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.cycles import find_cycles
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)     # one stable fixed point at z = 2
    >>> cycles = find_cycles(model, max_order=2)
    >>> detect_bifurcations(cycles, cycles, step=1, prev_step=0)
    []
    >>> [e.kind for e in detect_bifurcations(CycleSet(orders=(1, 2)), cycles, step=1, prev_step=0)]
    ['appearance']
    """
    comparison = compare_snapshots(prev, curr, step=step, prev_step=prev_step, rtol=rtol, neutral_tolerance=neutral_tolerance)
    return list(comparison.events)


def is_qualitative(event: BifurcationEvent | Mapping[str, Any]) -> bool:
    """False only for a border collision that changed nothing qualitative: the same cycle exists before and
    after, only its region sequence changed, and its stability did not (same number of multipliers outside
    the unit circle, same stable / not stable).  Every other event is qualitative.

    Training moves cycles across switching planes all the time (in one README run 37 of 55 events were such
    crossings); dashboards fold them into a count.  A nonsmooth fold (a pair of cycles appearing or vanishing
    at a border, also ``border_collision``) changes the number of cycles and stays qualitative.

    Parameters
    ----------
    event : BifurcationEvent or dict
        An event or its ``to_dict()`` (as in ``events.jsonl``).  A record without ``n_unstable_*`` is judged
        by ``stable_before`` / ``stable_after`` alone.

    Returns
    -------
    bool

    Examples
    --------
    >>> crossing = BifurcationEvent("border_collision", 1, step=4, step_interval=(3, 4), stable_before=True,
    ...                             stable_after=True, n_unstable_before=0, n_unstable_after=0)
    >>> is_qualitative(crossing), is_qualitative(crossing.to_dict())
    (False, False)
    >>> is_qualitative(BifurcationEvent("border_collision", 1, step=4, step_interval=(3, 4), stable_before=True,
    ...                                 stable_after=False, n_unstable_before=0, n_unstable_after=1))
    True
    >>> is_qualitative(BifurcationEvent("appearance", 1, step=4, step_interval=(3, 4), stable_after=True))
    True
    """
    data = event.to_dict() if isinstance(event, BifurcationEvent) else event
    if data.get("kind") != "border_collision":
        return True
    stable = data.get("stable_before"), data.get("stable_after")
    if None in stable:  # a cycle appeared or vanished at the border (nonsmooth fold)
        return True
    unstable = data.get("n_unstable_before"), data.get("n_unstable_after")
    return stable[0] != stable[1] or (None not in unstable and unstable[0] != unstable[1])
