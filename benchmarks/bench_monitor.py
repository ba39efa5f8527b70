"""Overhead of BifurcationMonitor on a real training loop.

ShallowPLRNN(M=3, H=50) trained with BPTT on Lorenz-63 (seq_len 200, batch 16) for a fixed number of
steps, without the monitor and with it (every_n_steps=1 and 10, max_order=4), repetitions interleaved in
one run so machine noise hits every configuration alike.  The overhead is reported as a ratio of fit wall
times, and broken down from the monitor's own per-step timings (finder, comparison, logging, figures).

    PYTHONPATH=. python benchmarks/bench_monitor.py [--steps 60] [--reps 3] [--json out.json]
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

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from bifurcation_callback import BifurcationMonitor
from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
from bifurcation_callback.models import ShallowPLRNN
from bifurcation_callback.training import DSRModule

CONFIGS = {
    "no monitor": None,
    "every_n_steps=1": {"every_n_steps": 1},
    "every_n_steps=10": {"every_n_steps": 10},
    "every_n_steps=1 + figures/25": {"every_n_steps": 1, "log_figures_every_n_steps": 25},
}


def fit_once(data, monitor_kwargs: dict | None, steps: int, log_root: str) -> tuple[float, BifurcationMonitor | None]:
    torch.manual_seed(0)
    module = DSRModule(ShallowPLRNN(latent_dim=3, hidden_dim=50), training="bptt", lr=1e-3, seq_len=200)
    datamodule = TimeSeriesDataModule(data, seq_len=200, batch_size=16, n_batches_per_epoch=steps, seed=0)
    monitor = BifurcationMonitor(max_order=4, **monitor_kwargs) if monitor_kwargs is not None else None
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
    return time.perf_counter() - started, monitor


def breakdown(monitor: BifurcationMonitor) -> dict[str, float]:
    records = [r for r in monitor.records if "skipped" not in r]
    keys = ("finder_ms", "compare_ms", "publish_ms", "figures_ms")
    return {key: statistics.mean(r.get(key, 0.0) for r in records) for key in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)  # keep the output to the benchmark's own lines
    data = lorenz63(5000, seed=0)
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as root:
        fit_once(data, None, 5, root)  # warm-up: imports, allocator, first TensorBoard writer
        for rep in range(args.reps):
            for name, kwargs in CONFIGS.items():
                seconds, monitor = fit_once(data, kwargs, args.steps, root)
                times[name].append(seconds)
                if monitor is not None:
                    parts[name].append(breakdown(monitor))
                print(f"rep {rep + 1}/{args.reps}  {name:<30} {seconds:6.2f} s", file=sys.stderr)
    base = statistics.median(times["no monitor"])
    # Overhead from the repetition's own baseline (adjacent runs share the machine's state), then the median.
    paired = {name: statistics.median(t / b - 1 for t, b in zip(times[name], times["no monitor"])) for name in CONFIGS}
    results = []
    print(f"\n{args.steps} steps, ShallowPLRNN(3, 50), BPTT, seq_len 200, batch 16, {args.threads} thread(s), "
          f"median of {args.reps}")
    print(f"{'configuration':<30} {'fit s':>7} {'ms/step':>8} {'overhead':>9} {'finder':>7} {'compare':>8} "
          f"{'logging':>8} {'figures':>8}  (overhead: median over repetitions of fit time / the same "
          "repetition's no-monitor time - 1; parts: ms per monitored step)")
    for name in CONFIGS:
        median = statistics.median(times[name])
        row = {"configuration": name, "fit_s": median, "ms_per_step": 1e3 * median / args.steps,
               "overhead": paired[name], "overhead_of_medians": median / base - 1, "fit_s_all": times[name]}
        if parts[name]:
            row.update({key: statistics.median(p[key] for p in parts[name]) for key in parts[name][0]})
        results.append(row)
        cells = [f"{row.get(k, float('nan')):>7.2f}" for k in ("finder_ms", "compare_ms", "publish_ms", "figures_ms")]
        print(f"{name:<30} {median:7.2f} {row['ms_per_step']:8.1f} {100 * row['overhead']:8.1f}% " + " ".join(cells))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"steps": args.steps, "reps": args.reps, "threads": args.threads, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
