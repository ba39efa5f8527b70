"""Acceptance check of issue 20 ("no false events") on the README's own training example.

Acceptance text: *README GTF example, 300 steps, default monitor: the order-1 (count, stable) equals the exact count
at every analysed step, and no order-1 appearance where the exact count did not rise.*

The README's example (ShallowPLRNN(3, 50) trained by GTF with the adaptive alpha on Lorenz-63, seq_len 200,
batch 16) is trained for ``--steps`` optimizer steps (``seed_everything(--seed)``) with
``BifurcationMonitor(max_order=4, every_n_steps=1)`` and every other setting at its default (``mode="auto"``,
which on this 2-core machine with torch's default threads is ``sync``).  A second callback copies the RNN's
weights in the same hook the monitor snapshots them (``on_train_batch_end``, after the batch's optimizer step) and
under the monitor's step number (``trainer.global_step - 1``: the first batch is step 0).

Afterwards every step's fixed points are counted exactly, in plain numpy, by code that shares nothing with the
package's cell listing or fixed-point search (no ``regions``, ``_arrangement``, ``_fixed_points``, ``_scyfi``,
``cycles``): with ``M = 3`` and 50 switching planes ``W2 z + h2 = 0`` whose normals span R^3 every cell of the
arrangement has a vertex, so the cells are the sign patterns seen around the vertices (every 3 planes meet in
one; the 2^3 sides of those 3 with the signs of the other planes there).  Each cell's affine piece is solved,
and its solution kept when its own sign pattern is that cell (strictly: a solution within 1e-9, relative, of one
of its planes is *ambiguous* and reported apart).  A fixed point is stable when the spectral radius of its
Jacobian is below 1 (within the monitor's neutral tolerance 1e-6 of 1: reported as ambiguous).

The monitor's records (``monitor.records``, the same as ``events.jsonl``) are then compared step by step:

* every step has a record, analysed (not skipped), with order 1 ``exhaustive``;
* order-1 ``(count, stable)`` equals the exact ``(count, stable)``;
* every order-1 birth event (a fixed point that did not exist at the bracket's low end: ``appearance``, a
  ``degenerate`` one coming in from infinity, or a ``border_collision`` nonsmooth-fold partner) is backed: the exact
  count rose over its bracket, or failing that the exact fixed point at the event's point lies in a cell that
  held none at the bracket's low end (a truly new fixed point; listed apart).  Vanishings are checked the same
  way in the other direction, for information.

A self-check (``--no-self-check`` skips it) first tests the independent listing on small random arrangements: its cells
against dense random sampling (every sampled pattern listed, every listed pattern not sampled confirmed by a
linear program) and its fixed points against solving all 2^H sign patterns.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/accept_readme_fixed_points.py [--steps 300] [--seed 0] [--out DIR] [--json FILE]

Exit status 0 when every step matches and every order-1 appearance is backed; 1 otherwise (mismatch, missing or
skipped record, order 1 not exhaustive, unbacked appearance, or a failed self-check).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A plane this close to a point (relative to |W2||z| + |h2|) leaves the point's side ambiguous in float64.
SIDE_TOLERANCE = 1e-9
# Spectral radii within this of 1 are neutral for the monitor (``_scyfi.NEUTRAL_TOLERANCE``): stability ambiguous.
NEUTRAL_TOLERANCE = 1e-6
# Normals of 3 planes (unit length) whose determinant is below this do not meet in one well-defined vertex.
SINGULAR_DETERMINANT = 1e-12
# A cell's system I - J whose smallest singular value is below this (relative to its largest) has no unique
# solution: reported apart (a line of fixed points or none).
SINGULAR_SYSTEM = 1e-12
# The event's point and the exact fixed point it names agree to this relative distance (both are solutions
# of the same float64 linear system; the monitor's is refined from a search).
POINT_RTOL = 1e-6
# Kinds of events that can report an order-1 birth or death (``bifurcations.events.BIFURCATION_KINDS``): a
# degenerate one comes in from (escapes to) infinity, a border collision without a partner before (after) is one
# branch of a nonsmooth fold.
BIRTH_KINDS = ("appearance", "degenerate", "border_collision")
DEATH_KINDS = ("disappearance", "degenerate", "border_collision")


# ------------------------------------------------------------------------------------------------------------
# The independent exact count


@dataclasses.dataclass(frozen=True)
class Arrangement:
    """The cells of the arrangement of planes ``planes @ z + offsets = 0`` listed from its vertices.

    Attributes
    ----------
    codes : ndarray, shape (K, H), bool
        One row per cell: ``True`` where ``planes @ z + offsets > 0`` inside it.
    n_vertices : int
        Vertices used (M-subsets of planes with independent normals).
    n_singular_subsets : int
        M-subsets without a unique vertex (normals nearly dependent): skipped.
    n_crowded_vertices : int
        Vertices with a further plane within ``SIDE_TOLERANCE`` of them: not in general position, so the cells
        around them may be incomplete (0 for generic weights).
    """

    codes: np.ndarray
    n_vertices: int
    n_singular_subsets: int
    n_crowded_vertices: int


def general_position_cell_count(n_planes: int, dim: int) -> int:
    """Cells of ``n_planes`` affine planes in general position in R^dim: the sum of C(H, i) for i <= dim."""
    return sum(math.comb(n_planes, i) for i in range(dim + 1))


def unique_rows(codes: np.ndarray) -> np.ndarray:
    """The distinct rows of a bool array, sorted (packed to bytes first: fast for 10^5 rows)."""
    if len(codes) == 0:
        return codes.reshape(0, codes.shape[1])
    # Rows as big-endian 64-bit words (numeric order = row order): sorting a few integer columns is ~20x
    # faster than np.unique(axis=0), which sorts the rows as opaque byte strings.
    packed = np.packbits(codes, axis=1)
    padded = np.zeros((len(packed), -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    words = padded.view(">u8")
    ordered = words[np.lexsort(words.T[::-1])]
    fresh = np.ones(len(ordered), dtype=bool)
    fresh[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    distinct = ordered[fresh].view(np.uint8)
    return np.unpackbits(distinct, axis=1, count=codes.shape[1]).astype(bool)


def arrangement_cells(planes: np.ndarray, offsets: np.ndarray) -> Arrangement:
    """Every cell of the arrangement ``planes @ z + offsets = 0`` (H planes in R^M, normals spanning R^M).

    A cell of such an arrangement contains no line, so it has a vertex; around a vertex where exactly M planes
    meet, all 2^M sign choices of those planes are cells (their normals are independent), with every other
    plane's sign as at the vertex.  The union over all vertices is therefore every cell, bounded or not.

    Parameters
    ----------
    planes : ndarray, shape (H, M)
    offsets : ndarray, shape (H,)

    Returns
    -------
    Arrangement

    Examples
    --------
    >>> cells = arrangement_cells(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), np.array([0.0, 0.0, -1.0]))
    >>> len(cells.codes), general_position_cell_count(3, 2)
    (7, 7)
    """
    planes = np.asarray(planes, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    n_planes, dim = planes.shape
    if np.linalg.matrix_rank(planes) < dim:
        raise ValueError(f"the {n_planes} normals span only a subspace of R^{dim}: some cells have no vertex")
    # Unit normals: the tolerances below then compare distances, whatever each row's scale.
    norms = np.linalg.norm(planes, axis=1)
    normals, shifts = planes / norms[:, None], offsets / norms
    subsets = np.array(list(itertools.combinations(range(n_planes), dim)), dtype=np.int64)
    matrices = normals[subsets]
    independent = np.abs(np.linalg.det(matrices)) > SINGULAR_DETERMINANT
    subsets, matrices = subsets[independent], matrices[independent]
    vertices = np.linalg.solve(matrices, -shifts[subsets][..., None])[..., 0]
    values = vertices @ normals.T + shifts
    rows = np.arange(len(subsets))[:, None]
    scale = np.abs(vertices) @ np.abs(normals).T + np.abs(shifts)
    crowded = np.abs(values) <= SIDE_TOLERANCE * scale
    crowded[rows, subsets] = False  # the vertex's own planes pass through it by construction
    base = values > 0
    codes = []
    for signs in itertools.product((False, True), repeat=dim):
        code = base.copy()
        code[rows, subsets] = np.array(signs)
        codes.append(code)
    return Arrangement(
        codes=unique_rows(np.concatenate(codes)),
        n_vertices=len(subsets),
        n_singular_subsets=int((~independent).sum()),
        n_crowded_vertices=int(crowded.any(axis=1).sum()),
    )


@dataclasses.dataclass(frozen=True)
class ExactFixedPoints:
    """The fixed points of one shallow PLRNN ``z' = A*z + W1 relu(W2 z + h2) + h1``, enumerated over every cell.

    Attributes
    ----------
    points : ndarray, shape (n, M)
        Fixed points strictly inside their cells.
    codes : ndarray, shape (n, H), bool
        Their cells.
    spectral_radii : ndarray, shape (n,)
        Largest |eigenvalue| of each one's Jacobian ``diag(A) + W1 diag(code) W2``.
    n_cells : int
        Cells of the arrangement (``general_position_cell_count(H, M)`` in general position).
    ambiguous : ndarray, shape (a, M)
        Solutions of a cell's piece that agree with the cell except on planes within ``SIDE_TOLERANCE`` of them:
        possibly fixed points on a border (counted in neither ``count`` nor ``stable``).
    n_singular_cells : int
        Cells whose piece ``I - J`` is singular (no unique solution).
    n_crowded_vertices : int
        ``Arrangement.n_crowded_vertices``.
    max_residual : float
        Largest ``|f(z) - z| / (1 + |z|)`` of the fixed points under the true (ReLU) map.
    """

    points: np.ndarray
    codes: np.ndarray
    spectral_radii: np.ndarray
    n_cells: int
    ambiguous: np.ndarray
    n_singular_cells: int
    n_crowded_vertices: int
    max_residual: float

    @property
    def count(self) -> int:
        return len(self.points)

    @property
    def stable(self) -> int:
        return int((self.spectral_radii < 1.0).sum())

    @property
    def n_neutral(self) -> int:
        """Fixed points whose stability is ambiguous (spectral radius within ``NEUTRAL_TOLERANCE`` of 1)."""
        return int((np.abs(self.spectral_radii - 1.0) <= NEUTRAL_TOLERANCE).sum())

    def cell_keys(self) -> set[bytes]:
        return {np.packbits(code).tobytes() for code in self.codes}


def shallow_map(weights: Mapping[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The true map ``A*z + W1 relu(W2 z + h2) + h1`` for states ``z`` of shape (n, M)."""
    hidden = np.maximum(z @ weights["W2"].T + weights["h2"], 0.0)
    return weights["A"] * z + hidden @ weights["W1"].T + weights["h1"]


