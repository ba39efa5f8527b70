"""Latency of ``find_attractors`` per call (what the training monitor would pay per analysed step).

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_attractors.py [--repeats 7]

Cases: ShallowPLRNN(3, 50) after ``torch.manual_seed(2)`` (its attractor is a stable fixed point) and the
paper's 2-D PLRNN teacher with a stable 16-cycle, each from 16 starting states (3 · N(0, 1)); defaults
(max_period 256, n_transient 1000, n_window 768), a lighter setting, and 16 points of the attractor found
before with no transient (what a monitor can pass from its previous step).  The time of the plain simulation of
the same number of steps is printed next to it: it is the floor, because the map is iterated one step at a
time.  Median of ``--repeats`` calls after one untimed call, on one torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bifurcation_callback.attractors import find_attractors  # noqa: E402
from bifurcation_callback.data import PLRNN_TEACHERS  # noqa: E402
from bifurcation_callback.models import PLRNN, ShallowPLRNN  # noqa: E402


def teacher() -> PLRNN:
    model = PLRNN(2).double()
    with torch.no_grad():
        for name, value in PLRNN_TEACHERS["16-cycle"]["params"].items():
            getattr(model, name).copy_(torch.tensor(value, dtype=torch.float64))
    return model


def median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - started))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(2)
    shallow = ShallowPLRNN(3, 50).double()
    cases = {"ShallowPLRNN(3, 50)": shallow, "16-cycle teacher": teacher()}
    settings = {
        "defaults (max_period=256)": {},
        "max_period=64, n_transient=200": {"max_period": 64, "n_transient": 200},
    }
    print(f"{'case':<22} {'settings':<38} {'result':<24} {'median ms':>10} {'simulation only ms':>19}")
    for name, model in cases.items():
        states = 3 * torch.randn(16, model.state_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for label, kwargs in settings.items():
            report = find_attractors(model, states, **kwargs)
            max_period = kwargs.get("max_period", 256)
            steps = kwargs.get("n_transient", 1000) + 3 * max_period

            def simulate_only(model=model, states=states, steps=steps) -> None:
                with torch.no_grad():
                    z = states
                    for _ in range(steps):
                        z = model.step(z)

            kinds = ", ".join(f"{a.kind}({a.period})" if a.period else a.kind for a in report)
            milliseconds = median_ms(lambda: find_attractors(model, states, **kwargs), args.repeats)
            floor = median_ms(simulate_only, args.repeats)
            print(f"{name:<22} {label:<38} {kinds:<24} {milliseconds:>10.1f} {floor:>19.1f}")
        # What the monitor can do between steps: start on the previous attractor's points, no transient.
        previous = torch.as_tensor(find_attractors(model, states).primary.orbit[-16:])
        warm = {"n_transient": 0}
        report = find_attractors(model, previous, **warm)
        kinds = ", ".join(f"{a.kind}({a.period})" if a.period else a.kind for a in report)
        milliseconds = median_ms(lambda: find_attractors(model, previous, **warm), args.repeats)
        print(f"{name:<22} {'on previous attractor, n_transient=0':<38} {kinds:<24} {milliseconds:>10.1f}")


if __name__ == "__main__":
    main()
