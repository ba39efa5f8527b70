"""The cells of a hyperplane arrangement, listed exactly and fast: no linear program per cell.

A piecewise-linear RNN is affine on every cell of the arrangement of its switching planes
``{z : G z + g = 0}`` (``G`` of shape ``(S, M)``); a cell is named by its *code*, the bool vector
``G z + g > 0`` of its points.  ``list_cells`` returns the codes of all cells; ``CellListing`` keeps a
listing up to date as the planes move (a training run: one update per step), recomputing only what it
cannot prove unchanged.

The method (no LP): after reducing the arrangement to an *essential* one (normals spanning ``R^r``),
every cell is a pointed polyhedron and so has a vertex, where ``r`` independent planes meet.  Near a
vertex ``v`` whose only planes are those ``r``, the ``2^r`` sign patterns of the ``r`` planes are exactly
the cells touching ``v``; every other plane has one sign on all of them, its sign at ``v``.  So the cells
are the union, over every ``r``-subset of planes with independent normals, of ``2^r`` codes built from
the signs at its vertex: one batched solve, one matrix product, bit-packing into int64 words and a
sort to deduplicate, on whatever device the planes are on.

Exactness, and the degenerate cases (the given floating-point numbers are taken as exact):

* A sign is taken from floating point only when ``|G_l v + g_l|`` exceeds a bound on its rounding error
  (eight times the standard worst-case bound for an LU solve of an ``r x r`` system, with pivot growth
  ``2^r``, and the condition number of the subset).  Every other sign, and every vertex of a subset
  whose condition number exceeds ``1e8`` or that floating point finds singular, is decided in exact
  rational arithmetic (``fractions.Fraction``), which also decides whether the subset has a vertex at all.
* A plane through a vertex beyond its ``r`` (more than ``r`` planes meet there) makes the vertex
  degenerate: the cells touching it are the cells of the *central* arrangement of the planes through it,
  listed by the same routine one dimension lower (a central arrangement's cells are those of its
  restrictions to ``x_j = 1`` and ``x_j = -1``).
* Identical hyperplanes (rows equal up to a non-zero factor, either orientation, as ``W2 z`` and ``W2 z``
  when ``h2 = 0`` in a clipped shallow PLRNN) are listed once; a row with the opposite orientation gets the
  opposite bit.  Parallel planes (``W2 z + h2`` and ``W2 z``) never share a vertex, so subsets holding two
  of them are not formed.  Both relations are detected exactly.
* Normals that do not span ``R^M`` (rank ``r < M``, e.g. ``H < M`` hidden units): every cell is a cylinder
  over a cell of the arrangement restricted to ``r`` coordinates in which the normals have rank ``r``
  (chosen exactly), so that restriction is listed instead.  No rounding is involved: it drops columns.
* A zero row (``G_l = 0``) is no plane: its bit is ``g_l > 0`` everywhere, the strict convention of
  ``region_codes``, so ``g_l = 0`` gives ``False``.  Without any plane there is one cell.

Hence the listing equals the set of codes of the open cells of the given arrangement, in exact
arithmetic, up to the validity of that rounding bound (it has a safety factor of 8 over worst case).
Codes that only points *on* planes have (lower-dimensional faces, e.g. ``G_1 = -G_2``, ``g = 0``: both
off on the plane) are not cells and are not listed; a fixed point exactly on a plane is still found through
the adjacent cell on the plane's "off" side, except at a vertex around which no cell has all its planes off.  The cost grows with the number of vertices,
``C(S, r)`` for ``S`` planes in general position; ``max_cells`` bounds it before any work
(``cell_count_bound``).

This module is pure torch/numpy (planes in, codes out); the exact reduction of the arrangement is in
``_arrangement``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ._arrangement import _exact_solve, _fractions, _reduce, _Reduction
from ._chirotope import VertexChanges

__all__ = ["DEFAULT_MAX_CELLS", "list_cells", "cell_count_bound", "CellListing"]

# list_cells refuses an arrangement that can have more cells than this (2**18 = find_cycles' default
# exhaustive limit: a model whose fixed points can be enumerated has its cells listed).
DEFAULT_MAX_CELLS = 2**18

# Code bits per int64 word: the sign bit stays unused, so words compare (and sort) as the bit strings do.
_WORD_BITS = 63
# Subsets whose normals have a larger (infinity-norm) condition number get their vertex in exact arithmetic.
_CONDITION_LIMIT = 1e8
# Factor over the worst-case rounding bound below which a floating-point sign is not trusted.
_SAFETY = 8.0
# Elements per intermediate tensor when processing vertices in chunks (memory, not speed).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _validated(planes: object, offsets: object) -> tuple[Tensor, Tensor]:
    """``(G, g)`` as float64 tensors on the planes' device; ValueError / TypeError naming what was wrong."""
    G, g = (x if isinstance(x, Tensor) else torch.as_tensor(x) for x in (planes, offsets))
    for name, value in (("planes", G), ("offsets", g)):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
    if G.dim() != 2:
        raise ValueError(f"planes must have shape (S, M), got {tuple(G.shape)}")
    if g.shape != (G.shape[0],):
        raise ValueError(f"offsets must have shape (S,) = ({G.shape[0]},) to match planes {tuple(G.shape)}, got {tuple(g.shape)}")
    if G.device != g.device:
        raise ValueError(f"planes and offsets must be on one device, got {G.device} and {g.device}")
    G, g = G.detach().to(torch.float64), g.detach().to(torch.float64)
    for name, value in (("planes", G), ("offsets", g)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} contains NaN or Inf; the arrangement is undefined")
    return G, g


