"""The exhaustive fixed-point enumeration of a training run, step after step, re-solving only what may have changed.

Every cell (region) of a shallow PLRNN's switching planes has one candidate fixed point, the solution of
``(I - J_D) z = c_D``; it is a fixed point when it lies in its cell.  Enumerating all of them costs one solve per
cell (20,876 for the README's ShallowPLRNN(3, 50)) at every monitored step, while training moves the weights
only a little.  ``FixedPointCache`` keeps, for every cell at a *reference* step, the candidate ``z``, the norm
``κ = ‖(I - J_D)⁻¹‖`` and the switch ``l`` its candidate violates most, by ``margin``.  At a later step the
pieces have moved by at most ``ε_J`` and ``ε_c`` (``model.piece_drift``, bounds over all cells at once), so

    ‖Δz‖ ≤ κ (ε_J ‖z‖ + ε_c) / (1 − κ ε_J)
    |Δ(G_l z + g_l)| ≤ ‖ΔG_l‖ (‖z‖ + ‖Δz‖) + ‖G_l‖ ‖Δz‖ + |Δg_l|

and when that is below the margin (with a safety factor) the candidate is still outside its cell: proved, not
solved.  Cells without that proof (the fixed points themselves, candidates near their cell's border, cells new
since the reference) are solved exactly, batched over the waiting steps; when more than ``REBUILD_FRACTION`` of
the cells need it, the step solves every cell and becomes the new reference.  The result is the exhaustive
enumeration's, cycle for cycle: every real fixed point is solved exactly at every step.

The cache is state carried from step to step in step order, so steps analysed together take the same decisions
as steps analysed one at a time.  Private: ``tracking.CycleTracker`` holds one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _scyfi
from ._search import check_interrupt
from ._stack import ModelStack
from .models import detached_copy

__all__ = ["FixedPointCache", "REBUILD_FRACTION"]

# More cells than this fraction without a proof: the step solves every cell and becomes the reference.  (0.1,
# 0.25 and 0.5 gave 29.0, 28.8 and 30.4 ms per bench-case step: fewer rebuilds, more cells solved per step.)
REBUILD_FRACTION = 0.5
# The bound must stay below margin / SAFETY: room for the rounding of the reference's own solve.
SAFETY = 2.0
# Cells solved together in one call (memory, not speed).
CHUNK = 1 << 15


class FixedPointCache:
    """What proves, step after step, that most cells' candidate fixed points stay outside their cells.

    Examples
    --------
    >>> cache = FixedPointCache()
    >>> cache.counts
    {'rebuilt': 0, 'proved': 0, 'solved': 0}
    """

    def __init__(self) -> None:
        self.reference: Any = None  # the model at the reference step (a plain copy)
        self.counts = {"rebuilt": 0, "proved": 0, "solved": 0}
        self._hashes: np.ndarray | None = None  # per reference cell, sorted
        self._order: np.ndarray | None = None  # reference cell index of each sorted hash
        self._words: np.ndarray | None = None  # (R, W) uint64: the reference cells' codes, packed
        self._n_switches = 0
        self._z_norm = self._kappa = self._margin = None
        self._plane: np.ndarray | None = None
        self._planes: tuple[np.ndarray, np.ndarray] | None = None  # (G, g) at the reference
        self._plane_norms: np.ndarray | None = None  # ‖G_l‖ at the reference

    @staticmethod
    def applies(model: Any) -> bool:
        """Whether ``model`` bounds how far its pieces move (``piece_drift``), which the proof needs."""
        return callable(getattr(model, "piece_drift", None)) and callable(getattr(model, "switching_planes", None))

    def enumerate(self, stack: ModelStack, tables: list[Tensor], collector: Any, steps: list[int],
                  counts: dict[str, list[int]], deadline: float = math.inf) -> bool:
        """Every fixed point of the stack's steps ``steps`` (indices), into ``collector``; ``tables[i]`` are
        step ``i``'s cells.  Returns False when the deadline stopped it.  ``counts`` gets each step's solves."""
        pending: dict[int, Tensor] = {}
        for i in steps:
            codes, model = tables[i], stack.model(i)
            need = self._unproved(model, codes)
            if need is None or need.size > REBUILD_FRACTION * codes.shape[0]:
                check_interrupt()
                if time.monotonic() > deadline:
                    return False
                self._rebuild(stack, i, model, codes, collector, counts)
                continue
            self.counts["proved"] += codes.shape[0] - need.size
            if need.size:
                pending[i] = codes[torch.as_tensor(need, device=codes.device)]
        if pending and time.monotonic() > deadline:
            return False
        self._solve_pending(stack, pending, collector, counts)
        return True

    # ------------------------------------------------------------------------------------------ the proof

    def _unproved(self, model: Any, codes: Tensor) -> np.ndarray | None:
        """Indices of the cells (rows of ``codes``) whose candidate is not proved outside its cell; None when
        there is no usable reference."""
        bound = self.change_bound(model, codes)
        if bound is None:
            return None
        index, change = bound
        margin = np.where(index >= 0, self._margin[index], -np.inf)
        with np.errstate(invalid="ignore"):
            proved = np.isfinite(change) & (SAFETY * change < margin)
        return np.flatnonzero(~proved)

    def change_bound(self, model: Any, codes: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """For every cell (row of ``codes``): its index among the reference cells (-1: new) and a bound on how
        far the violation of its reference's most violated switch moved since the reference (inf for new
        cells or where the bound fails).  None when there is no usable reference."""
        if self.reference is None or self._words is None or self._n_switches != codes.shape[1]:
            return None
        if not _same_shapes(model, self.reference):
            return None
        drift_J, drift_c = model.piece_drift(self.reference)
        index = self._lookup(codes.cpu().numpy())
        rows = np.where(index >= 0, index, 0)
        G, g = (t.detach().cpu().double().numpy() for t in model.switching_planes())
        G_ref, g_ref = self._planes
        z_norm, kappa, plane = self._z_norm[rows], self._kappa[rows], self._plane[rows]
        # Per switch first (S values), then gathered per cell: the cells outnumber the switches by far.
        plane_shift = np.linalg.norm(G - G_ref, axis=1)[plane]
        offset_shift = np.abs(g - g_ref)[plane]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            denominator = 1.0 - kappa * drift_J
            moved = np.where(denominator > 0, kappa * (drift_J * z_norm + drift_c) / denominator, np.inf)
            change = plane_shift * (z_norm + moved) + self._plane_norms[plane] * moved + offset_shift
        change = np.where((index >= 0) & ~np.isnan(change), change, np.inf)
        return index, change

    def _lookup(self, codes: np.ndarray) -> np.ndarray:
        """Each row's index among the reference cells, -1 when it is not one of them."""
        words = _packed_words(codes)
        hashes = _row_hashes(words)
        position = np.clip(np.searchsorted(self._hashes, hashes), 0, len(self._hashes) - 1)
        candidate = self._order[position]
        same = self._hashes[position] == hashes
        if words.shape[1] > 1:  # up to 64 switches the hash is the code itself
            same &= (self._words[candidate] == words).all(axis=1)
        return np.where(same, candidate, -1)

    # ------------------------------------------------------------------------------------------ exact solves

    def _rebuild(self, stack: ModelStack, i: int, model: Any, codes: Tensor, collector: Any, counts: dict) -> None:
        """Solve every cell of step ``i`` exactly and make it the reference."""
        single = stack.select([i]) if stack.n_steps > 1 else stack
        z_parts, kappa_parts = [], []
        for begin in range(0, codes.shape[0], CHUNK):
            chunk = codes[begin : begin + CHUNK]
            evaluation = _scyfi.evaluate(single.affine_pieces, single.step_with_codes, chunk[None, :, None, :])
            collector.add_evaluation(evaluation, rows_to_steps=[i])
            z_parts.append(evaluation.z1[0].double().cpu())
            system = -evaluation.products[0].double()
            system.diagonal(dim1=-2, dim2=-1).add_(1.0)
            kappa_parts.append(_inverse_norm_bound(system, evaluation.solvable[0]).cpu())
        counts["solved"][i] += codes.shape[0]
        G, g = (t.detach().cpu().double().numpy() for t in model.switching_planes())
        z = torch.cat(z_parts).numpy()
        codes_np = codes.cpu().numpy()
        # How far each candidate is on the wrong side of each switch (> 0: violated); the most violated one.
        inputs = z @ G.T + g
        violation = np.where(codes_np, -inputs, inputs)
        self._plane = violation.argmax(axis=1)
        self._margin = violation[np.arange(len(z)), self._plane]
        self._z_norm = np.linalg.norm(z, axis=1)
        self._kappa = torch.cat(kappa_parts).numpy()
        self._words, self._n_switches, self._planes = _packed_words(codes_np), codes_np.shape[1], (G, g)
        self._plane_norms = np.linalg.norm(G, axis=1)
        hashes = _row_hashes(self._words)
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]
        self.reference = detached_copy(model)
        self.counts["rebuilt"] += 1

    def _solve_pending(self, stack: ModelStack, pending: dict[int, Tensor], collector: Any, counts: dict) -> None:
        """Solve the unproved cells of every step, batched over steps of similar counts (a step's cells are
        padded to the largest count of its group, and counts range from tens to thousands of cells)."""
        for i, codes in pending.items():
            counts["solved"][i] += codes.shape[0]
            self.counts["solved"] += codes.shape[0]
        for group in _groups_of_similar_size({i: codes.shape[0] for i, codes in pending.items()}):
            width = max(pending[i].shape[0] for i in group)
            padded = torch.zeros((len(group), width, stack.n_switches), dtype=torch.bool, device=stack.device)
            valid = torch.zeros((len(group), width), dtype=torch.bool, device=stack.device)
            for row, i in enumerate(group):
                padded[row, : pending[i].shape[0]] = pending[i]
                valid[row, : pending[i].shape[0]] = True
            part = stack if group == list(range(stack.n_steps)) else stack.select(group)
            evaluation = _scyfi.evaluate(part.affine_pieces, part.step_with_codes, padded[:, :, None, :])
            evaluation.real &= valid
            collector.add_evaluation(evaluation, rows_to_steps=group)


