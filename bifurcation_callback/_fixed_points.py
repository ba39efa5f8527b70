"""The exhaustive fixed-point enumeration of a training run, step after step, re-solving only what may have changed.

Every cell (region) of a shallow PLRNN's switching planes has one candidate fixed point, the solution of
``(I - J_D) z = c_D``; it is a fixed point when it lies in its cell.  Enumerating all of them costs one solve per
cell (20,876 for the README's ShallowPLRNN(3, 50)) at every monitored step, while training moves the weights
only a little.  ``FixedPointCache`` keeps, for every cell, what its last solve found: the norm of its candidate
``z``, ``κ = ‖(I - J_D)⁻¹‖`` and the switch ``l`` the candidate violates most, by ``margin``.  From one step to
the next the pieces move by at most ``ε_J`` and ``ε_c`` (``model.piece_drift`` against the previous step, bounds
over all cells at once), so

    ‖Δz‖ ≤ κ (ε_J ‖z‖ + ε_c) / (1 − κ ε_J)
    |Δ(G_l z + g_l)| ≤ ‖ΔG_l‖ (‖z‖ + ‖Δz‖) + ‖G_l‖ ‖Δz‖ + |Δg_l|

and over several steps, by the triangle inequality, the same holds with the sums of the steps' drifts (of the
pieces, of each switch's ``G_l`` and ``g_l``) since the cell's solve, with ``‖z‖``, ``κ`` and ``G_l`` of that solve.
The cache keeps the running sums, and per cell their values at its solve; while the bound stays below the cell's
margin (with a safety factor) the candidate is still outside its cell: proved, not solved.  Cells without that proof
(the fixed points themselves, candidates near their cell's border, cells new to the listing, cells whose margin is
spent) are solved exactly and start again from their new solve, so a cell is re-solved about as often as its own
margin requires, not whenever the cells on average have drifted far.  When more than ``REBUILD_FRACTION`` of a step's
cells need solving, it solves every cell.  The result is the exhaustive enumeration's, cycle for cycle: every real
fixed point is solved exactly at every step.

The sums cost one ``piece_drift`` per step and are nearly as tight as the drift from the solve's step itself
(weights move along near-straight paths: over 49 steps of the bench case, the sum of the steps' drifts exceeds
the direct drift by 3 %).  Each step's decisions depend only on that step's model and the
state the previous steps left, and each step's cells are solved alone (never in a batch with other steps', whose
shape would change the rounding), so steps analysed together take the same decisions as steps analysed one at a
time.  Private: ``tracking.CycleTracker`` holds one.
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

# More cells than this fraction without a proof: the step solves every cell.
REBUILD_FRACTION = 0.5
# The spent bound must stay below margin / SAFETY: room for the rounding of the cell's own solve.
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
        self.previous: Any = None  # the model at the last step analysed
        self.counts = {"rebuilt": 0, "proved": 0, "solved": 0}
        self._hashes: np.ndarray | None = None  # per known cell, sorted
        self._order: np.ndarray | None = None  # known cell index of each sorted hash
        self._words: np.ndarray | None = None  # (R, W) uint64: the known cells' codes, packed
        self._n_switches = 0
        # Per known cell, from its last solve: "z_norm" ‖z‖, "kappa" κ, "plane" the switch its candidate violates
        # most, "margin" by how much, "plane_norm" that switch's ‖G_l‖, and "at_<sum>" the running sums then.
        self._cells: dict[str, np.ndarray] = {}
        self._spent: np.ndarray | None = None  # per known cell, the bound spent since its solve
        # Running sums of the steps' drifts: of the pieces (J, c) and per switch (G: ‖ΔG_l‖, g: |Δg_l|).
        self._sums: dict[str, Any] = {}
        self._planes: tuple[np.ndarray, np.ndarray] | None = None  # (G, g) at the previous step

    @staticmethod
    def applies(model: Any) -> bool:
        """Whether ``model`` bounds how far its pieces move (``piece_drift``), which the proof needs."""
        return callable(getattr(model, "piece_drift", None)) and callable(getattr(model, "switching_planes", None))

    def enumerate(self, stack: ModelStack, tables: list[Tensor], collector: Any, steps: list[int],
                  counts: dict[str, list[int]], deadline: float = math.inf) -> bool:
        """Every fixed point of the stack's steps ``steps`` (indices), into ``collector``; ``tables[i]`` are
        step ``i``'s cells.  Returns False when the deadline stopped it.  ``counts`` gets each step's solves."""
        for i in steps:
            check_interrupt()
            if time.monotonic() > deadline:
                return False
            codes, model = tables[i], stack.model(i)
            advanced = self._advance(model, codes, stack.owns_models)
            if advanced is None or advanced[0].size > REBUILD_FRACTION * codes.shape[0]:
                self._rebuild(model, stack.owns_models, i, codes, collector, counts)
                continue
            need, index = advanced
            self.counts["proved"] += codes.shape[0] - need.size
            if need.size:
                chosen = torch.as_tensor(need, device=codes.device)
                self._solve(model, i, codes[chosen], index[need], collector, counts)
        return True

    # ------------------------------------------------------------------------------------------ the proof

    def _advance(self, model: Any, codes: Tensor, owned: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Carry every known cell's bounds to ``model`` (the next step); returns the rows of ``codes`` whose
        candidate is not proved outside its cell and every row's known cell (-1: new), or None when there is
        no usable previous step.  ``owned``: ``model`` is a ``ModelStack``'s own (kept without a copy)."""
        if self.previous is None or self._words is None or self._n_switches != codes.shape[1]:
            return None
        if not _same_shapes(model, self.previous):
            return None
        drift_J, drift_c = model.piece_drift(self.previous)
        G, g = (t.detach().cpu().double().numpy() for t in model.switching_planes())
        G_before, g_before = self._planes
        sums = self._sums
        sums["J"] += drift_J
        sums["c"] += drift_c
        sums["G"] = sums["G"] + np.linalg.norm(G - G_before, axis=1)
        sums["g"] = sums["g"] + np.abs(g - g_before)
        self._step_to(model, owned, G, g)
        # Drifts since each cell's solve, rounded up (the running sums are subtracted).
        cells = self._cells
        drift_J, drift_c = ((sums[name] - cells["at_" + name]) * (1 + 1e-9) for name in ("J", "c"))
        shift_G, shift_g = ((sums[name][cells["plane"]] - cells["at_" + name]) * (1 + 1e-9) for name in ("G", "g"))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            kappa, z_norm = cells["kappa"], cells["z_norm"]
            denominator = 1.0 - kappa * drift_J
            moved = np.where(denominator > 0, kappa * (drift_J * z_norm + drift_c) / denominator, np.inf)
            change = shift_G * (z_norm + moved) + cells["plane_norm"] * moved + shift_g
            self._spent = np.where(np.isnan(change), np.inf, change)
            proved_known = SAFETY * self._spent < cells["margin"]
        index = self._lookup(codes.cpu().numpy())
        proved = (index >= 0) & proved_known[np.where(index >= 0, index, 0)]
        return np.flatnonzero(~proved), index

    def lower_bounds(self) -> np.ndarray:
        """Per known cell, a lower bound on how far its candidate now violates its tracked switch
        (``margin − spent``; negative or -inf: none)."""
        return self._cells["margin"] - self._spent

    def _lookup(self, codes: np.ndarray) -> np.ndarray:
        """Each row's index among the known cells, -1 when it is not one of them."""
        words = _packed_words(codes)
        hashes = _row_hashes(words)
        position = np.clip(np.searchsorted(self._hashes, hashes), 0, len(self._hashes) - 1)
        candidate = self._order[position]
        same = self._hashes[position] == hashes
        if words.shape[1] > 1:  # up to 64 switches the hash is the code itself
            same &= (self._words[candidate] == words).all(axis=1)
        return np.where(same, candidate, -1)

    # ------------------------------------------------------------------------------------------ exact solves

    def _rebuild(self, model: Any, owned: bool, i: int, codes: Tensor, collector: Any, counts: dict) -> None:
        """Solve every cell of step ``i`` exactly; they become the known cells."""
        G, g = (t.detach().cpu().double().numpy() for t in model.switching_planes())
        codes_np = codes.cpu().numpy()
        self._sums = {"J": 0.0, "c": 0.0, "G": np.zeros(G.shape[0]), "g": np.zeros(G.shape[0])}
        self._cells = self._solved_cells(model, i, codes, codes_np, G, g, collector)
        self._spent = np.zeros(codes_np.shape[0])
        counts["solved"][i] += codes.shape[0]
        self._words, self._n_switches = _packed_words(codes_np), codes_np.shape[1]
        hashes = _row_hashes(self._words)
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]
        self._step_to(model, owned, G, g)
        self.counts["rebuilt"] += 1

    def _solve(self, model: Any, i: int, codes: Tensor, index: np.ndarray, collector: Any, counts: dict) -> None:
        """Solve the given cells of step ``i`` (``index``: their known cell, -1 for new ones) and start their
        bounds again from these solves; new cells become known."""
        G, g = self._planes
        codes_np = codes.cpu().numpy()
        fresh = self._solved_cells(model, i, codes, codes_np, G, g, collector)
        counts["solved"][i] += codes.shape[0]
        self.counts["solved"] += codes.shape[0]
        known, new = index >= 0, index < 0

        def updated(column: np.ndarray, values: np.ndarray) -> np.ndarray:
            column = column.copy()
            column[index[known]] = values[known]
            return np.concatenate([column, values[new]])

        self._cells = {name: updated(column, fresh[name]) for name, column in self._cells.items()}
        self._spent = updated(self._spent, np.zeros(len(index)))
        if new.any():
            words = _packed_words(codes_np[new])
            hashes = _row_hashes(words)
            order = np.argsort(hashes, kind="stable")
            numbers = self._words.shape[0] + np.arange(len(hashes))
            at = np.searchsorted(self._hashes, hashes[order])
            self._hashes = np.insert(self._hashes, at, hashes[order])
            self._order = np.insert(self._order, at, numbers[order])
            self._words = np.concatenate([self._words, words])

    def _solved_cells(self, model: Any, i: int, codes: Tensor, codes_np: np.ndarray, G: np.ndarray, g: np.ndarray,
                      collector: Any) -> dict[str, np.ndarray]:
        """``_solved`` for these cells, with their switch's ‖G_l‖ and the running sums now (``_cells``' layout)."""
        z_norm, kappa, plane, margin = _solved(model, i, codes, codes_np, G, g, collector)
        cells = {"z_norm": z_norm, "kappa": kappa, "plane": plane, "margin": margin,
                 "plane_norm": np.linalg.norm(G, axis=1)[plane]}
        cells.update({"at_" + name: np.full(len(plane), self._sums[name]) for name in ("J", "c")})
        cells.update({"at_" + name: self._sums[name][plane] for name in ("G", "g")})
        return cells

    def _step_to(self, model: Any, owned: bool, G: np.ndarray, g: np.ndarray) -> None:
        # A stack's own model is kept as it is (nothing changes it); a caller's model, which may change in
        # place before the next step, is copied.
        self.previous, self._planes = (model if owned else detached_copy(model)), (G, g)


