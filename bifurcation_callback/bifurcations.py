"""Bifurcations of piecewise-linear RNNs: match cycle sets, classify changes, localise them, scan 2-D grids.

Detection and precise location are separate steps (as in BifurcationKit): ``detect_bifurcations``
compares the cycle sets of two snapshots and returns events that carry their bracket
``step_interval = (lo, hi)``; ``localize`` bisects along the straight line between two weight
snapshots to the sub-step position where the set of cycles changes.  ``scan`` counts cycles and
stable cycles on a 2-D parameter grid, batched over cells.

The vocabulary is closed: ``BIFURCATION_KINDS`` lists every ``BifurcationEvent.kind`` and
``CROSSINGS`` every ``crossing`` of a ``stability_change``.

| kind | meaning (BifurcationKit name) | what it does to gradients (paper) |
|---|---|---|
| appearance | a cycle exists after but not before (``appear``) | a new attractor can capture the trajectory: loss jump |
| disappearance | a cycle existed before but not after (``vanish``) | the attractor the loss relied on is lost: loss jump |
| stability_change | same region sequence, the number of multipliers outside the unit circle changed; ``crossing`` says how: ``+1`` (``fold``; in a PL map the cycle passes through infinity), ``-1`` (``pd``, flip / period doubling), ``complex`` (``ns``, Neimark–Sacker) | the trajectory leaves / joins the cycle; at a ``+1`` crossing of a PL map ``(I - P)^-1`` blows up, so gradients explode like at a DTB |
| border_collision | a cycle point crosses a switching plane (``bc``): the cycle persists with new region codes, or a pair of cycles appears / vanishes at the border (nonsmooth fold) | Jacobian products jump: loss jumps, discontinuous and (per the paper) vanishing gradients |
| degenerate | a cycle escapes to / comes from infinity as a real multiplier reaches +1 (the paper's degenerate transcritical bifurcation, DTB) | ‖∂L/∂θ‖ → ∞: exploding gradients (Thm 1) |

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

import itertools
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .cycles import NEUTRAL_TOLERANCE, _TOLERANCES, Cycle, CycleSet, exhaustive_cycles, find_cycles
from .models import all_codes, detached_copy, model_from_state, model_to_state, require_piecewise_linear

__all__ = [
    "BIFURCATION_KINDS",
    "CROSSINGS",
    "MATCH_STATUSES",
    "Match",
    "BifurcationEvent",
    "Localization",
    "BifurcationDiagram",
    "match",
    "classify",
    "detect_bifurcations",
    "localize",
    "scan",
    "parse_param_spec",
]

# The closed vocabulary of events: validation, docs and the CLI read these registries.
BIFURCATION_KINDS = ("appearance", "disappearance", "stability_change", "border_collision", "degenerate")
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

    Examples
    --------
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
    if _near_plus_one(existing) or escaping:
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


def detect_bifurcations(
    prev: CycleSet,
    curr: CycleSet,
    *,
    step: int,
    prev_step: int,
    rtol: float = 1e-2,
    neutral_tolerance: float = NEUTRAL_TOLERANCE,
) -> list[BifurcationEvent]:
    """All qualitative changes between two snapshots: ``match`` then ``classify`` for each pair.

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
    if prev_step > step:
        raise ValueError(f"prev_step ({prev_step}) must not exceed step ({step})")
    matches = match(prev, curr, rtol=rtol)
    appeared = [m.curr for m in matches if m.status == "appeared"]
    vanished = [m.prev for m in matches if m.status == "vanished"]
    appeared_partners = _fold_partners(appeared)
    vanished_partners = _fold_partners(vanished)
    norms = {id(c): _max_norm(c) for c in list(prev) + list(curr)}

    def reference(cycle: Cycle) -> float | None:
        # The escape test needs other cycles to compare against; alone, a cycle is judged by its multipliers.
        others = [n for key, n in norms.items() if key != id(cycle)]
        return 1.0 + float(np.median(others)) if others else None

    events: list[BifurcationEvent] = []
    for m in matches:
        partner = None
        if m.status == "appeared":
            partner = appeared_partners.get(appeared.index(m.curr))
        elif m.status == "vanished":
            partner = vanished_partners.get(vanished.index(m.prev))
        subject = m.curr if m.curr is not None else m.prev
        event = classify(
            m.prev,
            m.curr,
            step=step,
            step_interval=(prev_step, step),
            partner=partner,
            reference_scale=reference(subject) if m.status != "persisted" else None,
            neutral_tolerance=neutral_tolerance,
        )
        if event is not None:
            events.append(event)
    return events


