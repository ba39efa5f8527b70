"""The monitor's analysis per step when steps are analysed one at a time and in batches, with the records compared.

Trains the bench case (ShallowPLRNN(3, 50), BPTT on Lorenz-63, seq_len 200, batch 16; ``--method gtf`` for the
README's GTF example) for ``--steps`` steps and keeps every step's weights, then runs the worker's analysis
(``StepAnalyser.analyse_batch``, max_order 4, attractor up to period 256) over them in batches of 1, 4, 16 and
64 steps, in a process started with the worker's environment (``runner.worker_environment``: one thread, MKL's
bitwise-reproducible mode).  Reports milliseconds per step (the first step, analysed alone in every run, not
counted), the parts (cell listing, fixed points, other searches, attractor) and whether every record equals the
one-at-a-time record (timings aside).

    PYTHONPATH=. python benchmarks/bench_batch_analysis.py [--steps 200] [--method bptt|gtf] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

BATCHES = (1, 4, 16, 64)


def train(steps: int, method: str) -> list[dict[str, Any]]:
    import lightning.pytorch as pl
    import torch

    from bifurcation_callback.data import TimeSeriesDataModule, lorenz63
    from bifurcation_callback.models import ShallowPLRNN
    from bifurcation_callback.training import DSRModule

    torch.manual_seed(0)
    rnn = ShallowPLRNN(3, 50)
    states: list[dict[str, Any]] = []

    class Keep(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            states.append({name: value.detach().clone() for name, value in rnn.state_dict().items()})

    extra = {"alpha": "adaptive"} if method == "gtf" else {}
    module = DSRModule(rnn, training=method, lr=1e-3, seq_len=200, obs_dim=3, **extra)
    data = TimeSeriesDataModule(lorenz63(5000, seed=0), seq_len=200, batch_size=16, n_batches_per_epoch=steps, seed=0)
    pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[Keep()], enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False).fit(module, data)
    return states


def analyse(states_path: str) -> dict[str, Any]:
    """In the worker's environment: every batch size over the saved steps, timed by part."""
    import torch

    from bifurcation_callback import _fixed_points, regions
    from bifurcation_callback.analysis import StepAnalyser, take_snapshot, without_timings
    from bifurcation_callback.models import ShallowPLRNN

    torch.set_num_threads(1)
    states = torch.load(states_path)
    model = ShallowPLRNN(3, 50)
    snapshots = []
    for step, state in enumerate(states):
        model.load_state_dict(state)
        snapshots.append(take_snapshot(model, step, loss=1.0))
    parts: dict[str, float] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        function = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - started
        setattr(owner, name, wrapper)

    timed(regions.CellListing, "update", "cell listing")
    timed(_fixed_points.FixedPointCache, "enumerate", "fixed points")
    results: dict[str, Any] = {}
    reference = None
    for batch in BATCHES:
        analyser = StepAnalyser(model, max_order=4)
        analyser.cycles.progress = False
        records = analyser.analyse_batch(snapshots[:1])
        parts.clear()
        started = time.perf_counter()
        for begin in range(1, len(snapshots), batch):
            records += analyser.analyse_batch(snapshots[begin : begin + batch])
        seconds = time.perf_counter() - started
        steps = len(snapshots) - 1
        # The record's fields (timings aside) and every cycle to the last bit.
        compared = [json.dumps(without_timings([r.record.to_json()]), sort_keys=True, default=str)
                    + repr([(c.key, c.points.tobytes(), c.eigenvalues.tobytes()) for c in (r.cycles or ())])
                    for r in records]
        reference = reference or compared
        attractor = sum(r.record.attractor_ms or 0.0 for r in records[1:]) / 1e3
        results[str(batch)] = {
            "ms_per_step": 1e3 * seconds / steps,
            "parts_ms_per_step": {**{k: 1e3 * v / steps for k, v in parts.items()}, "attractor": 1e3 * attractor / steps},
            "records_equal_one_at_a_time": compared == reference,
            "differing_steps": [i for i, (a, b) in enumerate(zip(compared, reference)) if a != b][:10],
        }
        print(f"batch {batch:>3}: {results[str(batch)]['ms_per_step']:6.1f} ms/step, records equal one at a time: "
              f"{compared == reference}", file=sys.stderr, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--method", choices=("bptt", "gtf"), default="bptt")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--analyse", help=argparse.SUPPRESS)  # the child process: the saved states' path
    args = parser.parse_args(argv)
    if args.analyse:
        print(json.dumps(analyse(args.analyse)))
        return 0
    import tempfile
    import warnings
    import logging

    import torch

    from bifurcation_callback.runner import worker_environment

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "states.pt")
        torch.save(train(args.steps, args.method), path)
        child = subprocess.run([sys.executable, __file__, "--analyse", path], env=worker_environment(),
                               stdout=subprocess.PIPE, text=True, check=True)
    results = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\n{args.steps} steps of ShallowPLRNN(3, 50), {args.method.upper()}, max_order 4, attractor up to period 256, "
          "1 thread, the worker's environment")
    names = sorted({name for r in results.values() for name in r["parts_ms_per_step"]})
    print(f"{'batch':>5} {'ms/step':>8}  " + "  ".join(f"{n:>13}" for n in names) + "  records = one at a time")
    for batch, row in results.items():
        print(f"{batch:>5} {row['ms_per_step']:8.1f}  " + "  ".join(f"{row['parts_ms_per_step'].get(n, 0):13.1f}" for n in names)
              + f"  {row['records_equal_one_at_a_time']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"steps": args.steps, "method": args.method, "results": results}, handle, indent=2)
    return 0 if all(r["records_equal_one_at_a_time"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
