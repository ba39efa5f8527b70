"""Small LightningModules for the callback tests: fast, deterministic, no training.py dependency."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.distributed
from torch.utils.data import DataLoader, TensorDataset

from bifurcation_callback.models import PLRNN


def plrnn_2d(A=(0.5, 0.6), W=((0.0, -0.4), (0.3, 0.0)), h=(0.2, -0.1)) -> PLRNN:
    model = PLRNN(2)
    with torch.no_grad():
        model.A.copy_(torch.tensor(A))
        model.W.copy_(torch.tensor(W))
        model.h.copy_(torch.tensor(h))
    return model


class TinyRNNModule(pl.LightningModule):
    """Predicts the next state of random sequences with a PLRNN; ``schedule(step, rnn)`` may edit the weights."""

    def __init__(
        self,
        rnn: torch.nn.Module | None = None,
        *,
        lr: float = 1e-2,
        schedule: Callable[[int, torch.nn.Module], None] | None = None,
    ) -> None:
        super().__init__()
        self.rnn = rnn if rnn is not None else plrnn_2d()
        self.lr = lr
        self.schedule = schedule

    def training_step(self, batch, batch_idx):
        if self.schedule is not None:
            with torch.no_grad():
                self.schedule(self.global_step, self.rnn)
        (sequence,) = batch
        predicted = self.rnn.step(sequence[:, :-1])
        loss = torch.mean((predicted - sequence[:, 1:]) ** 2)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TinyRNNWithReferenceStates(TinyRNNModule):
    """Exposes a stretch of its training data in the RNN's state space (the monitor's figure protocol):
    ``bifurcation_reference_states``, shape (T, M) or (..., M)."""

    def __init__(self, reference_states, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bifurcation_reference_states = reference_states


def random_sequences(n: int = 64, length: int = 6, dim: int = 2, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(n, length, dim, generator=generator)
    return DataLoader(TensorDataset(data), batch_size=8, shuffle=False)


def quiet_trainer_kwargs(tmp_path, **overrides) -> dict:
    kwargs = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    kwargs.update(overrides)
    return kwargs


class DestroyProcessGroupAtTeardown(pl.Callback):
    """Ends a gloo process group on every rank before the spawned workers exit.

    Lightning destroys the default process group at exit only for NCCL. A gloo group left alive races with
    interpreter shutdown: about one ``ddp_spawn`` run in eight on a 2-core machine ended with a worker
    aborting ("terminate called without an active exception", SIGABRT) after ``Trainer.fit`` had finished,
    with or without the monitor. A barrier, then destroying the group, gave 0 failures in 30 runs.
    """

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def in_worker_process() -> bool:
    """True inside the monitor's analysis worker process (never in the training process)."""
    import os

    from bifurcation_callback.runner import WORKER_ENV

    return os.environ.get(WORKER_ENV) == "1"


class SlowPLRNN(PLRNN):
    """A PLRNN whose region pieces take ``delay_s`` longer in the analysis worker process (with ``everywhere``,
    in any process), so the worker falls behind training; in the training process it is as fast as a PLRNN.
    With ``per_step`` the delay is per step of a batch (a batch is then no cheaper per step than one step)."""

    def __init__(self, dim: int = 2, delay_s: float = 0.01, everywhere: bool = False, per_step: bool = False) -> None:
        super().__init__(dim)
        self.delay_s = delay_s
        self.everywhere = everywhere
        self.per_step = per_step

    def affine_pieces(self, codes):
        if self.everywhere or in_worker_process():
            import time

            steps = self.A.reshape(-1, self.state_dim).shape[0] if self.per_step else 1  # a stack's steps
            time.sleep(self.delay_s * steps)
        return super().affine_pieces(codes)


SENTINEL = 777.0  # h[0] planted to this value by a schedule marks the step that fails


class FragilePLRNN(PLRNN):
    """A PLRNN whose analysis fails at a step where ``h[0] == SENTINEL``: it raises a ValueError, or, with
    ``crash``, kills the worker process it runs in (os._exit; in the training process it raises instead, so a
    fallback to sync never kills the test)."""

    def __init__(self, dim: int = 2, crash: bool = False) -> None:
        super().__init__(dim)
        self.crash = crash

    def affine_pieces(self, codes):
        if float(self.h[0]) == SENTINEL:
            if self.crash and in_worker_process():
                import os

                os._exit(3)
            raise ValueError("planted failure")
        return super().affine_pieces(codes)


def plant_sentinel_at(steps: set[int]):
    """A TinyRNNModule schedule: h[0] = SENTINEL during the listed steps, 0.2 otherwise."""

    def schedule(step: int, rnn: torch.nn.Module) -> None:
        rnn.h[0] = SENTINEL if step in steps else 0.2

    return schedule
