"""What the monitor reads from a Lightning Trainer and LightningModule: the step, the step's own loss, gradient
accumulation, the expected last step, the RNN inside the module, its reference states, and where the analysis
should run.  Kept apart from ``callback.py`` (which wires hooks) because several of these read Lightning's
private state, with fallbacks should a release change it.
"""

from __future__ import annotations

import os
import sys
from operator import attrgetter
from typing import Any

import numpy as np
import torch

from .models import require_piecewise_linear

__all__ = [
    "MAX_REFERENCE_STATES",
    "accumulating",
    "available_cpus",
    "default_mode",
    "find_rnn",
    "gradient_norm",
    "last_step",
    "lightning_step",
    "reference_states",
    "resolve_mode",
    "step_loss",
    "training_device",
    "user_stacklevel",
    "worker_core_plan",
]

# Frames of these packages are not the user's: a warning points past them (see ``user_stacklevel``).
_LIBRARY_PACKAGES = frozenset({"bifurcation_callback", "lightning", "pytorch_lightning", "lightning_fabric", "torch"})

# At most this many states of ``bifurcation_reference_states`` are drawn.
MAX_REFERENCE_STATES = 2000


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def training_device(trainer: Any) -> torch.device:
    """The device the module trains on (the strategy's root device; CPU when the trainer does not say)."""
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def default_mode(trainer: Any) -> str:
    """``mode="auto"``: async when the worker gets a core of its own (or trains on a GPU), else sync.

    A core is the worker's when the process may use more CPUs (``os.sched_getaffinity``) than the training
    processes on this machine keep busy: one per process (``trainer.num_devices``: DDP on CPU runs that many
    processes, each GPU one), times torch's intra-op threads for training on the CPU (torch's default uses
    every core, and a worker beside such a run slowed it by +79 % on 2 cores).  Training on a GPU keeps one
    core per process busy.

    Examples
    --------
    >>> class Trainer:
    ...     num_devices = 1
    >>> default_mode(Trainer()) in ("async", "sync")
    True
    """
    threads = 1 if training_device(trainer).type == "cuda" else max(1, torch.get_num_threads())
    return "async" if available_cpus() > _training_processes(trainer) * threads else "sync"


def _training_processes(trainer: Any) -> int:
    """The training processes on this machine: ``trainer.num_devices`` (DDP on CPU runs that many; each GPU one)."""
    return max(1, int(getattr(trainer, "num_devices", 1) or 1))


def worker_core_plan(trainer: Any) -> tuple[str, int | None]:
    """``mode="auto"`` in full: the mode, and the intra-op threads training should use beside a worker (None:
    leave torch's setting alone).

    When torch's threads already leave a core free (``default_mode`` says async) or there is no second core per
    training process, nothing changes.  Otherwise (torch's default on the CPU: every core) training gets
    ``cpus // processes - 1`` threads per process so that the worker has a core of its own: on 2 cores a
    worker beside 2 training threads slowed a small model's training by +79 %, while 1 thread trained it as
    fast as 2.

    Examples
    --------
    >>> class Trainer:
    ...     num_devices = 1
    >>> mode, threads = worker_core_plan(Trainer())
    >>> mode in ("async", "sync") and (threads is None or threads >= 1)
    True
    """
    mode = default_mode(trainer)
    per_process = available_cpus() // _training_processes(trainer)
    if mode == "async" or training_device(trainer).type == "cuda" or per_process < 2:
        return mode, None
    return "async", per_process - 1


