"""Which vertices of a moving arrangement may have changed their signs, from the signs of determinants.

The cells of an arrangement of planes ``n_l · x + b_l = 0`` in ``R^r`` are fixed by the sign of every plane at
every vertex (``regions``).  At the vertex ``v`` of the planes ``S = (i_1 .. i_r)`` the value of another plane
``l`` is, by the Schur complement,

    n_l · v + b_l = det [[N_S, b_S], [n_l, b_l]] / det N_S,

so the signs at every vertex are those of two families of determinants: of the ``(r + 1)``-subsets of the
homogeneous rows ``(n_l, b_l)`` and of the ``r``-subsets of the normals.  A determinant whose value was computed at
some earlier planes cannot change its sign before the rows move by more than its margin: with ``ρ_s`` the relative
move of row ``s`` (Euclidean norms), ``|det(R + Δ) − det R| ≤ (Π_s (1 + ρ_s) − 1) Π ‖r_s‖`` (multilinearity and
Hadamard's inequality), at most the same product over the ``k`` rows that moved most.  ``SignTracker`` keeps each
subset's relative margin, sorted within the rows it was computed at, so the subsets that may have changed are found
by binary search; per training step only some thousands of the README model's 230,300 quadruples are looked at and
recomputed (a certificate vertex by vertex left 6,000-9,000 of its 19,600 vertices, each with 47 planes, to
recompute), and only the vertices of the determinants whose sign changed (a handful) or that floating point cannot
decide are solved again.

Private: ``regions.CellListing`` uses it for arrangements with at most ``MAX_SUBSETS`` such subsets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_SUBSETS", "SignTracker", "VertexChanges"]

# Arrangements with more (r + 1)-subsets of planes than this are certified vertex by vertex instead.
MAX_SUBSETS = 1 << 21
# Epochs (plane sets the subsets were last computed at) before all are computed again at the current ones.
MAX_EPOCHS = 48
# Factor over the rounding bound of a determinant below which its sign is not trusted.
_SAFETY = 8.0


def _determinants(rows: Tensor, subsets: Tensor) -> tuple[Tensor, Tensor]:
    """``(sign (n,) int8, margin (n,))`` of ``det rows[subsets]`` (float64 rows): the sign (0 where the
    rounding bound cannot decide it) and the certain margin ``(|det| − bound) / Π ‖r_s‖`` (−inf where
    undecided).

    Up to ``k = 4`` the determinant is expanded in 2 × 2 minors (``_expanded``): every one of its ``k!``
    products of entries carries at most ``3k`` roundings, so the error is at most ``γ_3k per(|R|) ≤ γ_3k
    Π ‖r_s‖₁`` (``γ_n = n u / (1 − n u)``).  Larger ``k`` use LU with partial pivoting, which computes the
    determinant of ``R + E`` with ``‖e_s‖ ≤ δ ‖r_s‖``, ``δ = k 2^k ε`` (growth factor at most ``2^(k−1)``), so
    the result moves by at most ``((1 + δ)^k − 1) Π ‖r_s‖``.  Both bounds are multiplied by ``_SAFETY``.
    """
    n, k = subsets.shape
    # index_select: three times faster than advanced indexing for these gathers.
    flat = subsets.flatten()
    matrices = rows.index_select(0, flat).view(n, k, rows.shape[1])
    norms = rows.norm(dim=-1).index_select(0, flat).view(n, k).prod(-1)
    if k <= 4:
        determinant = _expanded(matrices)
        unit = torch.finfo(torch.float64).eps / 2
        gamma = 3 * k * unit / (1 - 3 * k * unit)
        bound = _SAFETY * gamma * rows.abs().sum(-1).index_select(0, flat).view(n, k).prod(-1)
    else:
        determinant = torch.linalg.det(matrices)
        delta = _SAFETY * k * 2.0**k * torch.finfo(torch.float64).eps
        bound = ((1.0 + delta) ** k - 1.0) * norms
    decided = determinant.abs() > bound
    margin = torch.where(decided & (norms > 0), (determinant.abs() - bound) / norms, -math.inf)
    sign = torch.where(decided, torch.sign(determinant), torch.zeros_like(determinant)).to(torch.int8)
    return sign, margin


def _expanded(matrices: Tensor) -> Tensor:
    """Determinants of ``(n, k, k)`` matrices, ``k <= 4``, by Laplace expansion in 2 × 2 minors: a few
    elementwise passes instead of a batched LU (half the time at the README model's ~15,000 per step)."""
    k = matrices.shape[-1]
    entry = [[matrices[:, i, j] for j in range(k)] for i in range(k)]
    if k == 1:
        return entry[0][0].clone()

    def minor(top: int, a: int, b: int) -> Tensor:  # rows top, top + 1; columns a, b
        return entry[top][a] * entry[top + 1][b] - entry[top][b] * entry[top + 1][a]

    if k == 2:
        return minor(0, 0, 1)
    if k == 3:
        return entry[0][0] * minor(1, 1, 2) - entry[0][1] * minor(1, 0, 2) + entry[0][2] * minor(1, 0, 1)
    # Rows 0-1 against rows 2-3: the six column pairs, each with its complement and sign.
    return (minor(0, 0, 1) * minor(2, 2, 3) - minor(0, 0, 2) * minor(2, 1, 3) + minor(0, 0, 3) * minor(2, 1, 2)
            + minor(0, 1, 2) * minor(2, 0, 3) - minor(0, 1, 3) * minor(2, 0, 2) + minor(0, 2, 3) * minor(2, 0, 1))


@dataclass(frozen=True)
class _Epoch:
    """The subsets last computed at one set of rows, by increasing margin; ``members[:start]`` have been
    recomputed since (they belong to later epochs)."""

    members: Tensor  # (n,) int64 subset indices
    margins: Tensor  # (n,) their certain relative margins, ascending (-inf: undecided)
    start: int
    next_margin: float  # margins[start] (inf when none is left): an update that does not reach it skips the epoch

    @classmethod
    def at(cls, members: Tensor, margins: Tensor, start: int) -> "_Epoch":
        return cls(members, margins, start, float(margins[start]) if start < margins.shape[0] else math.inf)


@dataclass
class SignTracker:
    """The exact signs of ``det rows[subsets]`` for rows that move, recomputing only what may have changed.

    Each subset keeps the certain margin of its determinant at the rows it was last computed at (its epoch); an
    update computes every row's relative move ``ρ_s`` since each epoch and recomputes the subsets whose margin is at
    most ``Π (1 + ρ_s) − 1`` over the epoch's ``k`` fastest rows (late in a training run a few planes move ten times
    faster than most: 10-25 % fewer recomputed than with ``(1 + max ρ)^k − 1``).  An epoch keeps its subsets sorted
    by margin, so those are a prefix found by one binary search: an update costs what it recomputes, not the number
    of subsets.  ``update`` returns a new tracker (the old one is left as it was, so an update that fails midway
    changes nothing) and the subsets whose sign changed or became undecided.

    Examples
    --------
    >>> rows = torch.eye(2, dtype=torch.float64)
    >>> tracker = SignTracker.start(rows, torch.tensor([[0, 1]]))
    >>> tracker.signs.tolist()
    [1]
    >>> moved, changed = tracker.update(torch.tensor([[1.0, 0.0], [0.001, 1.0]], dtype=torch.float64))
    >>> changed.tolist(), moved.recomputed                   # certified by the margin: nothing recomputed
    ([], 0)
    >>> moved, changed = moved.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    >>> changed.tolist(), moved.signs.tolist()               # rows swapped: the sign flipped
    ([0], [-1])
    """

    subsets: Tensor  # (Q, k) int64: row indices
    signs: Tensor  # (Q,) int8: the sign at the current rows; 0: undecided in floating point
    epochs: tuple[_Epoch, ...]
    epoch_rows: Tensor  # (E, P, d): the rows each epoch was computed at
    recomputed: int = 0  # subsets recomputed by the update that made this tracker

    @classmethod
    def start(cls, rows: Tensor, subsets: Tensor) -> "SignTracker":
        """Every determinant computed at ``rows``."""
        signs = torch.empty(subsets.shape[0], dtype=torch.int8, device=rows.device)
        epoch, _ = _computed(rows, subsets, torch.arange(subsets.shape[0], device=rows.device), signs)
        return cls(subsets, signs, (epoch,), rows.unsqueeze(0).clone(), subsets.shape[0])

    def update(self, rows: Tensor) -> tuple["SignTracker", Tensor]:
        """The tracker at ``rows`` and the indices of the subsets whose sign changed or is undecided."""
        if len(self.epochs) >= MAX_EPOCHS:
            fresh = SignTracker.start(rows, self.subsets)
            return fresh, torch.nonzero((fresh.signs != self.signs) | (fresh.signs == 0)).flatten()
        # Each row's relative move since each epoch, rounded up; a zero row moved infinitely far.  A subset's
        # determinant moves by at most prod_s (1 + rho_s) - 1 of its rows' norms, so the k rows that moved most
        # bound every subset of the epoch (tighter than (1 + max rho)^k - 1 when a few planes move fastest).
        moved = (rows.unsqueeze(0) - self.epoch_rows).norm(dim=-1) / self.epoch_rows.norm(dim=-1)
        growth = torch.log1p(moved.nan_to_num(nan=math.inf) * (1 + 1e-12) + 1e-15)
        k = min(self.subsets.shape[1], growth.shape[-1])
        thresholds = (torch.expm1(growth.topk(k, dim=-1).values.sum(-1)) * (1 + 1e-12)).tolist()
        kept, due = [], []
        for epoch, threshold in zip(self.epochs, thresholds):
            if threshold < epoch.next_margin:  # nothing due in this epoch
                kept.append(epoch)
                continue
            # Margins not above the threshold (including -inf, undecided) are a prefix of the remaining ones.
            remaining = epoch.margins[epoch.start :]
            count = int(torch.searchsorted(remaining, remaining.new_tensor([threshold]), right=True))
            due.append(epoch.members[epoch.start : epoch.start + count])
            kept.append(_Epoch.at(epoch.members, epoch.margins, epoch.start + count))
        if not due:
            return dataclasses.replace(self, recomputed=0), self.subsets.new_zeros(0)
        members = torch.cat(due)
        signs = self.signs.clone()
        epoch, member_signs = _computed(rows, self.subsets, members, signs)
        changed = members[(member_signs != self.signs.index_select(0, members)) | (member_signs == 0)]
        alive = [i for i, old in enumerate(kept) if old.next_margin < math.inf]  # epochs emptied are dropped
        epochs = tuple(kept[i] for i in alive) + (epoch,)
        epoch_rows = torch.cat([self.epoch_rows[alive], rows.unsqueeze(0)])
        return SignTracker(self.subsets, signs, epochs, epoch_rows, members.numel()), changed


def _computed(rows: Tensor, subsets: Tensor, members: Tensor, signs: Tensor) -> tuple[_Epoch, Tensor]:
    """The determinants of ``subsets[members]`` at ``rows``: their margins as a new epoch, and their signs
    (also written into ``signs``)."""
    member_signs, margins = _determinants(rows, subsets.index_select(0, members))
    signs.index_copy_(0, members, member_signs)
    if margins.device.type == "cpu":  # numpy sorts float64 in half torch's time
        order = torch.from_numpy(np.argsort(margins.numpy()))
    else:
        order = torch.argsort(margins)
    return _Epoch.at(members.index_select(0, order), margins.index_select(0, order), 0), member_signs


@dataclass
class VertexChanges:
    """The vertices of an arrangement whose signs may have changed: both families of determinants tracked,
    and how a changed ``(r + 1)``-subset of planes finds its ``r + 1`` vertices among ``subsets``."""

    homogeneous: SignTracker  # det [[N_S, b_S], [n_l, b_l]] over the (r + 1)-subsets
    normals: SignTracker  # det N_S over the vertices' own subsets
    keys: Tensor  # (V,) sorted codes of the vertices' plane subsets
    rows_of_keys: Tensor  # (V,) the vertex row of each sorted key
    n_planes: int

    @staticmethod
    def applies(n_planes: int, rank: int) -> bool:
        """Whether an arrangement of ``n_planes`` planes in ``R^rank`` is small enough to track this way."""
        return rank >= 1 and math.comb(n_planes, rank + 1) <= MAX_SUBSETS and n_planes ** (rank + 1) < 2**62

    @classmethod
    def start(cls, normals: Tensor, offsets: Tensor, vertex_subsets: Tensor, all_subsets: Tensor) -> "VertexChanges":
        """``all_subsets``: every ``(r + 1)``-subset of the planes, sorted within rows."""
        n_planes = normals.shape[0]
        keys = _keys(torch.sort(vertex_subsets, dim=1).values, n_planes)
        order = torch.argsort(keys)
        homogeneous = torch.cat([normals, offsets.unsqueeze(1)], 1)
        return cls(SignTracker.start(homogeneous, all_subsets), SignTracker.start(normals, vertex_subsets),
                   keys[order], order, n_planes)

    def update(self, normals: Tensor, offsets: Tensor) -> tuple["VertexChanges", Tensor]:
        """The tracker at the new planes and the vertex rows to recompute (sorted, distinct)."""
        homogeneous, changed = self.homogeneous.update(torch.cat([normals, offsets.unsqueeze(1)], 1))
        normal, flipped = self.normals.update(normals)
        tuples = homogeneous.subsets[changed]  # (n, r + 1), sorted within rows
        k = tuples.shape[1]
        faces = torch.stack([torch.cat([tuples[:, :j], tuples[:, j + 1 :]], 1) for j in range(k)], 1).reshape(-1, k - 1)
        wanted = _keys(faces, self.n_planes)
        position = torch.searchsorted(self.keys, wanted).clamp(max=self.keys.shape[0] - 1)
        found = self.keys[position] == wanted  # faces with parallel planes are no vertices
        rows = torch.unique(torch.cat([self.rows_of_keys[position[found]], flipped]))
        return dataclasses.replace(self, homogeneous=homogeneous, normals=normal), rows


def _keys(subsets: Tensor, n_planes: int) -> Tensor:
    """One int64 per sorted subset row (its indices as digits in base ``n_planes``)."""
    powers = n_planes ** torch.arange(subsets.shape[1] - 1, -1, -1, device=subsets.device, dtype=torch.int64)
    return (subsets * powers).sum(-1)
