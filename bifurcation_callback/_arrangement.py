"""Exact reduction of a hyperplane arrangement, and the rational arithmetic behind it (for ``regions``).

Identical planes (rows equal up to a non-zero factor, either orientation), parallel ones, zero rows and the rank
of the normals are decided exactly here, on the CPU (``S x M`` numbers), with ``fractions.Fraction`` where
floating point cannot decide; ``regions`` then lists the cells of the reduced, essential arrangement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Exact rational arithmetic for the few decisions floating point cannot make


def _fractions(values: np.ndarray) -> list:
    """The floats as exact rationals (nested like the array)."""
    if values.ndim == 1:
        return [Fraction(float(x)) for x in values]
    return [_fractions(row) for row in values]


def _exact_solve(matrix: list[list[Fraction]], rhs: list[Fraction]) -> Optional[list[Fraction]]:
    """The solution of a square system in exact arithmetic, or None when the matrix is singular."""
    n = len(matrix)
    rows = [list(row) + [value] for row, value in zip(matrix, rhs)]
    for column in range(n):
        pivot = next((i for i in range(column, n) if rows[i][column] != 0), None)
        if pivot is None:
            return None
        rows[column], rows[pivot] = rows[pivot], rows[column]
        for i in range(column + 1, n):
            factor = rows[i][column] / rows[column][column]
            if factor:
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[column])]
    solution = [Fraction(0)] * n
    for i in range(n - 1, -1, -1):
        known = sum((rows[i][j] * solution[j] for j in range(i + 1, n)), Fraction(0))
        solution[i] = (rows[i][n] - known) / rows[i][i]
    return solution


def _exact_pivot_columns(matrix: list[list[Fraction]], n_columns: int) -> list[int]:
    """Columns in which the rows have full rank (the pivot columns of exact row reduction); their count is the rank."""
    rows = [list(row) for row in matrix]
    pivots: list[int] = []
    top = 0
    for column in range(n_columns):
        pivot = next((i for i in range(top, len(rows)) if rows[i][column] != 0), None)
        if pivot is None:
            continue
        rows[top], rows[pivot] = rows[pivot], rows[top]
        for i in range(top + 1, len(rows)):
            factor = rows[i][column] / rows[top][column]
            if factor:
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[top])]
        pivots.append(column)
        top += 1
    return pivots


def _proportional(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two vectors are exactly proportional (cross products compared as exact rationals)."""
    k = int(np.argmax(np.abs(a)))
    ak, bk = Fraction(float(a[k])), Fraction(float(b[k]))
    return all(Fraction(float(x)) * bk == Fraction(float(y)) * ak for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------------------
# Reduction to distinct planes and an essential arrangement (exact, on the CPU: S x M numbers)


@dataclass(frozen=True)
class _Reduction:
    """The combinatorial skeleton of an arrangement, found exactly.

    ``representatives`` are the rows standing for the distinct hyperplanes (``P`` of them, each a non-zero
    row); row ``i`` is the hyperplane of representative ``member_of[i]`` (-1 for zero rows), with the
    opposite orientation where ``flipped[i]``.  ``direction[p]`` numbers the parallel classes of the
    representatives; ``columns`` are ``r`` coordinates in which their normals have rank ``r``.
    """

    zero_rows: np.ndarray
    zero_bits: np.ndarray
    representatives: np.ndarray
    member_of: np.ndarray
    flipped: np.ndarray
    direction: np.ndarray
    columns: np.ndarray
    central: bool

    @property
    def rank(self) -> int:
        return len(self.columns)

    def same_as(self, other: "_Reduction") -> bool:
        return self.central == other.central and all(
            np.array_equal(getattr(self, name), getattr(other, name))
            for name in ("zero_rows", "zero_bits", "representatives", "member_of", "flipped", "direction", "columns")
        )

    def bound(self) -> int:
        """An upper bound on the number of cells, reached in general position (given the parallel classes)."""
        r = self.rank
        if r == 0:
            return 1
        if self.central:  # P planes through one point: at most 2 * sum_{i<r} C(P-1, i) cones
            n_planes = len(self.representatives)
            return 2 * sum(math.comb(n_planes - 1, i) for i in range(r))
        # Elementary symmetric polynomials of the parallel classes' sizes: choose i pairwise non-parallel planes.
        sizes = np.bincount(self.direction).tolist()
        elementary = [1] + [0] * r
        for size in sizes:
            for i in range(r, 0, -1):
                elementary[i] += elementary[i - 1] * size
        return sum(elementary)


def _group(keys: list[bytes], same: Callable[[int, int], bool]) -> list[int]:
    """Group ids for items: candidates share a key (a necessary condition), ``same(i, j)`` confirms exactly."""
    ids = [-1] * len(keys)
    leaders: dict[bytes, list[int]] = {}
    next_id = 0
    for i, key in enumerate(keys):
        for leader in leaders.setdefault(key, []):
            if same(leader, i):
                ids[i] = ids[leader]
                break
        else:
            leaders[key].append(i)
            ids[i] = next_id
            next_id += 1
    return ids


def _reduce(G: np.ndarray, g: np.ndarray) -> _Reduction:
    n_planes = G.shape[0]
    nonzero = np.any(G != 0, axis=1)
    zero_rows, rows = np.flatnonzero(~nonzero), np.flatnonzero(nonzero)
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        member_of, flipped = np.full(n_planes, -1, dtype=np.int64), np.zeros(n_planes, dtype=bool)
        return _Reduction(zero_rows, g[zero_rows] > 0, empty, member_of, flipped, empty, empty, True)
    # Scaled by the (first) largest entry, exactly proportional rows give bitwise equal floats: the quotients
    # are equal real numbers, and division rounds correctly.  Equal floats are only candidates, confirmed exactly.
    pivot = np.argmax(np.abs(G[rows]), axis=1)
    scale = G[rows, pivot]
    unit = G[rows] / scale[:, None] + 0.0  # + 0.0 turns -0.0 into 0.0: (1, 0) and (-1, 0) must get one key
    level = g[rows] / scale + 0.0
    # Rows that differ in pivot or in a bit of their scaled entries are not proportional (the usual case, e.g.
    # every training step of a model): the grouping below is then the identity, without its Python loops.
    bits = np.concatenate([pivot[:, None].astype(np.int64), unit.view(np.int64)], axis=1)
    if len(np.unique(bits, axis=0)) == len(rows):
        return _reduction(G, g, zero_rows, rows, list(range(len(rows))), list(range(len(rows))), scale)
    parallel = _group(
        [np.int64(p).tobytes() + u.tobytes() for p, u in zip(pivot.tolist(), unit)],
        lambda i, j: _proportional(G[rows[i]], G[rows[j]]),
    )
    same_plane = _group(
        [np.int64(c).tobytes() + x.tobytes() for c, x in zip(parallel, level)],
        lambda i, j: parallel[i] == parallel[j]
        and Fraction(float(g[rows[i]])) * Fraction(float(scale[j])) == Fraction(float(g[rows[j]])) * Fraction(float(scale[i])),
    )
    return _reduction(G, g, zero_rows, rows, parallel, same_plane, scale)


def _reduction(G: np.ndarray, g: np.ndarray, zero_rows: np.ndarray, rows: np.ndarray, parallel: list[int],
               same_plane: list[int], scale: np.ndarray) -> _Reduction:
    """The ``_Reduction`` of the non-zero ``rows`` grouped into parallel classes and planes (ids per row)."""
    n_planes, dim = G.shape
    member_of = np.full(n_planes, -1, dtype=np.int64)
    flipped = np.zeros(n_planes, dtype=bool)
    first_of_plane: dict[int, int] = {}
    for i, plane in enumerate(same_plane):
        first_of_plane.setdefault(plane, i)
    representatives = np.array([rows[i] for i in first_of_plane.values()], dtype=np.int64)
    for i, plane in enumerate(same_plane):
        leader = first_of_plane[plane]
        member_of[rows[i]] = plane
        flipped[rows[i]] = (scale[i] > 0) != (scale[leader] > 0)
    direction_of_plane = {plane: parallel[i] for plane, i in first_of_plane.items()}
    renumber: dict[int, int] = {}
    direction = np.array(
        [renumber.setdefault(direction_of_plane[p], len(renumber)) for p in first_of_plane], dtype=np.int64
    )
    first_of_class: dict[int, int] = {}
    for i, c in enumerate(parallel):
        first_of_class.setdefault(c, i)
    class_rows = rows[list(first_of_class.values())]
    normals = G[class_rows] / np.abs(G[class_rows]).max(axis=1, keepdims=True)
    singular_values = np.linalg.svd(normals, compute_uv=False)
    if len(class_rows) >= dim and singular_values[-1] > 1e-9 * singular_values[0]:
        columns = np.arange(dim, dtype=np.int64)  # rounding cannot hide a zero singular value this far from it
    else:
        columns = np.array(_exact_pivot_columns(_fractions(G[class_rows]), dim), dtype=np.int64)
    central = bool(np.all(g[representatives] == 0))
    return _Reduction(zero_rows, g[zero_rows] > 0, representatives, member_of, flipped, direction, columns, central)