def resolve_mode(trainer: Any, mode: str, worker: str) -> tuple[str, int | None, str | None]:
    """The monitor's mode for this fit, the intra-op threads training should use meanwhile (None: leave
    torch's setting) and a warning (None) when an explicit ``mode="async"`` worker process would share its core
    with training's threads.

    Examples
    --------
    >>> class Trainer:
    ...     num_devices = 1
    >>> resolve_mode(Trainer(), "sync", "process")
    ('sync', None, None)
    """
    if mode == "auto":
        return (*worker_core_plan(trainer), None)
    warning = None
    if mode == "async" and worker == "process" and default_mode(trainer) == "sync" and available_cpus() > 1:
        warning = (f"mode='async' beside torch's {torch.get_num_threads()} intra-op threads on {available_cpus()} CPUs: "
                   "training's threads and the worker take turns on the cores (a 2-core run was several times "
                   "slower); mode='auto' gives training one thread fewer for the fit, or set torch.set_num_threads yourself")
    return mode, None, warning


def lightning_step(trainer: Any) -> int:
    """The step Lightning's logger connector gives the metrics logged in the current ``training_step``: the
    number of batches that stepped the optimizers before this one (``trainer.global_step`` counts each
    optimizer's steps, so it runs ahead with several optimizers and is already incremented here).

    The counter is private; should a Lightning release rename it, ``global_step - 1`` is the same number for
    the common single-optimizer loop."""
    stepped = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    return int(stepped) if stepped is not None else max(int(trainer.global_step) - 1, 0)


def last_step(trainer: Any) -> int | None:
    """The fit's last step as ``lightning_step`` counts: Lightning's estimate of the optimizer steps (``max_steps``
    and ``max_epochs`` both bound it), else ``max_steps``; None when nothing bounds the fit.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> last_step(SimpleNamespace(max_steps=-1, estimated_stepping_batches=1000))  # 1000 optimizer steps
    999
    >>> last_step(SimpleNamespace(max_steps=-1, estimated_stepping_batches=float("inf"))) is None
    True
    """
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # no length yet, or accumulation that varies by epoch: max_steps alone, if set
        steps = getattr(trainer, "max_steps", -1)
    return int(steps) - 1 if steps is not None and 0 < steps < float("inf") else None


def accumulating(trainer: Any, pl_module: Any) -> bool:
    """True for a batch whose gradients are accumulated without an optimizer step (Lightning logs nothing for
    it either)."""
    should_accumulate = getattr(getattr(trainer, "fit_loop", None), "_should_accumulate", None)
    return bool(pl_module.automatic_optimization and should_accumulate is not None and should_accumulate())


def step_loss(trainer: Any, outputs: Any, loss_key: str) -> float | None:
    """This step's own loss: ``loss_key`` if it was logged with ``on_step=True`` in this ``training_step``,
    else the step output.  ``trainer.callback_metrics`` is not enough: a metric logged on_epoch only stays
    there with the previous epoch's mean during the whole next epoch."""
    value = None
    results = getattr(trainer, "_results", None)  # Lightning's own per-step view of what was logged
    if results is not None:
        try:
            value = _logged_on_step(results, loss_key)
        except Exception:  # a private API: fall back to the step output if it ever changes
            value = None
    if value is None:
        value = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _logged_on_step(results: Any, name: str) -> Any:
    """``results.metrics(True)["callback"].get(name)`` for Lightning's ``_ResultCollection`` ``results``, without
    computing every other logged metric (and converting the progress bar's to numbers) at every step."""
    value = None
    if not results.training:
        return None
    for metric in results.values():  # in logging order: a later one of the same name wins, as in metrics()
        meta = metric.meta
        if metric.has_reset or not meta.on_step or meta.dataloader_idx != results.dataloader_idx:
            continue
        if name in results._forked_name(metric, True) and isinstance(metric._forward_cache, torch.Tensor):
            value = metric._forward_cache
    return value


