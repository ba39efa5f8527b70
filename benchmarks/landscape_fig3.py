"""The paper's Fig. 3 on its 2-D PLRNN teacher: loss landscapes over (A[0], A[1]) with the bifurcation curves,
and GTF and BPTT training paths across them, with the numbers quoted in docs/how-to/landscape.md.

    PYTHONPATH=. python benchmarks/landscape_fig3.py                 # 200 x 200, T = 500, 12 starts x 2 methods
    PYTHONPATH=. python benchmarks/landscape_fig3.py --reuse-runs    # redo the numbers and figure, keep the runs

1. Data: ``plrnn_teacher(T + 1)`` (the paper's teacher, on its stable 16-cycle); model: the teacher itself.
2. Landscapes on ``A[0] ∈ a11 ± 1``, ``A[1] ∈ a22 ± 1`` (the paper's Δa ∈ [−1, 1]²): free running (α = 0)
   and GTF (``--alpha``), timed with one torch thread; the cliff statistic on all cells and on the cells
   whose rollout stays bounded.
3. Starts: ``--starts`` points drawn uniformly (seed 0) from the part of the plane where the free-running
   rollout stays bounded, the same for both methods.  ``train_in_plane`` trains only A[0], A[1] from each,
   by BPTT and by GTF (Adam, full batch on the T + 1 points), with the BifurcationMonitor (sync) attached.
4. Per run: curve crossings and loss jumps (``path_crossings`` on the landscape of the run's own loss: BPTT
   on α = 0, GTF on α); pooled over a method's runs: the fraction of crossings with a loss jump and of loss
   jumps with a crossing, with a permutation p-value (``loss_jumps.correlate`` on the runs laid end to end);
   GTF against BPTT: crossings per start, paired sign-flip test (exact, two-sided); for each run with a loss
   jump, the lag from the last crossing before its first jump to that jump, and the monitor's events there.
5. Check of the curves' order: boundary cells at ``--max-order`` against ``--check-max-order`` on a 60 × 60 grid.

Writes the figure (``--figure``) and ``<runs-dir>/results.json``; prints everything the docs page quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bifurcation_callback.bifurcations import RunPath, boundary_cells, loss_landscape, path_crossings, scan
from bifurcation_callback.data import plrnn_teacher
from bifurcation_callback.loss_jumps import correlate

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="grid points per axis (default %(default)s)")
    parser.add_argument("--seq-len", type=int, default=500, help="T, predicted steps (default %(default)s)")
    parser.add_argument("--starts", type=int, default=12, help="starts per method (default %(default)s)")
    parser.add_argument("--steps", type=int, default=500, help="training steps per run (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.1, help="GTF forcing weight (default %(default)s)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--max-order", type=int, default=4, help="curves of orders 1..K (default %(default)s)")
    parser.add_argument("--check-max-order", type=int, default=6, help="order of the 60 x 60 check (default %(default)s)")
    parser.add_argument("--window", type=int, default=5, help="crossing / jump window in steps (default %(default)s)")
    parser.add_argument("--loss-floor", type=float, default=1e-6, help="losses below count as this (default %(default)s)")
    parser.add_argument("--runs-dir", default="runs/landscape_fig3", help="run folders (default %(default)s)")
    parser.add_argument("--figure", default=str(ROOT / "docs" / "images" / "landscape_fig3.png"))
    parser.add_argument("--reuse-runs", action="store_true", help="do not train; read the run folders of a previous call")
    return parser.parse_args()


def draw_starts(landscape, count: int, seed: int = 0) -> np.ndarray:
    """Uniform points of the plane whose nearest cell has a bounded free-running rollout."""
    rng = np.random.default_rng(seed)
    a, b = landscape.a_values, landscape.b_values
    starts = []
    while len(starts) < count:
        point = rng.uniform([a[0], b[0]], [a[-1], b[-1]])
        i, j = int(np.abs(a - point[0]).argmin()), int(np.abs(b - point[1]).argmin())
        if landscape.bounded[i, j]:
            starts.append(point)
    return np.array(starts)


def pooled(statistics, n_steps: int, window: int) -> dict:
    """Crossings against loss jumps over all runs of a method, laid end to end with gaps wider than the window."""
    stride = n_steps + 2 * window + 1
    crossings = [k * stride + s for k, st in enumerate(statistics) for s in st.crossing_steps]
    jumps = [k * stride + j.step for k, st in enumerate(statistics) for j in st.loss_jumps]
    result = correlate(crossings, jumps, window=window, step_range=(0, stride * len(statistics) - 1))
    return {
        "n_crossings": len(crossings),
        "n_jumps": len(jumps),
        "crossings_with_jump": result.events_with_jump if crossings else None,
        "jumps_at_crossing": result.jumps_explained if jumps else None,
        "p_value": result.p_value if crossings and jumps else None,
    }


def crossing_before_first_jump(stats, run) -> tuple[int, int, str] | None:
    """(last crossing step before the run's first loss jump, the lag to that jump, the monitor's cycle events
    within 3 steps of the crossing), or None without such a pair."""
    if not stats.loss_jumps:
        return None
    first = min(j.step for j in stats.loss_jumps)
    before = [c for c in stats.crossing_steps if c <= first]
    if not before:
        return None
    crossing = before[-1]
    near = sorted({
        f"{e['kind']}" + (f"({e['crossing']}, stable {e['stable_before']}->{e['stable_after']})" if e["kind"] == "stability_change" else "")
        for e in run.events
        if abs(e["step"] - crossing) <= 3 and e["kind"] not in ("border_collision", "attractor_change")
    })
    return crossing, first - crossing, "; ".join(near) or "-"


def ends_on_curve(landscape, run) -> bool:
    """Whether the run's last point lies in a boundary cell (nearest cell; False off the grid)."""
    a, b = landscape.a_values, landscape.b_values
    if not (a[0] <= run.a[-1] <= a[-1] and b[0] <= run.b[-1] <= b[-1]):
        return False
    return bool(landscape.boundary[int(np.abs(a - run.a[-1]).argmin()), int(np.abs(b - run.b[-1]).argmin())])


