"""Loss-jump detection on synthetic training losses: how often a real fall is found, how often noise is a jump.

The curves are ``tests/problems.py``'s (docs/concepts.md, "Loss jumps", reports the table):

1. ``fall_within_25_steps``: the issue's run, 2.42 -> 0.90 within 25 steps on a slow decay, 280 losses after the
   warm-up, per-batch noise 0.1 / 0.21 / 0.3 in log; found = one "down" jump within the fall.
2. ``smooth_decay``: no jump, exponential or power-law decay (time constant 30-600 steps), 280 / 1,000 / 3,000
   losses, noise 0.02 / 0.21 / 0.3, constant or growing as the loss falls; a run with any jump is a false one.
3. ``quiet_fall_then_noisy``: quiet descent, tenfold fall within 60 steps, then 20 % noise; jumps per run.

``--module PATH`` runs another version of ``loss_jumps.py`` instead (e.g. main's one-step detector:
``git show 19adebd:bifurcation_callback/loss_jumps.py > /tmp/old.py``), for the "before" column.

    PYTHONPATH=. python benchmarks/bench_loss_jumps.py [--seeds 200] [--module PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from problems import fall_within_25_steps, quiet_fall_then_noisy, smooth_decay  # noqa: E402

from bifurcation_callback import loss_jumps  # noqa: E402


def load_module(path: str | None) -> ModuleType:
    if path is None:
        return loss_jumps
    spec = importlib.util.spec_from_file_location("loss_jumps_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200, help="runs per setting (default 200)")
    parser.add_argument("--module", help="path of another loss_jumps.py to evaluate (default: the installed one)")
    args = parser.parse_args()
    detect = load_module(args.module).detect_loss_jumps
    started = time.perf_counter()

    for noise in (0.1, 0.21, 0.3):
        found = 0
        for seed in range(args.seeds):
            losses, start = fall_within_25_steps(seed, noise=noise)
            jumps = detect(losses, min_relative_change=1.0)
            found += any(start <= jump.step <= start + 25 and jump.direction == "down" for jump in jumps)
        print(f"fall 2.42 -> 0.90 within 25 steps, noise {noise}, x2 rule: found in {found}/{args.seeds} runs")

    for min_relative_change in (1.0, 0.25):
        with_jumps = total = worst = 0
        for n_steps in (280, 1000, 3000):
            for noise in (0.02, 0.21, 0.3):
                for heteroscedastic in (False, True):
                    count = sum(
                        bool(detect(smooth_decay(seed, n_steps=n_steps, noise=noise, heteroscedastic=heteroscedastic),
                                    min_relative_change=min_relative_change))
                        for seed in range(args.seeds)
                    )
                    with_jumps, total, worst = with_jumps + count, total + args.seeds, max(worst, count)
        print(f"smooth decays, min_relative_change {min_relative_change}: {with_jumps}/{total} runs with a jump "
              f"({with_jumps / total:.2%}; at most {worst}/{args.seeds} in one setting)")

    counts = [len(detect(quiet_fall_then_noisy(seed), min_relative_change=1.0)) for seed in range(5)]
    print(f"quiet descent, tenfold fall, then 20 % noise, x2 rule: jumps per run {counts}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