def _require_max_cells(max_cells: object) -> int:
    if isinstance(max_cells, bool) or not isinstance(max_cells, (int, np.integer)) or max_cells < 1:
        raise ValueError(f"max_cells must be an int >= 1, got {max_cells!r}")
    return int(max_cells)


# ---------------------------------------------------------------------------------------------------------------
# Bit-packed codes


def _word_count(n_bits: int) -> int:
    return max(1, -(-n_bits // _WORD_BITS))


def _pack(bits: Tensor) -> Tensor:
    """``(..., P)`` bool -> ``(..., W)`` int64; bit ``p`` is bit ``62 - p % 63`` of word ``p // 63``, so words
    sort as the bool rows do lexicographically.  Three 21-bit groups per word are summed as float32 (exact
    below 2^24) by a matrix-vector product, which is several times faster than integer reductions."""
    n_bits, lead = bits.shape[-1], bits.shape[:-1]
    words = _word_count(n_bits)
    padded = torch.zeros(lead + (words * _WORD_BITS,), dtype=torch.float32, device=bits.device)
    padded[..., :n_bits] = bits
    powers = 2.0 ** torch.arange(20, -1, -1, device=bits.device, dtype=torch.float32)
    groups = (padded.view(lead + (words, 3, 21)) @ powers).to(torch.int64)
    return (groups << torch.tensor([42, 21, 0], device=bits.device)).sum(-1)


def _unpack(words: Tensor, n_bits: int) -> Tensor:
    """Inverse of ``_pack``: ``(..., W)`` int64 -> ``(..., n_bits)`` bool."""
    shifts = torch.arange(_WORD_BITS - 1, -1, -1, device=words.device)
    return ((words.unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., :n_bits].bool()


# ---------------------------------------------------------------------------------------------------------------
# Vertices: one per r-subset of pairwise non-parallel planes


def _combinations(n: int, k: int, device: torch.device) -> Tensor:
    """Every k-subset of ``range(n)`` as rows ``(C(n, k), k)``, in lexicographic order.

    (``torch.combinations`` builds an ``n**k`` grid first: 8 s and 500 MB for ``n = 20, k = 6``.)
    """
    combos = torch.arange(n - k + 1, device=device).unsqueeze(1)
    for position in range(1, k):
        last = combos[:, -1]
        counts = n - k + position - last  # the next element ranges over last + 1 .. n - k + position
        first = torch.cumsum(counts, 0) - counts
        step = torch.arange(int(counts.sum()), device=device) - first.repeat_interleave(counts)
        combos = torch.cat([combos.repeat_interleave(counts, 0), (last.repeat_interleave(counts) + 1 + step).unsqueeze(1)], 1)
    return combos


def _vertex_subsets(direction: np.ndarray, rank: int, device: torch.device) -> Tensor:
    """Every ``rank``-subset of planes (indices into the representatives) with pairwise different directions."""
    order = np.argsort(direction, kind="stable")
    sizes = np.bincount(direction)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    combos = _combinations(len(sizes), rank, device)
    sizes_t, starts_t = torch.as_tensor(sizes, device=device), torch.as_tensor(starts, device=device)
    order_t = torch.as_tensor(order, device=device)
    if int(sizes.max()) == 1:
        return order_t[starts_t[combos]]
    # Expand every class combination into the product of its members (mixed-radix digits).
    counts = sizes_t[combos].prod(-1)
    expanded = combos.repeat_interleave(counts, dim=0)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(expanded.shape[0], device=device) - first.repeat_interleave(counts)
    members = torch.empty_like(expanded)
    for j in range(rank - 1, -1, -1):
        size = sizes_t[expanded[:, j]]
        members[:, j] = starts_t[expanded[:, j]] + local % size
        local = local // size
    return order_t[members]


def _solve_vertices(normals: Tensor, offsets: Tensor, subsets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every subset's vertex in floating point: ``(vertex (V, r), error (V,), bad (V,))``.

    ``error`` bounds ``|v - v_exact|_inf``: ``_SAFETY`` times the worst-case rounding bound of an LU solve,
    ``eps (r 2^r kappa + r + 2) |A^-1| |b|`` (``2^r``: pivot growth, ``kappa``: the subset's condition number),
    which also covers the rounding of the planes' normalisation.  ``kappa`` and ``|A^-1| |b|`` are bounded
    through Frobenius norms (one reduction over ``r^2`` entries; small reductions are slow in torch).  ``bad``:
    singular, non-finite, or a condition number above ``_CONDITION_LIMIT`` (decided in exact arithmetic).
    """
    rank = normals.shape[1]
    rhs = offsets[subsets]
    inverse, info = torch.linalg.inv_ex(normals[subsets])
    vertex = -(inverse @ rhs.unsqueeze(-1)).squeeze(-1)
    inverse_norm = inverse.flatten(-2).square().sum(-1).sqrt()  # >= |A^-1|_inf / sqrt(r)
    condition = normals.abs().sum(1)[subsets].amax(-1) * inverse_norm * math.sqrt(rank)
    size = inverse_norm * rhs.square().sum(-1).sqrt()  # >= | |A^-1| |b| |_inf >= |v|_inf
    error = _SAFETY * torch.finfo(torch.float64).eps * (rank * 2.0**rank * condition + rank + 2) * size
    bad = (info != 0) | ~(condition <= _CONDITION_LIMIT) | ~torch.isfinite(vertex).all(-1) | ~torch.isfinite(error)
    return vertex, error, bad


@dataclass
class _VertexSigns:
    """The sign of every plane at every vertex, packed: what fixes the cells when nothing is flagged."""

    words: Tensor  # (V, W) packed signs (bit: plane > 0 at the vertex), the subset's own bits cleared
    flagged: Tensor  # (V,) bool: floating point cannot decide this vertex (exact arithmetic needed)
    ill: Tensor  # (V,) bool: ... because of the subset itself (condition, singular), not only some planes
    ambiguous: Tensor  # (F, P) bool for the flagged vertices: planes whose sign floating point cannot decide
    vertex: Tensor  # (V, r)
    error: Tensor  # (V,) bound on the vertex's rounding error
    margin: Tensor  # (V,) smallest |n_l v + b_l| over the other planes less its rounding bound: a certain margin


def _vertex_signs(
    normals: Tensor, offsets: Tensor, subsets: Tensor, solved: Optional[tuple[Tensor, Tensor, Tensor]] = None
) -> _VertexSigns:
    """Solve every subset's vertex in floating point (unless ``solved`` by ``_solve_vertices`` already) and
    classify every plane's sign there, in chunks.

    ``normals`` should have rows of norm about 1.  A sign is trusted when ``|n_l v + b_l|`` exceeds its rounding
    bound, taken over all planes: the vertex's ``error`` times ``max |n_l|_1`` plus ``_SAFETY eps (r + 2)
    max |b_l|`` for the product itself.
    """
    n_planes, rank = normals.shape
    largest_row, largest_offset = float(normals.abs().sum(1).max()), float(offsets.abs().max())
    product_error = _SAFETY * torch.finfo(torch.float64).eps * (rank + 2) * largest_offset
    chunk = max(256, _CHUNK_ELEMENTS // max(n_planes, 1))
    parts: dict[str, list[Tensor]] = {name: [] for name in ("words", "flagged", "ill", "ambiguous", "vertex", "error", "margin")}
    for begin in range(0, subsets.shape[0], chunk):
        basis = subsets[begin : begin + chunk]
        if solved is None:
            vertex, error, bad = _solve_vertices(normals, offsets, basis)
        else:
            vertex, error, bad = (t[begin : begin + chunk] for t in solved)
        tolerance = error * largest_row + product_error
        residual = vertex @ normals.T + offsets
        residual.scatter_(1, basis, -math.inf)  # the subset's own planes: bit cleared, never "unsure"
        distance = residual.abs()
        margin = torch.where(bad, -math.inf, distance.amin(-1) - tolerance)
        rows_flagged = ~(margin > 0)
        parts["words"].append(_pack(residual > 0))
        parts["flagged"].append(rows_flagged)
        parts["ill"].append(bad)
        parts["ambiguous"].append(distance[rows_flagged] <= tolerance[rows_flagged].unsqueeze(1))
        parts["vertex"].append(vertex)
        parts["error"].append(error)
        parts["margin"].append(margin)
    return _VertexSigns(**{name: torch.cat(values) for name, values in parts.items()})


def _pattern_table(rank: int, device: torch.device) -> Tensor:
    """``(2^r, r)`` int64: every sign pattern of ``r`` planes."""
    patterns = torch.arange(2**rank, device=device)
    return (patterns.unsqueeze(1) >> torch.arange(rank - 1, -1, -1, device=device)) & 1


def _around(basis: Tensor, base: Tensor) -> Tensor:
    """Packed codes ``(V * 2^r, W)`` of the ``2^r`` cells around simple vertices: each vertex's signs ``base``
    with its ``r`` planes' bits set in every pattern."""
    device, rank, n_words = base.device, basis.shape[1], base.shape[1]
    table = _pattern_table(rank, device)
    bit = torch.ones((), dtype=torch.int64, device=device) << (_WORD_BITS - 1 - basis % _WORD_BITS)  # (V, r)
    contribution = torch.zeros(basis.shape + (n_words,), dtype=torch.int64, device=device)
    contribution.scatter_(2, (basis // _WORD_BITS).unsqueeze(-1), bit.unsqueeze(-1))
    around = base.unsqueeze(1) + (table[None, :, :, None] * contribution.unsqueeze(1)).sum(2)
    return around.reshape(-1, n_words)


def _tally(words: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct rows of ``words`` (sorted), the sum of the ``weights`` of each and the index of its first
    occurrence in ``words``."""
    order = torch.arange(words.shape[0], device=words.device)
    for column in range(words.shape[1] - 1, -1, -1):  # stable sorts, last word first: lexicographic order
        order = order[torch.sort(words[order, column], stable=True).indices]
    ordered = words[order]
    distinct = torch.ones(ordered.shape[0], dtype=torch.bool, device=words.device)
    distinct[1:] = (ordered[1:] != ordered[:-1]).any(-1)
    group = torch.cumsum(distinct, 0) - 1
    sums = torch.zeros(int(distinct.sum()), dtype=weights.dtype, device=words.device).index_add_(0, group, weights[order])
    return ordered[distinct], sums, order[distinct]


def _distinct(words: Tensor) -> Tensor:
    """The distinct rows of ``words``, sorted lexicographically."""
    return _tally(words, torch.ones(words.shape[0], dtype=torch.int64, device=words.device))[0]


def _merge(known: tuple[Tensor, Tensor, Tensor], extra: Tensor, extra_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(words, weights, codes)`` of ``known`` and the packed rows ``extra`` tallied together, sorted; the bool
    codes of rows already known are copied, only the new ones unpacked."""
    words, weights, codes = known
    if words.shape[1] == 1:
        return _merge_single_words(known, extra, extra_weights)
    merged, sums, first = _tally(torch.cat([words, extra]), torch.cat([weights, extra_weights]))
    seen = first < words.shape[0]
    merged_codes = torch.empty((merged.shape[0], codes.shape[1]), dtype=torch.bool, device=codes.device)
    merged_codes[seen] = codes[first[seen]]
    merged_codes[~seen] = _unpack(merged[~seen], codes.shape[1])
    return merged, sums, merged_codes


def _merge_single_words(known: tuple[Tensor, Tensor, Tensor], extra: Tensor, extra_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``_merge`` for codes of one word: the few extra rows are tallied alone and placed by binary search, so
    the known rows are copied, never sorted again (a training step changes a few dozen of 20,000 cells)."""
    words, weights, codes = known
    extra, extra_sums, _ = _tally(extra, extra_weights)
    position = torch.searchsorted(words[:, 0], extra[:, 0])
    found = position < words.shape[0]
    found[found.clone()] = words[position[found], 0] == extra[found, 0]
    sums = weights.index_add(0, position[found], extra_sums[found])
    new_rows, new_sums = extra[~found], extra_sums[~found]
    if new_rows.shape[0] == 0:  # the usual training step: counts change, no cell is new
        return words, sums, codes
    # Sorted new rows go before the known row at their position: the k-th of them moves k places on.
    is_new = torch.zeros(words.shape[0] + new_rows.shape[0], dtype=torch.bool, device=words.device)
    is_new[position[~found] + torch.arange(new_rows.shape[0], device=words.device)] = True
    merged = torch.empty((is_new.shape[0], 1), dtype=words.dtype, device=words.device)
    merged[~is_new], merged[is_new] = words, new_rows
    merged_sums = torch.empty(is_new.shape[0], dtype=sums.dtype, device=words.device)
    merged_sums[~is_new], merged_sums[is_new] = sums, new_sums
    merged_codes = torch.empty((is_new.shape[0], codes.shape[1]), dtype=torch.bool, device=codes.device)
    merged_codes[~is_new], merged_codes[is_new] = codes, _unpack(new_rows, codes.shape[1])
    return merged, merged_sums, merged_codes


def _counted_codes(subsets: Tensor, words: Tensor) -> tuple[Tensor, Tensor]:
    """The codes around the given simple vertices, sorted, with how many (vertex, pattern) pairs give each."""
    n_words, rank = words.shape[1], subsets.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // (2**rank * rank * n_words))
    tables, counts = [], []
    for begin in range(0, subsets.shape[0], chunk):
        codes = _around(subsets[begin : begin + chunk], words[begin : begin + chunk])
        table, count, _ = _tally(codes, torch.ones(codes.shape[0], dtype=torch.int64, device=codes.device))
        tables.append(table)
        counts.append(count)
    if not tables:
        return words[:0], torch.zeros(0, dtype=torch.int64, device=words.device)
    return _tally(torch.cat(tables), torch.cat(counts))[:2]


class _ExactVertices:
    """Vertices and signs in exact rational arithmetic, for the vertices floating point cannot decide."""

    def __init__(self, normals: np.ndarray, offsets: np.ndarray) -> None:
        self.normals_float = normals
        self.normals, self.offsets = _fractions(normals), _fractions(offsets)
        self.local_cells: dict[tuple[int, ...], Tensor] = {}

    def vertex(self, basis: list[int]) -> Optional[list[Fraction]]:
        return _exact_solve([self.normals[i] for i in basis], [-self.offsets[i] for i in basis])

    def value(self, plane: int, vertex: list[Fraction]) -> Fraction:
        return sum((a * x for a, x in zip(self.normals[plane], vertex)), self.offsets[plane])

    def cells_through(self, planes: tuple[int, ...], device: torch.device) -> Tensor:
        """Sign patterns (K, len(planes)) of the cells around a point all ``planes`` pass through."""
        if planes not in self.local_cells:
            normals = self.normals_float[list(planes)]
            self.local_cells[planes] = _cells(normals, np.zeros(len(planes)), device)
        return self.local_cells[planes]


def _degenerate_vertex_codes(subsets: Tensor, signs: _VertexSigns, exact: _ExactVertices, n_planes: int) -> Tensor:
    """Packed codes of the cells around the flagged vertices, decided exactly.

    One flagged subset at a time: its vertex and the undecided signs there in exact arithmetic, the planes
    through it (``tight``) and the cells around it.  Every other subset of those planes has the same vertex
    (or none, when its normals are dependent), so all of them are settled by that one: a vertex where many
    planes meet (the origin of a clipped shallow PLRNN's ``W2 z`` planes) costs one exact solve.
    """
    device = signs.words.device
    index = torch.nonzero(signs.flagged).flatten()
    subsets, words, ill = subsets[index], signs.words[index], signs.ill[index].tolist()
    ambiguous = signs.ambiguous.cpu().numpy()
    pending = torch.ones(index.shape[0], dtype=torch.bool, device=device)
    found = []
    while bool(pending.any()):
        i = int(torch.nonzero(pending)[0])
        pending[i] = False
        basis = subsets[i].tolist()
        vertex = exact.vertex(basis)
        if vertex is None:  # dependent normals: these planes have no common point
            continue
        bits = _unpack(words[i : i + 1], n_planes)[0].cpu().numpy().copy()
        through = set(basis)
        for plane in range(n_planes) if ill[i] else np.flatnonzero(ambiguous[i]).tolist():
            if plane not in through:
                value = exact.value(plane, vertex)
                if value == 0:
                    through.add(plane)
                bits[plane] = value > 0
        tight = sorted(through)
        bits[tight] = False
        member = torch.zeros(n_planes, dtype=torch.bool, device=device)
        member[tight] = True
        pending &= ~member[subsets].all(-1)
        if len(tight) > len(basis):
            local = exact.cells_through(tuple(tight), device)
        else:
            local = _pattern_table(len(tight), device).bool()
        codes = torch.as_tensor(bits, device=device).expand(local.shape[0], n_planes).clone()
        codes[:, tight] = local
        found.append(_pack(codes))
    n_words = signs.words.shape[1]
    return torch.cat(found) if found else torch.zeros((0, n_words), dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------------------------------------------
# The listing


# A CellListing keeps at most this many plane sets that vertices were last certified against (below).
_MAX_EPOCHS = 8


@dataclass
class _VertexCells:
    """The cells of an arrangement as its vertices give them, kept for incremental updates.

    Per vertex (row ``subsets[i]``): its current packed signs ``words`` and ``flagged``, and the vertex, its
    rounding ``error`` and its certain ``margin`` at the planes ``epochs[row_epoch[i]]`` at which its signs
    were last computed (planes divided by ``scale``, fixed at the full listing).  ``table``/``counts``: every
    code around a simple vertex with the number of (vertex, pattern) pairs giving it, so a vertex whose signs
    change can be taken out exactly; ``table_codes``: the table unpacked.  ``degenerate``: the codes around the
    flagged vertices (decided exactly), recomputed whenever there are any.  ``changes``: for arrangements
    small enough (``_chirotope.VertexChanges.applies``), the determinants that tell which vertices may have
    changed, in place of the vertex-by-vertex certificate of ``uncertified`` (which then goes unused).
    """

    subsets: Tensor
    scale: Tensor
    epochs: list[tuple[Tensor, Tensor]]
    row_epoch: Tensor
    words: Tensor
    flagged: Tensor
    vertex: Tensor
    error: Tensor
    margin: Tensor
    table: Tensor
    counts: Tensor
    table_codes: Tensor
    degenerate: Tensor
    changes: Optional[VertexChanges] = None

    def all_codes(self) -> Tensor:
        """Every cell's code over the distinct planes, bool ``(R, P)``, sorted."""
        if self.degenerate.shape[0] == 0:
            return self.table_codes
        extra = torch.ones(self.degenerate.shape[0], dtype=torch.int64, device=self.degenerate.device)
        return _merge((self.table, self.counts, self.table_codes), self.degenerate, extra)[2]

    def uncertified(self, normals: Tensor, offsets: Tensor, solved: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """The vertices at which some plane's sign may differ from ``words`` for planes ``(normals, offsets)``
        (divided by ``scale``), whose vertices ``_solve_vertices`` gave as ``solved``.

        Against the planes ``(N_e, b_e)`` a vertex was computed at, with ``v`` and ``v_e`` the two vertices, the
        value of plane ``l`` moved by ``(N_l - N_e,l) v + N_e,l (v - v_e) + (b_l - b_e,l)``, at most
        ``dN |v| + |N_e|_1 |v - v_e| + db`` (infinity norms, max over planes, rounding errors added).  A vertex
        whose certain margin exceeds twice that keeps every sign.  Costs ``O(V r)`` beyond the solves: no
        product with the other planes.
        """
        eps = torch.finfo(torch.float64).eps
        vertex, error, bad = solved
        shifts = []
        for epoch_normals, epoch_offsets in self.epochs:
            size = float(epoch_normals.abs().sum(1).max())
            shift_normals = float((normals - epoch_normals).abs().sum(1).max()) + 8 * eps * size
            shift_offsets = float((offsets - epoch_offsets).abs().max()) + 8 * eps * float(epoch_offsets.abs().max() + offsets.abs().max())
            shifts.append((shift_normals, size, shift_offsets))
        shift_normals, size, shift_offsets = (
            torch.tensor(column, dtype=torch.float64, device=normals.device)[self.row_epoch] for column in zip(*shifts)
        )
        moved = (vertex - self.vertex).abs().amax(-1) + error + self.error
        change = shift_normals * (vertex.abs().amax(-1) + error) + size * moved + shift_offsets
        return bad | ~(self.margin > 2 * change)


@dataclass
class _Listing:
    """A listing with what a later update needs."""

    reduction: _Reduction
    codes: Tensor  # (R, S) bool, sorted
    vertices: Optional[_VertexCells]  # for arrangements listed from their vertices (not central, rank >= 1)


def _essential_arrays(G: np.ndarray, g: np.ndarray, reduction: _Reduction) -> tuple[np.ndarray, np.ndarray]:
    """The distinct planes restricted to the coordinates where their normals have full rank."""
    reps = reduction.representatives
    return G[reps][:, reduction.columns], g[reps]


def _expand(rep_codes: Tensor, reduction: _Reduction, n_planes: int) -> Tensor:
    """Codes over the distinct planes -> codes over every given row (duplicates, flips, zero rows)."""
    device = rep_codes.device
    if np.array_equal(reduction.member_of, np.arange(n_planes)) and not reduction.flipped.any():
        return rep_codes  # every row its own plane, in order: already sorted
    codes = torch.zeros((rep_codes.shape[0], n_planes), dtype=torch.bool, device=device)
    rows = np.flatnonzero(reduction.member_of >= 0)
    if rows.size:
        flipped = torch.as_tensor(reduction.flipped[rows], device=device)
        codes[:, torch.as_tensor(rows, device=device)] = rep_codes[:, torch.as_tensor(reduction.member_of[rows], device=device)] ^ flipped
    if reduction.zero_rows.size:
        codes[:, torch.as_tensor(reduction.zero_rows, device=device)] = torch.as_tensor(reduction.zero_bits, device=device)
    return _unpack(_distinct(_pack(codes)), n_planes)  # sorted lexicographically


def _representative_cells(
    G: np.ndarray, g: np.ndarray, reduction: _Reduction, device: torch.device
) -> tuple[Tensor, Optional[_VertexCells]]:
    """Cells over the distinct planes (bool ``(R, P)``), and their vertex bookkeeping when listed from vertices."""
    normals, offsets = _essential_arrays(G, g, reduction)
    n_planes, rank = normals.shape
    if rank == 0:
        return torch.zeros((1, n_planes), dtype=torch.bool, device=device), None
    if reduction.central:
        # Every open cone meets x_0 = 1 or x_0 = -1: the cells are those of the two restrictions.
        halves = torch.cat([_cells(normals[:, 1:], side * normals[:, 0], device) for side in (1.0, -1.0)])
        return _unpack(_distinct(_pack(halves)), n_planes), None
    subsets = _vertex_subsets(reduction.direction, rank, device)
    normals_t, offsets_t = torch.as_tensor(normals, device=device), torch.as_tensor(offsets, device=device)
    scale = normals_t.norm(dim=1)
    normals_t, offsets_t = normals_t / scale[:, None], offsets_t / scale  # unit normals: comparable residuals
    signs = _vertex_signs(normals_t, offsets_t, subsets)
    simple = ~signs.flagged
    table, counts = _counted_codes(subsets[simple], signs.words[simple])
    degenerate = _degenerate_vertex_codes(subsets, signs, _ExactVertices(normals, offsets), n_planes)
    cells = _VertexCells(
        subsets=subsets,
        scale=scale,
        epochs=[(normals_t, offsets_t)],
        row_epoch=torch.zeros(subsets.shape[0], dtype=torch.int64, device=device),
        words=signs.words,
        flagged=signs.flagged,
        vertex=signs.vertex,
        error=signs.error,
        margin=signs.margin,
        table=table,
        counts=counts,
        table_codes=_unpack(table, n_planes),
        degenerate=degenerate,
    )
    if VertexChanges.applies(n_planes, rank):
        cells.changes = VertexChanges.start(normals_t, offsets_t, subsets, _combinations(n_planes, rank + 1, device))
    return cells.all_codes(), cells


def _update_vertex_cells(cells: _VertexCells, normals: np.ndarray, offsets: np.ndarray) -> tuple[_VertexCells, str]:
    """``cells`` brought to new planes with the same reduction, and the outcome (``CellListing.OUTCOMES``).

    Only the vertices ``uncertified`` gets their signs recomputed; a vertex whose signs changed has its ``2^r``
    codes taken out of the tally and its new ones put in.  Those vertices are then certified against the new
    planes (a new epoch); with more than ``_MAX_EPOCHS`` epochs, or more than half the vertices uncertified,
    every vertex is recomputed and the epochs start again.
    """
    device = cells.subsets.device
    normals_t = torch.as_tensor(normals, device=device) / cells.scale[:, None]
    offsets_t = torch.as_tensor(offsets, device=device) / cells.scale
    changes = None
    if cells.changes is not None:
        # The vertices of determinants whose sign changed, and those that need exact arithmetic (always redone).
        changes, rows = cells.changes.update(normals_t, offsets_t)
        rows = torch.unique(torch.cat([rows, torch.nonzero(cells.flagged).flatten()]))
        if rows.numel() == 0:
            return dataclasses.replace(cells, changes=changes), "certified"
        restart, solved = False, None
    else:
        solved = _solve_vertices(normals_t, offsets_t, cells.subsets)
        unsure = cells.uncertified(normals_t, offsets_t, solved)
        if not bool(unsure.any()):
            return cells, "certified"
        restart = 2 * int(unsure.sum()) > unsure.shape[0] or len(cells.epochs) >= _MAX_EPOCHS
        rows = torch.arange(unsure.shape[0], device=device) if restart else torch.nonzero(unsure).flatten()
    fresh = _vertex_signs(normals_t, offsets_t, cells.subsets[rows], None if solved is None else tuple(t[rows] for t in solved))
    old_words, old_flagged = cells.words[rows], cells.flagged[rows]
    changed = (fresh.words != old_words).any(-1) | (fresh.flagged != old_flagged)
    table, counts, table_codes = cells.table, cells.counts, cells.table_codes
    gone, come = changed & ~old_flagged, changed & ~fresh.flagged
    if bool(gone.any() or come.any()):
        removed = _around(cells.subsets[rows[gone]], old_words[gone])
        added = _around(cells.subsets[rows[come]], fresh.words[come])
        weights = torch.cat([torch.full_like(removed[:, 0], -1), torch.ones_like(added[:, 0])])
        table, counts, table_codes = _merge((table, counts, table_codes), torch.cat([removed, added]), weights)
        alive = counts > 0
        if not bool(alive.all()):
            table, counts, table_codes = table[alive], counts[alive], table_codes[alive]
    degenerate = cells.degenerate
    if bool(fresh.flagged.any()) or bool(old_flagged.any()):
        exact = _ExactVertices(normals, offsets)
        degenerate = _degenerate_vertex_codes(cells.subsets[rows], fresh, exact, normals.shape[0])
    updated = dataclasses.replace(cells, table=table, counts=counts, table_codes=table_codes, degenerate=degenerate,
                                  changes=changes)
    if changes is None:  # the vertex certificate: the recomputed vertices start a new epoch (determinants need none)
        if restart:
            updated.epochs, updated.row_epoch = [(normals_t, offsets_t)], torch.zeros_like(cells.row_epoch)
        else:
            updated.epochs, updated.row_epoch = cells.epochs + [(normals_t, offsets_t)], cells.row_epoch.clone()
            updated.row_epoch[rows] = len(cells.epochs)
            used = torch.unique(updated.row_epoch).tolist()  # drop epochs no vertex refers to any more
            renumber = torch.zeros(len(updated.epochs), dtype=torch.int64, device=device)
            renumber[used] = torch.arange(len(used), device=device)
            updated.epochs, updated.row_epoch = [updated.epochs[i] for i in used], renumber[updated.row_epoch]
    for name in ("words", "flagged", "vertex", "error", "margin"):
        column = getattr(cells, name).clone()
        column[rows] = getattr(fresh, name)
        setattr(updated, name, column)
    moved = bool(changed.any()) or not torch.equal(degenerate, cells.degenerate)
    return updated, "updated" if moved else "reused"


def _cells(G: np.ndarray, g: np.ndarray, device: torch.device) -> Tensor:
    """Every cell's code of the arrangement ``G z + g`` (numpy float64), bool ``(R, S)`` on ``device``."""
    reduction = _reduce(G, g)
    rep_codes, _ = _representative_cells(G, g, reduction, device)
    return _expand(rep_codes, reduction, G.shape[0])


def _too_many(bound: int, max_cells: int, shape: tuple[int, int], reduction: _Reduction) -> ValueError:
    return ValueError(
        f"the arrangement of {shape[0]} planes in R^{shape[1]} ({len(reduction.representatives)} distinct, normals "
        f"of rank {reduction.rank}) can have up to {bound} cells, more than max_cells={max_cells}"
    )


def _list(G: Tensor, g: Tensor, max_cells: int, previous: Optional[_Listing] = None) -> tuple[_Listing, str]:
    """A listing of ``(G, g)`` and how it was obtained (one of ``CellListing.OUTCOMES`` but "unchanged")."""
    G_np, g_np = G.cpu().numpy(), g.cpu().numpy()
    reduction = _reduce(G_np, g_np)
    bound = reduction.bound()
    if bound > max_cells:
        raise _too_many(bound, max_cells, tuple(G.shape), reduction)
    if previous is not None and previous.vertices is not None and previous.reduction.same_as(reduction):
        normals, offsets = _essential_arrays(G_np, g_np, reduction)
        cells, outcome = _update_vertex_cells(previous.vertices, normals, offsets)
        if outcome != "updated":
            return _Listing(reduction, previous.codes, cells), outcome
        codes = _expand(cells.all_codes(), reduction, G.shape[0])
        return _Listing(reduction, codes, cells), outcome
    rep_codes, cells = _representative_cells(G_np, g_np, reduction, G.device)
    return _Listing(reduction, _expand(rep_codes, reduction, G.shape[0]), cells), "listed"


def list_cells(planes: Tensor, offsets: Tensor, *, max_cells: int = DEFAULT_MAX_CELLS) -> Tensor:
    """The code of every cell of the arrangement ``{z : planes @ z + offsets = 0}``, exactly, without LPs.

    A cell is a connected component of the complement of the planes; its code is ``planes @ z + offsets > 0``
    at any of its points.  The module docstring describes the method, the degenerate cases and what is
    guaranteed: the listing is the exact set of cells of the arrangement that the given floating-point
    numbers define.  Batched in torch on the planes' device; computed in float64 whatever their dtype.

    Parameters
    ----------
    planes : Tensor, shape (S, M)
        Normals ``G``; a zero row is a switch with the constant bit ``offsets[l] > 0``.
    offsets : Tensor, shape (S,)
        Offsets ``g``.
    max_cells : int
        Refuse (before any work) an arrangement that can have more cells than this (``cell_count_bound``).

    Returns
    -------
    Tensor, shape (R, S), bool
        The distinct codes, sorted lexicographically (``False < True``), on the planes' device.

    Raises
    ------
    ValueError
        Wrong shapes, non-finite values, planes and offsets on different devices, ``max_cells`` not a
        positive int, or an arrangement that can have more than ``max_cells`` cells (the message gives the bound).
    TypeError
        Complex or otherwise non-real tensors.

    Examples
    --------
    >>> list_cells(torch.eye(2), torch.zeros(2)).int().tolist()        # the four quadrants
    [[0, 0], [0, 1], [1, 0], [1, 1]]
    >>> lines = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])      # three lines through one point: 6 cells
    >>> list_cells(lines, torch.zeros(3)).shape
    torch.Size([6, 3])
    >>> list_cells(lines, torch.tensor([0.0, 0.0, -1.0])).shape        # moved apart: a triangle more
    torch.Size([7, 3])
    """
    G, g = _validated(planes, offsets)
    listing, _ = _list(G, g, _require_max_cells(max_cells))
    return listing.codes


def cell_count_bound(planes: Tensor, offsets: Tensor) -> int:
    """An upper bound on the number of cells, exact for planes in general position (cheap: no listing).

    Identical planes count once, zero rows not at all, parallel planes never meet and the rank of the
    normals is taken into account: ``sum_{i <= r} e_i(n_1, .., n_q)`` for parallel classes of sizes ``n_j``
    and normals of rank ``r`` (``2 sum_{i < r} C(P - 1, i)`` when all ``P`` planes share a point).

    Examples
    --------
    >>> import math
    >>> W2 = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    >>> cell_count_bound(W2, torch.rand(50)) == sum(math.comb(50, i) for i in range(4))
    True
    >>> cell_count_bound(torch.cat([W2, W2]), torch.cat([torch.rand(50), torch.zeros(50)]))  # parallel pairs
    161801
    """
    G, g = _validated(planes, offsets)
    return _reduce(G.cpu().numpy(), g.cpu().numpy()).bound()


class CellListing:
    """The cells of a changing arrangement: reuses the last listing while it is provably still valid.

    ``update(planes, offsets)`` returns the same codes as ``list_cells``.  The cells are a function of the
    arrangement's reduction (zero rows, identical and parallel planes, rank) and of the sign of every plane at
    every vertex (see the module docstring), so when these are unchanged the previous codes are returned,
    by proof rather than by heuristic.  In order of cost:

    * ``"unchanged"``: the planes are bitwise the previous ones.
    * ``"certified"``: the reduction is unchanged and, for every vertex, the distance of the nearest other
      plane at the last full sign computation exceeds a bound on how far the planes moved since
      (perturbation bound of the vertex, ``O(V)`` work, no solve).
    * ``"reused"``: the signs at the vertices the bound could not certify (or at all of them, when more than a
      quarter) were recomputed and are the previous ones.
    * ``"updated"``: some vertices' signs changed: their ``2^r`` codes are taken out of a tally of every
      (vertex, sign pattern) pair and their new ones put in, so the cells are the new arrangement's without
      a full listing (training steps move a few dozen of the README model's 20,876 cells).  Vertices that
      need exact arithmetic are decided again at every update.
    * ``"listed"``: a first listing, or the reduction changed (a plane became zero, parallel, identical...).

    Parameters
    ----------
    max_cells : int
        As in ``list_cells``.

    Attributes
    ----------
    counts : dict of str to int
        How many updates had each outcome (``OUTCOMES``).
    last : str or None
        The outcome of the last update.

    Examples
    --------
    >>> listing = CellListing()
    >>> G, g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.0, 0.0, -1.0])
    >>> listing.update(G, g).shape, listing.last
    (torch.Size([7, 3]), 'listed')
    >>> listing.update(G * 1.001, g).shape, listing.last          # a small step: provably the same cells
    (torch.Size([7, 3]), 'certified')
    >>> listing.update(G, torch.tensor([0.0, 0.0, 1.0])).shape, listing.last   # the triangle flipped over
    (torch.Size([7, 3]), 'updated')
    """

    OUTCOMES = ("unchanged", "certified", "reused", "updated", "listed")

    def __init__(self, *, max_cells: int = DEFAULT_MAX_CELLS) -> None:
        self.max_cells = _require_max_cells(max_cells)
        self._listing: Optional[_Listing] = None
        self._planes: Optional[tuple[Tensor, Tensor]] = None
        self.counts = dict.fromkeys(self.OUTCOMES, 0)
        self.last: Optional[str] = None

    def update(self, planes: Tensor, offsets: Tensor, *, max_cells: Optional[int] = None) -> Tensor:
        """The codes of the cells of ``(planes, offsets)``, shape ``(R, S)`` bool (see ``list_cells``).

        ``max_cells`` overrides the instance's limit for this call.
        """
        G, g = _validated(planes, offsets)
        limit = self.max_cells if max_cells is None else _require_max_cells(max_cells)
        previous = self._listing
        if previous is not None and self._planes is not None and _same_tensors((G, g), self._planes):
            if previous.reduction.bound() <= limit:
                return self._record("unchanged", previous.codes)
        fits = previous is not None and previous.codes.device == G.device and previous.codes.shape[1] == G.shape[0]
        listing, outcome = _list(G, g, limit, previous if fits else None)
        self._listing, self._planes = listing, (G.clone(), g.clone())
        return self._record(outcome, listing.codes)

    def _record(self, outcome: str, codes: Tensor) -> Tensor:
        self.counts[outcome] += 1
        self.last = outcome
        return codes


def _same_tensors(new: tuple[Tensor, Tensor], old: tuple[Tensor, Tensor]) -> bool:
    return all(a.shape == b.shape and a.device == b.device and torch.equal(a, b) for a, b in zip(new, old))
