"""Batched 2-D scan vs find_cycles cell by cell on a 2-D PLRNN grid (orders <= 4), in one run.

    PYTHONPATH=. python benchmarks/bench_scan.py [--n 100] [--baseline-cells 40] [--device cpu]

The batched scan runs on the whole n x n grid.  The per-cell baseline (find_cycles with its default
settings, as a user would call it in a loop) is timed on ``--baseline-cells`` cells spread evenly over
the same grid and extrapolated to n*n cells; on those cells the counts are also compared with the scan.
Prints one JSON line with cells/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from bifurcation_callback.bifurcations import scan
from bifurcation_callback.cycles import find_cycles
from bifurcation_callback.models import model_from_state


def paper_model():
    """The paper's 2-D PLRNN (two 16-cycles; SCYFI unit tests), scanned over (A[0], A[1]) in [-1, 1]^2."""
    return model_from_state(
        {
            "model": "PLRNN",
            "params": {
                "A": [0.8377689, 0.96461297],
                "W": [[0.0, -0.64375], [0.52505308, 0.0]],
                "h": [0.37298253, -0.97931491],
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="grid points per axis")
    parser.add_argument("--max-order", type=int, default=4)
    parser.add_argument("--baseline-cells", type=int, default=40, help="cells timed with find_cycles")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = paper_model()
    values = np.linspace(-1.0, 1.0, args.n)
    started = time.perf_counter()
    diagram = scan(model, "A[0]", "A[1]", (values, values), max_order=args.max_order, device=args.device)
    batched_s = time.perf_counter() - started
    n_cells = args.n * args.n

    rng = np.random.default_rng(0)
    cells = rng.choice(n_cells, size=min(args.baseline_cells, n_cells), replace=False)
    mismatches = 0
    started = time.perf_counter()
    for cell in cells:
        i, j = divmod(int(cell), args.n)
        cell_model = model.snapshot()
        with torch.no_grad():
            cell_model.A[0] = values[i]
            cell_model.A[1] = values[j]
        found = find_cycles(cell_model, max_order=args.max_order, device=args.device)
        mismatches += list(found.counts().values()) != diagram.counts[i, j].tolist()
    baseline_s = time.perf_counter() - started

    batched_rate = n_cells / batched_s
    baseline_rate = len(cells) / baseline_s
    print(
        json.dumps(
            {
                "grid": f"{args.n}x{args.n}",
                "max_order": args.max_order,
                "device": args.device,
                "torch_threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "scan_method": diagram.method,
                "batched_s": round(batched_s, 3),
                "batched_cells_per_s": round(batched_rate, 1),
                "baseline_cells_timed": len(cells),
                "baseline_s": round(baseline_s, 3),
                "baseline_cells_per_s": round(baseline_rate, 2),
                "baseline_extrapolated_s": round(n_cells / baseline_rate, 1),
                "speedup": round(batched_rate / baseline_rate, 1),
                "count_mismatches_on_baseline_cells": int(mismatches),
            }
        )
    )


if __name__ == "__main__":
    main()
