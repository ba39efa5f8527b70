"""Wall time of ``analyse_checkpoints`` on a finished run's checkpoints, by executor and number of workers.

Trains a ShallowPLRNN(10, 200) with GTF on the paper's 2-D teacher data (DSRModule, ``ModelCheckpoint`` every
``--every`` steps, ``--checkpoints`` of them), then analyses the checkpoints, orders 1..``--max-order``, with
1 process worker (this process), 2 process workers and a 2-worker Dask ``LocalCluster``, each without the cache
and in the same order every repetition, and checks that every setting gives the same records (timings left
out).  One torch thread everywhere (``torch.set_num_threads(1)`` here; the search sets one thread itself in
every worker).  The start of the process pool and of the Dask cluster is inside the measured time.

    PYTHONPATH=. python benchmarks/bench_offline.py [--checkpoints 50] [--every 10] [--max-order 6]
                                                    [--repeats 1] [--folder bench_offline_run] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bifurcation_callback.analysis import without_timings
from bifurcation_callback.offline import analyse_checkpoints

SETTINGS = {
    "1 process worker (this process)": {"executor": "process", "workers": 1},
    "2 process workers": {"executor": "process", "workers": 2},
    "Dask LocalCluster, 2 workers": {"executor": "dask", "workers": 2},
}


def train(folder: Path, n_checkpoints: int, every: int) -> float:
    """The run whose checkpoints are analysed (kept in ``folder`` and reused when its checkpoints are there)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from bifurcation_callback import DSRModule, ShallowPLRNN, TimeSeriesDataModule, plrnn_teacher

    if len(list((folder / "checkpoints").glob("*.ckpt"))) == n_checkpoints:
        return 0.0
    x, _ = plrnn_teacher(2000)
    torch.manual_seed(0)
    module = DSRModule(ShallowPLRNN(10, 200), training="gtf", alpha=0.1, lr=1e-3, obs_dim=2)
    data = TimeSeriesDataModule(x, seq_len=50, batch_size=16, n_batches_per_epoch=100, seed=0)
    trainer = pl.Trainer(
        max_steps=n_checkpoints * every, accelerator="cpu", devices=1, log_every_n_steps=1,
        callbacks=[ModelCheckpoint(dirpath=folder / "checkpoints", every_n_train_steps=every, save_top_k=-1)],
        logger=CSVLogger(folder, name="logs", version=""), enable_progress_bar=False, enable_model_summary=False,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=50)
    parser.add_argument("--every", type=int, default=10, help="training steps between checkpoints")
    parser.add_argument("--max-order", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="repetitions of every setting (interleaved)")
    parser.add_argument("--folder", help="where the training run goes (default: a temporary folder)")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench_offline_"))
    training_s = train(folder, args.checkpoints, args.every)
    print(f"{args.checkpoints} checkpoints of ShallowPLRNN(10, 200) in {folder} (training {training_s:.0f} s); "
          f"orders 1..{args.max_order}; {os.cpu_count()} CPUs, torch threads 1")
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    phases: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
    records: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for name, setting in SETTINGS.items():
            started = time.perf_counter()
            run = analyse_checkpoints(folder / "checkpoints", max_order=args.max_order, logs=folder / "logs",
                                      cache=False, progress=False, **setting)
            times[name].append(time.perf_counter() - started)
            records[name] = without_timings([record.to_json() for record in run.records])
            counts = [sum(record.n_cycles.values()) for record in run.records]
            phases[name].append((run.summary["offline"]["independent_seconds"], run.summary["offline"]["sequential_seconds"]))
            print(f"  {name}: {times[name][-1]:.1f} s (per checkpoint in parallel {phases[name][-1][0]:.1f} s, in step "
                  f"order {phases[name][-1][1]:.1f} s; {len(run.records)} records, cycles per checkpoint "
                  f"{min(counts)}..{max(counts)}, {run.summary['n_events']} events)")
    reference = next(iter(records.values()))
    same = all(found == reference for found in records.values())
    print(f"same records in every setting: {same}")
    base = statistics.median(next(iter(times.values())))
    for name, measured in times.items():
        print(f"  {name}: median {statistics.median(measured):.1f} s, speed-up {base / statistics.median(measured):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoints": args.checkpoints, "max_order": args.max_order, "times_s": times, "phases_s": phases,
            "same_records": same,
            "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
        }, indent=2))
    if not same:
        raise SystemExit("the records differ between settings")


if __name__ == "__main__":
    main()
