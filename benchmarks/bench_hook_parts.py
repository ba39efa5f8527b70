"""Where the async monitor's time on the training thread goes, part by part, on bench_monitor.py's default case.

Runs ``--reps`` fits of ``--steps`` steps with ``BifurcationMonitor(mode="async", every_n_steps=1)`` (the
worker process) and wraps the monitor's own methods, and those of its worker and dashboard it calls on the
training thread, in timers.  Reports, per part, the milliseconds per fit, the calls per fit and the
microseconds per call (medians over the repetitions), next to the monitor's own account
(``summary["monitor_seconds"]``: the hooks, and ``drain_seconds``: the fit-end wait for the last analyses).
Parts nest (``_collect`` contains ``_receive``), so the column does not add up.

Time spent by other threads of the training process for the monitor (TensorBoard's event-writer thread
computes a CRC in pure Python for each event the monitor logs) shows up only where it holds the GIL while a
part waits for it: as a slower part, not as a part of its own.

    PYTHONPATH=. python benchmarks/bench_hook_parts.py [--steps 300] [--reps 3]
"""

from __future__ import annotations

import argparse
import collections
import functools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_monitor  # noqa: E402  (the same training case)

from bifurcation_callback import callback as callback_module  # noqa: E402
from bifurcation_callback import dashboard as dashboard_module  # noqa: E402
from bifurcation_callback import worker as worker_module  # noqa: E402
from bifurcation_callback.data import lorenz63  # noqa: E402

# (owner, attribute, label): what runs on the training thread, outermost first.
PARTS = (
    (callback_module.BifurcationMonitor, "on_before_optimizer_step", "on_before_optimizer_step (hook)"),
    (callback_module, "gradient_norm", "  gradient_norm"),
    (callback_module.BifurcationMonitor, "on_before_backward", "on_before_backward (hook)"),
    (callback_module.BifurcationMonitor, "_publish", "  _publish (log one result)"),
    (dashboard_module.Dashboard, "log_scalars", "    Dashboard.log_scalars"),
    (dashboard_module.Dashboard, "write_record", "    Dashboard.write_record (events.jsonl)"),
    (callback_module.BifurcationMonitor, "on_train_batch_end", "on_train_batch_end (hook)"),
    (callback_module, "_step_loss", "  _step_loss"),
    (callback_module.BifurcationMonitor, "_collect", "  _collect (finished results)"),
    (worker_module.AnalysisWorker, "_receive", "    AnalysisWorker._receive (recv + unpickle)"),
    (callback_module.BifurcationMonitor, "_submit", "  _submit (this step)"),
    (callback_module.BifurcationMonitor, "_reference_or_none", "    _reference_or_none"),
    (callback_module, "take_snapshot", "    take_snapshot (copy the weights)"),
    (worker_module.AnalysisWorker, "_send", "    AnalysisWorker._send (pickle + send)"),
    (callback_module.BifurcationMonitor, "_drain", "_drain (fit end: the last analyses)"),
)


def instrument(totals: dict[str, list[float]]) -> None:
    """Wrap every part in a timer appending its wall time to ``totals[label]``."""
    for owner, name, label in PARTS:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label].append(time.perf_counter() - started)

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = lorenz63(5000, seed=0)
    totals: dict[str, list[float]] = collections.defaultdict(list)
    instrument(totals)
    per_fit: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    accounts = []
    with tempfile.TemporaryDirectory() as root:
        bench_monitor.fit_once(data, None, 5, root)  # warm-up: imports, the first TensorBoard writer
        for rep in range(args.reps):
            totals.clear()
            seconds, monitor = bench_monitor.fit_once(data, {"every_n_steps": 1, "mode": "async"}, args.steps, root)
            summary = monitor.summary
            accounts.append((seconds, summary["monitor_seconds"] - summary["drain_seconds"], summary["drain_seconds"],
                             summary["analysed_fraction"]))
            for _, _, label in PARTS:
                per_fit[label].append((sum(totals[label]), len(totals[label])))
            print(f"rep {rep + 1}/{args.reps}: fit {seconds:.2f} s, hooks {accounts[-1][1]:.3f} s, "
                  f"fit-end wait {accounts[-1][2]:.3f} s, {accounts[-1][3]:.0%} analysed", flush=True)
    fit, hooks, drain, analysed = (statistics.median(values) for values in zip(*accounts))
    print(f"\n{args.steps} steps, async, every_n_steps=1, median of {args.reps}: fit {fit:.2f} s; the monitor's own "
          f"account: hooks {1e3 * hooks:.0f} ms + fit-end wait {1e3 * drain:.0f} ms = "
          f"{100 * (hooks + drain) / max(fit - hooks - drain, 1e-9):.1f} % of the rest of the fit; {analysed:.0%} analysed")
    print(f"{'part (training thread)':50s} {'ms/fit':>8s} {'calls':>7s} {'us/call':>9s}")
    for _, _, label in PARTS:
        seconds = statistics.median(total for total, _ in per_fit[label])
        calls = statistics.median(count for _, count in per_fit[label])
        print(f"{label:50s} {1e3 * seconds:8.1f} {calls:7.0f} {1e6 * seconds / max(calls, 1):9.1f}")


if __name__ == "__main__":
    main()
