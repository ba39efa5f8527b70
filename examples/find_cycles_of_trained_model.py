"""Train a small shallow PLRNN on data from the paper's 2-D PLRNN, save it, reload it and find its cycles.

The teacher (``plrnn_teacher``) has a globally attracting stable 16-cycle.  After a short GTF training
the student usually has one as well; the example searches orders 1..K and 16, prints the table, saves a
state-space plot and prints the equivalent command line.

    python examples/find_cycles_of_trained_model.py            # ~30 s on one CPU core
    python examples/find_cycles_of_trained_model.py --quick    # a few seconds, for the smoke test
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from bifurcation_callback import (
    DSRModule,
    ShallowPLRNN,
    TimeSeriesDataModule,
    find_cycles,
    model_from_state,
    model_to_state,
    plrnn_teacher,
)
from bifurcation_callback.plots import plot_cycles

TEACHER_ORDER = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_out/find_cycles", help="output folder (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of 50 steps (default %(default)s)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden width of the shallow PLRNN (default %(default)s)")
    parser.add_argument("--max-order", type=int, default=4, help="search orders 1..K, plus 16 (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 epochs: a smoke test, the 16-cycle is not learned yet")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's "no logger / few workers" notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = 3 if args.quick else args.epochs

    # 1. Data from the teacher and a short generalized-teacher-forcing training.
    x, teacher = plrnn_teacher(1000)
    torch.manual_seed(args.seed)
    rnn = ShallowPLRNN(latent_dim=2, hidden_dim=args.hidden)
    module = DSRModule(rnn, training="gtf", alpha=0.1, lr=1e-2)
    data = TimeSeriesDataModule(x, seq_len=64, batch_size=16, n_batches_per_epoch=50, seed=args.seed)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    started = time.perf_counter()
    trainer.fit(module, data)
    print(f"trained ShallowPLRNN(2, {args.hidden}) for {trainer.global_step} steps in "
          f"{time.perf_counter() - started:.1f} s, final train_loss {float(trainer.callback_metrics['train_loss']):.4g}")

    # 2. Save the trained latent model as JSON and load it back (this is what you would ship / inspect later).
    model_path = out / "model.json"
    model_path.write_text(json.dumps(model_to_state(rnn), indent=1))
    reloaded = model_from_state(json.loads(model_path.read_text()))
    print(f"saved {model_path}; reloaded as {type(reloaded).__name__} ({reloaded.state_dim}-D, {reloaded.n_switches} switches)")

    # 3. All cycles of orders 1..K and of the teacher's order 16.
    orders = [*range(1, args.max_order + 1), TEACHER_ORDER]
    cycles = find_cycles(reloaded, orders=orders, seed=args.seed)
    counts = ", ".join(f"order {k}: {n} ({cycles.stable_counts()[k]} stable)" for k, n in cycles.counts().items())
    print(f"found {len(cycles)} cycles in {cycles.stats.elapsed_s:.2f} s — {counts}")
    print(cycles.summary())
    reference = find_cycles(teacher, orders=[TEACHER_ORDER], seed=args.seed)
    learned = cycles.stable_counts()[TEACHER_ORDER] > 0
    print(f"teacher: {len(reference)} {TEACHER_ORDER}-cycles ({reference.n_stable} stable); "
          f"student {'has' if learned else 'has no'} stable {TEACHER_ORDER}-cycle")

    # 4. A picture of the cycles in state space, with the training data behind them.
    ax = plot_cycles(cycles)
    ax.plot(x[:, 0], x[:, 1], ".", color="lightgrey", markersize=3, zorder=0, label="training data")
    ax.legend(fontsize="small", loc="best")
    figure_path = out / "cycles.png"
    ax.figure.savefig(figure_path, dpi=120)
    print(f"wrote {figure_path}")

    # 5. The same search from the shell.
    print("same search from the command line:")
    print(f"  bifurcation-callback find {model_path} --orders {' '.join(map(str, orders))} --seed {args.seed}")


if __name__ == "__main__":
    main()
