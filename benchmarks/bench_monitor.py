"""Overhead of BifurcationMonitor on a real training loop, in sync and async mode.

The default case: ShallowPLRNN(M=3, H=50) trained with BPTT on Lorenz-63 (seq_len 200, batch 16) for a fixed
number of steps, without the monitor and with it (max_order=4; every_n_steps=1 and 10; with the attractor
analysis at its default max_attractor_period=256 and without it; the analysis on the training thread
(mode="sync"), in a worker process (mode="async") or in a worker thread), repetitions interleaved in one run
so machine noise hits every configuration alike (in ABBA order: every other repetition runs them
backwards).  ``--case large``: ShallowPLRNN(10, 200), max_order 6, with the attractor analysis.  The
overhead is reported as a ratio of fit wall times (the fit includes the fit-end wait for the last analyses;
the fit-end figures, which a worker process writes after fit returns, are waited for outside the timing),
and broken down from the monitor's own per-step records (finder_ms, compare_ms, attractor_ms, publish_ms,
figures_ms; in async mode the analysis runs beside training, so only publish_ms and figures_ms are spent on
the training thread): median and 95th percentile over the monitored steps of all repetitions.  Async rows
also give the fraction of monitored steps the worker analysed (it drops the older waiting snapshot when it
falls behind) and the lag between a step and its logged result.

Runs on older versions of the package too: a configuration whose keyword argument the installed
BifurcationMonitor does not accept (e.g. max_attractor_period before the attractor analysis) is skipped
with a note.  To compare two versions in the same machine window, alternate single-repetition runs of
the two checkouts and merge their JSON files (per-step values are kept in the JSON):

    PYTHONPATH=. python benchmarks/bench_monitor.py [--steps 60] [--reps 3] [--json out.json]
    PYTHONPATH=. python benchmarks/bench_monitor.py --merge before-*.json   # table over several JSON files
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bifurcation_callback import BifurcationMonitor
from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
from bifurcation_callback.models import ShallowPLRNN
from bifurcation_callback.training import DSRModule

CONFIGS = {
    "no monitor": None,
    "sync, every_n_steps=1": {"every_n_steps": 1, "mode": "sync"},
    "async, every_n_steps=1": {"every_n_steps": 1, "mode": "async"},
    "async thread, every_n_steps=1": {"every_n_steps": 1, "mode": "async", "worker": "thread"},
    "sync, every_n_steps=1, no attractor": {"every_n_steps": 1, "max_attractor_period": 0, "mode": "sync"},
    "async, every_n_steps=1, no attractor": {"every_n_steps": 1, "max_attractor_period": 0, "mode": "async"},
    "sync, every_n_steps=10": {"every_n_steps": 10, "mode": "sync"},
    "sync, every_n_steps=1 + figures/25": {"every_n_steps": 1, "log_figures_every_n_steps": 25, "mode": "sync"},
    "async, every_n_steps=1 + figures/25": {"every_n_steps": 1, "log_figures_every_n_steps": 25, "mode": "async"},
}
# The cases: (latent_dim, hidden_dim, max_order).
CASES = {"default": (3, 50, 4), "large": (10, 200, 6)}
PART_KEYS = ("finder_ms", "compare_ms", "attractor_ms", "publish_ms", "figures_ms", "lag_ms", "lag_steps")


def supported(kwargs: dict | None) -> bool:
    """Whether the installed BifurcationMonitor accepts every keyword of a configuration."""
    if kwargs is None:
        return True
    parameters = inspect.signature(BifurcationMonitor.__init__).parameters
    return all(key in parameters for key in kwargs)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fit_once(
    data, monitor_kwargs: dict | None, steps: int, log_root: str, case: str = "default"
) -> tuple[float, BifurcationMonitor | None]:
    latent_dim, hidden_dim, max_order = CASES[case]
    torch.manual_seed(0)
    rnn = ShallowPLRNN(latent_dim=latent_dim, hidden_dim=hidden_dim)
    module = DSRModule(rnn, training="bptt", lr=1e-3, seq_len=200, obs_dim=data.shape[1])
    datamodule = TimeSeriesDataModule(data, seq_len=200, batch_size=16, n_batches_per_epoch=steps, seed=0)
    monitor = BifurcationMonitor(max_order=max_order, **monitor_kwargs) if monitor_kwargs is not None else None
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=TensorBoardLogger(log_root, name="bench"),
        callbacks=[monitor] if monitor else [],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule)
    seconds = time.perf_counter() - started
    if monitor is not None and hasattr(monitor, "wait_for_figures"):
        # A worker process writes the fit-end figures after fit returns: not part of the fit, but it must not
        # run into the next repetition's timing.
        monitor.wait_for_figures()
    return seconds, monitor


def per_step(monitor: BifurcationMonitor) -> dict[str, list[float]]:
    """Each timing of each monitored step (a key the version does not record is absent), and the fraction of
    monitored steps analysed (one value per repetition)."""
    records = [r for r in monitor.records if "skipped" not in r]
    parts = {key: [r[key] for r in records if key in r] for key in PART_KEYS if any(key in r for r in records)}
    fraction = (monitor.summary or {}).get("analysed_fraction")
    if fraction is not None:
        parts["analysed_fraction"] = [fraction]
    return parts


def summarize(runs: list[dict]) -> list[dict]:
    """One row per configuration over runs (a run: the JSON of one invocation); overhead per repetition
    against the same invocation's same repetition's no-monitor time, then the median."""
    rows = []
    names = [name for name in CONFIGS if any(name in run["fit_s"] for run in runs)]
    for name in names:
        fit, overhead, steps_ms = [], [], {}
        for run in runs:
            if name not in run["fit_s"]:
                continue
            fit.extend(run["fit_s"][name])
            overhead.extend(t / b - 1 for t, b in zip(run["fit_s"][name], run["fit_s"]["no monitor"]))
            for rep in run["per_step"].get(name, []):
                for key, values in rep.items():
                    steps_ms.setdefault(key, []).extend(values)
        row = {"configuration": name, "fit_s": statistics.median(fit), "fit_s_all": fit,
               "ms_per_step": 1e3 * statistics.median(fit) / runs[0]["steps"],
               "overhead": statistics.median(overhead), "overhead_all": overhead}
        for key, values in steps_ms.items():
            if key == "analysed_fraction":  # per repetition, not per step
                row[key], row["analysed_fraction_all"] = statistics.median(values), values
                continue
            row[key] = statistics.median(values)
            row[key.replace("_ms", "_mean_ms") if key.endswith("_ms") else f"{key}_mean"] = statistics.mean(values)
            row[_p95(key)] = percentile(values, 95)
            row[key.replace("_ms", "_n") if key.endswith("_ms") else f"{key}_n"] = len(values)
        rows.append(row)
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    width = max(len(row["configuration"]) for row in rows) + 1
    print(f"{'configuration':<{width}} {'fit s':>7} {'ms/step':>8} {'overhead':>9} {'analysed':>9}  "
          + " ".join(f"{key.removesuffix('_ms'):>15}" for key in PART_KEYS))
    for row in rows:
        cells = [f"{row[key]:7.2f}/{row[_p95(key)]:7.2f}" if key in row else f"{'-':>15}" for key in PART_KEYS]
        analysed = f"{100 * row['analysed_fraction']:8.1f}%" if "analysed_fraction" in row else f"{'-':>9}"
        print(f"{row['configuration']:<{width}} {row['fit_s']:7.2f} {row['ms_per_step']:8.1f} "
              f"{100 * row['overhead']:8.1f}% {analysed}  " + " ".join(cells))
        print(f"{'':<{width}} fit s per repetition: {', '.join(f'{t:.2f}' for t in row['fit_s_all'])}; "
              f"overhead: {', '.join(f'{100 * o:.1f}%' for o in row['overhead_all'])}")
    print("(overhead: median over repetitions of fit time / the same repetition's no-monitor time - 1; analysed: "
          "median over repetitions of the fraction of monitored steps analysed; parts: median/p95 per monitored step "
          "over all monitored steps of all repetitions, lag in ms and in training steps between a step and its result)")


def _p95(key: str) -> str:
    return key.replace("_ms", "_p95_ms") if key.endswith("_ms") else f"{key}_p95"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--case", choices=list(CASES), default="default",
                        help="default: ShallowPLRNN(3, 50), max_order 4; large: ShallowPLRNN(10, 200), max_order 6")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="configurations to run besides 'no monitor' (default: all)")
    parser.add_argument("--json", help="write the results (and every per-step timing) here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="only print the table over these JSON files")
    args = parser.parse_args(argv)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as handle:
                runs.append(json.load(handle))
        print_table(summarize(runs), f"merged {len(runs)} run(s): {', '.join(args.merge)}")
        return 0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)  # keep the output to the benchmark's own lines
    configs = {name: kwargs for name, kwargs in CONFIGS.items()
               if name == "no monitor" or args.configs is None or name in args.configs}
    for name, kwargs in list(configs.items()):
        if not supported(kwargs):
            print(f"note: skipping {name!r}: this version's BifurcationMonitor does not accept "
                  f"{sorted(set(kwargs) - set(inspect.signature(BifurcationMonitor.__init__).parameters))}",
                  file=sys.stderr)
            del configs[name]
    data = lorenz63(5000, seed=0)
    times: dict[str, list[float]] = {name: [] for name in configs}
    parts: dict[str, list[dict[str, list[float]]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as root:
        fit_once(data, None, 5, root, args.case)  # warm-up: imports, allocator, first TensorBoard writer
        for rep in range(args.reps):
            # ABBA order: every other repetition runs the configurations backwards, so a machine that speeds up
            # or slows down during a repetition does not favour the configurations that run first.
            for name, kwargs in (list(configs.items()) if rep % 2 == 0 else list(configs.items())[::-1]):
                seconds, monitor = fit_once(data, kwargs, args.steps, root, args.case)
                times[name].append(seconds)
                if monitor is not None:
                    parts[name].append(per_step(monitor))
                print(f"rep {rep + 1}/{args.reps}  {name:<32} {seconds:6.2f} s", file=sys.stderr, flush=True)
    run = {"steps": args.steps, "reps": args.reps, "threads": args.threads, "case": args.case, "fit_s": times,
           "per_step": {name: reps for name, reps in parts.items() if reps}}
    rows = summarize([run])
    latent_dim, hidden_dim, max_order = CASES[args.case]
    print_table(rows, f"\n{args.steps} steps, ShallowPLRNN({latent_dim}, {hidden_dim}), max_order {max_order}, BPTT, "
                f"seq_len 200, batch 16, {args.threads} thread(s), median of {args.reps}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**run, "results": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