def find_rnn(pl_module: Any, model_attr: str | None) -> Any:
    """The piecewise-linear RNN inside ``pl_module``: ``model_attr`` (a dotted path) or the one submodule that
    implements the PiecewiseLinear protocol (the outermost, when such models nest).

    Raises
    ------
    ValueError
        ``model_attr`` names nothing, or several candidates exist (the message lists them).
    TypeError
        No candidate, or ``model_attr`` names something that is not piecewise linear.
    """
    if model_attr is not None:
        try:
            rnn = attrgetter(model_attr)(pl_module)
        except AttributeError:
            raise ValueError(f"BifurcationMonitor: {type(pl_module).__name__} has no attribute {model_attr!r} (model_attr)") from None
        require_piecewise_linear(rnn)
        return rnn
    candidates = [(name, module) for name, module in pl_module.named_modules() if _is_piecewise_linear(module)]
    # Keep the outermost ones: a PL model may contain PL parts.
    outermost = [(n, m) for n, m in candidates if not any(n != o and n.startswith(o + ".") for o, _ in candidates if o)]
    if len(outermost) == 1:
        return outermost[0][1]
    if not outermost:
        raise TypeError(
            f"BifurcationMonitor found no piecewise-linear RNN in {type(pl_module).__name__}: it needs a "
            "submodule implementing the PiecewiseLinear protocol (state_dim, n_switches, region_codes, "
            "affine_pieces, step), e.g. bifurcation_callback.PLRNN, or model_attr naming one"
        )
    names = ", ".join(name or "<the LightningModule itself>" for name, _ in outermost)
    raise ValueError(f"BifurcationMonitor found several piecewise-linear models ({names}); pass model_attr=")


def _is_piecewise_linear(module: Any) -> bool:
    try:
        require_piecewise_linear(module)
    except TypeError:
        return False
    return True


def reference_states(pl_module: Any, state_dim: int) -> Any:
    """The LightningModule's ``bifurcation_reference_states`` as a (T, state_dim) array or tensor (at most
    ``MAX_REFERENCE_STATES`` rows, a view: ``take_snapshot`` copies it with the weights, from CUDA without
    blocking), or None when it has none.  Its dtype is kept: the float64 conversion happens where the states
    are read, off the training thread in async mode.

    Raises
    ------
    ValueError
        States of the wrong shape (the message gives the expected one).
    """
    states = getattr(pl_module, "bifurcation_reference_states", None)
    if states is None:
        return None
    if not hasattr(states, "detach"):
        states = np.asarray(states)
        if not np.issubdtype(states.dtype, np.floating):
            states = states.astype(float)
    if states.ndim < 1 or states.shape[-1] != state_dim:
        raise ValueError(
            f"bifurcation_reference_states must have shape (..., {state_dim}) (the RNN's state_dim), got {tuple(states.shape)}"
        )
    states = states.reshape(-1, state_dim)[:MAX_REFERENCE_STATES]
    return states.detach() if hasattr(states, "detach") else states


def gradient_norm(parameters: Any) -> float | None:
    """The L2 norm of all gradients of ``parameters`` together (None when none has a gradient).

    Examples
    --------
    >>> layer = torch.nn.Linear(2, 1, bias=False)
    >>> layer.weight.grad = torch.tensor([[3.0, 4.0]])
    >>> gradient_norm(layer.parameters())
    5.0
    """
    gradients = [p.grad.detach() for p in parameters if p.grad is not None]
    if not gradients:
        return None
    # One fused kernel for all the norms (as torch.nn.utils.clip_grad_norm_ does), then one host sync.
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients))))


def user_stacklevel() -> int:
    """The ``stacklevel`` at which ``warnings.warn``, called by the caller of this function, names the first frame
    outside this package, Lightning and torch: the user's ``trainer.fit(...)`` line rather than a line of the
    monitor, whose source line alone (printed under the warning) would tell the user nothing.  1 (the caller
    itself) when every frame is the library's (a worker thread).

    Examples
    --------
    >>> import warnings
    >>> def on_step():  # in the package: the warning names the line outside it that led here
    ...     warnings.warn("the analysis falls behind", RuntimeWarning, stacklevel=user_stacklevel())
    """
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] not in _LIBRARY_PACKAGES:
            return level
        frame, level = frame.f_back, level + 1
    return 1