def exact_fixed_points(weights: Mapping[str, np.ndarray]) -> ExactFixedPoints:
    """Every fixed point of a shallow PLRNN, by solving the affine piece of every cell.

    Parameters
    ----------
    weights : mapping
        ``A`` (M,), ``W1`` (M, H), ``W2`` (H, M), ``h1`` (M,), ``h2`` (H,) as float64 arrays (the names and
        shapes of ``models.ShallowPLRNN``).

    Returns
    -------
    ExactFixedPoints

    Examples
    --------
    >>> one_d = {"A": np.array([0.5]), "W1": np.array([[1.0]]), "W2": np.array([[1.0]]),
    ...          "h1": np.array([-0.25]), "h2": np.array([0.0])}   # z' = z/2 - 1/4, plus z for z > 0
    >>> found = exact_fixed_points(one_d)   # z < 0: -1/2 (slope 1/2, stable); z > 0: 1/2 (slope 3/2, unstable)
    >>> found.points.ravel().tolist(), found.stable
    ([-0.5, 0.5], 1)
    """
    A, W1, W2, h1, h2 = (np.asarray(weights[name], dtype=np.float64) for name in ("A", "W1", "W2", "h1", "h2"))
    dim = len(A)
    arrangement = arrangement_cells(W2, h2)
    codes = arrangement.codes
    gates = codes.astype(np.float64)
    jacobians = np.diag(A)[None] + np.einsum("mh,kh,hn->kmn", W1, gates, W2)
    constants = (gates * h2) @ W1.T + h1
    systems = np.eye(dim)[None] - jacobians
    singular_values = np.linalg.svd(systems, compute_uv=False)
    solvable = singular_values[:, -1] > SINGULAR_SYSTEM * singular_values[:, 0]
    z = np.full((len(codes), dim), np.nan)
    z[solvable] = np.linalg.solve(systems[solvable], constants[solvable][..., None])[..., 0]
    values = z @ W2.T + h2
    scale = np.abs(z) @ np.abs(W2).T + np.abs(h2)
    clear = np.abs(values) > SIDE_TOLERANCE * scale
    agrees = (values > 0) == codes
    inside = solvable & np.all(agrees & clear, axis=1)
    ambiguous = solvable & np.all(agrees | ~clear, axis=1) & ~np.all(clear, axis=1)
    points = z[inside]
    residual = np.linalg.norm(shallow_map({"A": A, "W1": W1, "W2": W2, "h1": h1, "h2": h2}, points) - points, axis=1)
    radii = np.abs(np.linalg.eigvals(jacobians[inside])).max(axis=1) if inside.any() else np.zeros(0)
    return ExactFixedPoints(
        points=points,
        codes=codes[inside],
        spectral_radii=radii,
        n_cells=len(codes),
        ambiguous=z[ambiguous],
        n_singular_cells=int((~solvable).sum()),
        n_crowded_vertices=arrangement.n_crowded_vertices,
        max_residual=float(np.max(residual / (1.0 + np.linalg.norm(points, axis=1)), initial=0.0)),
    )


