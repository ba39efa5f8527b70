"""Fuzz: find_cycles with default settings against exhaustive_cycles on many random small models.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_fuzz.py [--n-models 10000] [--seed 0] [--max-order 3] [--json out.json]

Models: the four kinds (PLRNN, ALRNN, ShallowPLRNN, ClippedShallowPLRNN) in turn, state dimension M in
{2, 3}, hidden size H in {2, 3, 4} for the shallow kinds, weights as ``tests/problems.random_model`` with a
random overall scale in [0.5, 1.5].  For each model, ``find_cycles(model, max_order)`` with its defaults
is compared with ``exhaustive_cycles``: a *missed* cycle is an exact cycle (canonical code key) that the
finder did not report, a *false* cycle one it reported that is not exact or whose points differ.
Reported: counts, the statuses seen per order, and the finder's time per model (mean and p95).

``--measure-limit`` instead times what the choice of ``exhaustive_limit`` trades: enumerating 2**14,
2**16 and 2**18 sequences of order 3 against one default random search of order 3, on one model per kind
(M = 3, H = 4) and on ShallowPLRNN(3, 50); and the LP enumeration of the regions (``realizable_codes``).
"""

from __future__ import annotations

import argparse
import math
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bifurcation_callback import exhaustive_cycles, find_cycles  # noqa: E402
from problems import MODEL_KINDS, random_model  # noqa: E402


def model_spec(index: int, seed: int) -> tuple[str, int, int, float, int]:
    """(kind, M, H, scale, model seed) of the ``index``-th model; deterministic in ``seed``."""
    rng = np.random.default_rng([seed, index])
    kind = MODEL_KINDS[index % len(MODEL_KINDS)]
    dim = int(rng.integers(2, 4))
    hidden = int(rng.integers(2, 5)) if "Shallow" in kind else 0
    return kind, dim, hidden, float(rng.uniform(0.5, 1.5)), int(rng.integers(2**32))


def compare(found, exact, *, rtol: float = 1e-6) -> tuple[list, list]:
    """Exact cycles the finder missed, and reported cycles that are not exact (by key, then by points)."""
    exact_by_key = {c.key: c for c in exact}
    found_by_key = {c.key: c for c in found}
    missed = [c for key, c in exact_by_key.items() if key not in found_by_key]
    false = []
    for key, cycle in found_by_key.items():
        other = exact_by_key.get(key)
        scale = 1 + (np.abs(other.points).max() if other is not None else 0)
        if other is None or np.abs(cycle.points - other.points).max() > rtol * scale:
            false.append(cycle)
    return missed, false


