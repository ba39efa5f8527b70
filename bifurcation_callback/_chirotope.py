"""Which vertices of a moving arrangement may have changed their signs, from the signs of determinants.

The cells of an arrangement of planes ``n_l · x + b_l = 0`` in ``R^r`` are fixed by the sign of every plane at
every vertex (``regions``).  At the vertex ``v`` of the planes ``S = (i_1 .. i_r)`` the value of another plane
``l`` is, by the Schur complement,

    n_l · v + b_l = det [[N_S, b_S], [n_l, b_l]] / det N_S,

so the signs at every vertex are those of two families of determinants: of the ``(r + 1)``-subsets of the
homogeneous rows ``(n_l, b_l)`` and of the ``r``-subsets of the normals.  A determinant whose value was
computed at some earlier planes cannot change its sign before the rows move by more than its margin: with
``ρ`` the largest relative move of a row (Euclidean norms), ``|det(R + Δ) − det R| ≤ ((1 + ρ)^k − 1) Π ‖r_s‖``
(multilinearity and Hadamard's inequality).  ``SignTracker`` keeps each subset's relative margin: one
comparison per subset certifies it, and per training step only some thousands of the README model's 230,300
quadruples are recomputed (a certificate vertex by vertex left 6,000-9,000 of its 19,600 vertices, each with
47 planes, to recompute), and only the vertices of the determinants whose sign changed (a handful) or that
floating point cannot decide are solved again.

Private: ``regions.CellListing`` uses it for arrangements with at most ``MAX_SUBSETS`` such subsets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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
    """``(sign (n,) int8, margin (n,))`` of ``det rows[subsets]``: the sign (0 where the rounding bound
    cannot decide it) and the certain margin ``(|det| − bound) / Π ‖r_s‖`` (−inf where undecided).

    The bound: LU with partial pivoting computes the determinant of ``R + E`` with ``‖e_s‖ ≤ δ ‖r_s‖``,
    ``δ = k 2^k ε`` (growth factor at most ``2^(k−1)``), times ``_SAFETY``; the result then moves by at most
    ``((1 + δ)^k − 1) Π ‖r_s‖``.
    """
    k = subsets.shape[1]
    matrices = rows[subsets]
    determinant = torch.linalg.det(matrices)
    norms = matrices.norm(dim=-1).prod(-1)
    delta = _SAFETY * k * 2.0**k * torch.finfo(torch.float64).eps
    bound = ((1.0 + delta) ** k - 1.0) * norms
    decided = determinant.abs() > bound
    margin = torch.where(decided & (norms > 0), (determinant.abs() - bound) / norms, -math.inf)
    sign = torch.where(decided, torch.sign(determinant), torch.zeros_like(determinant)).to(torch.int8)
    return sign, margin


@dataclass
class SignTracker:
    """The exact signs of ``det rows[subsets]`` for rows that move, recomputing only what may have changed.

    Each subset keeps the certain margin of its determinant at the rows it was last computed at (its epoch);
    an update computes every epoch's largest relative row move ``ρ`` and recomputes the subsets whose margin is
    at most ``(1 + ρ)^k − 1``: one comparison per subset.  ``update`` returns a new tracker (the old one is
    left as it was, so an update that fails midway changes nothing) and the subsets whose sign changed or
    became undecided.

    Examples
    --------
    >>> rows = torch.eye(2, dtype=torch.float64)
    >>> tracker = SignTracker.start(rows, torch.tensor([[0, 1]]))
    >>> tracker.signs.tolist()
    [1]
    >>> moved, changed = tracker.update(torch.tensor([[1.0, 0.0], [0.001, 1.0]], dtype=torch.float64))
    >>> changed.tolist()                                     # certified by the margin: nothing recomputed
    []
    >>> moved, changed = moved.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))
    >>> changed.tolist(), moved.signs.tolist()               # rows swapped: the sign flipped
    ([0], [-1])
    """

    subsets: Tensor  # (Q, k) int64: row indices
    signs: Tensor  # (Q,) int8: the sign at the current rows; 0: undecided in floating point
    margins: Tensor  # (Q,) the certain relative margin at the subset's epoch (-inf: undecided)
    epoch: Tensor  # (Q,) int64 index into epochs
    epochs: Tensor  # (E, P, d) the rows at each epoch

    @classmethod
    def start(cls, rows: Tensor, subsets: Tensor) -> "SignTracker":
        """Every determinant computed at ``rows``."""
        signs, margins = _determinants(rows, subsets)
        epoch = torch.zeros(subsets.shape[0], dtype=torch.int64, device=rows.device)
        return cls(subsets, signs, margins, epoch, rows.unsqueeze(0).clone())

    def update(self, rows: Tensor) -> tuple["SignTracker", Tensor]:
        """The tracker at ``rows`` and the indices of the subsets whose sign changed or is undecided."""
        if self.epochs.shape[0] >= MAX_EPOCHS:
            fresh = SignTracker.start(rows, self.subsets)
            return fresh, torch.nonzero((fresh.signs != self.signs) | (fresh.signs == 0)).flatten()
        # The largest relative move of a row since each epoch, rounded up; a zero row moved infinitely far.
        moved = (rows.unsqueeze(0) - self.epochs).norm(dim=-1) / self.epochs.norm(dim=-1)
        rho = moved.nan_to_num(nan=math.inf).amax(-1) * (1 + 1e-12) + 1e-15
        threshold = (1.0 + rho) ** self.subsets.shape[1] - 1.0
        members = torch.nonzero(~(self.margins > threshold[self.epoch])).flatten()
        if members.numel() == 0:
            return self, members
        signs, margins = _determinants(rows, self.subsets[members])
        changed = members[(signs != self.signs[members]) | (signs == 0)]
        new = dataclasses.replace(self, signs=self.signs.clone(), margins=self.margins.clone(), epoch=self.epoch.clone())
        new.signs[members], new.margins[members] = signs, margins
        new.epoch[members] = self.epochs.shape[0]
        # Epochs no subset refers to any more are dropped.
        used = torch.bincount(new.epoch, minlength=self.epochs.shape[0] + 1) > 0
        renumber = torch.cumsum(used, 0) - 1
        new.epoch = renumber[new.epoch]
        new.epochs = torch.cat([self.epochs, rows.unsqueeze(0)])[used]
        return new, changed


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