# ----------------------------------------------------------------------------------------------------------------
# Localisation by bisection along the straight line between two weight snapshots

# Exhaustive enumeration is used along a path when R**max_order sequences per evaluation stay below this.
EXHAUSTIVE_LIMIT = 100_000


@dataclass(frozen=True)
class Localization:
    """Where, along ``θ(t) = (1 − t) θ_a + t θ_b``, the set of cycles changes.

    Attributes
    ----------
    t_lo, t_hi : float
        The final bracket: the signature differs between ``t_lo`` and ``t_hi``; ``t_hi - t_lo <= tol``
        when converged.
    t_star : float
        Midpoint of the bracket.
    converged : bool
        False when there was nothing to localise (equal endpoint signatures); ``reason`` says why.
    n_evaluations : int
        Cycle searches made (two endpoints included).
    events : tuple[BifurcationEvent, ...]
        ``detect_bifurcations`` between the bracket ends, with ``location`` set to the position of
        ``t_star`` inside ``step_interval``.
    step_interval : tuple[int, int]
        The training steps of the two snapshots (``(0, 1)`` by default).
    reason : str
        Empty when converged.
    """

    t_lo: float
    t_hi: float
    t_star: float
    converged: bool
    n_evaluations: int
    events: tuple[BifurcationEvent, ...] = ()
    step_interval: tuple[int, int] = (0, 1)
    reason: str = ""

    @property
    def location(self) -> float:
        """``t_star`` mapped into ``step_interval``."""
        lo, hi = self.step_interval
        return lo + self.t_star * (hi - lo)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it."""
        return {
            "t_lo": self.t_lo,
            "t_hi": self.t_hi,
            "t_star": self.t_star,
            "converged": self.converged,
            "n_evaluations": self.n_evaluations,
            "events": [event.to_dict() for event in self.events],
            "step_interval": list(self.step_interval),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Localization":
        """Inverse of ``to_dict``."""
        lo, hi = data.get("step_interval", (0, 1))
        return cls(
            t_lo=float(data["t_lo"]),
            t_hi=float(data["t_hi"]),
            t_star=float(data["t_star"]),
            converged=bool(data["converged"]),
            n_evaluations=int(data["n_evaluations"]),
            events=tuple(BifurcationEvent.from_dict(e) for e in data.get("events", [])),
            step_interval=(int(lo), int(hi)),
            reason=data.get("reason", ""),
        )


def _as_model(value: object, template: torch.nn.Module | None, name: str) -> torch.nn.Module:
    """A detached float64 model from a model, a ``model_to_state`` dict or a plain state_dict."""
    if isinstance(value, torch.nn.Module):
        require_piecewise_linear(value)
        return detached_copy(value).double()
    if isinstance(value, dict) and "model" in value and "params" in value:
        return model_from_state(value)
    if isinstance(value, dict):
        if template is None:
            raise TypeError(
                f"{name} is a plain state_dict; pass a model (or a model_to_state dict) as model_a so its class is known"
            )
        model = detached_copy(template).double()
        try:
            model.load_state_dict({k: torch.as_tensor(v, dtype=torch.float64) for k, v in value.items()}, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{name} does not fit {type(template).__name__}: {error}") from None
        return model
    raise TypeError(f"{name} must be a model, a model_to_state dict or a state_dict, got {type(value).__name__}")


def _require_same_model(model_a: torch.nn.Module, model_b: torch.nn.Module) -> None:
    if type(model_a) is not type(model_b):
        raise TypeError(f"models must be of the same class, got {type(model_a).__name__} and {type(model_b).__name__}")
    shapes_a = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    if shapes_a != shapes_b:
        raise ValueError(f"models have different parameter shapes: {shapes_a} vs {shapes_b}")


def _region_count_bound(model) -> int:
    """Upper bound on the number of regions: 2**S, or the cell count of an arrangement of S planes in R^M."""
    n_switches, dim = model.n_switches, model.state_dim
    if getattr(model, "every_code_realizable", False) or n_switches <= dim:
        return 2**n_switches
    return sum(math.comb(n_switches, i) for i in range(dim + 1))


def _exhaustive_feasible(model, max_order: int) -> bool:
    return _region_count_bound(model) ** max_order <= EXHAUSTIVE_LIMIT


def _signature(cycles: CycleSet) -> tuple:
    # Exact stability (no neutral band): the bracket is narrower than the band, so the band would bias t*.
    return tuple(sorted((c.order, c.key, int((np.abs(c.eigenvalues) > 1).sum())) for c in cycles))


def localize(
    model_a: object,
    model_b: object,
    *,
    max_order: int = 4,
    tol: float = 1e-6,
    finder_kwargs: dict | None = None,
    exhaustive: bool | None = None,
    step_interval: tuple[int, int] = (0, 1),
    max_evaluations: int = 200,
) -> Localization:
    """Bisect along ``θ(t) = (1 − t) θ_a + t θ_b`` (all parameters) to where the cycle set changes.

    The signature compared is the sorted list of (order, region-code key, number of multipliers with
    ``|λ| > 1``) of all cycles up to ``max_order``.  When the endpoints' signatures differ, the bracket
    ``[t_lo, t_hi]`` is halved until ``t_hi − t_lo <= tol``; if several changes lie on the path, one of
    them is found.  Equal endpoint signatures are not an error (the callback must never raise): the
    result then has ``converged=False`` and a ``reason``.

    Cycles are found exactly by ``exhaustive_cycles`` when the region
    count bound ``R**max_order <= EXHAUSTIVE_LIMIT`` (or ``exhaustive=True``), else by
    ``find_cycles`` warm-started from the cycles at both bracket ends
    with a fixed seed, so the finder's randomness cannot move the bracket.

    Parameters
    ----------
    model_a, model_b : model, model_to_state dict or state_dict
        The two snapshots (same class and shapes); a plain state_dict is loaded into a copy of ``model_a``.
    max_order : int
        Compare cycles of orders ``1 .. max_order``.
    tol : float
        Final bracket width in ``t``.
    finder_kwargs : dict, optional
        Extra keyword arguments of ``find_cycles`` (``n_starts``, ``seed``, ...).
    exhaustive : bool, optional
        Force (True) or forbid (False) exhaustive enumeration; None decides by size.
    step_interval : tuple[int, int]
        Training steps of the two snapshots; events get ``location = lo + t* (hi − lo)``.
    max_evaluations : int
        Safety cap on cycle searches.

    Returns
    -------
    Localization

    Raises
    ------
    TypeError
        Models of different classes, or something that is not a model / state.
    ValueError
        Different parameter shapes, ``tol`` not in (0, 1), bad ``step_interval``.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> a, b = PLRNN(1), PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = a.A.fill_(-0.5); _ = b.A.fill_(-1.5); _ = a.h.fill_(1.0); _ = b.h.fill_(1.0)
    >>> where = localize(a, b, max_order=2)            # z' = A z + 1 flips at A = -1, i.e. t = 0.5
    >>> round(where.t_star, 6), [(e.kind, e.crossing) for e in where.events]
    (0.5, [('stability_change', '-1')])
    """
    first = _as_model(model_a, None, "model_a")
    second = _as_model(model_b, first, "model_b")
    _require_same_model(first, second)
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    lo_step, hi_step = (int(x) for x in step_interval)
    if lo_step > hi_step:
        raise ValueError(f"step_interval must be (lo, hi) with lo <= hi, got {step_interval}")
    finder_kwargs = dict(finder_kwargs or {})
    use_exhaustive = _exhaustive_feasible(first, max_order) if exhaustive is None else bool(exhaustive)

    start = dict(first.named_parameters())
    end = {name: p.detach().clone() for name, p in second.named_parameters()}
    origin = {name: p.detach().clone() for name, p in start.items()}
    path_model = first

    def cycles_at(t: float, warm: CycleSet | None) -> CycleSet:
        with torch.no_grad():
            for name, parameter in start.items():
                parameter.copy_((1.0 - t) * origin[name] + t * end[name])
        if use_exhaustive:
            return exhaustive_cycles(path_model, max_order, max_sequences=max(EXHAUSTIVE_LIMIT, 1))
        return find_cycles(path_model, max_order, warm_start=warm, **finder_kwargs)

    def merged(*sets: CycleSet) -> CycleSet:
        cycles = tuple(c for s in sets for c in s)
        return CycleSet(cycles, tuple(range(1, max_order + 1)))

    t_lo, t_hi = 0.0, 1.0
    set_lo = cycles_at(t_lo, None)
    set_hi = cycles_at(t_hi, set_lo)
    evaluations = 2
    sig_lo, sig_hi = _signature(set_lo), _signature(set_hi)
    if not use_exhaustive and sig_lo != sig_hi:
        # Re-search the first end warm-started from the second so both ends saw the same candidate sequences.
        set_lo = cycles_at(t_lo, set_hi)
        sig_lo = _signature(set_lo)
        evaluations += 1
    if sig_lo == sig_hi:
        return Localization(
            0.0, 1.0, 0.5, False, evaluations, (), (lo_step, hi_step),
            reason="the cycle sets at both ends have the same signature: nothing to localise "
            "(changes that undo each other on the path are invisible)",
        )
    while t_hi - t_lo > tol and evaluations < max_evaluations:
        t_mid = 0.5 * (t_lo + t_hi)
        set_mid = cycles_at(t_mid, None if use_exhaustive else merged(set_lo, set_hi))
        evaluations += 1
        if _signature(set_mid) == sig_lo:
            t_lo, set_lo = t_mid, set_mid
        else:
            t_hi, set_hi = t_mid, set_mid
            sig_hi = _signature(set_mid)
    t_star = 0.5 * (t_lo + t_hi)
    location = lo_step + t_star * (hi_step - lo_step)
    # The bracket can be narrower than Cycle's neutral band, so classify with exact unit-circle counts.
    raw = detect_bifurcations(set_lo, set_hi, step=hi_step, prev_step=lo_step, neutral_tolerance=0.0)
    events = tuple(_with_location(event, location) for event in raw)
    converged = t_hi - t_lo <= tol
    reason = "" if converged else f"stopped after max_evaluations={max_evaluations}"
    return Localization(t_lo, t_hi, t_star, converged, evaluations, events, (lo_step, hi_step), reason)


def _with_location(event: BifurcationEvent, location: float) -> BifurcationEvent:
    from dataclasses import replace

    lo, hi = event.step_interval
    return replace(event, location=min(max(location, float(lo)), float(hi)))


# ----------------------------------------------------------------------------------------------------------------
# 2-D parameter scans

# The ways scan can count cycles: exact batched enumeration over cells, or SCYFI cell by cell.
SCAN_METHODS = ("auto", "exhaustive", "scyfi")
# Exhaustive scans enumerate at most this many region sequences per cell (all orders together).
SCAN_EXHAUSTIVE_LIMIT = 200_000

_SPEC_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\])?\s*$")


def _parameter_table(model: torch.nn.Module) -> str:
    return ", ".join(f"{name} {tuple(p.shape)}" for name, p in model.named_parameters())


def parse_param_spec(model: torch.nn.Module, spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``"A[0]"``, ``"W[0,1]"``, ``"h1[1]"`` into ``(name, index)`` and check it against ``model``.

    Raises
    ------
    ValueError
        Syntax error, unknown parameter, wrong number of indices, index out of range, or an entry that
        the model masks (the PLRNN's zero diagonal); the message names the spec and lists the model's
        parameters with their shapes.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> parse_param_spec(PLRNN(2), "W[0, 1]")
    ('W', (0, 1))
    >>> parse_param_spec(PLRNN(2), "B[0]")
    Traceback (most recent call last):
    ...
    ValueError: unknown parameter in spec 'B[0]'; PLRNN has parameters A (2,), W (2, 2), h (2,)
    """
    if not isinstance(spec, str):
        raise TypeError(f"parameter spec must be a string such as 'A[0]', got {type(spec).__name__}")
    parsed = _SPEC_PATTERN.match(spec)
    table = _parameter_table(model)
    kind = type(model).__name__
    if parsed is None:
        raise ValueError(f"cannot parse parameter spec {spec!r}: write NAME[i] or NAME[i,j]; {kind} has parameters {table}")
    name, raw_index = parsed.group(1), parsed.group(2)
    parameters = dict(model.named_parameters())
    if name not in parameters:
        raise ValueError(f"unknown parameter in spec {spec!r}; {kind} has parameters {table}")
    shape = tuple(parameters[name].shape)
    index = tuple(int(x) for x in raw_index.split(",")) if raw_index else ()
    if not index and parameters[name].numel() == 1:
        index = (0,) * len(shape)
    if len(index) != len(shape):
        raise ValueError(f"spec {spec!r} needs {len(shape)} indices for {name} of shape {shape}; {kind} has parameters {table}")
    normalised = []
    for i, size in zip(index, shape):
        if not -size <= i < size:
            raise ValueError(f"index {i} out of range in spec {spec!r}: {name} has shape {shape}")
        normalised.append(i % size)
    mask = getattr(model, "off_diagonal_mask", None)
    if name == "W" and isinstance(mask, Tensor) and mask.shape == shape and mask[tuple(normalised)] == 0:
        raise ValueError(f"spec {spec!r} is on the masked diagonal of W, which the model keeps at zero")
    return name, tuple(normalised)