def _groups_of_similar_size(sizes: dict[int, int], spread: float = 1.5) -> list[list[int]]:
    """The keys of ``sizes`` in groups whose largest size is at most ``spread`` times their smallest (each group
    in ascending key order): padding a group to its largest size then wastes less than a third of the work.

    >>> _groups_of_similar_size({0: 10, 1: 4000, 2: 12, 3: 3000, 4: 11})
    [[0, 2, 4], [1, 3]]
    """
    groups: list[list[int]] = []
    smallest = 0
    for key in sorted(sizes, key=lambda k: (sizes[k], k)):
        if not groups or sizes[key] > spread * max(smallest, 1):
            groups.append([])
            smallest = sizes[key]
        groups[-1].append(key)
    return [sorted(group) for group in groups]


def _inverse_norm_bound(system: Tensor, solvable: Tensor) -> Tensor:
    """An upper bound on ``‖system⁻¹‖₂`` per matrix: the computed inverse's Frobenius norm (at least the
    spectral norm), with room for its rounding; inf where the system is singular or too ill-conditioned for
    that room (the cell is then solved at every step, never proved)."""
    inverse, info = torch.linalg.inv_ex(system)
    norm = torch.linalg.matrix_norm(inverse)  # Frobenius
    condition = norm * torch.linalg.matrix_norm(system)
    fine = solvable & (info == 0) & torch.isfinite(norm) & (condition < 1e8)
    return torch.where(fine, norm * (1 + 1e-6), torch.inf)


def _same_shapes(model: Any, reference: Any) -> bool:
    """Whether ``model`` and ``reference`` are the same kind of model with parameters of the same shapes (a
    tracker reused for another model must not compare pieces across them)."""
    if type(model) is not type(reference):
        return False
    ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
    return ours.keys() == theirs.keys() and all(ours[name].shape == theirs[name].shape for name in ours)


def _packed_words(codes: np.ndarray) -> np.ndarray:
    """Every bool row packed into 64-bit words, ``(R, ceil(S / 64))``, the first switch in the highest bit: rows
    in lexicographic order (as listings come) have ascending words, which binary search finds fastest."""
    packed = np.packbits(codes, axis=1)
    padded = np.zeros((packed.shape[0], -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(">u8").astype(np.uint64)


def _row_hashes(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every packed row: the row itself when it is one word, else a mix of its words
    (collisions are then told apart by comparing the words)."""
    if words.shape[1] == 1:
        return words[:, 0].copy()
    multipliers = (np.arange(words.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (words * multipliers).sum(axis=1, dtype=np.uint64)