def _solved(model: Any, i: int, codes: Tensor, codes_np: np.ndarray, G: np.ndarray, g: np.ndarray,
            collector: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Solve step ``i``'s cells ``codes`` alone: per cell ``‖z‖``, the bound ``κ``, the switch the candidate
    violates most and by how much (> 0: violated, the candidate is outside).

    Most candidates lie far outside their cells, so the solve here is only what the proof needs (one inverse
    per cell gives ``z`` and ``κ``); the cells whose candidate is inside, or so near the border that another
    rounding could put it inside, go through the finder's own kernel and checks (``_scyfi.evaluate``, into
    ``collector``), which decide and verify the fixed points.
    """
    step_with_codes = _scyfi.model_functions(model)[1]
    z_parts, kappa_parts = [], []
    for begin in range(0, codes.shape[0], CHUNK):
        J, c = model.affine_pieces(codes[begin : begin + CHUNK])
        eps = torch.finfo(J.dtype).eps
        system = -J.double()
        system.diagonal(dim1=-2, dim2=-1).add_(1.0)
        inverse, info = torch.linalg.inv_ex(system)
        z_parts.append((inverse @ c.double().unsqueeze(-1)).squeeze(-1).cpu())
        kappa_parts.append(_inverse_norm_bound(system, inverse, info).cpu())
    z, kappa = torch.cat(z_parts).numpy(), torch.cat(kappa_parts).numpy()
    inputs = z @ G.T + g
    violation = np.where(codes_np, -inputs, inputs)
    plane = violation.argmax(axis=1)
    margin, z_norm = violation[np.arange(len(z)), plane], np.linalg.norm(z, axis=1)
    with np.errstate(invalid="ignore", over="ignore"):
        slack = 1e3 * eps * (1 + kappa) * (1 + z_norm) * (1 + np.linalg.norm(G, axis=1)[plane])
        near = np.flatnonzero(~(margin > slack))  # NaN (no solution) included
    for begin in range(0, len(near), CHUNK):
        rows = torch.as_tensor(near[begin : begin + CHUNK], device=codes.device)
        collector.add_evaluation(_scyfi.evaluate(model.affine_pieces, step_with_codes, codes[rows][None, :, None, :]),
                                 rows_to_steps=[i])
    return z_norm, kappa, plane, margin


def _inverse_norm_bound(system: Tensor, inverse: Tensor, info: Tensor) -> Tensor:
    """An upper bound on ``‖system⁻¹‖₂`` per matrix from its computed ``inverse`` (``torch.linalg.inv_ex``):
    the inverse's Frobenius norm (at least the spectral norm), with room for its rounding; inf where the system
    is singular or too ill-conditioned for that room (the cell is then solved at every step, never proved)."""
    norm = torch.linalg.matrix_norm(inverse)  # Frobenius
    condition = norm * torch.linalg.matrix_norm(system)
    fine = (info == 0) & torch.isfinite(norm) & (condition < 1e8)
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
