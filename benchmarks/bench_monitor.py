"""What BifurcationMonitor costs a real training loop, and whether it kept up: every configuration against the
same repetition's run without the monitor.

Cases (``--case``): ``default`` trains ShallowPLRNN(3, 50) with BPTT on Lorenz-63 (seq_len 200, batch 16,
max_order 4: the issue's "bench case"); ``readme`` is the README's example (the same model trained by GTF with
adaptive alpha); ``large`` is ShallowPLRNN(10, 200), max_order 6, BPTT.  Configurations (``--configs``): the
default monitor (``mode="auto"``), ``sync``, ``async`` (every step analysed, the worker catches up in batches),
``async`` with latest wins (``queue_size=1``), and a few variants.  Repetitions run in ABBA order (every other
one backwards), so machine noise hits every configuration alike.

Per configuration the table gives: the fit time (the fit includes the fit-end wait for the last analyses;
fit-end figures, which a worker writes after fit returns, are waited for outside the timing), the measured
overhead (fit time / the same repetition's no-monitor fit time - 1; median and every repetition), the overhead
the monitor itself reported (``summary["monitor_overhead"]``; median and each), the fraction of monitored
steps analysed, the dropped steps, the lag between a step and its result (median / 95th percentile over every
step of every repetition, in training steps), the fit-end drain and the worker's batch size (medians).

``--threads N`` sets torch's intra-op threads for every fit; ``--threads 0`` leaves torch's default (every
core; "auto" then gives training one thread fewer for the fit, and the baseline keeps the default).
``--checkpoints`` trains as the README's example does: epochs of 50 batches, Lightning's default checkpoint at
every epoch end (its cost, and the monitor's state in it, timed in both configurations); else one epoch and no
checkpoint.

    PYTHONPATH=. python benchmarks/bench_monitor.py --steps 300 --reps 5 --threads 1 --configs auto async
    PYTHONPATH=. python benchmarks/bench_monitor.py --steps 300 --reps 5 --threads 0 --case readme --json out.json
    PYTHONPATH=. python benchmarks/bench_monitor.py --steps 300 --reps 3 --threads 0 --case readme --checkpoints --configs auto
    PYTHONPATH=. python benchmarks/bench_monitor.py --merge a.json b.json     # one table over several runs
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bifurcation_callback import BifurcationMonitor
from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
from bifurcation_callback.models import ShallowPLRNN
from bifurcation_callback.training import DSRModule

CONFIGS: dict[str, dict[str, Any] | None] = {
    "no monitor": None,
    "auto": {},
    "sync": {"mode": "sync"},
    "async": {"mode": "async"},
    "async latest-wins": {"mode": "async", "queue_size": 1},
    "async no-attractor": {"mode": "async", "max_attractor_period": 0},
    # A floor: the default monitor doing about half the work (fixed points only, no searches of higher orders,
    # no attractor search), to tell what the hooks, the fit-end wait and a busy neighbour cost on their own.
    "auto fixed-points-only": {"max_order": 1, "max_attractor_period": 0},
    "sync every-10": {"mode": "sync", "every_n_steps": 10},
}
# The cases: (latent_dim, hidden_dim, max_order, training method).
CASES = {"default": (3, 50, 4, "bptt"), "readme": (3, 50, 4, "gtf"), "large": (10, 200, 6, "bptt")}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fit_once(data, monitor_kwargs: dict | None, steps: int, log_root: str, case: str,
             checkpoints: bool = False) -> tuple[float, dict | None]:
    """One fit; its wall time and, with a monitor, what the monitor said about it.  ``checkpoints``: epochs of
    the data module's default 50 batches, with Lightning's default checkpoint at every epoch end (as the
    README's example runs); else one epoch and no checkpoint."""
    latent_dim, hidden_dim, max_order, method = CASES[case]
    torch.manual_seed(0)
    rnn = ShallowPLRNN(latent_dim=latent_dim, hidden_dim=hidden_dim)
    extra = {"alpha": "adaptive"} if method == "gtf" else {}
    module = DSRModule(rnn, training=method, lr=1e-3, seq_len=200, obs_dim=data.shape[1], **extra)
    datamodule = TimeSeriesDataModule(data, seq_len=200, batch_size=16, n_batches_per_epoch=50 if checkpoints else steps,
                                      seed=0)
    monitor = None
    if monitor_kwargs is not None:
        options = {"max_order": max_order, "every_n_steps": 1, "verbose": False, **monitor_kwargs}
        monitor = BifurcationMonitor(**options)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=TensorBoardLogger(log_root, name="bench"),
        callbacks=[monitor] if monitor else [], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=checkpoints, log_every_n_steps=1,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - started
    if monitor is None:
        return seconds, None
    monitor.wait_for_figures()  # written after fit returns: must not run into the next repetition's timing
    summary = monitor.summary or {}
    lags = [r["lag_steps"] for r in monitor.records if r.get("lag_steps") is not None]
    batches = [r["batch_size"] for r in monitor.records if r.get("batch_size") is not None]
    return seconds, {
        "reported_overhead": summary.get("monitor_overhead"),
        "overhead_is_lower_bound": summary.get("overhead_is_lower_bound"),
        "analysed_fraction": summary.get("analysed_fraction"),
        "n_monitored_steps": summary.get("n_monitored_steps"),
        "n_dropped_steps": summary.get("n_dropped_steps"),
        "drain_seconds": summary.get("drain_seconds"),
        "mode": summary.get("mode"),
        "training_threads": summary.get("training_threads"),
        "contention_seconds": summary.get("contention_seconds"),
        "hook_seconds": summary.get("monitor_seconds"),
        "thread_change_seconds": summary.get("thread_change_seconds"),
        "lag_steps": lags,
        "batch_size": batches,
    }


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration over runs (a run: one invocation's JSON); the overhead of a repetition is
    against the same invocation's same repetition without the monitor."""
    rows = []
    names = [name for name in CONFIGS if any(name in run["fit_s"] for run in runs)]
    for name in names:
        fit, overhead, monitors = [], [], []
        for run in runs:
            if name not in run["fit_s"]:
                continue
            fit.extend(run["fit_s"][name])
            overhead.extend(t / b - 1 for t, b in zip(run["fit_s"][name], run["fit_s"]["no monitor"]))
            monitors.extend(run["monitor"].get(name, []))
        row: dict[str, Any] = {"configuration": name, "fit_s": statistics.median(fit), "fit_s_all": fit,
                               "ms_per_step": 1e3 * statistics.median(fit) / runs[0]["steps"],
                               "overhead": statistics.median(overhead), "overhead_all": overhead}
        if monitors:
            reported = [m["reported_overhead"] for m in monitors]
            lags = [lag for m in monitors for lag in m["lag_steps"]]
            batches = [size for m in monitors for size in m["batch_size"]]
            known = [r for r in reported if r is not None]
            row.update(
                reported=statistics.median(known) if known else None, reported_all=reported,
                lower_bound_all=[bool(m["overhead_is_lower_bound"]) for m in monitors],
                analysed=statistics.median(m["analysed_fraction"] or 0.0 for m in monitors),
                dropped=sum(m["n_dropped_steps"] or 0 for m in monitors),
                lag_p50=percentile(lags, 50), lag_p95=percentile(lags, 95),
                drain_s=statistics.median(m["drain_seconds"] or 0.0 for m in monitors),
                hooks_s=statistics.median(m.get("hook_seconds") or 0.0 for m in monitors),
                contention_s=statistics.median(m["contention_seconds"] or 0.0 for m in monitors),
                batch=statistics.median(batches) if batches else None,
                mode=monitors[0]["mode"], training_threads=monitors[0]["training_threads"],
            )
        rows.append(row)
    return rows


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    width = max(len(row["configuration"]) for row in rows) + 1
    print(f"{'configuration':<{width}} {'fit s':>7} {'ms/step':>8} {'measured':>9} {'reported':>9} {'analysed':>9} "
          f"{'dropped':>8} {'lag p50/p95':>12} {'drain s':>8} {'hooks s':>8} {'slowed s':>8} {'batch':>6}  mode")
    for row in rows:
        if "analysed" in row:
            threads = row["training_threads"]
            mode = row["mode"] + (f", training threads {threads['before']}->{threads['during_fit']}" if threads else "")
            bound = "≥" if any(row["lower_bound_all"]) else ""
            monitor = (f"{bound + _percent(row['reported']):>9} {100 * row['analysed']:8.1f}% {row['dropped']:>8} "
                       f"{row['lag_p50']:>5.1f}/{row['lag_p95']:<6.1f} {row['drain_s']:8.2f} {row['hooks_s']:8.2f} "
                       f"{row['contention_s']:8.2f} "
                       f"{row['batch'] if row['batch'] is not None else '-':>6}  {mode}")
        else:
            monitor = ""
        print(f"{row['configuration']:<{width}} {row['fit_s']:7.2f} {row['ms_per_step']:8.1f} "
              f"{_percent(row['overhead']):>9} {monitor}")
        each = f"{'':<{width}} fit s: {', '.join(f'{t:.2f}' for t in row['fit_s_all'])}"
        if "analysed" in row:
            each += (f"; measured: {', '.join(_percent(o) for o in row['overhead_all'])}"
                     f"; reported: {', '.join('≥' * b + _percent(o) for o, b in zip(row['reported_all'], row['lower_bound_all']))}")
        print(each)
    print("(measured: median over repetitions of fit time / the same repetition's no-monitor time - 1; reported: the "
          "monitor's own summary['monitor_overhead'], ≥: a lower bound (the worker never idled, so the slowdown beside it "
          "was not measured); analysed: median fraction of monitored steps with a record; "
          "lag in training steps over every step of every repetition; drain: fit-end wait, hooks: the monitor's time on the "
          "training thread, slowed: training's slowdown beside the working analysis as the monitor measured it; medians)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0: torch's default")
    parser.add_argument("--case", choices=list(CASES), default="default")
    parser.add_argument("--configs", nargs="+", choices=[name for name in CONFIGS if name != "no monitor"],
                        default=["auto", "sync", "async", "async latest-wins"],
                        help="configurations to run besides 'no monitor'")
    parser.add_argument("--checkpoints", action="store_true",
                        help="epochs of 50 batches with Lightning's default checkpoint at every epoch end (the README's setup)")
    parser.add_argument("--json", help="write the results (with every repetition's values) here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only print the table over these JSON files")
    args = parser.parse_args(argv)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as handle:
                runs.append(json.load(handle))
        print_table(summarize(runs), f"merged {len(runs)} run(s): {', '.join(args.merge)}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)  # keep the output to the benchmark's own lines
    configs = {name: CONFIGS[name] for name in ["no monitor", *args.configs]}
    data = lorenz63(5000, seed=0)
    times: dict[str, list[float]] = {name: [] for name in configs}
    monitors: dict[str, list[dict]] = {name: [] for name in configs if configs[name] is not None}
    with tempfile.TemporaryDirectory() as root:
        fit_once(data, None, 5, root, args.case, args.checkpoints)  # warm-up: imports, allocator, first TensorBoard writer
        for rep in range(args.reps):
            # ABBA: every other repetition runs the configurations backwards, so a machine that speeds up or
            # slows down during a repetition does not favour the configurations that run first.
            for name, kwargs in (list(configs.items()) if rep % 2 == 0 else list(configs.items())[::-1]):
                seconds, said = fit_once(data, kwargs, args.steps, root, args.case, args.checkpoints)
                times[name].append(seconds)
                line = f"rep {rep + 1}/{args.reps}  {name:<20} {seconds:6.2f} s"
                if said is not None:
                    monitors[name].append(said)
                    line += (f"  reported {_percent(said['reported_overhead'])}, analysed "
                             f"{_percent(said['analysed_fraction'])}, drain {said['drain_seconds']:.2f} s")
                print(line, file=sys.stderr, flush=True)
                assert torch.get_num_threads() == threads, "a fit left torch's thread count changed"
    run = {"steps": args.steps, "reps": args.reps, "threads": threads, "case": args.case, "checkpoints": args.checkpoints,
           "fit_s": times, "monitor": monitors}
    latent_dim, hidden_dim, max_order, method = CASES[args.case]
    print_table(summarize([run]), f"\n{args.steps} steps, ShallowPLRNN({latent_dim}, {hidden_dim}), max_order {max_order}, "
                f"{method.upper()}, seq_len 200, batch 16, {threads} torch thread(s), {args.reps} repetitions"
                + (", a checkpoint every 50 steps" if args.checkpoints else ""))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**run, "results": summarize([run])}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