# ------------------------------------------------------------------------------------------------------------
# Self-check of the independent count on small arrangements


def sampled_codes(planes: np.ndarray, offsets: np.ndarray, *, n: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct sign patterns of random states around the vertices and the origin, at scales 1e-3 to 1e3."""
    n_planes, dim = planes.shape
    centres = [np.zeros(dim)]
    for subset in itertools.combinations(range(n_planes), dim):
        rows = list(subset)
        if abs(np.linalg.det(planes[rows])) > 1e-9:
            centres.append(np.linalg.solve(planes[rows], -offsets[rows]))
    centres = np.asarray(centres)
    z = centres[rng.integers(len(centres), size=n)] + 10.0 ** rng.uniform(-3, 3, size=(n, 1)) * rng.standard_normal((n, dim))
    values = z @ planes.T + offsets
    clear = np.all(np.abs(values) > 1e-9 * (np.abs(z) @ np.abs(planes).T + np.abs(offsets)), axis=1)
    return unique_rows(values[clear] > 0)


def is_cell(planes: np.ndarray, offsets: np.ndarray, code: np.ndarray) -> bool:
    """Whether a sign pattern is a (non-empty, open) cell: a linear program maximising the smallest slack ``t``
    of ``s_i (n_i . z + c_i) >= t`` over unit normals, ``t <= 1``; a cell iff ``t > 1e-12``."""
    from scipy.optimize import linprog

    norms = np.linalg.norm(planes, axis=1)
    signs = np.where(code, 1.0, -1.0)
    dim = planes.shape[1]
    constraints = np.hstack([-signs[:, None] * planes / norms[:, None], np.ones((len(code), 1))])
    result = linprog(np.r_[np.zeros(dim), -1.0], A_ub=constraints, b_ub=signs * offsets / norms,
                     bounds=[(None, None)] * dim + [(None, 1.0)], method="highs")
    return result.status == 0 and -result.fun > 1e-12


def brute_force_fixed_points(weights: Mapping[str, np.ndarray]) -> set[bytes]:
    """Cells (packed codes) holding a fixed point, by solving the piece of every one of the 2^H sign patterns."""
    A, W1, W2, h1, h2 = (weights[name] for name in ("A", "W1", "W2", "h1", "h2"))
    found = set()
    for bits in itertools.product((False, True), repeat=len(h2)):
        code = np.array(bits)
        gate = code.astype(np.float64)
        system = np.eye(len(A)) - np.diag(A) - W1 @ (gate[:, None] * W2)
        if np.linalg.svd(system, compute_uv=False)[-1] <= SINGULAR_SYSTEM * np.linalg.norm(system, 2):
            continue
        z = np.linalg.solve(system, W1 @ (gate * h2) + h1)
        values = W2 @ z + h2
        if np.all((values > 0) == code) and np.all(np.abs(values) > SIDE_TOLERANCE * (np.abs(W2) @ np.abs(z) + np.abs(h2))):
            found.add(np.packbits(code).tobytes())
    return found


def random_small_model(rng: np.random.Generator, dim: int, hidden: int) -> dict[str, np.ndarray]:
    """A small shallow PLRNN with a few fixed points (strong W1 makes the pieces' slopes vary a lot)."""
    return {
        "A": rng.uniform(-0.9, 0.9, dim),
        "W1": rng.normal(0.0, 1.5, (dim, hidden)),
        "W2": rng.normal(0.0, 1.0, (hidden, dim)),
        "h1": rng.normal(0.0, 0.5, dim),
        "h2": rng.normal(0.0, 1.0, hidden),
    }


def self_check(n_models: int = 12, *, seed: int = 0, n_samples: int = 100_000) -> dict[str, Any]:
    """The independent listing against references that do not rely on vertices, on small random models
    (M in {2, 3}, H in 4..9).

    Returns
    -------
    dict
        ``models``; ``cells_count_wrong`` (models whose cell count is not the general-position count);
        ``sampled_not_listed`` (sampled patterns missing from the listing: a missed cell); ``listed_not_cells``
        (listed patterns not sampled that a linear program finds empty); ``lp_checked``; ``fixed_points``
        (in all) and ``fixed_point_disagreements`` (models whose cells with a fixed point differ from solving
        all 2^H patterns); ``ok``.
    """
    rng = np.random.default_rng(seed)
    totals = Counter()
    for index in range(n_models):
        dim, hidden = (2, 3)[index % 2], int(rng.integers(4, 10))
        weights = random_small_model(rng, dim, hidden)
        cells = arrangement_cells(weights["W2"], weights["h2"])
        listed = {np.packbits(code).tobytes() for code in cells.codes}
        sampled = sampled_codes(weights["W2"], weights["h2"], n=n_samples, rng=rng)
        sampled_keys = {np.packbits(code).tobytes() for code in sampled}
        totals["cells_count_wrong"] += len(listed) != general_position_cell_count(hidden, dim)
        totals["sampled_not_listed"] += len(sampled_keys - listed)
        unsampled = [code for code in cells.codes if np.packbits(code).tobytes() not in sampled_keys]
        totals["lp_checked"] += len(unsampled)
        totals["listed_not_cells"] += sum(not is_cell(weights["W2"], weights["h2"], code) for code in unsampled)
        exact = exact_fixed_points(weights)
        totals["fixed_points"] += exact.count
        totals["fixed_point_disagreements"] += exact.cell_keys() != brute_force_fixed_points(weights)
        totals["models"] += 1
    result = dict(totals)
    result["ok"] = all(result.get(key, 0) == 0 for key in
                       ("cells_count_wrong", "sampled_not_listed", "listed_not_cells", "fixed_point_disagreements"))
    return result


# ------------------------------------------------------------------------------------------------------------
# Training the README example with the monitor


def weight_recorder_class() -> type:
    """The callback that copies the RNN's weights where and when the monitor snapshots them (defined on demand:
    importing this module needs no Lightning)."""
    import lightning.pytorch as pl

    class WeightRecorder(pl.Callback):
        """Copies ``pl_module.rnn``'s parameters (float64 numpy) in ``on_train_batch_end``, after the batch's
        optimizer step, under ``trainer.global_step - 1`` (one optimizer, no accumulation: the step Lightning
        logs the batch's metrics at, the monitor's step)."""

        def __init__(self) -> None:
            self.weights: dict[int, dict[str, np.ndarray]] = {}
            self.counter_disagreements: list[tuple[int, int]] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            step = int(trainer.global_step) - 1
            # The counter Lightning's logger connector uses (private): it must agree with global_step - 1.
            stepped = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", step)
            if stepped != step:
                self.counter_disagreements.append((step, int(stepped)))
            self.weights[step] = {name: parameter.detach().double().cpu().numpy().copy()
                                  for name, parameter in pl_module.rnn.named_parameters()}

    return WeightRecorder


def train_readme_example(steps: int, seed: int, out_dir: Path) -> dict[str, Any]:
    """Train the README's GTF example for ``steps`` optimizer steps with the default monitor (max_order=4,
    every_n_steps=1 as in the README) and the weight recorder.

    Returns
    -------
    dict
        ``records`` (``monitor.records``), ``jsonl_records`` (``events.jsonl`` read back), ``weights`` (step →
        parameter dict), ``mode`` (the monitor's resolved mode), ``dropped_steps``, ``n_skipped``,
        ``counter_disagreements``, ``last_cycles`` (the monitor's last CycleSet), ``fit_s``.
    """
    import lightning.pytorch as pl

    from bifurcation_callback import BifurcationMonitor, DSRModule, ShallowPLRNN, TimeSeriesDataModule, lorenz63

    pl.seed_everything(seed, verbose=False)
    datamodule = TimeSeriesDataModule(lorenz63(5000), seq_len=200, batch_size=16)
    model = DSRModule(ShallowPLRNN(latent_dim=3, hidden_dim=50), training="gtf", alpha="adaptive")
    jsonl_path = out_dir / "events.jsonl"
    monitor = BifurcationMonitor(max_order=4, every_n_steps=1, jsonl_path=str(jsonl_path))
    recorder = weight_recorder_class()()
    trainer = pl.Trainer(
        max_steps=steps,
        max_epochs=steps // datamodule.n_batches_per_epoch + 2,  # max_steps ends the fit
        callbacks=[monitor, recorder],
        default_root_dir=str(out_dir),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, datamodule)
    fit_s = time.perf_counter() - started
    monitor.wait_for_figures()
    jsonl_records = [json.loads(line) for line in jsonl_path.read_text().splitlines() if line.strip()]
    return {
        "records": monitor.records,
        "jsonl_records": jsonl_records,
        "weights": recorder.weights,
        "mode": monitor.active_mode,
        "dropped_steps": monitor.dropped_steps,
        "n_skipped": monitor.n_skipped,
        "counter_disagreements": recorder.counter_disagreements,
        "last_cycles": monitor.cycles,
        "fit_s": fit_s,
        "trained_steps": int(trainer.global_step),
    }


# ------------------------------------------------------------------------------------------------------------
# The comparison


def is_order1_birth(event: Mapping[str, Any]) -> bool:
    """An order-1 event whose fixed point did not exist at the bracket's low end (no multipliers before)."""
    return (event.get("order") == 1 and event.get("kind") in BIRTH_KINDS
            and event.get("eigenvalues_before") is None and event.get("eigenvalues_after") is not None)


def is_order1_death(event: Mapping[str, Any]) -> bool:
    """An order-1 event whose fixed point no longer exists at the bracket's high end."""
    return (event.get("order") == 1 and event.get("kind") in DEATH_KINDS
            and event.get("eigenvalues_before") is not None and event.get("eigenvalues_after") is None)


def nearest_fixed_point(exact: ExactFixedPoints, point: Sequence[float] | None) -> tuple[int | None, float]:
    """Index of the exact fixed point nearest to ``point`` and its distance relative to ``1 + |point|``."""
    if point is None or exact.count == 0:
        return None, math.inf
    point = np.asarray(point, dtype=np.float64)
    distances = np.linalg.norm(exact.points - point, axis=1) / (1.0 + np.linalg.norm(point))
    index = int(np.argmin(distances))
    return index, float(distances[index])


def check_change(event: Mapping[str, Any], exact: Mapping[int, ExactFixedPoints], *, birth: bool) -> dict[str, Any]:
    """Whether the exact counts back one order-1 birth (or death) event.

    Backed ``"count"``: the exact count rose (fell) from the bracket's low to its high end.  Otherwise backed
    ``"new cell"`` when the exact fixed point at the event's point (within ``POINT_RTOL``) lies in a cell that
    held no fixed point at the other end of the bracket; else unbacked (``"no"``).
    """
    lo, hi = (int(step) for step in event["step_interval"])
    verdict: dict[str, Any] = {"step": int(event["step"]), "bracket": [lo, hi], "kind": event["kind"],
                               "verified": bool(event.get("verified", True)), "point": event.get("point")}
    if lo not in exact or hi not in exact:
        return {**verdict, "backed": "no", "why": "no exact count at the bracket's ends"}
    before, after = exact[lo], exact[hi]
    verdict["exact_counts"] = [before.count, after.count]
    if (after.count > before.count) if birth else (after.count < before.count):
        return {**verdict, "backed": "count"}
    here, other = (after, before) if birth else (before, after)
    index, distance = nearest_fixed_point(here, event.get("point"))
    verdict["point_distance"] = distance
    if index is None or distance > POINT_RTOL:
        return {**verdict, "backed": "no", "why": "the event's point is no exact fixed point at that end"}
    if np.packbits(here.codes[index]).tobytes() not in other.cell_keys():
        return {**verdict, "backed": "new cell"}
    return {**verdict, "backed": "no", "why": "its cell held a fixed point at the other end too"}


def compare_with_exact(records: Sequence[Mapping[str, Any]], exact: Mapping[int, ExactFixedPoints],
                       steps: Sequence[int]) -> dict[str, Any]:
    """Compare the monitor's order-1 records with the exact counts at every step of ``steps``.

    Parameters
    ----------
    records : sequence of dict
        ``monitor.records`` (or ``events.jsonl`` lines).
    exact : mapping of int to ExactFixedPoints
        The exact fixed points per step.
    steps : sequence of int
        The steps that must each have an analysed record.

    Returns
    -------
    dict
        ``missing`` (steps without a record), ``skipped`` (step, reason), ``duplicates``, ``not_exhaustive``
        (step, status), ``analysed``; ``count_mismatches`` and ``stable_mismatches`` (step, monitor, exact);
        ``event_point_distances`` (step, relative distance of each order-1 event's point to the nearest exact
        fixed point where the event says it exists: the weights compared are the ones the monitor analysed);
        ``births`` / ``deaths`` (every order-1 birth / death event with its verdict), ``unbacked_births`` /
        ``unbacked_deaths``; ``late_discoveries`` (order 1); ``ambiguous_steps`` (steps with a solution on a
        border, a neutral fixed point, a singular cell or a crowded vertex); ``exact_count_distribution``;
        ``ok`` (the acceptance: no missing, skipped or non-exhaustive step, no mismatch, every birth backed).
    """
    by_step: dict[int, list[Mapping[str, Any]]] = {}
    for record in records:
        by_step.setdefault(int(record["step"]), []).append(record)
    report: dict[str, Any] = {
        "missing": [], "skipped": [], "duplicates": [], "not_exhaustive": [], "analysed": 0,
        "count_mismatches": [], "stable_mismatches": [], "births": [], "deaths": [], "late_discoveries": [],
        "ambiguous_steps": [], "extra_records": sorted(set(by_step) - set(steps)), "event_point_distances": [],
    }
    for step in steps:
        found = by_step.get(step, [])
        if not found:
            report["missing"].append(step)
            continue
        if len(found) > 1:
            report["duplicates"].append(step)
        record = found[-1]
        if "skipped" in record:
            report["skipped"].append([step, record["skipped"]])
            continue
        report["analysed"] += 1
        status = record.get("statuses", {}).get("1")
        if status != "exhaustive":
            report["not_exhaustive"].append([step, status])
        truth = exact[step]
        if truth.ambiguous.size or truth.n_neutral or truth.n_singular_cells or truth.n_crowded_vertices:
            report["ambiguous_steps"].append({
                "step": step, "on_border": len(truth.ambiguous), "neutral": truth.n_neutral,
                "singular_cells": truth.n_singular_cells, "crowded_vertices": truth.n_crowded_vertices})
        count, stable = record.get("n_cycles", {}).get("1"), record.get("n_stable", {}).get("1")
        if count != truth.count:
            report["count_mismatches"].append([step, count, truth.count])
        if stable != truth.stable:
            report["stable_mismatches"].append([step, stable, truth.stable])
        for event in record.get("events", []):
            if event.get("order") == 1 and event.get("point") is not None:
                # The step alignment at every event: its point is a cycle point of the bracket's end it exists at.
                end = int(event["step_interval"][1 if event.get("eigenvalues_after") is not None else 0])
                if end in exact:
                    report["event_point_distances"].append([step, nearest_fixed_point(exact[end], event["point"])[1]])
            if is_order1_birth(event):
                report["births"].append(check_change(event, exact, birth=True))
            elif is_order1_death(event):
                report["deaths"].append(check_change(event, exact, birth=False))
        report["late_discoveries"].extend([step, late] for late in record.get("late_discoveries", [])
                                          if late.get("order") == 1)
    report["unbacked_births"] = [verdict for verdict in report["births"] if verdict["backed"] == "no"]
    report["unbacked_deaths"] = [verdict for verdict in report["deaths"] if verdict["backed"] == "no"]
    distribution = Counter(exact[step].count for step in steps if step in exact)
    report["exact_count_distribution"] = {str(k): distribution[k] for k in sorted(distribution)}
    stable_distribution = Counter(exact[step].stable for step in steps if step in exact)
    report["exact_stable_distribution"] = {str(k): stable_distribution[k] for k in sorted(stable_distribution)}
    report["ok"] = not (report["missing"] or report["skipped"] or report["duplicates"] or report["not_exhaustive"]
                        or report["count_mismatches"] or report["stable_mismatches"] or report["unbacked_births"])
    return report


# ------------------------------------------------------------------------------------------------------------
# The whole acceptance run


def run_acceptance(steps: int = 300, *, seed: int = 0, out_dir: str | Path | None = None,
                   with_self_check: bool = True, torch_threads: int | None = None) -> dict[str, Any]:
    """Train, count exactly, compare; the report (JSON-ready) with ``ok`` and the phases' wall times.

    ``torch_threads`` sets torch's intra-op threads before training (None: leave them); the monitor's default
    ``mode="auto"`` depends on it (async when a core is left for its worker).
    """
    import torch

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="accept_readme_"))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"steps": steps, "seed": seed, "out_dir": str(out), "torch_threads": torch.get_num_threads()}
    if with_self_check:
        started = time.perf_counter()
        report["self_check"] = self_check()
        timings["self_check_s"] = time.perf_counter() - started

    run = train_readme_example(steps, seed, out)
    timings["fit_s"] = run["fit_s"]
    report.update(mode=run["mode"], trained_steps=run["trained_steps"], records=len(run["records"]),
                  dropped_steps=run["dropped_steps"], monitor_skipped=run["n_skipped"],
                  counter_disagreements=run["counter_disagreements"],
                  jsonl_matches_records=run["jsonl_records"] == run["records"],
                  weights_recorded=sorted(run["weights"]) == list(range(steps)))

    started = time.perf_counter()
    exact = {step: exact_fixed_points(weights) for step, weights in run["weights"].items()}
    timings["exact_count_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report.update(compare_with_exact(run["records"], exact, list(range(steps))))
    # The step alignment, directly: the monitor's last fixed points are the exact ones of the last step's weights.
    last = exact.get(steps - 1)
    if run["last_cycles"] is not None and last is not None:
        points = [cycle.points[0] for cycle in run["last_cycles"] if cycle.order == 1]
        report["last_step_point_distance"] = max((nearest_fixed_point(last, point)[1] for point in points), default=0.0)
        if steps >= 2:  # for scale: what a step-numbering off by one would show
            before = exact[steps - 2]
            report["last_points_vs_previous_step"] = max((nearest_fixed_point(before, point)[1] for point in points),
                                                         default=0.0)
    timings["compare_s"] = time.perf_counter() - started
    report["cells_per_step"] = sorted({truth.n_cells for truth in exact.values()})
    report["general_position_cells"] = general_position_cell_count(50, 3)
    report["max_residual"] = max((truth.max_residual for truth in exact.values()), default=0.0)
    report["min_border_margin"] = min_border_margin(run["weights"], exact)
    report["min_radius_gap"] = float(min((np.min(np.abs(truth.spectral_radii - 1.0), initial=math.inf)
                                          for truth in exact.values()), default=math.inf))
    report["timings"] = timings
    report["ok"] = bool(report["ok"] and report["weights_recorded"] and not report["dropped_steps"]
                        and report["records"] == steps and report.get("self_check", {}).get("ok", True))
    return report


def min_border_margin(weights: Mapping[int, Mapping[str, np.ndarray]], exact: Mapping[int, ExactFixedPoints]) -> float:
    """Smallest relative distance ``|W2 z + h2| / (|W2||z| + |h2|)`` of any exact fixed point to a plane, over
    all steps: how far the count is from the ``SIDE_TOLERANCE`` ambiguity."""
    margins = []
    for step, truth in exact.items():
        if truth.count:
            W2, h2 = weights[step]["W2"], weights[step]["h2"]
            values = truth.points @ W2.T + h2
            margins.append(float(np.min(np.abs(values) / (np.abs(truth.points) @ np.abs(W2).T + np.abs(h2)))))
    return min(margins, default=math.inf)


def print_table(report: Mapping[str, Any]) -> None:
    """The short human summary of a report."""
    def steps_list(items: Sequence[Any], limit: int = 20) -> str:
        shown = ", ".join(str(item) for item in items[:limit])
        return f"{len(items)}" + (f" ({shown}{', ...' if len(items) > limit else ''})" if items else "")

    rows = [
        ("steps trained", f"{report['trained_steps']} (monitor mode {report['mode']}, torch threads {report['torch_threads']})"),
        ("records", f"{report['records']} (events.jsonl identical: {report['jsonl_matches_records']})"),
        ("analysed / skipped / dropped / missing",
         f"{report['analysed']} / {len(report['skipped'])} / {len(report['dropped_steps'])} / {len(report['missing'])}"),
        ("order 1 not exhaustive", steps_list(report["not_exhaustive"])),
        ("order-1 count mismatches (step, monitor, exact)", steps_list(report["count_mismatches"])),
        ("order-1 stable mismatches (step, monitor, exact)", steps_list(report["stable_mismatches"])),
        ("order-1 births (appearance / degenerate / fold)",
         f"{len(report['births'])}: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(b['kind'] for b in report['births']).items()))),
        ("  backed by a count rise / by a new cell / unbacked",
         f"{sum(b['backed'] == 'count' for b in report['births'])} / {sum(b['backed'] == 'new cell' for b in report['births'])}"
         f" / {len(report['unbacked_births'])}"),
        ("order-1 deaths (info): backed / unbacked",
         f"{len(report['deaths']) - len(report['unbacked_deaths'])} / {len(report['unbacked_deaths'])}"),
        ("order-1 late discoveries", str(len(report["late_discoveries"]))),
        ("exact fixed-point counts (count: steps)", json.dumps(report["exact_count_distribution"])),
        ("exact stable counts (count: steps)", json.dumps(report["exact_stable_distribution"])),
        ("cells per step (general position)", f"{report['cells_per_step']} ({report['general_position_cells']})"),
        ("steps with an ambiguous solution", steps_list([a["step"] for a in report["ambiguous_steps"]])),
        ("closest fixed point to a plane (relative)", f"{report['min_border_margin']:.2e}"),
        ("closest spectral radius to 1", f"{report['min_radius_gap']:.2e}"),
        ("largest residual |f(z) - z| / (1 + |z|)", f"{report['max_residual']:.1e}"),
        ("order-1 event points vs exact (rel., largest)",
         f"{max((d for _, d in report['event_point_distances']), default=float('nan')):.1e} "
         f"({len(report['event_point_distances'])} events)"),
        ("monitor's last fixed points vs exact (rel.)",
         f"{report.get('last_step_point_distance', float('nan')):.1e} (vs the step before's: "
         f"{report.get('last_points_vs_previous_step', float('nan')):.1e})"),
    ]
    if "self_check" in report:
        check = report["self_check"]
        rows.insert(0, ("self-check of the exact count", f"{'ok' if check['ok'] else 'FAILED'} {json.dumps(check)}"))
    timings = report["timings"]
    rows.append(("wall time", ", ".join(f"{key[:-2]} {value:.1f} s" for key, value in timings.items())))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    for verdict in report["unbacked_births"]:
        print(f"UNBACKED birth: {verdict}")
    print("ACCEPTED" if report["ok"] else "NOT ACCEPTED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps to train (max_steps)")
    parser.add_argument("--seed", type=int, default=0, help="lightning seed_everything seed")
    parser.add_argument("--out", type=Path, default=None, help="folder for events.jsonl and the logs (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="report file (default: OUT/accept_readme_fixed_points.json)")
    parser.add_argument("--no-self-check", action="store_true", help="skip the self-check of the exact count")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads while training (default: torch's; 1 leaves the monitor a core: async)")
    args = parser.parse_args(argv)
    report = run_acceptance(args.steps, seed=args.seed, out_dir=args.out, with_self_check=not args.no_self_check,
                            torch_threads=args.torch_threads)
    path = args.json or Path(report["out_dir"]) / "accept_readme_fixed_points.json"
    path.write_text(json.dumps(report, indent=1, default=float))
    print_table(report)
    print(f"report: {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