@dataclass(frozen=True, eq=False)
class BifurcationDiagram:
    """Number and stability of cycles on a 2-D parameter grid (the paper's existence / stability regions).

    Attributes
    ----------
    model : str
        The model's class name.
    param_a, param_b : str
        Parameter specs (``"A[0]"``) of the grid axes.
    values_a : ndarray, shape (n_a,)
    values_b : ndarray, shape (n_b,)
    orders : tuple[int, ...]
        Orders counted, ``K = len(orders)``.
    counts : ndarray, shape (n_a, n_b, K), int
        Number of cycles of each order in cell ``(i, j)`` (``param_a = values_a[i]``, ``param_b = values_b[j]``).
    stable : ndarray, shape (n_a, n_b, K), int
        Number of stable ones.
    method : str
        ``"exhaustive"`` (exact) or ``"scyfi"`` (heuristic, may miss cycles).
    elapsed_s : float
        Wall time of the scan.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> diagram = scan(PLRNN(2), "A[0]", "A[1]", ([-0.5, 0.5], [0.2, 0.4, 0.6]), max_order=2)
    >>> diagram.counts.shape, diagram.method
    ((2, 3, 2), 'exhaustive')
    """

    model: str
    param_a: str
    param_b: str
    values_a: np.ndarray
    values_b: np.ndarray
    orders: tuple[int, ...]
    counts: np.ndarray
    stable: np.ndarray
    method: str = "exhaustive"
    elapsed_s: float = 0.0

    @property
    def total_counts(self) -> np.ndarray:
        """Cycles of all orders per cell, shape (n_a, n_b)."""
        return self.counts.sum(-1)

    @property
    def total_stable(self) -> np.ndarray:
        """Stable cycles of all orders per cell, shape (n_a, n_b)."""
        return self.stable.sum(-1)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it."""
        return {
            "model": self.model,
            "param_a": self.param_a,
            "param_b": self.param_b,
            "values_a": self.values_a.tolist(),
            "values_b": self.values_b.tolist(),
            "orders": list(self.orders),
            "counts": self.counts.tolist(),
            "stable": self.stable.tolist(),
            "method": self.method,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BifurcationDiagram":
        """Inverse of ``to_dict``."""
        n_a, n_b, n_orders = len(data["values_a"]), len(data["values_b"]), len(data["orders"])
        return cls(
            model=data["model"],
            param_a=data["param_a"],
            param_b=data["param_b"],
            values_a=np.asarray(data["values_a"], dtype=np.float64),
            values_b=np.asarray(data["values_b"], dtype=np.float64),
            orders=tuple(int(k) for k in data["orders"]),
            counts=np.asarray(data["counts"], dtype=np.int64).reshape(n_a, n_b, n_orders),
            stable=np.asarray(data["stable"], dtype=np.int64).reshape(n_a, n_b, n_orders),
            method=data.get("method", "exhaustive"),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )

    def save(self, path: str | Path) -> Path:
        """Write the diagram as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BifurcationDiagram":
        """Read a diagram written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, ax=None, **kwargs):
        """Draw the diagram (see ``bifurcation_callback.plots.plot_bifurcation_diagram``); returns the Axes."""
        from .plots import plot_bifurcation_diagram

        return plot_bifurcation_diagram(self, ax=ax, **kwargs)


class _BoundMethod(torch.nn.Module):
    """Expose one method of a model as ``forward`` so ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


