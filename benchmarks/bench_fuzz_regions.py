"""Acceptance fuzz of issue 20: exhaustive fixed points of shallow and clipped shallow PLRNNs with 20-100 hidden units.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_fuzz_regions.py [--n-models 1000] [--seed 0] [--json out.json]

Models: ShallowPLRNN and ClippedShallowPLRNN in turn, latent dimension M in {2, 3, 4}, hidden size H drawn in
[20, H_max] where H_max (<= 100) is the largest H whose arrangement can have at most 2**18 cells (so that order 1
can be exhaustive under find_cycles' default limit): shallow 100 / 100 / 50 and clipped 100 / 58 / 26 for
M = 2 / 3 / 4.  Half the models have weights as ``tests/problems.random_model`` with an overall scale drawn in
[0.2, 0.8] (zero to a few fixed points), half are ``tests/problems.staircase_model`` (each coordinate's map a
zigzag across the diagonal: hundreds to thousands of fixed points, nearly parallel switching planes) with
weight noise drawn in [0.005, 0.05].  One torch thread.

Per model, ``find_cycles(model, max_order=1)`` must report order 1 ``exhaustive``, and is compared with
references that share no code with ``regions.py``:

* cells: an independent numpy vertex listing (``problems.general_position_cells``: every M-subset's vertex, the
  2^M sign patterns around it, each with a witness state checked against the true planes; the clipped model's
  ``W2 z`` planes all meet at the origin, whose cones it lists through the restrictions to ``x_0 = +-1``).
  ``cells_missing``: witnessed cells the listing lacks (a real cell missed); ``cells_extra``: listed cells
  without a witness, each then tested by a linear program (``lp_confirmed``: the LP finds it, so the numpy
  reference missed it; otherwise an empty cell was listed).  Dense sampling at many scales must find no
  cell outside the listing (``sampled_missing``).
* fixed points: ``problems.independent_fixed_points`` (numpy: the affine piece of every witnessed or
  LP-confirmed cell solved, kept when the strict code of the solution is that cell's and the true map fixes
  it).  ``missed``: independent fixed points the finder did not report; ``false``: reported ones that are not
  independent fixed points (by code, and by point to 1e-8 relative).
* a heuristic lower bound: SCYFI alone (``exhaustive_limit=0``, 256 starts) must find nothing outside the
  exhaustive list (``search_only``).
* an LP spot check per model: ``--lp-probes`` listed codes must be cells, and as many codes one bit away from
  them must be cells exactly when listed (``lp_checked`` codes in all, ``lp_mismatch``).

Prints the totals; ``run_fuzz`` returns them (tests/test_regions.py runs 30 models).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bifurcation_callback import find_cycles  # noqa: E402
from bifurcation_callback._search import _region_table  # noqa: E402
from problems import (  # noqa: E402
    code_keys,
    general_position_cells,
    independent_fixed_points,
    random_model,
    sampled_codes,
    staircase_model,
)

KINDS = ("ShallowPLRNN", "ClippedShallowPLRNN")
# random: problems.random_model (few fixed points); staircase: problems.staircase_model (hundreds to thousands,
# and nearly parallel planes: W2 rows near the unit vectors).
FAMILIES = ("random", "staircase")
LIMIT = 2**18


def possible_cells(kind: str, dim: int, hidden: int) -> int:
    """The most cells the arrangement can have: sum over i <= M of choices of i non-parallel planes."""
    per_class = 2 if kind == "ClippedShallowPLRNN" else 1
    return sum(math.comb(hidden, i) * per_class**i for i in range(dim + 1))


def largest_hidden(kind: str, dim: int, max_cells: int = LIMIT) -> int:
    return max(h for h in range(20, 101) if possible_cells(kind, dim, h) <= max_cells)


def model_spec(index: int, seed: int, max_cells: int = LIMIT) -> tuple[str, str, int, int, float, int]:
    """(family, kind, M, H, scale, model seed) of the ``index``-th model; deterministic in ``seed``.  H is drawn
    from 20 to the largest with at most ``max_cells`` possible cells (at least 20)."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % 2]
    family = FAMILIES[(index // 2) % 2]
    dim = int(rng.integers(2, 5))
    hidden = int(rng.integers(20, max(20, largest_hidden(kind, dim, max(max_cells, possible_cells(kind, dim, 20))) + 1)))
    scale = float(rng.uniform(0.2, 0.8)) if family == "random" else float(rng.uniform(0.005, 0.05))
    return family, kind, dim, hidden, scale, int(rng.integers(2**32))


def build(family: str, kind: str, dim: int, hidden: int, scale: float, model_seed: int):
    if family == "random":
        return random_model(kind, model_seed, dim=dim, hidden=hidden, scale=scale)
    return staircase_model(kind, model_seed, dim=dim, hidden=hidden, noise=scale)


def single_cell_exists(G: np.ndarray, g: np.ndarray, code: tuple[bool, ...]) -> bool:
    """Whether one code is a cell: one LP maximising the slack ``t`` of every plane's side (unit normals),
    ``t <= 1``; a cell iff ``t > 1e-12``."""
    from scipy.optimize import linprog

    signs = np.where(np.array(code), 1.0, -1.0)
    norms = np.linalg.norm(G, axis=1)
    dim = G.shape[1]
    constraints = np.hstack([-signs[:, None] * G / norms[:, None], np.ones((len(signs), 1))])
    result = linprog(
        np.r_[np.zeros(dim), -1.0], A_ub=constraints, b_ub=signs * g / norms, bounds=[(None, None)] * dim + [(None, 1.0)], method="highs"
    )
    return result.status == 0 and -result.fun > 1e-12


def check_model(index: int, seed: int, lp_probes: int, max_cells: int = LIMIT) -> dict:
    family, kind, dim, hidden, scale, model_seed = model_spec(index, seed, max_cells)
    model = build(family, kind, dim, hidden, scale, model_seed)
    G, g = (t.detach().numpy() for t in model.switching_planes())
    started = time.perf_counter()
    found = find_cycles(model, max_order=1)
    elapsed = time.perf_counter() - started
    listed = _region_table(model).numpy()  # the listing find_cycles used (cached: no work)
    listed_keys = code_keys(listed)
    result = {"family": family, "kind": kind, "M": dim, "H": hidden, "cells": len(listed_keys), "finder_s": elapsed}
    result["exhaustive"] = int(found.statuses[1] == "exhaustive")
    witnessed, _, general = general_position_cells(G, g, strict=False)
    result["not_general_position"] = int(not general)  # the reference's cells are still cells, maybe not all
    witnessed_keys = code_keys(witnessed)
    extra = [listed[i] for key, i in listed_keys.items() if key not in witnessed_keys]
    confirmed = [code for code in extra if single_cell_exists(G, g, tuple(code.tolist()))]
    result["cells_missing"] = sum(key not in listed_keys for key in witnessed_keys)
    result["cells_extra"] = len(extra) - len(confirmed)
    result["lp_confirmed"] = len(confirmed)
    result["sampled_missing"] = sum(key not in listed_keys for key in code_keys(sampled_codes(G, g, seed=index)))
    references = np.concatenate([witnessed, np.array(confirmed, dtype=bool).reshape(-1, listed.shape[1])])
    independent = independent_fixed_points(model, references)
    reported = {tuple(c.codes[0].tolist()): c.points[0] for c in found.by_order(1)}
    result["fixed_points"] = len(reported)
    result["missed"] = len(set(independent) - set(reported))
    result["false"] = int(sum(
        code not in independent or np.abs(point - independent[code]).max() > 1e-8 * (1 + np.abs(point).max())
        for code, point in reported.items()
    ))
    searched = find_cycles(model, max_order=1, exhaustive_limit=0, n_starts=256, seed=index)
    result["search_only"] = len({c.key for c in searched} - {c.key for c in found})
    # LP spot check: listed codes must be cells, and their neighbours (one bit flipped) cells iff listed.
    rng = np.random.default_rng([seed, index, 1])
    probes = listed[rng.integers(len(listed), size=lp_probes)]
    neighbours = probes.copy()
    neighbours[np.arange(lp_probes), rng.integers(listed.shape[1], size=lp_probes)] ^= True
    mismatch = 0
    for code in np.concatenate([probes, neighbours]):
        mismatch += single_cell_exists(G, g, tuple(code.tolist())) != (np.packbits(code).tobytes() in listed_keys)
    result["lp_checked"], result["lp_mismatch"] = 2 * lp_probes, mismatch
    return result


TOTALS = (
    "models", "exhaustive", "fixed_points", "missed", "false", "cells", "cells_missing", "cells_extra",
    "lp_confirmed", "sampled_missing", "search_only", "not_general_position", "lp_checked", "lp_mismatch",
)


def run_fuzz(n_models: int = 1000, seed: int = 0, *, lp_probes: int = 16, max_cells: int = LIMIT, progress: bool = True) -> dict:
    """Check ``n_models`` models; returns the totals (keys ``TOTALS``) and the finder's time per model.
    ``max_cells`` caps the models' possible cells (a quick run: smaller H; at least H = 20)."""
    torch.set_num_threads(1)
    totals = dict.fromkeys(TOTALS, 0)
    times, failures = [], []
    for index in tqdm(range(n_models), desc="fuzz", unit="model", disable=not progress):
        result = check_model(index, seed, lp_probes, max_cells)
        totals["models"] += 1
        for key in TOTALS[1:]:
            totals[key] += result[key]
        times.append(result["finder_s"])
        if any(result[key] for key in ("missed", "false", "cells_missing", "cells_extra", "sampled_missing", "search_only", "lp_mismatch")) or not result["exhaustive"]:
            failures.append({"index": index, **result})
    totals["finder_s_median"] = statistics.median(times)
    totals["finder_s_p95"] = float(np.percentile(times, 95))
    totals["failures"] = failures
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-models", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lp-probes", type=int, default=16, help="listed codes (and as many neighbours) checked by an LP, per model")
    parser.add_argument("--max-cells", type=int, default=LIMIT, help="cap on the models' possible cells (quick runs)")
    parser.add_argument("--json", type=Path, help="write the totals (and failing models) here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    totals = run_fuzz(args.n_models, args.seed, lp_probes=args.lp_probes, max_cells=args.max_cells)
    print(f"fuzz of {totals['models']} models (seed {args.seed}, 1 torch thread) in {time.perf_counter() - started:.0f} s")
    for key in TOTALS:
        print(f"  {key:<22} {totals[key]}")
    print(f"  finder time per model: median {totals['finder_s_median']:.3f} s, p95 {totals['finder_s_p95']:.3f} s")
    for failure in totals["failures"]:
        print("  FAILED", failure)
    if args.json:
        args.json.write_text(json.dumps(totals, indent=2))
    return 1 if totals["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
