"""Baseline for the finder benchmark: SCYFI one start at a time in plain numpy.

This is the way the published (Julia/Python tutorial) SCYFI code works, written straightforwardly:
a Python loop over random starts, and for each start an inner loop that

1. builds the product of the ``k`` Jacobians (and the accumulated offset) with numpy,
2. solves ``(I - J_k ... J_1) z_1 = c`` with ``np.linalg.solve``,
3. simulates the true map ``k`` steps from ``z_1`` and reads off the visited region codes,
4. keeps the orbit when the codes match the assumed ones (verified: closing residual, minimal period,
   deduplicated by a dict keyed by the canonical rotation of the code sequence), otherwise jumps to
   the visited codes.

Loop semantics follow the paper's pseudocode (section 3 of paper-notes.md): ``n_out`` random restarts
per order, ``n_in`` inner iterations per restart, both counters reset after every discovery, a real or
singular system restarts at random.  Random region codes are drawn exactly like the batched finder's
(region codes of uniform states in a box of radius ``max(10, 2 * state_scale)``), so both searches
sample the same distribution of sequences.

Only numpy is used in the search loop; torch is touched once to read the model's parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["NumpyPLRNN", "NumpyShallowPLRNN", "from_torch", "scyfi", "BaselineResult"]


class NumpyPLRNN:
    """``z' = A z + W relu(z) + h`` (W with zero diagonal); switches are the signs of the coordinates."""

    def __init__(self, A: np.ndarray, W: np.ndarray, h: np.ndarray) -> None:
        self.A, self.W, self.h = np.asarray(A, float), np.asarray(W, float), np.asarray(h, float)
        np.fill_diagonal(self.W, 0.0)
        self.state_dim = self.n_switches = self.A.shape[0]
        self.diagA = np.diag(self.A)
        self.radius = 10.0  # state_scale() is 0 for coordinate switches

    def codes(self, z: np.ndarray) -> np.ndarray:
        return z > 0

    def pieces(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.diagA + self.W * d, self.h

    def step(self, z: np.ndarray) -> np.ndarray:
        return self.A * z + self.W @ np.maximum(z, 0.0) + self.h


class NumpyShallowPLRNN:
    """``z' = A z + W1 relu(W2 z + h2) + h1``; switches are the hidden ReLUs."""

    def __init__(self, A, W1, W2, h1, h2) -> None:
        self.A, self.W1, self.W2 = (np.asarray(x, float) for x in (A, W1, W2))
        self.h1, self.h2 = np.asarray(h1, float), np.asarray(h2, float)
        self.state_dim, self.n_switches = self.W1.shape
        self.diagA = np.diag(self.A)
        norms = np.maximum(np.linalg.norm(self.W2, axis=1), 1e-12)
        self.radius = max(10.0, 2.0 * float(np.max(np.abs(self.h2) / norms)))

    def codes(self, z: np.ndarray) -> np.ndarray:
        return self.W2 @ z + self.h2 > 0

    def pieces(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gated = self.W1 * d
        return self.diagA + gated @ self.W2, gated @ self.h2 + self.h1

    def step(self, z: np.ndarray) -> np.ndarray:
        return self.A * z + self.W1 @ np.maximum(self.W2 @ z + self.h2, 0.0) + self.h1


def from_torch(model):
    """Numpy copy of a bifurcation_callback PLRNN or ShallowPLRNN."""
    p = {name: t.detach().cpu().double().numpy().copy() for name, t in model.named_parameters()}
    kind = type(model).__name__
    if kind == "PLRNN":
        return NumpyPLRNN(p["A"], p["W"], p["h"])
    if kind == "ShallowPLRNN":
        return NumpyShallowPLRNN(p["A"], p["W1"], p["W2"], p["h1"], p["h2"])
    raise TypeError(f"numpy baseline supports PLRNN and ShallowPLRNN, got {kind}")


@dataclass
class BaselineResult:
    cycles: dict = field(default_factory=dict)  # canonical key -> (order, points, eigenvalues)
    counts: dict = field(default_factory=dict)  # order -> number of cycles
    n_solves: int = 0
    n_singular: int = 0
    elapsed_s: float = 0.0
    found_at_s: list = field(default_factory=list)  # (seconds since start, order) of every discovery
    solves_per_order: dict = field(default_factory=dict)


def _canonical_key(codes: np.ndarray) -> bytes:
    rows = [row.tobytes() for row in np.packbits(codes.astype(np.uint8), axis=-1)]
    k = len(rows)
    best = min(range(k), key=lambda r: rows[r:] + rows[:r])
    return b"".join(rows[best:] + rows[:best])


def scyfi(
    model,
    orders,
    *,
    n_out: int,
    n_in: int,
    seed: int = 0,
    max_solves_per_order: int | None = None,
    residual_tol: float = 1e-9,
    coincide_tol: float = 1e-7,
) -> BaselineResult:
    """One-start-at-a-time SCYFI.  ``max_solves_per_order`` caps the work (for throughput timing)."""
    rng = np.random.default_rng(seed)
    M = model.state_dim
    eye = np.eye(M)
    result = BaselineResult()

    def random_codes(k: int) -> np.ndarray:
        states = (2.0 * rng.random((k, M)) - 1.0) * model.radius
        return np.array([model.codes(z) for z in states])

    started = time.perf_counter()
    for k in orders:
        divisors = [j for j in range(1, k) if k % j == 0]
        found = 0
        solves = 0
        i = 0
        exhausted = False
        while i < n_out and not exhausted:
            i += 1
            D = random_codes(k)
            j = 0
            while j < n_in:
                if max_solves_per_order is not None and solves >= max_solves_per_order:
                    exhausted = True
                    break
                j += 1
                # 1. product of the k Jacobians and the accumulated offset
                product, offset = eye, np.zeros(M)
                for t in range(k):
                    J, c = model.pieces(D[t])
                    product = J @ product
                    offset = J @ offset + c
                # 2. solve
                solves += 1
                try:
                    z1 = np.linalg.solve(eye - product, offset)
                except np.linalg.LinAlgError:
                    result.n_singular += 1
                    D = random_codes(k)
                    continue
                if not np.all(np.isfinite(z1)):
                    result.n_singular += 1
                    D = random_codes(k)
                    continue
                # 3. simulate the true map, record visited codes
                points = np.empty((k + 1, M))
                points[0] = z1
                visited = np.empty_like(D)
                for t in range(k):
                    visited[t] = model.codes(points[t])
                    points[t + 1] = model.step(points[t])
                # 4. compare, verify, dedup, or jump to the visited regions
                if np.array_equal(visited, D):
                    scale = 1.0 + np.linalg.norm(z1)
                    residual = np.linalg.norm(points[k] - z1) / scale
                    ok = residual <= residual_tol * (1.0 + np.linalg.norm(product))
                    ok = ok and all(np.linalg.norm(points[d] - z1) > coincide_tol * scale for d in divisors)
                    if ok:
                        key = _canonical_key(D)
                        if key not in result.cycles:
                            result.cycles[key] = (k, points[:k].copy(), np.linalg.eigvals(product))
                            found += 1
                            result.found_at_s.append((time.perf_counter() - started, k))
                            i = 0
                            j = 0
                    D = random_codes(k)
                else:
                    D = visited
        result.counts[k] = found
        result.solves_per_order[k] = solves
        result.n_solves += solves
    result.elapsed_s = time.perf_counter() - started
    return result