def _cell_functions(model: torch.nn.Module) -> dict[str, Callable]:
    """``name -> f(cell_params, *args)`` for the protocol methods, vmapped over the leading cell axis."""
    functions = {}
    for method, arg_dims in (("affine_pieces", None), ("step", 0), ("region_codes", 0)):
        bound = _BoundMethod(model, method)

        def call(params, arg, _bound=bound):
            return torch.func.functional_call(_bound, {f"model.{k}": v for k, v in params.items()}, (arg,))

        functions[method] = torch.func.vmap(call, in_dims=(0, arg_dims))
    return functions


def _sequence_tables(n_regions: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aperiodic region-index sequences of one order, their rotations and which are canonical.

    Returns ``digits (N, k)``, ``rotations (N, k)`` (row positions of each rotation inside ``digits``)
    and ``canonical (N,)`` bool (lexicographically smallest rotation).  Sequences with a smaller period
    are left out: their solutions are lower-order cycles (a genuine k-cycle would need ``I - P`` singular).
    """
    total = n_regions**order
    digits = (np.arange(total)[:, None] // n_regions ** np.arange(order - 1, -1, -1)[None, :]) % n_regions
    rotated_numbers = np.stack(
        [(np.roll(digits, -s, axis=1) * n_regions ** np.arange(order - 1, -1, -1)).sum(1) for s in range(order)],
        axis=1,
    )
    periodic = np.zeros(total, dtype=bool)
    for divisor in (d for d in range(1, order) if order % d == 0):
        periodic |= rotated_numbers[:, divisor] == np.arange(total)
    keep = np.nonzero(~periodic)[0]
    position = np.full(total, -1)
    position[keep] = np.arange(keep.size)
    rotations = position[rotated_numbers[keep]]
    canonical = rotated_numbers[keep].min(axis=1) == keep
    return digits[keep], rotations, canonical


def _planes_vary(model: torch.nn.Module, entries: Sequence[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether moving the scanned entries moves the switching planes (then every code must be tried)."""
    planes_of = getattr(model, "switching_planes", None)
    if planes_of is None:
        return True
    base = [t.clone() for t in planes_of()]
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, index in entries:
            saved = parameters[name][index].clone()
            try:
                parameters[name][index] += 1.0
                moved = any(not torch.equal(a, b) for a, b in zip(base, planes_of()))
            finally:
                parameters[name][index] = saved
            if moved:
                return True
    return False


def _scan_exhaustive(
    model, cell_params: dict[str, Tensor], regions: Tensor, orders: tuple[int, ...], dtype, *, chunk_elements: int, progress
) -> tuple[np.ndarray, np.ndarray]:
    """Exact counts for every cell: all aperiodic region sequences of each order, batched over cells."""
    n_cells = next(iter(cell_params.values())).shape[0]
    dim = model.state_dim
    functions = _cell_functions(model)
    tolerance = _TOLERANCES[dtype]
    counts = np.zeros((n_cells, len(orders)), dtype=np.int64)
    stable = np.zeros((n_cells, len(orders)), dtype=np.int64)
    device = regions.device
    tables = {k: _sequence_tables(regions.shape[0], k) for k in orders}
    work = sum(len(tables[k][0]) * k for k in orders)
    chunk = max(1, chunk_elements // max(1, work * dim * dim))
    bar = _progress_bar(n_cells, progress)
    for begin in range(0, n_cells, chunk):
        cells = slice(begin, min(begin + chunk, n_cells))
        params = {name: values[cells] for name, values in cell_params.items()}
        for column, order in enumerate(orders):
            digits, rotations, canonical = tables[order]
            if digits.shape[0] == 0:
                continue
            codes = regions[torch.as_tensor(digits, device=device)]  # (N, k, S)
            J, c = functions["affine_pieces"](params, codes)  # (C, N, k, M, M), (C, N, k, M)
            product, offset = J[:, :, 0], c[:, :, 0]
            for j in range(1, order):
                product = J[:, :, j] @ product
                offset = (J[:, :, j] @ offset.unsqueeze(-1)).squeeze(-1) + c[:, :, j]
            system = torch.eye(dim, dtype=dtype, device=device) - product
            z1, info = torch.linalg.solve_ex(system, offset)
            solvable = (info == 0) & torch.isfinite(z1).all(-1)
            z1 = torch.where(solvable.unsqueeze(-1), z1, torch.zeros_like(z1))
            points = [z1]
            for _ in range(order):
                points.append(functions["step"](params, points[-1]))
            visited = torch.stack(
                [functions["region_codes"](params, p) for p in points[:order]], dim=2
            )  # (C, N, k, S)
            residual = (points[-1] - z1).norm(dim=-1) / (1 + z1.norm(dim=-1))
            bound = tolerance["residual"] * (1 + product.flatten(-2).norm(dim=-1))
            real = solvable & (visited == codes).flatten(2).all(-1) & (residual <= bound)
            ok = real.clone()
            stable_ok = torch.zeros_like(real)
            if real.any():
                # Only the (few) real candidates pay for the conditioning check and the eigenvalues.
                chosen = real.nonzero(as_tuple=True)
                singular_values = torch.linalg.svdvals(system[chosen])
                well_posed = singular_values[:, -1] > 1e3 * torch.finfo(dtype).eps * singular_values[:, 0].clamp_min(1.0)
                moduli = torch.linalg.eigvals(product[chosen]).abs()
                ok[chosen] = well_posed
                stable_ok[chosen] = well_posed & (moduli.amax(-1) < 1 - NEUTRAL_TOLERANCE)
            # A cycle is present when any rotation of its sequence verified (robust to points on a border).
            rotation_index = torch.as_tensor(rotations[canonical], device=device)
            present = ok[:, rotation_index].any(-1)
            present_stable = stable_ok[:, rotation_index].any(-1)
            counts[cells, column] = present.sum(-1).cpu().numpy()
            stable[cells, column] = present_stable.sum(-1).cpu().numpy()
        bar.update(cells.stop - cells.start)
    bar.close()
    return counts, stable


def _scan_scyfi(
    model, cell_params: dict[str, Tensor], orders: tuple[int, ...], dtype, finder_kwargs: dict, progress
) -> tuple[np.ndarray, np.ndarray]:
    """SCYFI cell by cell (not batched over cells), warm-started from the previous cell."""
    n_cells = next(iter(cell_params.values())).shape[0]
    parameters = dict(model.named_parameters())
    counts = np.zeros((n_cells, len(orders)), dtype=np.int64)
    stable = np.zeros((n_cells, len(orders)), dtype=np.int64)
    warm = None
    bar = _progress_bar(n_cells, progress)
    for cell in range(n_cells):
        with torch.no_grad():
            for name, values in cell_params.items():
                parameters[name].copy_(values[cell])
        found = find_cycles(model, orders=orders, dtype=dtype, warm_start=warm, **finder_kwargs)
        counts[cell] = [found.counts()[k] for k in orders]
        stable[cell] = [found.stable_counts()[k] for k in orders]
        warm = found
        bar.update(1)
    bar.close()
    return counts, stable


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", disable=not enabled, desc="scan", leave=False)


def scan(
    model: object,
    param_a: str,
    param_b: str,
    grid: tuple[Sequence[float], Sequence[float]],
    *,
    max_order: int = 4,
    method: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    finder_kwargs: dict | None = None,
    chunk_elements: int = 1 << 22,
    progress: bool = False,
) -> BifurcationDiagram:
    """Count cycles and stable cycles of orders ``1 .. max_order`` on a 2-D parameter grid.

    Cell ``(i, j)`` is the model with ``param_a = grid[0][i]`` and ``param_b = grid[1][j]`` (all other
    parameters unchanged).  ``method="exhaustive"`` solves every aperiodic sequence of realizable region
    codes of each order for every cell at once (``torch.func.vmap`` of the model's ``affine_pieces``,
    ``step`` and ``region_codes`` over stacked per-cell parameters, one batched solve per chunk of
    cells), verifies each real candidate with the nonlinear map exactly as ``find_cycles`` does, and is
    therefore exact.  When the parameters move the switching planes (e.g. ``h2`` of a shPLRNN), all
    ``2**S`` codes are tried.  ``"scyfi"`` runs ``find_cycles`` cell by cell (not batched; for models
    too large to enumerate).  ``"auto"`` picks exhaustive when ``sum_k R**k <= SCAN_EXHAUSTIVE_LIMIT``.

    Parameters
    ----------
    model : PiecewiseLinear nn.Module
        The base model (not changed).
    param_a, param_b : str
        Parameter entries, e.g. ``"A[0]"``, ``"W[0,1]"``, ``"h[1]"`` (see ``parse_param_spec``).
    grid : (values_a, values_b)
        Non-empty sequences of parameter values.
    max_order : int
        Count orders ``1 .. max_order``.
    method : str
        One of ``SCAN_METHODS``.
    device, dtype
        Where and in which precision to compute (float64 by default).
    finder_kwargs : dict, optional
        Extra keyword arguments of ``find_cycles`` for ``method="scyfi"``.
    chunk_elements : int
        Memory knob: cells per batch are chosen so a batch of Jacobians has about this many entries.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    BifurcationDiagram

    Raises
    ------
    TypeError
        The model is not a piecewise-linear ``nn.Module``.
    ValueError
        Bad parameter spec (the message lists the model's parameters), the same entry twice, an empty or
        non-finite grid, unknown method, an exhaustive scan that is too large.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.0)
    >>> diagram = scan(model, "A[0]", "h[0]", ([0.5, 2.0], [1.0]), max_order=1)  # z* = h / (1 - A), stable iff |A| < 1
    >>> diagram.counts[:, 0, 0].tolist(), diagram.stable[:, 0, 0].tolist()
    ([1, 1], [1, 0])
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"scan needs a piecewise-linear torch.nn.Module, got {type(model).__name__}")
    require_piecewise_linear(model)
    if method not in SCAN_METHODS:
        raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    if not isinstance(max_order, int) or isinstance(max_order, bool) or max_order < 1:
        raise ValueError(f"max_order must be an int >= 1, got {max_order!r}")
    # The scan sets the orders and the warm start itself; a clash would surface as a bare TypeError.
    reserved = {"max_order", "orders", "warm_start", "dtype", "device"} & set(finder_kwargs or {})
    if reserved:
        raise ValueError(f"finder_kwargs must not set {sorted(reserved)}: scan takes max_order, dtype and device itself")
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise ValueError("grid must be a pair (values_a, values_b) of sequences of numbers")
    axes = []
    for name, values in zip(("values_a", "values_b"), grid):
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 0:
            raise ValueError(f"grid {name} is empty; give at least one value")
        if not np.isfinite(array).all():
            raise ValueError(f"grid {name} contains NaN or Inf")
        axes.append(array)
    values_a, values_b = axes
    started = time.monotonic()
    from .cycles import _prepare_model

    analysed, device = _prepare_model(model, dtype, device)
    name_a, index_a = parse_param_spec(analysed, param_a)
    name_b, index_b = parse_param_spec(analysed, param_b)
    if (name_a, index_a) == (name_b, index_b):
        raise ValueError(f"param_a and param_b name the same entry ({param_a!r} and {param_b!r})")
    orders = tuple(range(1, max_order + 1))

    # Per-cell copies of the (one or two) parameter tensors involved, cell index = i * n_b + j.
    parameters = dict(analysed.named_parameters())
    n_a, n_b = values_a.size, values_b.size
    cell_params: dict[str, Tensor] = {}
    for name in dict.fromkeys((name_a, name_b)):
        cell_params[name] = parameters[name].detach().unsqueeze(0).repeat(n_a * n_b, *([1] * parameters[name].dim()))
    grid_a = torch.as_tensor(np.repeat(values_a, n_b), dtype=dtype, device=device)
    grid_b = torch.as_tensor(np.tile(values_b, n_a), dtype=dtype, device=device)
    cell_params[name_a][(slice(None),) + index_a] = grid_a
    cell_params[name_b][(slice(None),) + index_b] = grid_b

    chosen = method
    regions = None
    if method in ("auto", "exhaustive"):
        regions, reason = _scan_regions(analysed, [(name_a, index_a), (name_b, index_b)], max_order)
        if regions is None:
            if method == "exhaustive":
                raise ValueError(f"exhaustive scan not possible: {reason}; use method='scyfi'")
            chosen = "scyfi"
        else:
            chosen = "exhaustive"
    with torch.no_grad():
        if chosen == "exhaustive":
            counts, stable = _scan_exhaustive(
                analysed, cell_params, regions.to(device), orders, dtype, chunk_elements=chunk_elements, progress=progress
            )
        else:
            counts, stable = _scan_scyfi(analysed, cell_params, orders, dtype, dict(finder_kwargs or {}), progress)
    return BifurcationDiagram(
        model=type(model).__name__,
        param_a=param_a,
        param_b=param_b,
        values_a=values_a,
        values_b=values_b,
        orders=orders,
        counts=counts.reshape(n_a, n_b, len(orders)),
        stable=stable.reshape(n_a, n_b, len(orders)),
        method=chosen,
        elapsed_s=time.monotonic() - started,
    )


def _scan_regions(model, entries: Sequence[tuple[str, tuple[int, ...]]], max_order: int) -> tuple[Tensor | None, str]:
    """The region codes to enumerate in every cell, or None and the reason exhaustive is not possible."""
    from .cycles import _region_table

    n_switches = model.n_switches
    if _planes_vary(model, entries):
        if n_switches > 16:
            return None, f"the scanned parameters move the switching planes and the model has {n_switches} switches"
        regions = all_codes(n_switches)
    else:
        bound = _region_count_bound(model)
        if sum(bound**k for k in range(1, max_order + 1)) > 50 * SCAN_EXHAUSTIVE_LIMIT:
            return None, f"up to {bound} regions, too many to enumerate to order {max_order}"
        regions = _region_table(model)
    n_regions = regions.shape[0]
    total = sum(n_regions**k for k in range(1, max_order + 1))
    if total > SCAN_EXHAUSTIVE_LIMIT:
        return None, f"{n_regions} regions give {total} sequences per cell up to order {max_order}, more than {SCAN_EXHAUSTIVE_LIMIT}"
    return regions, ""