def measure_limit(repeats: int = 3) -> None:
    """Print the timings behind DEFAULT_EXHAUSTIVE_LIMIT and the old LP region cap (medians of ``repeats``)."""
    from bifurcation_callback import _search
    from bifurcation_callback._stack import ModelStack
    from bifurcation_callback.models import ClippedShallowPLRNN, ShallowPLRNN

    def enumerate_order_3(model, regions) -> None:
        stack = ModelStack.single(model, dtype=torch.float64, device=torch.device("cpu"))
        tables = _search.RegionTables([regions], model.n_switches, torch.device("cpu"))
        collector = _search.CycleCollector(3, torch.float64, [None])
        _search._enumerate(stack, 3, tables, collector, [True], _search.FreshSearch([{}], [{}], [{}], [0], [0]),
                           math.inf, 1 << 16)

    def median_time(call) -> float:
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            call()
            times.append(time.perf_counter() - tic)
        return sorted(times)[len(times) // 2]

    torch.manual_seed(2)
    models = [(f"{kind}(3, 4)", random_model(kind, 1, dim=3, hidden=4)) for kind in MODEL_KINDS]
    models.append(("ShallowPLRNN(3, 50)", ShallowPLRNN(3, 50, weight_scale=1.5).double()))
    print(f"{'model':<28} {'R':>5} {'2**14 s':>8} {'2**16 s':>8} {'2**18 s':>8} {'search s':>9}   (order 3)")
    with torch.no_grad():
        for name, model in models:
            regions = model.realizable_codes() if model.n_switches <= 16 else (torch.rand(64, model.n_switches) > 0.5)
            row = []
            for exponent in (14, 16, 18):
                subset = regions[torch.arange(round(2 ** (exponent / 3))) % regions.shape[0]]
                row.append(median_time(lambda: enumerate_order_3(model, subset)))
            search = median_time(lambda: find_cycles(model, orders=[3], exhaustive_limit=0))
            print(f"{name:<28} {regions.shape[0]:>5} {row[0]:>8.3f} {row[1]:>8.3f} {row[2]:>8.3f} {search:>9.3f}")
    print("Listing the regions (realizable_codes: regions.list_cells):")
    for cls, dim, hidden in ((ShallowPLRNN, 3, 4), (ClippedShallowPLRNN, 3, 4), (ShallowPLRNN, 3, 12),
                             (ClippedShallowPLRNN, 3, 8), (ShallowPLRNN, 3, 20)):
        model = cls(dim, hidden).double()
        tic = time.perf_counter()
        n_regions = model.realizable_codes().shape[0]
        print(f"  {cls.__name__}({dim}, {hidden}): {n_regions} regions in {time.perf_counter() - tic:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-models", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-order", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--exhaustive-limit", type=int, default=None,
                        help="pass this exhaustive_limit to find_cycles (default: its own; 0 tests the random search alone)")
    parser.add_argument("--measure-limit", action="store_true", help="time enumeration vs random search instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.measure_limit:
        measure_limit()
        return 0

    n_exact = collections.Counter()
    n_missed = collections.Counter()
    n_false = collections.Counter()
    statuses = collections.Counter()
    times: list[float] = []
    failures: list[dict] = []
    started = time.perf_counter()
    for index in tqdm(range(args.n_models), desc="models", unit="model"):
        kind, dim, hidden, scale, model_seed = model_spec(index, args.seed)
        model = random_model(kind, model_seed, dim=dim, hidden=hidden or 4, scale=scale)
        exact = exhaustive_cycles(model, max_order=args.max_order)
        tic = time.perf_counter()
        options = {} if args.exhaustive_limit is None else {"exhaustive_limit": args.exhaustive_limit}
        found = find_cycles(model, max_order=args.max_order, **options)
        times.append(time.perf_counter() - tic)
        missed, false = compare(found, exact)
        n_exact[kind] += len(exact)
        n_missed[kind] += len(missed)
        n_false[kind] += len(false)
        statuses.update(f"{kind} order {k}: {s}" for k, s in found.statuses.items())
        if missed or false:
            failures.append({
                "index": index, "kind": kind, "dim": dim, "hidden": hidden, "scale": scale, "seed": model_seed,
                "statuses": found.statuses,
                "missed": [(c.order, float(np.abs(c.points).max())) for c in missed],
                "false": [(c.order, float(np.abs(c.points).max())) for c in false],
            })
    elapsed = time.perf_counter() - started
    milliseconds = 1e3 * np.array(times)
    result = {
        "n_models": args.n_models,
        "seed": args.seed,
        "max_order": args.max_order,
        "exhaustive_limit": args.exhaustive_limit,
        "exact_cycles": dict(n_exact),
        "missed": dict(n_missed),
        "false": dict(n_false),
        "finder_ms_mean": float(milliseconds.mean()),
        "finder_ms_p95": float(np.percentile(milliseconds, 95)),
        "wall_s": elapsed,
        "statuses": dict(sorted(statuses.items())),
        "failures": failures[:50],
    }
    print(f"{args.n_models} models, orders 1..{args.max_order}: {sum(n_exact.values())} exact cycles, "
          f"missed {sum(n_missed.values())}, false {sum(n_false.values())}")
    for kind in MODEL_KINDS:
        print(f"  {kind:<20} exact {n_exact[kind]:>6}  missed {n_missed[kind]:>4}  false {n_false[kind]:>4}")
    print(f"find_cycles per model: mean {result['finder_ms_mean']:.1f} ms, p95 {result['finder_ms_p95']:.1f} ms; "
          f"wall {elapsed:.0f} s (with exhaustive_cycles)")
    print("statuses:")
    for name, count in result["statuses"].items():
        print(f"  {name}: {count}")
    for failure in failures[:10]:
        print("FAIL", failure)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if not (sum(n_missed.values()) or sum(n_false.values())) else 1


if __name__ == "__main__":
    raise SystemExit(main())
