"""The results of the cycle finder: ``Cycle`` (one verified fixed point or k-cycle), ``FinderStats`` and ``CycleSet``
(all cycles of one search, with how each order was obtained).  Defined here so that the search machinery
(``_search``) and the public API (``cycles``, which re-exports them) share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ._scyfi import NEUTRAL_TOLERANCE

__all__ = ["Cycle", "CycleSet", "FinderStats", "ORDER_STATUSES", "STABILITY_KINDS"]

# The closed vocabulary of stability kinds; Cycle.kind returns one of these.
STABILITY_KINDS = ("stable", "unstable", "saddle", "neutral")

# How a CycleSet's cycles of one order were obtained (CycleSet.statuses):
#   exhaustive  every realizable region sequence of that order was solved: the list is complete (proved);
#   searched    SCYFI's heuristic random search ran (the effort is in FinderStats): a lower bound;
#   warm_only   only the warm start's region sequences were re-solved: a lower bound;
#   cut         the time budget stopped the search in or before this order: what was found is kept.
ORDER_STATUSES = ("exhaustive", "searched", "warm_only", "cut")

@dataclass(frozen=True, eq=False)
class Cycle:
    """One verified fixed point (``order == 1``) or k-cycle.

    Attributes
    ----------
    order : int
        Minimal period ``k``.
    points : ndarray, shape (k, M)
        The cycle's points in visiting order, starting at the canonical rotation.
    codes : ndarray, shape (k, S), bool
        Region code of each point.
    eigenvalues : ndarray, shape (M,), complex
        Multipliers: eigenvalues of the k-step Jacobian product ``J_k … J_1``.
    residual : float
        ``|F^k(z_1) - z_1| / (1 + |z_1|)`` from simulating the true map.
    border_margin : float
        Smallest distance of a cycle point to a switching plane (NaN when the model has no planes);
        near zero means a border collision is close.

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.cycles import find_cycles
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)
    >>> fixed_point = find_cycles(model, max_order=1).by_order(1)[0]
    >>> fixed_point.points.round(6).tolist(), fixed_point.kind
    ([[2.0]], 'stable')
    """

    order: int
    points: np.ndarray
    codes: np.ndarray
    eigenvalues: np.ndarray
    residual: float = 0.0
    border_margin: float = float("nan")
    is_virtual: bool = False

    @property
    def spectral_radius(self) -> float:
        """Largest multiplier modulus; the cycle is stable iff this is below 1."""
        return float(np.abs(self.eigenvalues).max()) if self.eigenvalues.size else 0.0

    @property
    def n_unstable(self) -> int:
        """Number of multipliers outside the unit circle (beyond the neutral tolerance)."""
        return int((np.abs(self.eigenvalues) > 1 + NEUTRAL_TOLERANCE).sum())

    @property
    def n_unstable_complex(self) -> int:
        """Number of non-real multipliers outside the unit circle."""
        outside = np.abs(self.eigenvalues) > 1 + NEUTRAL_TOLERANCE
        return int((outside & (np.abs(self.eigenvalues.imag) > 1e-12)).sum())

    @property
    def kind(self) -> str:
        """One of ``STABILITY_KINDS``."""
        moduli = np.abs(self.eigenvalues)
        if np.any(np.abs(moduli - 1) <= NEUTRAL_TOLERANCE):
            return "neutral"
        if np.all(moduli < 1):
            return "stable"
        return "unstable" if np.all(moduli > 1) else "saddle"

    @property
    def is_stable(self) -> bool:
        return self.kind == "stable"

    @property
    def key(self) -> bytes:
        """Identity of the cycle: its canonical region-code sequence (rotation invariant)."""
        return self.codes.astype(np.uint8).tobytes()

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it exactly."""
        return {
            "order": self.order,
            "points": self.points.tolist(),
            "codes": self.codes.astype(int).tolist(),
            "eigenvalues": [[float(v.real), float(v.imag)] for v in self.eigenvalues],
            "residual": self.residual,
            # None when there is no finite margin (no planes, or no switch at all): strict JSON has no NaN/inf.
            "border_margin": self.border_margin if math.isfinite(self.border_margin) else None,
            "kind": self.kind,
            "spectral_radius": self.spectral_radius,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Cycle":
        eigenvalues = np.array([complex(re, im) for re, im in data["eigenvalues"]], dtype=np.complex128)
        margin = data.get("border_margin")
        return cls(
            order=int(data["order"]),
            points=np.asarray(data["points"], dtype=np.float64),
            codes=np.asarray(data["codes"], dtype=bool),
            eigenvalues=eigenvalues,
            residual=float(data.get("residual", 0.0)),
            border_margin=float("nan") if margin is None else float(margin),
        )


@dataclass(frozen=True)
class FinderStats:
    """How much work a search took.

    Attributes
    ----------
    iterations : dict[int, int]
        Batched SCYFI iterations per order.
    n_solves : int
        Linear systems solved (sequences tried), all orders together.
    n_singular : int
        Systems skipped as singular or non-finite.
    warm_start_hits : int
        Warm-start sequences that were real cycles on their first solve.
    elapsed_s : float
        Wall time of the search.
    """

    iterations: dict[int, int] = field(default_factory=dict)
    n_solves: int = 0
    n_singular: int = 0
    warm_start_hits: int = 0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "iterations": {str(k): v for k, v in self.iterations.items()},
            "n_solves": self.n_solves,
            "n_singular": self.n_singular,
            "warm_start_hits": self.warm_start_hits,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FinderStats":
        return cls(
            iterations={int(k): int(v) for k, v in data.get("iterations", {}).items()},
            n_solves=int(data.get("n_solves", 0)),
            n_singular=int(data.get("n_singular", 0)),
            warm_start_hits=int(data.get("warm_start_hits", 0)),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )


@dataclass(frozen=True)
class CycleSet:
    """All cycles found in one search, sorted by order.

    Attributes
    ----------
    cycles : tuple[Cycle, ...]
    orders : tuple[int, ...]
        The orders that were searched.
    stats : FinderStats
    statuses : dict[int, str]
        How each order's cycles were obtained, one of ``ORDER_STATUSES``: ``"exhaustive"`` (every region
        sequence solved: complete), ``"searched"`` (heuristic search: a lower bound), ``"warm_only"`` (only
        the warm start re-solved) or ``"cut"`` (stopped by the time budget).  Orders not given are
        ``"searched"``.

    Examples
    --------
    >>> from bifurcation_callback.cycles import find_cycles
    >>> from bifurcation_callback.models import PLRNN
    >>> cycles = find_cycles(PLRNN(2), max_order=2, seed=0)
    >>> set(cycles.counts()) == {1, 2}
    True
    >>> cycles.statuses, cycles.complete          # 4 regions: 4 and 16 sequences, both enumerated
    ({1: 'exhaustive', 2: 'exhaustive'}, True)
    >>> CycleSet(orders=(1, 2), statuses={1: "exhaustive"}).status(2)
    'searched'
    """

    cycles: tuple[Cycle, ...] = ()
    orders: tuple[int, ...] = ()
    stats: FinderStats = field(default_factory=FinderStats)
    statuses: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        statuses = {int(k): v for k, v in dict(self.statuses).items()}
        unknown = {k: v for k, v in statuses.items() if v not in ORDER_STATUSES}
        if unknown:
            raise ValueError(f"statuses must be one of {ORDER_STATUSES}, got {unknown}")
        extra = sorted(set(statuses) - set(self.orders))
        if extra:
            raise ValueError(f"statuses name orders {extra} that are not in orders {tuple(self.orders)}")
        object.__setattr__(self, "statuses", {k: statuses.get(k, "searched") for k in self.orders})

    def status(self, order: int) -> str:
        """How the cycles of ``order`` were obtained (one of ``ORDER_STATUSES``); KeyError if not searched."""
        return self.statuses[order]

    def is_exhaustive(self, order: int) -> bool:
        """True when every region sequence of ``order`` was solved: ``by_order(order)`` is all there is."""
        return self.statuses.get(order) == "exhaustive"

    @property
    def complete(self) -> bool:
        """True when every searched order is exhaustive (the counts are exact, not lower bounds)."""
        return all(status == "exhaustive" for status in self.statuses.values())

    @property
    def cut(self) -> bool:
        """True when the time budget stopped the search in some order."""
        return "cut" in self.statuses.values()

    def count_label(self, order: int) -> str:
        """The number of cycles of ``order`` as text: ``"3"`` when exhaustive, ``"≥ 3"`` for a lower bound."""
        count = len(self.by_order(order))
        return str(count) if self.is_exhaustive(order) else f"≥ {count}"

    def __iter__(self) -> Iterator[Cycle]:
        return iter(self.cycles)

    def __len__(self) -> int:
        return len(self.cycles)

    def by_order(self, order: int) -> list[Cycle]:
        """The cycles of minimal period ``order``."""
        return [cycle for cycle in self.cycles if cycle.order == order]

    def counts(self) -> dict[int, int]:
        """Number of cycles per searched order (orders with none included)."""
        return {order: len(self.by_order(order)) for order in self.orders}

    def stable_counts(self) -> dict[int, int]:
        """Number of stable cycles per searched order."""
        return {order: sum(c.is_stable for c in self.by_order(order)) for order in self.orders}

    @property
    def n_stable(self) -> int:
        return sum(cycle.is_stable for cycle in self.cycles)

    def to_dict(self) -> dict:
        return {
            "orders": list(self.orders),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "complete": self.complete,
            "cut": self.cut,
            "cycles": [cycle.to_dict() for cycle in self.cycles],
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CycleSet":
        """Inverse of ``to_dict``.  JSON written before per-order statuses (a ``"complete"`` flag only) reads
        as every order ``"searched"``, or every order ``"cut"`` when ``complete`` was false."""
        orders = tuple(int(k) for k in data["orders"])
        if "statuses" in data:
            statuses = {int(k): str(v) for k, v in data["statuses"].items()}
        else:
            statuses = dict.fromkeys(orders, "searched" if data.get("complete", True) else "cut")
        return cls(
            cycles=tuple(Cycle.from_dict(c) for c in data["cycles"]),
            orders=orders,
            stats=FinderStats.from_dict(data.get("stats", {})),
            statuses=statuses,
        )

    def summary(self) -> str:
        """A plain-text table: one row per cycle (order, kind, spectral radius, first point), then the count
        and status of every order; a count that is only a lower bound is shown as ``≥ n``.

        Examples
        --------
        >>> print(CycleSet(orders=(1,)).summary())
        order  kind      |λ|max     border    first point
        (no cycles found for orders 1)
        counts: order 1: ≥ 0 (searched)
        (≥ n: a lower bound; only exhaustive orders are proved complete)
        """
        rows = [f"{'order':<6} {'kind':<9} {'|λ|max':<10} {'border':<9} first point"]
        for cycle in self.cycles:
            point = np.array2string(cycle.points[0], precision=4, separator=", ", suppress_small=True)
            rows.append(
                f"{cycle.order:<6} {cycle.kind:<9} {cycle.spectral_radius:<10.4g} {cycle.border_margin:<9.3g} {point}"
            )
        if not self.cycles:
            rows.append(f"(no cycles found for orders {', '.join(map(str, self.orders))})")
        rows.append(
            "counts: " + ", ".join(f"order {k}: {self.count_label(k)} ({self.statuses[k]})" for k in self.orders)
        )
        if not self.complete:
            rows.append("(≥ n: a lower bound; only exhaustive orders are proved complete)")
        if self.cut:
            rows.append("(search stopped by the time budget: the list may be incomplete)")
        return "\n".join(rows)
