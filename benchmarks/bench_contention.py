"""What a busy neighbour process costs a training loop on the other core: the floor under the monitor's overhead.

Trains the bench case (ShallowPLRNN(3, 50), BPTT on Lorenz-63, seq_len 200, batch 16, one torch thread) for
``--steps`` steps alone and beside a second process that never idles: pure Python (no memory traffic), a numpy
loop over arrays of several MB, and the monitor's own analysis (``StepAnalyser.analyse_batch`` of the README
model's steps in batches of 16, in the worker's environment).  Reports the median step time of each fit (the
first 10 steps left out) and its ratio to training alone, repetitions interleaved.

    PYTHONPATH=. python benchmarks/bench_contention.py [--steps 150] [--reps 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

NEIGHBOURS = {
    "python loop": "while True: pass",
    "numpy, 8 MB arrays": (
        "import numpy as np\n"
        "a = np.random.rand(20000, 50)\n"
        "while True: (a @ np.random.rand(50, 3)).sum(); np.sort(a[:, 0])"
    ),
    "the monitor's analysis": (
        "import torch\n"
        "torch.set_num_threads(1)\n"
        "from bifurcation_callback import ShallowPLRNN\n"
        "from bifurcation_callback.analysis import StepAnalyser, take_snapshot\n"
        "model = ShallowPLRNN(3, 50)\n"
        "snapshots = []\n"
        "for step in range(200):\n"
        "    with torch.no_grad():\n"
        "        for p in model.parameters(): p.add_(1e-3 * torch.randn_like(p))\n"
        "    snapshots.append(take_snapshot(model, step, loss=1.0))\n"
        "while True:\n"
        "    analyser = StepAnalyser(model, max_order=4)\n"
        "    analyser.cycles.progress = False\n"
        "    for begin in range(0, 200, 16): analyser.analyse_batch(snapshots[begin:begin + 16])\n"
    ),
}


def fit(steps: int) -> float:
    """Median step time (ms) of one fit, the first 10 steps left out."""
    import lightning.pytorch as pl
    import torch

    from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
    from bifurcation_callback.models import ShallowPLRNN
    from bifurcation_callback.training import DSRModule

    times: list[float] = []

    class StepTimes(pl.Callback):
        last: float | None = None

        def on_train_batch_end(self, *args: Any) -> None:
            now = time.perf_counter()
            if self.last is not None:
                times.append(now - self.last)
            self.last = now

    torch.manual_seed(0)
    module = DSRModule(ShallowPLRNN(3, 50), training="bptt", lr=1e-3, seq_len=200, obs_dim=3)
    data = TimeSeriesDataModule(lorenz63(5000, seed=0), seq_len=200, batch_size=16, n_batches_per_epoch=steps, seed=0)
    pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[StepTimes()], enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False).fit(module, data)
    return 1e3 * statistics.median(times[10:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from bifurcation_callback.runner import worker_environment

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    fit(20)  # warm-up
    results: dict[str, list[float]] = {"alone": [], **{name: [] for name in NEIGHBOURS}}
    for rep in range(args.reps):
        for name in list(results) if rep % 2 == 0 else list(results)[::-1]:
            neighbour = None
            if name != "alone":
                neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[name]], env=worker_environment())
                time.sleep(3.0)  # imports and set-up done: the neighbour is busy
            try:
                results[name].append(fit(args.steps))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            print(f"rep {rep + 1}/{args.reps}  {name:<24} {results[name][-1]:6.2f} ms/step", file=sys.stderr, flush=True)
    alone = statistics.median(results["alone"])
    print(f"\n{args.steps} steps of the bench case, 1 torch thread, median step time over {args.reps} repetitions")
    for name, values in results.items():
        print(f"{name:<24} {statistics.median(values):6.2f} ms/step  {100 * (statistics.median(values) / alone - 1):+5.1f} %"
              f"   ({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
