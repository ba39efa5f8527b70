"""The ``bifurcation-callback demo`` story.

:func:`run_demo` trains the same piecewise-linear RNN on the same data with the same seeds twice — by
BPTT (free-running rollouts, no forcing) and by generalized teacher forcing (GTF, constant α) — with a
:class:`~bifurcation_callback.callback.BifurcationMonitor` attached, scores every trained model with the
DSR measures ``D_stsp`` and ``D_H`` on held-out data, and prints one side-by-side table.

Each run writes into ``<logdir>/<method>_seed<k>/``: TensorBoard event files, the monitor's
``events.jsonl`` and ``summary.json``, and ``demo.json`` (what the monitor does not know: method,
seed, data, model, settings, ``D_stsp``, ``D_H``, wall time).  ``compare.collect_runs`` reads those files
back and ``compare.comparison_table`` renders them; the demo prints its table through the very same two
functions, so ``bifurcation-callback compare <logdir>`` reproduces it exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import require_choice, require_int, require_real
from .compare import DEMO_METHODS, collect_runs, comparison_table
from .dashboard import clear_run_files

__all__ = ["DEMO_DATASETS", "DemoConfig", "demo_config", "run_demo"]

# data set name -> what it is (the CLI's --data choices and help read this).
DEMO_DATASETS: dict[str, str] = {
    "teacher-4cycle": "2-D PLRNN teacher with a stable 4-cycle (within the monitor's max_order)",
    "teacher-16cycle": "the paper's 2-D PLRNN teacher, a stable 16-cycle (beyond max_order 4)",
    "lorenz": "standardised Lorenz-63, dt = 0.01",
}
# Files of a demo run folder that a re-run of the demo replaces besides the monitor's (nothing else is deleted).
_DEMO_FILES = ("demo.json", "hparams.yaml")

@dataclass(frozen=True)
class DemoConfig:
    """Everything that defines a demo run; stored in every run's ``demo.json``.

    The defaults are the full demo (chosen before looking at any BPTT/GTF result; see docs/demo.md).
    """

    data: str = "teacher-4cycle"
    seeds: int = 3
    steps: int = 1500
    seq_len: int = 100
    batch_size: int = 16
    lr: float = 5e-3
    alpha: float = 0.1
    latent_dim: int | None = None  # None: data dimension + 1 (teacher: 3, Lorenz: 4)
    max_order: int = 4
    every_n_steps: int = 5
    # The monitor's default is 256; the teachers' attractors have periods 4 and 16, and 32 leaves room for a
    # period doubling of the 16-cycle while halving the attractor analysis' cost (see docs/demo.md, "Run time").
    max_attractor_period: int = 32
    n_train: int = 2000
    n_eval: int = 2000

    def model_dim(self, data_dim: int) -> int:
        return self.latent_dim if self.latent_dim is not None else data_dim + 1


# --fast: one seed per method, short sequences, few steps (CI's test suite runs it).
_FAST = dict(seeds=1, steps=200, seq_len=50, every_n_steps=5, n_train=1000, n_eval=1000)


def demo_config(*, fast: bool = False, **overrides: Any) -> DemoConfig:
    """The full or ``fast`` configuration with ``overrides`` (``None`` values are ignored).

    Raises
    ------
    ValueError
        Unknown data set, a count below its minimum, ``lr <= 0`` or ``alpha`` outside ``[0, 1]``; the message
        names the option.
    """
    config = replace(DemoConfig(), **(_FAST if fast else {}))
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    require_choice("--data", config.data, DEMO_DATASETS)
    minima = {"seeds": 1, "steps": 1, "seq_len": 2, "batch_size": 1, "max_order": 1, "every_n_steps": 1, "max_attractor_period": 0}
    for name, minimum in minima.items():
        require_int(f"--{name.replace('_', '-')}", getattr(config, name), minimum)
    require_real("--lr", config.lr, minimum=0.0, exclusive_minimum=True)
    require_real("--alpha", config.alpha, minimum=0.0, maximum=1.0)
    if config.n_train <= config.seq_len:
        raise ValueError(f"the training series ({config.n_train} steps) must be longer than --seq-len {config.seq_len}")
    return config


# ---------------------------------------------------------------------------------------------- data


def _load_data(config: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) halves of one long trajectory, float32, (T, N) each."""
    from .data import lorenz63, plrnn_teacher

    n = config.n_train + config.n_eval
    if config.data.startswith("teacher-"):
        system = config.data.removeprefix("teacher-").replace("cycle", "-cycle")
        x, _ = plrnn_teacher(n, system=system, seed=0)  # raw coordinates, no noise
    else:
        x = lorenz63(n, seed=0)  # standardised, dt = 0.01
    x = x.astype(np.float32)
    return x[: config.n_train], x[config.n_train :]