def runs_loss_at(runs, stats, step: int) -> float:
    run = next(run for run in runs if run.name == stats.name)
    return float(run.loss[int(np.flatnonzero(run.steps == step)[0])])


def sign_flip_p(differences: np.ndarray) -> float:
    """Exact two-sided paired test of mean(differences) = 0 by flipping signs."""
    observed = abs(differences.mean())
    means = [abs((differences * signs).mean()) for signs in itertools.product((1, -1), repeat=len(differences))]
    return float(np.mean(np.array(means) >= observed - 1e-12))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    x, teacher = plrnn_teacher(args.seq_len + 1)
    a11, a22 = (float(v) for v in teacher.A.detach())
    grid = (np.linspace(a11 - 1, a11 + 1, args.n), np.linspace(a22 - 1, a22 + 1, args.n))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, {platform.processor() or platform.machine()}")

    landscapes = {}
    for alpha in (0.0, args.alpha):
        started = time.perf_counter()
        landscape = loss_landscape(teacher, x, "A[0]", "A[1]", grid, alpha=alpha, max_order=args.max_order)
        total = time.perf_counter() - started
        landscapes[alpha] = landscape
        cliff, bounded = landscape.cliff(), landscape.cliff(bounded_only=True)
        print(
            f"alpha = {alpha:g}: {args.n}x{args.n} cells, T = {landscape.seq_len}: loss + gradient {landscape.elapsed_s:.1f} s, "
            f"scan (orders 1..{args.max_order}, {landscape.diagram.method}) {landscape.diagram.elapsed_s:.1f} s, total {total:.1f} s; "
            f"{int(landscape.boundary.sum())} boundary cells, {int(landscape.bounded.sum())} bounded cells"
        )
        for label, result in (("all cells", cliff), ("bounded cells", bounded)):
            print(
                f"  cliff, {label}: median log10|grad| {result.median_boundary:.2f} on curves vs {result.median_rest:.2f} "
                f"elsewhere, ratio {result.ratio:.3g}, p = {result.p_value:.3g} (labels), {result.p_value_shift:.3g} (shifted curves); "
                f"n = {result.n_boundary} / {result.n_rest}"
            )

    check_grid = (np.linspace(a11 - 1, a11 + 1, 60), np.linspace(a22 - 1, a22 + 1, 60))
    low = boundary_cells(scan(teacher, "A[0]", "A[1]", check_grid, max_order=args.max_order))
    high = boundary_cells(scan(teacher, "A[0]", "A[1]", check_grid, max_order=args.check_max_order))
    print(
        f"60x60 check: {int(low.sum())} boundary cells with orders <= {args.max_order}, {int(high.sum())} with orders <= "
        f"{args.check_max_order}, {int((low != high).sum())} cells differ"
    )

    runs_dir = Path(args.runs_dir)
    starts = draw_starts(landscapes[0.0], args.starts)
    if not args.reuse_runs:
        from bifurcation_callback.landscape_runs import train_in_plane

        started = time.perf_counter()
        train_in_plane(teacher, x, "A[0]", "A[1]", starts, out_dir=runs_dir, alpha=args.alpha, n_steps=args.steps,
                       lr=args.lr, max_order=args.max_order)
        print(f"trained {2 * args.starts} runs of {args.steps} steps in {time.perf_counter() - started:.0f} s")

    runs = {method: [RunPath.load(runs_dir / f"{method}_start{k:02d}") for k in range(args.starts)] for method in ("bptt", "gtf")}
    statistics = {
        method: [
            path_crossings(landscapes[0.0 if method == "bptt" else args.alpha], run, window=args.window, loss_floor=args.loss_floor)
            for run in runs[method]
        ]
        for method in runs
    }
    print(
        f"\n{'run':<14} {'start':>15} {'end':>15} {'final loss':>11} {'crossings':>9} {'jumps':>5} {'jumps@cross':>11} "
        f"{'cross+lag':>12} {'events':>6} {'monitor p':>9}"
    )
    for method in runs:
        for run, stats in zip(runs[method], statistics[method]):
            row = stats.to_dict()
            explained = "-" if row["jumps_at_crossing"] is None else f"{row['jumps_at_crossing']:.2f}"
            qualitative = sum(1 for e in run.events if e["kind"] != "border_collision")
            monitor_p = (run.monitor_summary or {}).get("jump_correlation", {}).get("p_value")
            pair = crossing_before_first_jump(stats, run)
            lags = "-" if pair is None else f"{pair[0]}+{pair[1]}"
            print(
                f"{run.name:<14} ({run.a[0]:5.2f}, {run.b[0]:5.2f}) ({run.a[-1]:5.2f}, {run.b[-1]:5.2f}) {run.loss[-1]:11.3g} "
                f"{stats.n_crossings:>9} {len(stats.loss_jumps):>5} {explained:>11} {lags:>12} {qualitative:>6} "
                f"{'-' if monitor_p is None else f'{monitor_p:.3g}':>9}"
            )
    summary = {}
    print()
    for method in runs:
        counts = np.array([st.n_crossings for st in statistics[method]])
        final = np.array([run.loss[-1] for run in runs[method]])
        pairs = [crossing_before_first_jump(st, run) for st, run in zip(statistics[method], runs[method])]
        lags = [pair[1] for pair in pairs if pair is not None]
        events_at_crossing = [pair[2] for pair in pairs if pair is not None]
        landscape = landscapes[0.0 if method == "bptt" else args.alpha]
        on_curve = sum(ends_on_curve(landscape, run) for run in runs[method])
        summary[method] = {**pooled(statistics[method], args.steps, args.window), "crossings_per_run": counts.tolist(),
                           "final_loss": final.tolist(), "lags_to_first_jump": lags, "events_at_crossing": events_at_crossing,
                           "runs_ending_on_a_curve": on_curve}
        s = summary[method]
        print(
            f"{method}: crossings per run median {np.median(counts):g} (total {s['n_crossings']}), loss jumps {s['n_jumps']}; "
            f"crossings with a jump within {args.window} steps: {s['crossings_with_jump']}, jumps with a crossing: "
            f"{s['jumps_at_crossing']}, p = {s['p_value']}; steps from the last crossing before a run's first jump to that "
            f"jump: {sorted(lags)}, the monitor's events at those crossings: {events_at_crossing}; "
            f"final loss median {np.median(final):.3g}, {int((final < 1e-3).sum())} of {len(final)} runs below 1e-3, "
            f"{on_curve} end in a boundary cell"
        )
    for method in runs:
        unfloored = [path_crossings(landscapes[0.0 if method == "bptt" else args.alpha], run, window=args.window) for run in runs[method]]
        below = sum(1 for st in unfloored for j in st.loss_jumps if runs_loss_at(runs[method], st, j.step) < args.loss_floor)
        print(f"{method} without --loss-floor: {sum(len(st.loss_jumps) for st in unfloored)} loss jumps, {below} of them at losses "
              f"below {args.loss_floor:g}")
    differences = np.array(summary["gtf"]["crossings_per_run"]) - np.array(summary["bptt"]["crossings_per_run"])
    p_paired = sign_flip_p(differences.astype(float))
    print(f"GTF - BPTT crossings per start: mean {differences.mean():+.2f}, paired sign-flip p = {p_paired:.3g}")

    from bifurcation_callback.plots import plot_loss_landscape, new_axes

    figure = new_axes((12.0, 9.5)).figure
    figure.clear()
    axes = figure.subplots(2, 2)
    for row, (method, alpha) in enumerate((("bptt", 0.0), ("gtf", args.alpha))):
        plot_loss_landscape(landscapes[alpha], runs[method], statistics=statistics[method], axes=axes[row])
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.figure, dpi=80)
    results = {
        "settings": vars(args),
        "starts": starts.tolist(),
        "cliff": {str(alpha): {"all": ls.cliff().to_dict(), "bounded": ls.cliff(bounded_only=True).to_dict()}
                  for alpha, ls in landscapes.items()},
        "methods": summary,
        "paired_sign_flip_p": p_paired,
        "runs": {method: [st.to_dict() for st in statistics[method]] for method in statistics},
    }
    (runs_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.figure} and {runs_dir / 'results.json'}")


if __name__ == "__main__":
    main()
