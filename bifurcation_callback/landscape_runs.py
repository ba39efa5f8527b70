"""Training runs in a 2-D parameter plane, for drawing on a loss landscape (the paper's Fig. 3 experiment).

``train_in_plane`` copies a model, sets two of its parameter entries to each given start and trains only
those two entries (every other gradient is masked to zero) with ``DSRModule`` by BPTT and by GTF, full-batch
on the given sequences, with a ``BifurcationMonitor`` attached.  Each run gets a run folder (see
``bifurcations.landscape.RunPath``): ``path.json`` with the two parameters, loss and gradient norm at every
step, and the monitor's ``events.jsonl`` and ``summary.json``.  ``bifurcation-callback landscape --runs`` and
``path_crossings`` read those folders.

This module imports Lightning (it trains); ``import bifurcation_callback`` does not load it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ._checks import require_bool, require_choice, require_int, require_real
from .bifurcations.landscape import _sequences
from .bifurcations.paths import RUN_EVENTS_FILE, RUN_PATH_FILE, RUN_SUMMARY_FILE, RunPath
from .bifurcations.scan import parse_param_spec
from .callback import BifurcationMonitor
from .forcing import TRAINING_MODES
from .models import model_to_state, require_piecewise_linear
from .training import OPTIMIZERS, DSRModule

__all__ = ["train_in_plane"]


class _PathRecorder(pl.Callback):
    """Records, per training step, the two entries before the update (where the step's loss was computed),
    the step's loss and its gradient norm (``DSRModule.last_grad_norm``)."""

    def __init__(self, entries: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        self.entries = entries
        self.steps: list[int] = []
        self.points: list[tuple[float, float]] = []
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        parameters = dict(pl_module.rnn.named_parameters())
        self.steps.append(int(trainer.global_step))
        a, b = (float(parameters[name].detach()[index]) for name, index in self.entries)
        self.points.append((a, b))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        self.grad_norms.append(float(pl_module.last_grad_norm))


def _student(model: torch.nn.Module, entries: Sequence[tuple[str, tuple[int, ...]]], start: np.ndarray) -> torch.nn.Module:
    """A float64 copy of ``model`` at ``start`` whose only trainable numbers are the two entries."""
    student = copy.deepcopy(model).double()
    parameters = dict(student.named_parameters())
    masks = {name: torch.zeros_like(p) for name, p in parameters.items()}
    with torch.no_grad():
        for (name, index), value in zip(entries, start):
            parameters[name][index] = float(value)
            masks[name][index] = 1.0
    for name, parameter in parameters.items():
        if masks[name].any():
            # The other entries of the same tensor stay where they are: their gradient is zeroed in backward.
            parameter.register_hook(lambda grad, _mask=masks[name]: grad * _mask)
        else:
            parameter.requires_grad_(False)
    return student


def train_in_plane(
    model: torch.nn.Module,
    data: Any,
    param_a: str,
    param_b: str,
    starts: Any,
    *,
    out_dir: str | Path,
    methods: Sequence[str] = ("bptt", "gtf"),
    alpha: float = 0.1,
    n_steps: int = 500,
    lr: float = 0.01,
    optimizer: str = "adam",
    seq_len: int | None = None,
    max_order: int = 4,
    max_attractor_period: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Train only ``param_a`` and ``param_b`` of ``model`` from every start, by every method; one run folder each.

    Every run copies ``model`` (float64), sets ``(param_a, param_b)`` to the start and trains those two
    entries for ``n_steps`` full-batch steps on ``data`` with ``DSRModule(training=method, alpha=alpha)``
    (identity observation: the data are the first ``N`` latent units), with ``BifurcationMonitor(max_order,
    every_n_steps=1, mode="sync")`` attached.  With the landscape's data and ``seq_len``, a BPTT run's loss
    at every step is the free-running landscape's loss at its point, a GTF run's the GTF landscape's.

    Parameters
    ----------
    model : PiecewiseLinear nn.Module
        The model whose other parameters stay fixed (e.g. the teacher, ``data.plrnn_teacher``).
    data : array_like, shape (T, N) or (B, T, N)
        Training sequences; every step uses all of them.
    param_a, param_b : str
        Parameter entries such as ``"A[0]"`` (``parse_param_spec``).
    starts : array_like, shape (S, 2)
        Initial ``(param_a, param_b)`` of each run.
    out_dir : str or Path
        Run folders go to ``out_dir / f"{method}_start{k:02d}"`` (files of an earlier run there are replaced).
    methods : sequence of str
        Training modes (``forcing.TRAINING_MODES``).
    alpha : float in [0, 1]
        GTF forcing weight (constant).
    n_steps : int
        Optimizer steps per run.
    lr : float
        Learning rate.
    optimizer : str
        One of ``training.OPTIMIZERS``.  Adam by default: RAdam's first steps are un-normalised momentum
        steps, and a start near a cliff (gradient norms of 1e3 and more) would throw the parameters far
        off the grid at once.
    seq_len : int, optional
        Train on the first ``seq_len + 1`` points of each sequence (as ``loss_landscape``).
    max_order : int
        The monitor's ``max_order``.
    max_attractor_period : int
        The monitor's ``max_attractor_period`` (32: the demo's choice; 0 skips the attractor analysis).
    seed : int
        The monitor's seed.
    progress : bool
        One progress line per run.

    Returns
    -------
    list of Path
        The run folders, methods outer, starts inner.

    Raises
    ------
    ValueError
        Bad starts, data, parameter spec, method, or any option out of range.

    Examples
    --------
    >>> from bifurcation_callback.data import plrnn_teacher
    >>> import tempfile
    >>> x, teacher = plrnn_teacher(21, system="4-cycle")
    >>> with tempfile.TemporaryDirectory() as out:
    ...     folders = train_in_plane(teacher, x, "A[0]", "A[1]", [[0.2, 0.3]], out_dir=out, methods=["gtf"],
    ...                              n_steps=3, max_order=2, progress=False)
    ...     sorted(path.name for path in folders[0].iterdir())
    ['events.jsonl', 'path.json', 'summary.json']
    """
    require_piecewise_linear(model)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"train_in_plane needs a piecewise-linear torch.nn.Module, got {type(model).__name__}")
    entries = [parse_param_spec(model, param_a), parse_param_spec(model, param_b)]
    if entries[0] == entries[1]:
        raise ValueError(f"param_a and param_b name the same entry ({param_a!r} and {param_b!r})")
    start_array = np.asarray(starts, dtype=np.float64)
    if start_array.ndim != 2 or start_array.shape[1] != 2 or start_array.shape[0] == 0 or not np.isfinite(start_array).all():
        raise ValueError(
            f"starts must be finite (param_a, param_b) pairs, shape (S, 2) with S >= 1, got shape {start_array.shape}"
        )
    if isinstance(methods, str) or not methods:
        raise ValueError(
            f"methods must be a non-empty sequence of training modes ({', '.join(TRAINING_MODES)}), got {methods!r}"
        )
    for method in methods:
        require_choice("method", method, TRAINING_MODES)
    alpha = require_real("alpha", alpha, minimum=0.0, maximum=1.0)
    n_steps = require_int("n_steps", n_steps, 1)
    lr = require_real("lr", lr, minimum=0.0, exclusive_minimum=True)
    require_choice("optimizer", optimizer, OPTIMIZERS)
    require_int("max_order", max_order, 1)
    require_int("max_attractor_period", max_attractor_period, 0)
    require_int("seed", seed, 0)
    require_bool("progress", progress)
    sequences = torch.as_tensor(_sequences(data, seq_len))
    n_sequences, n_points, obs_dim = sequences.shape
    if obs_dim > model.state_dim:
        raise ValueError(f"the data have N={obs_dim} dimensions but the model has state_dim={model.state_dim}")

    from .demo import _progress_callback, _quiet_and_single_threaded

    folders = []
    with _quiet_and_single_threaded():
        for method in methods:
            for k, start in enumerate(start_array):
                run_dir = Path(out_dir) / f"{method}_start{k:02d}"
                for name in (RUN_PATH_FILE, RUN_EVENTS_FILE, RUN_SUMMARY_FILE):
                    (run_dir / name).unlink(missing_ok=True)
                run_dir.mkdir(parents=True, exist_ok=True)
                student = _student(model, entries, start)
                start_state = model_to_state(student)
                module = DSRModule(
                    student, training=method, alpha=alpha, obs_dim=obs_dim, lr=lr, optimizer=optimizer,
                    seq_len=n_points - 1,
                )
                recorder = _PathRecorder(entries)
                monitor = BifurcationMonitor(
                    max_order=max_order, every_n_steps=1, model_attr="rnn", jsonl_path=str(run_dir / RUN_EVENTS_FILE),
                    max_attractor_period=max_attractor_period, seed=seed, mode="sync", verbose=False,
                )
                callbacks = [recorder, monitor]
                if progress:
                    callbacks.append(_progress_callback(f"{method} start {k}", n_steps))
                trainer = pl.Trainer(
                    max_steps=n_steps, accelerator="cpu", devices=1, logger=False, callbacks=callbacks,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=str(run_dir),
                )
                loader = DataLoader(TensorDataset(sequences), batch_size=n_sequences)
                trainer.fit(module, loader)
                points = np.asarray(recorder.points, dtype=np.float64).reshape(-1, 2)
                RunPath(
                    param_a=param_a,
                    param_b=param_b,
                    steps=np.asarray(recorder.steps, dtype=np.int64),
                    a=points[:, 0],
                    b=points[:, 1],
                    loss=np.asarray(recorder.losses, dtype=np.float64),
                    grad_norm=np.asarray(recorder.grad_norms, dtype=np.float64),
                    method=method,
                    alpha=alpha if method == "gtf" else None,
                    start_model=start_state,
                ).save(run_dir)
                folders.append(run_dir)
    return folders
