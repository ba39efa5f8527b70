"""Per-step cost of the monitor's attractor analysis (``tracking.AttractorTracker``), outside training.

The monitor calls ``AttractorTracker(max_attractor_period).update`` once per monitored step.  This script
replays that on a fixed sequence of slightly perturbed models (every weight multiplied by ``1 + 1e-3 * N(0, 1)``
before each step, the same sequence for every setting) and times each warm update (the first, cold update
discards 4 * n_transient steps and is reported apart).  Models: ShallowPLRNN(3, 50) at its seed-0
initialization (the benchmark model of bench_monitor.py) and the two 2-D PLRNN teachers of
``data.PLRNN_TEACHERS`` (stable 4- and 16-cycle), with the teacher's data as reference states as the monitor
passes the training data.  Several ``n_transient`` values are interleaved step by step (paired), and each
step's primary attractor (kind, period) is compared with the default's (n_transient=256) to show whether a
shorter transient changes what is found.

    PYTHONPATH=. python benchmarks/bench_attractor_step.py [--steps 30] [--transients 256 128 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch

from bifurcation_callback.data import plrnn_teacher
from bifurcation_callback.models import ShallowPLRNN
from bifurcation_callback.tracking import AttractorTracker


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def models() -> dict[str, tuple[torch.nn.Module, object]]:
    torch.manual_seed(0)
    shallow = ShallowPLRNN(latent_dim=3, hidden_dim=50)
    out = {"ShallowPLRNN(3, 50), init": (shallow, None)}
    for system in ("4-cycle", "16-cycle"):
        data, teacher = plrnn_teacher(2000, system=system)
        out[f"PLRNN teacher {system}"] = (teacher, data)
    return out


def perturbed_sequence(model: torch.nn.Module, steps: int, scale: float, seed: int) -> list[torch.nn.Module]:
    generator = torch.Generator().manual_seed(seed)
    sequence, current = [], copy.deepcopy(model)
    for _ in range(steps):
        current = copy.deepcopy(current)
        with torch.no_grad():
            for parameter in current.parameters():
                noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
                parameter.mul_(1 + scale * noise)
        sequence.append(current)
    return sequence


def label(primary) -> str:
    return "none" if primary is None else f"{primary.kind}/{primary.period}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="warm updates per model (after one cold update)")
    parser.add_argument("--max-period", type=int, default=256)
    parser.add_argument("--transients", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--scale", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    print(f"max_period {args.max_period}, {args.steps} warm updates per model, weights x (1 + {args.scale} N(0,1)) "
          f"per step, {args.threads} thread(s); ms per update: median / p95 (cold: the first update)")
    for name, (model, reference) in models().items():
        sequence = perturbed_sequence(model, args.steps + 1, args.scale, seed=1)
        trackers = {nt: AttractorTracker(args.max_period, seed=0, n_transient=nt) for nt in args.transients}
        ms = {nt: [] for nt in args.transients}
        labels = {nt: [] for nt in args.transients}
        for step, current in enumerate(sequence):
            for nt, tracker in trackers.items():
                started = time.perf_counter()
                tracked = tracker.update(current, step, reference)
                ms[nt].append(1e3 * (time.perf_counter() - started))
                labels[nt].append(label(tracked.primary))
        default = args.transients[0]
        for nt in args.transients:
            warm = ms[nt][1:]
            agree = sum(a == b for a, b in zip(labels[nt], labels[default]))
            row = {"model": name, "n_transient": nt, "cold_ms": ms[nt][0], "median_ms": statistics.median(warm),
                   "p95_ms": percentile(warm, 95), "ms_all": ms[nt], "labels": sorted(set(labels[nt])),
                   "agree_with_default": agree, "n": len(labels[nt]), "labels_per_step": labels[nt]}
            results.append(row)
            print(f"{name:<28} n_transient {nt:>4}: cold {row['cold_ms']:7.1f}  warm median {row['median_ms']:6.1f}"
                  f"  p95 {row['p95_ms']:6.1f}  primary {','.join(row['labels'])}  same as n_transient={default}: "
                  f"{agree}/{len(labels[nt])}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