# ---------------------------------------------------------------------------------------------- running


# MKL picks its code path (SSE/AVX2/AVX-512 "branch") from the CPU, and the branches round differently: on
# one AVX-512 machine BPTT seed 2 of the full demo ended with final loss 0.253 (MKL's AVX-512 branch), 0.140
# (MKL_CBWR=AVX2, what an AVX2-only machine runs) or 0.121 (COMPATIBLE).  Intel documents the COMPATIBLE branch
# for reproducible results on Intel and compatible x86 CPUs (same MKL version, fixed threads); with it, torch's
# AVX2 and AVX-512 kernels gave the same full demo table.  So the demo asks for it unless the user chose a
# branch.  MKL reads the variable at its
# first use in the process: the CLI sets it in time; run_demo called later in a process that already used MKL
# keeps that process's branch.
_MKL_BRANCH = "COMPATIBLE"


@contextlib.contextmanager
def _same_mkl_branch_on_every_cpu() -> Iterator[None]:
    """``MKL_CBWR=COMPATIBLE`` while the demo runs, unless ``MKL_CBWR`` is set already."""
    if "MKL_CBWR" in os.environ:
        yield
        return
    os.environ["MKL_CBWR"] = _MKL_BRANCH
    try:
        yield
    finally:
        os.environ.pop("MKL_CBWR", None)


@contextlib.contextmanager
def _quiet_and_single_threaded() -> Iterator[None]:
    """One torch thread (4–20× faster per step on a busy 2-core box) and no Lightning chatter."""
    threads = torch.get_num_threads()
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    names += tuple(f"{n}.utilities.rank_zero" for n in names)
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    torch.set_num_threads(1)
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(num_workers|log_every_n_steps|litlogger|LeafSpec).*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        torch.set_num_threads(threads)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _environment() -> dict[str, Any]:
    """What the numbers depend on besides the code and the settings (see "Reproducibility" in docs/demo.md).

    The same command gives the same numbers to the digit only where these agree: float rounding differs
    between versions and between SIMD code paths (torch's ``cpu_capability``, MKL's branch, ``MKL_CBWR``),
    and a training run that passes through a bifurcation amplifies a last-bit difference into another result.
    """
    import platform

    import lightning

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl": torch.backends.mkl.is_available(),
        "MKL_CBWR": os.environ.get("MKL_CBWR"),
        "torch_threads": torch.get_num_threads(),
    }


def _progress_callback(label: str, total: int):
    """A Lightning callback drawing one tqdm line per run: ``BPTT seed 0: 120/300 [.., loss=0.12]``."""
    import lightning.pytorch as pl
    from tqdm.auto import tqdm

    class _Progress(pl.Callback):
        bar = None

        def on_train_start(self, trainer, pl_module):
            self.bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=True, mininterval=0.5)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.bar.update(trainer.global_step - self.bar.n)
            if trainer.global_step % 10 == 0:
                loss = trainer.callback_metrics.get("train_loss")
                if loss is not None:
                    self.bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

        def on_train_end(self, trainer, pl_module):
            if self.bar is not None:
                self.bar.close()

    return _Progress()


