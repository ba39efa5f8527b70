"""Benchmark of the batched SCYFI cycle finder against a one-start-at-a-time numpy baseline.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_finder.py [--quick] [--json out.json] [--threads N]

Cases
-----
(i)   2-D PLRNN of examples/models/plrnn_2d_16cycles.json (paper: one fixed point, two 16-cycles), orders 1..20.
(ii)  ShallowPLRNN M=3, H=50, torch.manual_seed(2), weight_scale=1.5 (W1, h1 ~ U(-1.5, 1.5)), orders 1..4.
(iii) The training monitor's per-step call on (ii): weights perturbed by a relative 1e-3, then
      find_cycles(warm_start=previous CycleSet, small random search); latency per call.

Throughput is linear solves (region sequences tried) per second.  The baseline is timed on a fixed number
of solves spread equally over the orders (the batched finder also spends about the same number per order),
both use inner chains of 20 steps.  Every timing is the median of repeats interleaved in one run, and every
ratio divides numbers of the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bifurcation_callback import ShallowPLRNN, exhaustive_cycles, find_cycles  # noqa: E402
from bifurcation_callback.callback import MONITOR_FINDER_DEFAULTS  # noqa: E402
from bifurcation_callback.models import model_from_state  # noqa: E402
from numpy_scyfi import _canonical_key, from_torch, scyfi  # noqa: E402

INNER = 20  # chain length of both searches (find_cycles' default inner)


def model_i():
    return model_from_state(json.loads((ROOT / "examples/models/plrnn_2d_16cycles.json").read_text()))


def model_ii():
    torch.manual_seed(2)
    return ShallowPLRNN(3, 50, weight_scale=1.5).double()


def nonzero(counts: dict) -> dict:
    return {int(k): int(v) for k, v in counts.items() if v}


def keys_of(cycleset) -> set:
    return {(c.order, _canonical_key(c.codes)) for c in cycleset}


def median(xs):
    return float(statistics.median(xs))


def throughput_case(name, model, orders, *, baseline_solves, batch_sizes, reps, log):
    """Interleaved repeats of the baseline (fixed solves) and the batched finder (several n_starts)."""
    numpy_model = from_torch(model)
    per_order = baseline_solves // len(orders)
    base_times, base_solves = [], 0
    batched = {n: {"times": [], "solves": 0, "counts": None, "keys": None} for n in batch_sizes}
    for rep in range(reps):
        r = scyfi(numpy_model, orders, n_out=10**9, n_in=INNER, seed=rep, max_solves_per_order=per_order)
        base_times.append(r.elapsed_s)
        base_solves = r.n_solves
        for n in batch_sizes:
            t = time.perf_counter()
            cs = find_cycles(model, orders=orders, n_starts=n, inner=INNER, seed=rep)
            batched[n]["times"].append(time.perf_counter() - t)
            batched[n]["solves"] = cs.stats.n_solves  # deterministic in the seed; the same up to a few %
            batched[n]["counts"] = nonzero(cs.counts())
            batched[n]["keys"] = keys_of(cs)
        log(f"  [{name}] rep {rep + 1}/{reps} done")
    base_rate = base_solves / median(base_times)
    rows = [
        {
            "case": name, "method": "numpy baseline", "settings": f"1 start at a time, n_in={INNER}, "
            f"{per_order} solves/order", "solves": base_solves, "time_s": median(base_times),
            "times_s": base_times, "throughput": base_rate, "ratio": 1.0,
        }
    ]
    for n in batch_sizes:
        rate = batched[n]["solves"] / median(batched[n]["times"])
        rows.append(
            {
                "case": name, "method": "find_cycles", "settings": f"n_starts={n}, inner={INNER}, outer=4",
                "solves": batched[n]["solves"], "time_s": median(batched[n]["times"]), "times_s": batched[n]["times"],
                "throughput": rate, "ratio": rate / base_rate, "counts": batched[n]["counts"],
            }
        )
    return rows, batched


def end_to_end_case(name, model, orders, *, n_starts, reps, log):
    """Same search effort end to end: SCYFI n_out=n_starts restarts x n_in=inner vs find_cycles(n_starts)."""
    numpy_model = from_torch(model)
    base, fast = [], []
    for rep in range(reps):
        r = scyfi(numpy_model, orders, n_out=n_starts, n_in=INNER, seed=100 + rep)
        t = time.perf_counter()
        cs = find_cycles(model, orders=orders, n_starts=n_starts, inner=INNER, seed=100 + rep)
        fast.append({"time_s": time.perf_counter() - t, "solves": cs.stats.n_solves, "counts": nonzero(cs.counts()),
                     "keys": keys_of(cs)})
        base.append({"time_s": r.elapsed_s, "solves": r.n_solves, "counts": nonzero(r.counts), "keys": {(v[0], key) for key, v in r.cycles.items()},
                     "last_found_s": r.found_at_s[-1][0] if r.found_at_s else 0.0})
        log(f"  [{name}] end-to-end rep {rep + 1}/{reps} done")
    return base, fast


def perturb_(model, generator, relative=1e-3):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + relative * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def latency_case(model, *, settings, n_calls, log):
    """(iii): per-training-step call; each call sees freshly perturbed weights and the previous CycleSet."""
    reference = find_cycles(model, max_order=4, n_starts=1024)
    ref_counts = nonzero(reference.counts())
    rows = []
    for label, kwargs in settings:
        live = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(7)
        previous = reference
        times, same = [], 0
        for step in range(n_calls + 2):  # two warm-up calls not timed
            perturb_(live, generator)
            t = time.perf_counter()
            call_kwargs = kwargs(step) if callable(kwargs) else kwargs
            cs = find_cycles(live, max_order=4, warm_start=previous, seed=step, **call_kwargs)
            elapsed = time.perf_counter() - t
            if step >= 2:
                times.append(elapsed)
                same += nonzero(cs.counts()) == ref_counts
            previous = cs
        rows.append(
            {
                "case": "iii", "method": "find_cycles (warm)", "settings": label, "calls": n_calls,
                "median_ms": 1e3 * median(times), "p90_ms": 1e3 * float(np.percentile(times, 90)),
                "min_ms": 1e3 * min(times), "calls_keeping_all_cycles": same, "final_counts": nonzero(cs.counts()),
                "statuses": dict(getattr(cs, "statuses", {})),
            }
        )
        log(f"  [iii] {label}: median {rows[-1]['median_ms']:.2f} ms")
    return rows, ref_counts


# The monitor's planned per-step policy: warm start plus a small random search on every order.
PER_STEP_SETTINGS = [("n_starts=32, inner=5, outer=1", {"n_starts": 32, "inner": 5, "outer": 1})]


def thread_check(model, *, reps, log):
    """Same call at 1 and 2 intra-op threads (interleaved): small batched ops are thread-sensitive."""
    times = {1: [], 2: []}
    previous = torch.get_num_threads()
    for _ in range(reps):
        for n in (1, 2):
            torch.set_num_threads(n)
            t = time.perf_counter()
            find_cycles(model, max_order=4, n_starts=1024, inner=INNER)
            times[n].append(time.perf_counter() - t)
    torch.set_num_threads(previous)
    log(f"  [threads] 1: {times[1]}, 2: {times[2]}")
    return {str(n): {"median_s": median(v), "times_s": v} for n, v in times.items()}


def fmt_rate(x):
    return f"{x / 1e3:,.1f}k"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads, finishes in < 60 s")
    parser.add_argument("--json", type=Path, help="write every measurement to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see docs)")
    parser.add_argument("--reps", type=int, default=3, help="repeats per timing (median reported)")
    parser.add_argument("--per-step-only", action="store_true",
                        help="only case (iii), the warm-started per-step call (with the order statuses it reports)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    quick = args.quick
    reps = args.reps

    m1, m2 = model_i(), model_ii()
    if args.per_step_only:
        rows3, ref_counts = latency_case(m2, settings=PER_STEP_SETTINGS, n_calls=25, log=log)
        print(f"(iii) per-step call on (ii), warm start, orders 1..4; reference counts {ref_counts}")
        for row in rows3:
            print(f"{row['settings']:<32} median {row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms, "
                  f"min {row['min_ms']:.2f} ms, calls keeping all cycles {row['calls_keeping_all_cycles']}/{row['calls']}, "
                  f"statuses {row.get('statuses')}")
        return 0
    orders1, orders2 = list(range(1, 21)), [1, 2, 3, 4]
    sizes = [256, 1024] if quick else [256, 1024, 4096]
    log("case (i): 2-D PLRNN, orders 1..20")
    rows1, b1 = throughput_case("i", m1, orders1, baseline_solves=4000 if quick else 20000, batch_sizes=sizes,
                                reps=reps, log=log)
    log("case (ii): ShallowPLRNN M=3 H=50, orders 1..4")
    rows2, b2 = throughput_case("ii", m2, orders2, baseline_solves=4000 if quick else 20000, batch_sizes=sizes,
                                reps=reps, log=log)

    # Correctness and time-to-all-cycles at equal search effort (n_out = n_starts = 256, n_in = inner = 20).
    e2e = {}
    if not quick:
        e2e["i"] = end_to_end_case("i", m1, orders1, n_starts=256, reps=1, log=log)
    e2e["ii"] = end_to_end_case("ii", m2, orders2, n_starts=256, reps=1 if quick else reps, log=log)
    exact = None
    if not quick:
        t = time.perf_counter()
        ex = exhaustive_cycles(m1, max_order=9)
        exact = {"orders": "1..9", "counts": nonzero(ex.counts()), "keys": keys_of(ex), "time_s": time.perf_counter() - t,
                 "solves": ex.stats.n_solves}
        log(f"  [i] exhaustive orders 1..9: {exact['counts']} in {exact['time_s']:.1f} s")

    log("case (iii): warm-started per-step call")
    settings = [
        # What BifurcationMonitor runs at every step after the first: warm start and a small random search
        # (or the enumeration, where it fits) on every order.
        ("monitor default (every order)", dict(MONITOR_FINDER_DEFAULTS)),
        ("n_starts=0 (warm only)", {"n_starts": 0, "inner": 5, "outer": 1}),
        ("n_starts=16, inner=5, outer=1", {"n_starts": 16, "inner": 5, "outer": 1}),
        *PER_STEP_SETTINGS,
        ("n_starts=16, inner=3, outer=1", {"n_starts": 16, "inner": 3, "outer": 1}),
    ]
    rows3, ref_counts = latency_case(m2, settings=settings, n_calls=25, log=log)
    threads = None if quick else thread_check(m2, reps=reps, log=log)
    total = time.perf_counter() - started

    # ---------------------------------------------------------------- report
    print(f"\nCycle finder benchmark  (torch {torch.__version__}, numpy {np.__version__}, "
          f"{torch.get_num_threads()} intra-op thread(s), {platform.processor() or platform.machine()}, "
          f"median of {reps} interleaved repeats{', --quick' if quick else ''})\n")
    print(f"{'case':<5} {'method':<15} {'settings':<44} {'solves':>9} {'time s':>8} {'solves/s':>10} {'ratio':>7}  cycles/order")
    for row in rows1 + rows2:
        counts = row.get("counts", "")
        print(f"{row['case']:<5} {row['method']:<15} {row['settings']:<44} {row['solves']:>9,} {row['time_s']:>8.3f} "
              f"{fmt_rate(row['throughput']):>10} {row['ratio']:>6.1f}x  {counts}")
    print("\nEqual search effort end to end (SCYFI n_out=256 restarts x n_in=20  vs  find_cycles n_starts=256, inner=20):")
    print(f"{'case':<5} {'baseline: solves':>17} {'total s':>8} {'last find s':>11} | {'batched: solves':>16} {'total s':>8} "
          f"| {'speed-up (total)':>16}  same cycles?  counts (baseline / batched)")
    e2e_rows = []
    for case, (base, fast) in e2e.items():
        tb, tf = median([b["time_s"] for b in base]), median([f["time_s"] for f in fast])
        last = median([b["last_found_s"] for b in base])
        same = all(b["keys"] == f["keys"] for b, f in zip(base, fast))
        e2e_rows.append({"case": case, "baseline_s": tb, "baseline_last_find_s": last, "batched_s": tf,
                         "baseline_solves": base[0]["solves"], "batched_solves": fast[0]["solves"],
                         "speedup": tb / tf, "same_cycles": same,
                         "baseline_counts": base[0]["counts"], "batched_counts": fast[0]["counts"]})
        print(f"{case:<5} {base[0]['solves']:>17,} {tb:>8.2f} {last:>11.2f} | {fast[0]['solves']:>16,} {tf:>8.3f} | "
              f"{tb / tf:>15.1f}x  {str(same):<12}  {base[0]['counts']} / {fast[0]['counts']}")
    if exact is not None:
        batched_low = {key for key in b1[sizes[-1]]["keys"] if key[0] <= 9}
        exact["batched_agrees"] = exact["keys"] == batched_low
        print(f"\n(i) exhaustive ground truth, orders 1..9 ({exact['solves']:,} solves, {exact['time_s']:.1f} s): "
              f"{exact['counts']}; batched finder's cycles of orders <= 9 identical: "
              f"{exact['batched_agrees']}")
    print(f"\n(iii) per-step call on (ii), weights x (1 + 1e-3 N(0,1)) before each call, warm_start = previous "
          f"CycleSet, orders 1..4; reference counts {ref_counts}")
    print(f"{'settings':<32} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}  calls keeping all cycles")
    for row in rows3:
        print(f"{row['settings']:<32} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} {row['min_ms']:>8.2f}  "
              f"{row['calls_keeping_all_cycles']}/{row['calls']}")
    if threads:
        print(f"\nThread sensitivity, (ii) n_starts=1024: 1 thread {threads['1']['median_s']:.3f} s, "
              f"2 threads {threads['2']['median_s']:.3f} s (median)")
    print(f"\nTotal benchmark time {total:.0f} s")

    if args.json:
        def clean(obj):
            if isinstance(obj, dict):
                return {str(k): clean(v) for k, v in obj.items() if k != "keys"}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            return obj
        payload = {
            "torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
            "quick": quick, "reps": reps, "throughput": rows1 + rows2, "end_to_end": e2e_rows,
            "exhaustive_i": clean(exact), "latency_iii": rows3, "reference_counts_ii": ref_counts,
            "thread_check": threads, "total_s": total,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
