"""Analyse a finished, unmonitored run from its checkpoints, in parallel, as BifurcationMonitor would have.

Trains a shallow PLRNN with GTF on the paper's 2-D teacher data for a few hundred steps with Lightning's
``ModelCheckpoint`` (every 20 steps) and a CSV logger, without any monitor; then ``analyse_checkpoints`` finds
the cycles of every checkpoint in worker processes, tracks them in step order, takes the loss from the CSV log
and writes the monitor's files (``events.jsonl``, ``summary.json``, TensorBoard event files).  A second call
finds everything in its cache.  Prints the records and the equivalent command line.

    python examples/analyse_checkpoints.py            # ~20 s on a 2-core CPU
    python examples/analyse_checkpoints.py --quick    # fewer steps, for the smoke test
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from bifurcation_callback import DSRModule, ShallowPLRNN, TimeSeriesDataModule, analyse_checkpoints, plrnn_teacher


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_out/analyse_checkpoints", help="output folder (default %(default)s)")
    parser.add_argument("--steps", type=int, default=400, help="training steps (default %(default)s)")
    parser.add_argument("--every", type=int, default=20, help="steps between checkpoints (default %(default)s)")
    parser.add_argument("--max-order", type=int, default=4, help="cycle orders 1..K (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="100 steps: a smoke test")
    return parser.parse_args()


def train(folder: Path, steps: int, every: int) -> Path:
    """A plain training run: checkpoints and a CSV log, no monitor."""
    x, _ = plrnn_teacher(1000)
    torch.manual_seed(0)
    module = DSRModule(ShallowPLRNN(latent_dim=2, hidden_dim=16), training="gtf", alpha=0.1, lr=1e-2)
    data = TimeSeriesDataModule(x, seq_len=64, batch_size=16, n_batches_per_epoch=50, seed=0)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
        logger=CSVLogger(folder, name="run", version=""),
        callbacks=[ModelCheckpoint(dirpath=folder / "run" / "checkpoints", every_n_train_steps=every, save_top_k=-1)],
    )
    trainer.fit(module, data)
    return folder / "run"


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's "few workers" notes
    out = Path(args.out)
    steps = 100 if args.quick else args.steps

    started = time.perf_counter()
    run = train(out, steps, args.every)
    print(f"trained ShallowPLRNN(2, 16) for {steps} steps in {time.perf_counter() - started:.1f} s: "
          f"{len(list((run / 'checkpoints').glob('*.ckpt')))} checkpoints in {run / 'checkpoints'}")

    # 1. Every checkpoint searched in a worker process, then tracked in step order here.
    analysis = analyse_checkpoints(run / "checkpoints", out=out / "analysis", logs=run, max_order=args.max_order,
                                   workers=args.workers, progress=False)
    offline = analysis.summary["offline"]
    print(f"analysed {offline['n_analysed']} checkpoints with {args.workers} workers in {offline['wall_seconds']:.1f} s "
          f"(searches {offline['independent_seconds']:.1f} s, tracking {offline['sequential_seconds']:.1f} s)")
    print("step  loss      cycles per order (stable)         attractor    events")
    for record in analysis.records:
        counts = " ".join(f"{k}:{n}({record.n_stable[k]})" for k, n in record.n_cycles.items())
        events = ", ".join(event["kind"] for event in record.verified_events) or "-"
        attractor = (record.attractor or {}).get("label", "none")
        print(f"{record.step:<5d} {record.loss:<9.4g} {counts:<33s} {attractor:<12s} {events}")
    summary = analysis.summary
    explained = summary["jump_correlation"]["jumps_explained"]
    print(f"{summary['n_events']} events, {len(summary['loss_jumps'])} loss jumps; jumps with an event nearby: "
          f"{'n/a' if explained is None else f'{explained:.2f}'}")

    # 2. Run again: nothing is searched twice (the cache is keyed by each file's content and the settings).
    again = analyse_checkpoints(run / "checkpoints", out=out / "analysis", logs=run, max_order=args.max_order,
                                workers=args.workers, progress=False)
    print(f"second call: {again.n_analysed} analysed, {again.n_cached} from the cache")

    # 3. The same from the shell, and where to look.
    print("same analysis from the command line:")
    print(f"  bifurcation-callback analyse {run / 'checkpoints'} --logs {run} --out {out / 'analysis_cli'} "
          f"--max-order {args.max_order} --workers {args.workers}")
    print(f"tensorboard --logdir {out / 'analysis'}")


if __name__ == "__main__":
    main()
