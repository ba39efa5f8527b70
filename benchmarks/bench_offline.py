"""Wall time of ``analyse_checkpoints`` on a finished run's checkpoints, by executor and number of workers.

Trains a ShallowPLRNN(10, 200) with GTF on the paper's 2-D teacher data (DSRModule, ``ModelCheckpoint`` every
``--every`` steps, ``--checkpoints`` of them), then analyses the checkpoints, orders 1..``--max-order``, with
1 process worker (this process), 2 process workers and a 2-worker Dask ``LocalCluster``, each without the cache
and in the same order every repetition, and checks that every setting gives the same records (timings left
out).  One torch thread everywhere (``torch.set_num_threads(1)`` here; each worker's task sets one thread).
The start of the process pool and of the Dask cluster is inside the measured time.  A control at the end times
the same 6 checkpoints in one process alone and in two processes side by side: on a machine shared with other
jobs it shows how much a second worker can give at all.

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


def _timed_searches(paths: list[str], max_order: int) -> float:
    """Seconds this process takes for the independent part of ``paths`` (one thread)."""
    from bifurcation_callback.offline import CheckpointSettings, analyse_checkpoint

    torch.set_num_threads(1)
    settings = CheckpointSettings(orders=tuple(range(1, max_order + 1)))
    started = time.perf_counter()
    for path in paths:
        analyse_checkpoint(path, settings)
    return time.perf_counter() - started


def free_cores_control(paths: list[str], max_order: int) -> tuple[float, list[float]]:
    """The same checkpoints analysed in one process alone, then in two processes side by side (each timing
    itself, so process start-up is left out): how much a second worker can give on this machine now."""
    import concurrent.futures
    import multiprocessing

    alone = _timed_searches(paths, max_order)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(len, [[], []]))  # both workers started before the clock matters
        side_by_side = list(pool.map(_timed_searches, [paths, paths], [max_order, max_order]))
    return alone, side_by_side


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
    work: dict[str, list[float]] = {name: [] for name in SETTINGS}
    load: dict[str, list[float]] = {name: [] for name in SETTINGS}
    records: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for name, setting in SETTINGS.items():
            started = time.perf_counter()
            run = analyse_checkpoints(folder / "checkpoints", max_order=args.max_order, logs=folder / "logs",
                                      cache=False, progress=False, **setting)
            times[name].append(time.perf_counter() - started)
            records[name] = without_timings([record.to_json() for record in run.records])
            counts = [sum(record.n_cycles.values()) for record in run.records]
            # The checkpoints' own search and attractor times, as measured where they ran: their sum is the work,
            # which grows when the workers share cores with each other or with other processes on the machine.
            work[name].append(sum(r.finder_ms + (r.attractor_ms or 0.0) for r in run.records) / 1e3)
            load[name].append(os.getloadavg()[0])
            phases[name].append((run.summary["offline"]["independent_seconds"], run.summary["offline"]["sequential_seconds"]))
            print(f"  {name}: {times[name][-1]:.1f} s (per checkpoint in parallel {phases[name][-1][0]:.1f} s, in step "
                  f"order {phases[name][-1][1]:.1f} s; checkpoints' own time {work[name][-1]:.1f} s; load average "
                  f"{load[name][-1]:.1f}; {len(run.records)} records, cycles per checkpoint {min(counts)}..{max(counts)}, "
                  f"{run.summary['n_events']} events)")
    files = sorted(str(path) for path in (folder / "checkpoints").glob("*.ckpt"))[:6]
    alone, side_by_side = free_cores_control(files, args.max_order)
    print(f"control, 6 checkpoints: {alone:.1f} s in one process alone, {side_by_side[0]:.1f} s and "
          f"{side_by_side[1]:.1f} s in two processes side by side (load average {os.getloadavg()[0]:.1f})")
    reference = next(iter(records.values()))
    same = all(found == reference for found in records.values())
    print(f"same records in every setting: {same}")
    base = statistics.median(next(iter(times.values())))
    for name, measured in times.items():
        print(f"  {name}: median {statistics.median(measured):.1f} s, speed-up {base / statistics.median(measured):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "checkpoints": args.checkpoints, "max_order": args.max_order, "times_s": times, "phases_s": phases, "work_s": work,
            "load_average": load, "control_s": {"alone": alone, "side_by_side": side_by_side},
            "same_records": same,
            "cpus": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
        }, indent=2))
    if not same:
        raise SystemExit("the records differ between settings")


if __name__ == "__main__":
    main()