def _train_one(config: DemoConfig, method: str, seed: int, root: Path, train: np.ndarray, test: np.ndarray) -> dict:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from .callback import BifurcationMonitor
    from .data import TimeSeriesDataModule, power_spectrum_distance, state_space_divergence
    from .models import PLRNN
    from .training import DSRModule

    name = f"{DEMO_METHODS[method]}_seed{seed}"
    run_dir = root / name
    clear_run_files(run_dir, _DEMO_FILES)  # TensorBoard would show two curves per tag
    data_dim = train.shape[1]
    torch.manual_seed(seed)  # the same seed gives both methods the same initial model and batches
    rnn = PLRNN(config.model_dim(data_dim))
    module = DSRModule(
        rnn,
        training=DEMO_METHODS[method],
        alpha=config.alpha,
        obs_dim=data_dim,
        lr=config.lr,
        seq_len=config.seq_len,
    )
    datamodule = TimeSeriesDataModule(
        train, seq_len=config.seq_len, batch_size=config.batch_size, n_batches_per_epoch=100, seed=seed
    )
    monitor = BifurcationMonitor(
        max_order=config.max_order,
        every_n_steps=config.every_n_steps,
        max_attractor_period=config.max_attractor_period,
        model_attr="rnn",
        seed=seed,
        # Analysed beside training, every step (no step dropped, so the numbers do not depend on the machine's
        # speed and equal mode="sync"'s); the backlog is drained at fit end, however long it takes.
        mode="async",
        queue_size=None,
        drain_timeout_s=None,
    )
    trainer = pl.Trainer(
        max_steps=config.steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name=name, version=""),
        callbacks=[monitor, _progress_callback(f"{method} seed {seed}", config.steps)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=config.every_n_steps,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule)
    wall = time.perf_counter() - started
    if monitor.summary is None:
        raise RuntimeError(f"{name}: the BifurcationMonitor wrote no summary (see the warnings above)")

    # DSR measures of a long free-running trajectory from the first held-out observation.
    generated = module.generate(torch.from_numpy(test[0]), len(test)).numpy()
    info = {
        "method": method,
        "training": DEMO_METHODS[method],
        "seed": seed,
        "data": config.data,
        "model": f"PLRNN({config.model_dim(data_dim)})",
        "config": asdict(config),
        "D_stsp": state_space_divergence(test, generated),
        "D_H": power_spectrum_distance(test, generated),
        "n_eval": len(test),
        "wall_seconds": wall,
        "steps": trainer.global_step,
        "environment": _environment(),
    }
    Path(trainer.log_dir).mkdir(parents=True, exist_ok=True)
    (Path(trainer.log_dir) / "demo.json").write_text(json.dumps(info, indent=2))
    return info


def run_demo(config: DemoConfig, logdir: str | Path, *, out: Callable[[str], Any] = print) -> list[dict]:
    """Train every (method, seed) pair in turn, then print the comparison table and the tensorboard command.

    Runs are sequential in one process with one torch thread: on the 2-core development box two
    processes in parallel were no faster than one after the other (see docs/demo.md).  Two runs of the
    same command on one machine give the same numbers except the timings; MKL runs its ``COMPATIBLE``
    branch unless ``MKL_CBWR`` is set (see "Reproducibility" in docs/demo.md).

    Returns
    -------
    list of dict
        The runs as read back by :func:`collect_runs`.
    """
    root = Path(logdir)
    root.mkdir(parents=True, exist_ok=True)
    train, test = _load_data(config)
    out(
        f"demo: {config.data} data ({len(train)} train / {len(test)} held-out steps), "
        f"PLRNN({config.model_dim(train.shape[1])}), {config.steps} steps × {config.seeds} seed(s) per method, "
        f"seq_len {config.seq_len}, lr {config.lr:g} (RAdam), GTF α = {config.alpha:g}; "
        f"monitor: cycles up to order {config.max_order} and the attractor up to period "
        f"{config.max_attractor_period} every {config.every_n_steps} steps"
    )
    started = time.perf_counter()
    with _same_mkl_branch_on_every_cpu(), _quiet_and_single_threaded():
        for seed in range(config.seeds):
            for method in DEMO_METHODS:
                _train_one(config, method, seed, root, train, test)
    runs = collect_runs([root])
    out("")
    out(comparison_table(runs))
    out("")
    out(f"{len(runs)} runs in {time.perf_counter() - started:.0f} s.  TensorBoard logs:")
    out(f"tensorboard --logdir {root}")
    return runs
