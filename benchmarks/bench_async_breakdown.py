"""Where the async monitor's overhead goes, on bench_monitor.py's default case.

Three measurements, each over ``--reps`` interleaved repetitions of ``--steps`` training steps
(ShallowPLRNN(3, 50), BPTT, 1 torch thread, TensorBoard logger):

1. Phases of the fit, without the monitor and with ``mode="async"``: the training steps (timestamps from a
   callback that runs before the monitor) and the fit-end work after the last step (``on_train_end``).
2. The monitor's fit-end work, split: waiting for the last analyses (``_drain``), stopping the worker
   (``_finish_worker``; a worker process draws and writes the fit-end figures itself after fit returns,
   ``wait_for_figures``, timed outside the fit; ``log_images``: PNG encoding on the training thread, which
   a thread worker's figures still need).
3. Whether a busy second core slows training: the no-monitor fit while another process analyses random
   models in a loop (what the worker does), started with the fit.

    PYTHONPATH=. python benchmarks/bench_async_breakdown.py [--steps 300] [--reps 3]
"""

from __future__ import annotations

import argparse
import collections
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_monitor  # noqa: E402  (the same training case)

from bifurcation_callback import callback as callback_module  # noqa: E402
from bifurcation_callback import dashboard as dashboard_module  # noqa: E402
from bifurcation_callback.data import lorenz63  # noqa: E402

# What the worker process does, as a stand-alone load for the other core.
BACKGROUND_ANALYSIS = """
import torch
torch.set_num_threads(1)
from bifurcation_callback.analysis import StepAnalyser, take_snapshot
from bifurcation_callback.models import ShallowPLRNN
torch.manual_seed(0)
model = ShallowPLRNN(3, 50)
analyser = StepAnalyser(model, max_order=4, max_attractor_period=256)
step = 0
while True:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
    analyser.analyse(take_snapshot(model, step))
    step += 1
"""

ASYNC = {"every_n_steps": 1, "mode": "async"}


class PhaseStamps(pl.Callback):
    """Timestamps of the first and last training step and of the end of the fit-end hooks."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 1:
            self.times["step1"] = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.times["last_step"] = time.perf_counter()

    def teardown(self, *args, **kwargs) -> None:
        self.times.setdefault("teardown", time.perf_counter())


def timed_methods(owner: type, names: list[str], totals: dict[str, float]) -> None:
    """Wrap methods of ``owner`` so their wall time adds up in ``totals`` (per name)."""
    for name in names:
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - started

        setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    stamps = PhaseStamps()
    original_init = pl.Trainer.__init__

    def init_with_stamps(self, *a, callbacks=None, **k):  # the stamps run before the monitor's hooks
        original_init(self, *a, callbacks=[stamps, *(callbacks or [])], **k)

    pl.Trainer.__init__ = init_with_stamps
    parts: dict[str, float] = collections.defaultdict(float)
    timed_methods(callback_module.BifurcationMonitor, ["on_train_end", "_drain", "_finish_worker", "wait_for_figures"], parts)
    timed_methods(dashboard_module.Dashboard, ["log_images"], parts)

    data = lorenz63(5000, seed=0)
    rows: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as root:
        bench_monitor.fit_once(data, None, 5, root)  # warm-up
        for rep in range(args.reps):
            for name in ("no monitor", "async", "no monitor, busy second core"):
                background = None
                if name.endswith("busy second core"):
                    background = subprocess.Popen([sys.executable, "-c", BACKGROUND_ANALYSIS])
                stamps.times.clear()
                parts.clear()
                fit_s, _ = bench_monitor.fit_once(data, ASYNC if name == "async" else None, args.steps, root)
                if background is not None:
                    background.kill()
                    background.wait()
                times = stamps.times
                rows[name].append({
                    "fit": fit_s,
                    "steps": times["last_step"] - times["step1"],
                    "fit end": times["teardown"] - times["last_step"],
                    **{key: value for key, value in parts.items()},
                })
                print(f"rep {rep + 1}/{args.reps}  {name:<30} {fit_s:6.2f} s", file=sys.stderr, flush=True)
    pl.Trainer.__init__ = original_init

    print(f"\n{args.steps} steps, ShallowPLRNN(3, 50), BPTT, 1 torch thread; seconds, median of {args.reps}")
    keys = ["fit", "steps", "fit end", "on_train_end", "_drain", "_finish_worker", "log_images", "wait_for_figures"]
    print(f"{'configuration':<30} " + " ".join(f"{key:>14}" for key in keys) + "  fit s per repetition")
    base = rows["no monitor"]
    for name, reps in rows.items():
        cells = [statistics.median([rep.get(key, 0.0) for rep in reps]) for key in keys]
        overhead = statistics.median([rep["fit"] / b["fit"] - 1 for rep, b in zip(reps, base)])
        print(f"{name:<30} " + " ".join(f"{cell:14.3f}" for cell in cells)
              + "  " + ", ".join(f"{rep['fit']:.2f}" for rep in reps) + f" (overhead {100 * overhead:+.1f} %)")
    print("(steps: first to last training step; fit end: after the last step until teardown; on_train_end and its "
          "parts: the monitor's methods; _finish_worker stops the worker; wait_for_figures: after fit, until the worker "
          "process has written the fit-end figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
