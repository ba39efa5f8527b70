"""Monitor bifurcations of YOUR OWN LightningModule and piecewise-linear RNN (no DSRModule, no PLRNN).

The RNN below implements the ``PiecewiseLinear`` protocol from scratch, in plain torch:

    z' = A z + W relu(z) + h        (A, W full M x M matrices)

Inside the region where the sign pattern of z is d (a bool vector, one switch per unit) the map is
affine, z' = (A + W diag(d)) z + h; that is all the cycle finder needs.  The module trains it on a
period-2 signal, ``BifurcationMonitor`` finds its fixed points and 2-cycles at every step, and a
``TensorBoardLogger`` receives the curves, the event table and the figures.

    python examples/monitor_your_own_module.py           # a few seconds
    python examples/monitor_your_own_module.py --quick
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bifurcation_callback import BifurcationMonitor, PiecewiseLinear


class LeakyReluRNN(nn.Module):
    """z' = A z + W relu(z) + h: a piecewise-linear RNN written without the package's base classes."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.state_dim = dim  # M
        self.n_switches = dim  # one ReLU per unit: switch l is on iff z[l] > 0
        self.A = nn.Parameter(0.5 * torch.eye(dim) + 0.1 * torch.randn(dim, dim))
        self.W = nn.Parameter(0.3 * torch.randn(dim, dim))
        self.h = nn.Parameter(0.1 * torch.randn(dim))

    def step(self, z: Tensor) -> Tensor:
        """One step of the map, batched over leading dimensions: (..., M) -> (..., M)."""
        return z @ self.A.T + torch.relu(z) @ self.W.T + self.h

    def region_codes(self, z: Tensor) -> Tensor:
        """Which switches are on at z: (..., M) -> bool (..., S)."""
        return z > 0

    def affine_pieces(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """The affine map of each region: bool (..., S) -> J (..., M, M), c (..., M)."""
        d = codes.to(self.A.dtype)  # the finder works in float64: follow the parameters' dtype
        J = self.A + self.W * d.unsqueeze(-2)  # A + W diag(d)
        return J, self.h.expand(d.shape[:-1] + (self.state_dim,))

    def forward(self, z: Tensor) -> Tensor:
        return self.step(z)


class NextStepModule(pl.LightningModule):
    """A user's own LightningModule: roll the RNN out from the first observation, MSE on the rest."""

    def __init__(self, dim: int = 2, lr: float = 5e-2) -> None:
        super().__init__()
        self.rnn = LeakyReluRNN(dim)  # the monitor finds the one PiecewiseLinear submodule by itself
        self.lr = lr

    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor:
        (x,) = batch  # (B, T, M)
        z, predictions = x[:, 0], []
        for _ in range(x.shape[1] - 1):
            z = self.rnn.step(z)
            predictions.append(z)
        loss = torch.mean((torch.stack(predictions, 1) - x[:, 1:]) ** 2)
        self.log("train_loss", loss)  # the monitor reads this key (loss_key="train_loss")
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def flipping_signal(n_windows: int, length: int, seed: int) -> TensorDataset:
    """Windows of a noisy period-2 signal that jumps between (1.6, -0.4) and (0.4, 1.2): a 2-cycle to learn."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.tensor([[1.6, -0.4], [0.4, 1.2]])
    start = torch.randint(0, 2, (n_windows, 1), generator=generator)
    x = points[(start + torch.arange(length)) % 2]  # (n_windows, length, 2)
    return TensorDataset(x + 0.02 * torch.randn(x.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_out/own_module", help="output folder (TensorBoard logs)")
    parser.add_argument("--steps", type=int, default=80, help="training steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="25 steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # Lightning's "few workers" notes
    steps = 25 if args.quick else args.steps

    pl.seed_everything(args.seed, verbose=False)
    module = NextStepModule()
    assert isinstance(module.rnn, PiecewiseLinear)  # the runtime-checkable protocol: attributes and methods exist
    loader = DataLoader(flipping_signal(256, 8, args.seed), batch_size=32, shuffle=True)
    monitor = BifurcationMonitor(max_order=2, every_n_steps=1)
    logger = TensorBoardLogger(save_dir=args.out, name="own_module")
    trainer = pl.Trainer(
        max_steps=steps, logger=logger, callbacks=[monitor], accelerator="cpu", log_every_n_steps=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, loader)

    summary = monitor.summary
    kinds = ", ".join(f"{k}: {n}" for k, n in summary["events_by_kind"].items() if n) or "none"
    correlation = summary["jump_correlation"]
    # mode="auto": with a spare CPU core the analysis runs in a worker process beside training; a worker that
    # falls behind catches up in batches, so every monitored step gets a record (none dropped by default).
    print(f"analysed {summary['n_analysed_steps']} of {summary['n_monitored_steps']} monitored steps "
          f"({summary['n_skipped']} skipped, {summary['n_dropped_steps']} dropped; mode {summary['mode']}), "
          f"final loss {summary['final_loss']:.4g}")
    print(f"bifurcation events: {summary['n_events']} ({kinds})")
    for event in monitor.events[:12]:
        print(f"  step {event.step:>3}  {event.kind:<17} order {event.order}  {event.description}")
    explained = correlation["jumps_explained"]  # None (undefined) when there was no loss jump
    print(f"loss jumps: {len(summary['loss_jumps'])}; jumps with an event nearby: "
          f"{'n/a' if explained is None else f'{explained:.2f}'}")
    overhead = summary["monitor_overhead"]  # None when it could not be measured
    print(f"monitor overhead: {'n/a' if overhead is None else f'{100 * overhead:.0f} %'} of the training time")
    print("cycles at the end:")
    print(monitor.cycles.summary())
    print(f"per-step records: {Path(logger.log_dir) / 'events.jsonl'}")
    print(f"view the curves, events and figures with:\n  tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
