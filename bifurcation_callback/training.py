"""Training piecewise-linear RNNs for dynamical-systems reconstruction: BPTT, sparse and generalized TF.

``DSRModule`` wraps any model with ``state_dim`` and a batched ``step(z)`` (the models of
``bifurcation_callback.models``) in a ``LightningModule``.  The three training modes differ only in
what the next step receives (``paper-notes`` §7):

* ``"bptt"`` — free running: ``z_{t+1} = F(z_t)`` from the data-inferred ``z_1``.
* ``"stf"`` — sparse teacher forcing: every ``tf_interval`` steps the state is replaced by ``ẑ_t``.
* ``"gtf"`` — generalized teacher forcing: ``z_{t+1} = F((1 − α) z_t + α ẑ_t)`` at every step, with α
  fixed or adapted to a bound on the Jacobian-product norm (Hess et al., ICML 2023).

In every mode the loss is the MSE between the observations ``x̂_t`` of the *un-forced* states and
``x_t`` for ``t = 2..T``.  ``ẑ_t`` is the data pulled back to latent space by the observation model.
"""

from __future__ import annotations

import math
from typing import Any, Union

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from bifurcation_callback._checks import require_choice, require_int, require_real
from bifurcation_callback._lightning import for_namespace
from bifurcation_callback.forcing import (
    OBSERVATION_MODELS,
    TRAINING_MODES,
    IdentityObservation,
    LinearObservation,
    ObservationModel,
    forced_rollout,
)
from bifurcation_callback.models import CHECKPOINT_MODEL_KEY, model_to_state

__all__ = [
    "DSRModule",
    "TRAINING_MODES",
    "OBSERVATION_MODELS",
    "ObservationModel",
    "IdentityObservation",
    "LinearObservation",
    "OPTIMIZERS",
    "ALPHA_ESTIMATORS",
    "estimate_alpha",
]

# Single registries: validation errors, docs and the CLI's choices= read these (TRAINING_MODES and
# OBSERVATION_MODELS live in forcing.py, Lightning-free, with the rollout the loss landscape shares).
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}
ALPHA_ESTIMATORS = ("product_upper_bound", "batch_maximum")


def estimate_alpha(jacobian_norms: Tensor, *, estimator: str = "product_upper_bound") -> float:
    """GTF's α estimate ``max(0, 1 − 1/𝒩)`` from spectral norms ``‖J(ẑ_t)‖₂`` along data sequences.

    ``(1 − α)·𝒩 <= 1`` keeps the forced Jacobian products, and hence the gradients, bounded.

    Parameters
    ----------
    jacobian_norms : Tensor, shape (B, T)
        ``‖J(ẑ_t)‖₂`` for each sequence ``b`` and time ``t``.
    estimator : str
        ``"product_upper_bound"`` (GTF default): 𝒩 = max over sequences of the geometric mean over
        time, i.e. the per-step growth of ``Π_t ‖J_t‖``, an upper bound on ``‖Π_t J_t‖^(1/T)``.
        ``"batch_maximum"``: 𝒩 = the largest single norm (more conservative, larger α).

    Returns
    -------
    float
        In ``[0, 1)``.

    Examples
    --------
    >>> estimate_alpha(torch.tensor([[0.5, 2.0], [1.0, 1.0]]))
    0.0
    >>> estimate_alpha(torch.tensor([[0.5, 2.0], [1.0, 1.0]]), estimator="batch_maximum")
    0.5
    """
    if estimator not in ALPHA_ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ALPHA_ESTIMATORS)}, got {estimator!r}")
    if jacobian_norms.ndim != 2 or jacobian_norms.numel() == 0:
        raise ValueError(f"jacobian_norms must have shape (B, T) with B, T >= 1, got {tuple(jacobian_norms.shape)}")
    norms = jacobian_norms.detach().double()
    if estimator == "product_upper_bound":
        # The tiny floor keeps log finite when a Jacobian vanishes (all units off, A = 0).
        bound = torch.exp(torch.log(norms.clamp_min(1e-300)).mean(dim=1)).max()
    else:
        bound = norms.max()
    bound = float(bound)
    if not math.isfinite(bound):
        return 1.0 - 1e-12 if bound > 0 else 0.0
    return max(0.0, 1.0 - 1.0 / bound) if bound > 0 else 0.0


class _DSRModuleMixin:
    """All of ``DSRModule`` except its Lightning base class (see ``for_namespace``)."""

    def __init__(
        self,
        rnn: nn.Module,
        *,
        training: str = "bptt",
        alpha: Union[float, str] = 0.1,
        tf_interval: int = 25,
        obs: str = "identity",
        obs_dim: int | None = None,
        lr: float = 1e-3,
        optimizer: str = "radam",
        gradient_clip: float | None = None,
        seq_len: int | None = None,
        alpha_estimator: str = "product_upper_bound",
        alpha_update_every: int = 5,
        alpha_gamma: float = 0.999,
    ) -> None:
        super().__init__()
        _validate_rnn(rnn, needs_jacobian=alpha == "adaptive" and training == "gtf")
        require_choice("training", training, TRAINING_MODES)
        require_choice("obs", obs, OBSERVATION_MODELS)
        require_choice("optimizer", optimizer, OPTIMIZERS)
        require_choice("alpha_estimator", alpha_estimator, ALPHA_ESTIMATORS)
        if alpha != "adaptive" and not _is_fraction(alpha):
            raise ValueError(f'alpha must be a float in [0, 1] or "adaptive", got {alpha!r}')
        require_int("tf_interval", tf_interval, 1)
        require_int("alpha_update_every", alpha_update_every, 1)
        require_int("obs_dim", obs_dim, 1, optional=True)
        if obs_dim is not None and obs == "identity" and obs_dim > rnn.state_dim:
            raise ValueError(
                f"obs_dim={obs_dim} exceeds the model's state_dim={rnn.state_dim}: the identity observation "
                'reads out the first obs_dim latent units; use a larger model or obs="linear"'
            )
        require_int("seq_len", seq_len, 1, optional=True)
        require_real("lr", lr, minimum=0.0, exclusive_minimum=True)
        require_real("gradient_clip", gradient_clip, minimum=0.0, exclusive_minimum=True, optional=True)
        if require_real("alpha_gamma", alpha_gamma, minimum=0.0, maximum=1.0) == 1.0:
            raise ValueError(f"alpha_gamma must be a finite number >= 0.0 and < 1.0, got {alpha_gamma!r}")
        self.save_hyperparameters(ignore=["rnn"])

        self.obs = obs
        self.obs_dim = obs_dim if obs_dim is not None else rnn.state_dim
        dtype = _parameter_dtype(rnn)
        # Registered before rnn so that parameters() keeps the order of older versions (B, b or L first),
        # which optimizer states in older checkpoints rely on.
        self.observation = OBSERVATION_MODELS[obs](rnn.state_dim, self.obs_dim, dtype=dtype)
        # Checkpoints written before the observation models were modules hold B, b, L at the top level.
        self._register_load_state_dict_pre_hook(_move_observation_keys)
        self.rnn = rnn
        self.training_mode = training
        self.adaptive_alpha = alpha == "adaptive"
        self.tf_interval = tf_interval
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.gradient_clip = gradient_clip
        self.seq_len = seq_len
        self.alpha_estimator = alpha_estimator
        self.alpha_update_every = alpha_update_every
        self.alpha_gamma = float(alpha_gamma)
        self.last_grad_norm: float = float("nan")
        # The last batch's first sequence in latent space, (T, M), read by BifurcationMonitor (see training_step).
        self.bifurcation_reference_states: Tensor | None = None

        # A buffer so that checkpoints resume adaptive α where it was.
        self.register_buffer("alpha_value", torch.tensor(1.0 if self.adaptive_alpha else float(alpha), dtype=dtype))

    # ---------------------------------------------------------------- observation model

    @property
    def alpha(self) -> float:
        """Current GTF forcing strength (constant, or the adaptive estimate)."""
        return float(self.alpha_value)

    @property
    def B(self) -> nn.Parameter | None:
        """``obs="linear"``: the readout matrix ``B`` (N, M); else ``None``."""
        return getattr(self.observation, "B", None)

    @property
    def b(self) -> nn.Parameter | None:
        """``obs="linear"``: the readout offset ``b`` (N,); else ``None``."""
        return getattr(self.observation, "b", None)

    @property
    def L(self) -> nn.Parameter | None:
        """``obs="identity"`` with ``N < M``: the initial-state map ``L`` (M − N, N); else ``None``."""
        return getattr(self.observation, "L", None)

    def observe(self, z: Tensor) -> Tensor:
        """Observation ``x̂ = O(z)``: first ``N`` units (identity) or ``B z + b`` (linear), shape ``(..., N)``."""
        return self.observation.observe(z)

    def forcing_signal(self, x: Tensor) -> Tensor:
        """``ẑ = O⁻¹(x)`` as used for forcing.

        Identity: ``x`` itself, shape ``(..., N)``; it forces only the first ``N`` units (GTF's
        ``partial_forcing``), so unobserved units are never overwritten by zero padding.
        Linear: ``pinv(B)(x − b)``, shape ``(..., M)``, the least-squares state; it forces all units.
        No gradient flows through the inversion: ``ẑ`` is treated as data, and ``B``, ``b`` learn
        through the readout.
        """
        return self.observation.forcing_signal(x)

    def initial_state(self, x1: Tensor) -> Tensor:
        """``z_1`` from the first observation ``x_1``, shape ``(..., N) -> (..., M)``.

        Identity: ``[x_1, L x_1]`` with a learned ``L`` (zero at start) for the ``M − N`` unobserved
        units.  Linear: ``pinv(B)(x_1 − b)``.
        """
        return self.observation.initial_state(x1)

    # ---------------------------------------------------------------- rollouts

    def rollout(self, x: Tensor, *, training: str | None = None, alpha: float | None = None) -> Tensor:
        """Predictions ``x̂_2..x̂_T`` for a batch of sequences under a training mode.

        Parameters
        ----------
        x : Tensor, shape (B, T, N)
        training : str, optional
            Overrides the module's mode (one of ``TRAINING_MODES``).
        alpha : float, optional
            Overrides the current α (``"gtf"`` only).

        Returns
        -------
        Tensor, shape (B, T - 1, N)
            ``x̂_t = O(z_t)`` of the un-forced states.
        """
        mode = training or self.training_mode
        require_choice("training", mode, TRAINING_MODES)
        weight = self.alpha_value if alpha is None else alpha
        x = x.to(self.alpha_value.dtype)
        return forced_rollout(self.rnn.step, self.observation, x, mode=mode, alpha=weight, tf_interval=self.tf_interval)

    def forward(self, x: Tensor) -> Tensor:
        """Same as ``rollout`` with the module's own mode and α."""
        return self.rollout(x)

    @torch.no_grad()
    def generate(self, initial: Tensor | np.ndarray, n_steps: int, *, latent: bool = False) -> Tensor:
        """Free-running trajectory in observation space, for DSR measures and plots.

        Parameters
        ----------
        initial : Tensor or ndarray, shape (..., N), or (..., M) with ``latent=True``
            Initial observation ``x_1`` (mapped to ``z_1`` by ``initial_state``) or latent state.
        n_steps : int
            Number of returned time points, the first being ``O(z_1)``.

        Returns
        -------
        Tensor, shape (..., n_steps, N)
        """
        require_int("n_steps", n_steps, 1)
        z = torch.as_tensor(initial, dtype=_parameter_dtype(self.rnn), device=self.alpha_value.device)
        expected = self.rnn.state_dim if latent else self.obs_dim
        if z.shape[-1:] != (expected,):
            what = "latent state (..., M)" if latent else "observation (..., N)"
            raise ValueError(f"initial must be a {what} with last dimension {expected}, got {tuple(z.shape)}")
        if not latent:
            z = self.initial_state(z)
        out = [self.observe(z)]
        for _ in range(n_steps - 1):
            z = self.rnn.step(z)
            out.append(self.observe(z))
        return torch.stack(out, dim=-2)

    # ---------------------------------------------------------------- adaptive α

    @torch.no_grad()
    def update_alpha(self, x: Tensor) -> float:
        """One adaptive-α update from a data batch ``x`` (B, T, N); returns the new α.

        ``α_est`` comes from ``estimate_alpha`` on ``‖J(ẑ_t)‖₂``; then ``α ← α_est`` if it is larger,
        else ``α ← γ α + (1 − γ) α_est``.  Rising fast and decaying slowly keeps gradients bounded
        while letting forcing relax as the model becomes contracting.
        """
        zhat = self.observation.forced_latent(x.to(self.alpha_value.dtype))
        norms = torch.linalg.matrix_norm(self.rnn.jacobian(zhat), ord=2)
        estimate = estimate_alpha(norms, estimator=self.alpha_estimator)
        current = self.alpha
        new = estimate if estimate > current else self.alpha_gamma * current + (1 - self.alpha_gamma) * estimate
        self.alpha_value.fill_(new)
        return new

    # ---------------------------------------------------------------- Lightning hooks

    def _check_batch(self, x: Tensor) -> Tensor:
        if isinstance(x, (list, tuple)):
            x = x[0]
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"batches must be tensors of shape (B, T, N) with T >= 2, got {shape}")
        if x.shape[-1] != self.obs_dim:
            raise ValueError(
                f"the data have N={x.shape[-1]} dimensions but the module expects obs_dim={self.obs_dim} "
                f"(pass obs_dim=... to DSRModule; the model has state_dim={self.rnn.state_dim})"
            )
        if self.seq_len is not None and x.shape[1] != self.seq_len + 1:
            raise ValueError(f"seq_len={self.seq_len} expects batches with T = seq_len + 1, got T = {x.shape[1]}")
        return x.to(self.alpha_value.dtype)

    def _log(self, name: str, value: float | Tensor, *, prog_bar: bool = False) -> None:
        # training_step is also called by hand (tests, notebooks), where self.log would only warn.
        if self._trainer is not None:
            self.log(name, value, on_step=True, on_epoch=False, prog_bar=prog_bar)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self._check_batch(batch)
        self._remember_reference_states(x)
        if self.training_mode == "gtf":
            if self.adaptive_alpha and self.global_step % self.alpha_update_every == 0:
                self.update_alpha(x)
            self._log("alpha", self.alpha)
        loss = F.mse_loss(self.rollout(x), x[:, 1:])
        self._log("train_loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def _remember_reference_states(self, x: Tensor) -> None:
        """``bifurcation_reference_states``: the batch's first sequence mapped to latent space by the
        observation model's own state inference, ``initial_state`` at every time point, shape (T, M), detached.

        Identity: ``[x_t, L x_t]`` (the observed units are the data; the unobserved ones what the module infers
        for a start there).  Linear: ``pinv(B)(x_t − b)``, the forcing signal.  BifurcationMonitor starts its
        attractor search from these states and draws them in the state-space figure; one sequence keeps it
        bounded (T = seq_len + 1 states).
        """
        self.bifurcation_reference_states = self.initial_state(x[0]).detach()

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping: the raw gradient is what bifurcations blow up or kill.
        grads = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.tensor(0.0)
        self.last_grad_norm = float(norm)
        self._log("grad_norm", self.last_grad_norm)

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        if self.gradient_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip, gradient_clip_algorithm="norm")
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer_name](self.parameters(), lr=self.lr)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The model's identity (class, constructor config, parameters) so that `bifurcation-callback find`
        # rebuilds exactly this map instead of guessing the class from parameter names.
        try:
            checkpoint[CHECKPOINT_MODEL_KEY] = model_to_state(self.rnn)
        except TypeError:  # a user's own model: the CLI needs --model-class for it
            pass

    @classmethod
    def for_namespace(cls, namespace: str) -> type:
        """``DSRModule`` built on ``namespace``'s ``LightningModule`` (see ``LIGHTNING_NAMESPACES``)."""
        return for_namespace(DSRModule, namespace)


class DSRModule(_DSRModuleMixin, pl.LightningModule):
    r"""LightningModule for DSR training of a piecewise-linear RNN by BPTT, sparse TF or generalized TF.

    Parameters
    ----------
    rnn : nn.Module
        The latent model; needs ``state_dim`` (``M``) and a batched ``step(z)``, plus ``jacobian(z)`` for
        adaptive α.  Stored as ``self.rnn`` (the bifurcation callback finds it there).
    training : {"bptt", "stf", "gtf"}
        See ``TRAINING_MODES`` and the module docstring.
    alpha : float in [0, 1] or "adaptive"
        GTF forcing strength (ignored by the other modes).  ``0`` is free running (BPTT), ``1`` restarts
        every step from ``ẑ_t``.  ``"adaptive"``: start at 1 and every ``alpha_update_every`` training
        steps apply ``update_alpha`` (GTF paper: ``product_upper_bound``, ``γ = 0.999``).  With
        ``γ = 0.999`` α decays slowly: halving the gap to ``α_est`` takes ~700 updates, so short runs stay
        close to full forcing; lower ``alpha_gamma`` for short runs.
    tf_interval : int
        Forcing interval τ of ``"stf"``.
    obs : {"identity", "linear"}
        Identity: ``x̂ = z[:N]``, ``ẑ`` forces the first ``N`` units only, ``z_1 = [x_1, L x_1]``.
        Linear: ``x̂ = B z + b`` (``B`` starts as ``[I_N 0]``), ``ẑ = pinv(B)(x − b)`` forces all units,
        ``z_1 = ẑ_1``.
    obs_dim : int, optional
        ``N``; defaults to ``M``.  Must be ``<= M`` for ``"identity"``.
    lr : float
    optimizer : {"radam", "adam"}
        See ``OPTIMIZERS`` (RAdam, as in the GTF reference code).
    gradient_clip : float, optional
        Clip the total gradient norm to this value.  ``Trainer(gradient_clip_val=...)`` works as well
        (use one of them; different values in both raise Lightning's ``MisconfigurationException``).
    seq_len : int, optional
        If given, training batches must have ``T = seq_len + 1``.
    alpha_estimator : {"product_upper_bound", "batch_maximum"}
        See ``estimate_alpha``.
    alpha_update_every : int
    alpha_gamma : float in [0, 1)

    Attributes
    ----------
    rnn : nn.Module
    alpha : float
        Current α (a buffer ``alpha_value``, saved in checkpoints).
    last_grad_norm : float
        Total L2 norm of all gradients before clipping, at the last optimizer step (NaN before the first).

    Logged metrics
    --------------
    ``train_loss``
        MSE of ``x̂_t`` against ``x_t``, ``t = 2..T``; every step, progress bar.
    ``grad_norm``
        ``last_grad_norm``; every optimizer step.
    ``alpha``
        Current α; every step, ``"gtf"`` only.

    Raises
    ------
    ValueError
        Any invalid argument (the message names it, the bad value and the allowed ones); at the first
        batch, data whose dimension is not ``obs_dim``.

    Notes
    -----
    Built on ``lightning.pytorch``; for a ``pytorch_lightning.Trainer`` build the module with
    ``DSRModule.for_namespace("pytorch_lightning")(rnn, ...)``.  The constructor arguments except ``rnn``
    are saved as hyperparameters: ``DSRModule.load_from_checkpoint(path, rnn=PLRNN(3))``.
    Checkpoints of a built-in model also hold ``model_to_state(rnn)`` under the key
    ``"bifurcation_model"`` (``models.CHECKPOINT_MODEL_KEY``), which ``bifurcation-callback find`` and
    ``scan`` read, so the model class is never guessed.
    No learning-rate schedule is attached (the GTF code decays 1e-3 → 1e-6); override
    ``configure_optimizers`` to add one.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> module = DSRModule(PLRNN(3), training="gtf", alpha=0.1)
    >>> module.rollout(torch.zeros(4, 11, 3)).shape
    torch.Size([4, 10, 3])
    >>> module.generate(torch.zeros(3), 5).shape
    torch.Size([5, 3])
    >>> DSRModule(PLRNN(3), training="tbptt")
    Traceback (most recent call last):
    ...
    ValueError: training must be one of 'bptt', 'stf', 'gtf', got 'tbptt'
    """


# ---------------------------------------------------------------------------------------- helpers


def _is_fraction(value: object) -> bool:
    try:
        return 0.0 <= require_real("alpha", value) <= 1.0
    except ValueError:
        return False


def _move_observation_keys(state_dict, prefix, *args) -> None:
    for name in ("B", "b", "L"):
        if prefix + name in state_dict:
            state_dict[f"{prefix}observation.{name}"] = state_dict.pop(prefix + name)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    parameter = next(module.parameters(), None)
    return parameter.dtype if parameter is not None else torch.get_default_dtype()


def _validate_rnn(rnn: object, *, needs_jacobian: bool) -> None:
    if not isinstance(rnn, nn.Module):
        raise ValueError(f"rnn must be a torch.nn.Module (e.g. bifurcation_callback.PLRNN), got {type(rnn).__name__}")
    state_dim = getattr(rnn, "state_dim", None)
    if not isinstance(state_dim, int) or isinstance(state_dim, bool) or state_dim < 1:
        raise ValueError(f"rnn must have an int attribute state_dim >= 1, got {state_dim!r} on {type(rnn).__name__}")
    if not callable(getattr(rnn, "step", None)):
        raise ValueError(f"rnn must have a batched step(z) method; {type(rnn).__name__} has none")
    if needs_jacobian and not callable(getattr(rnn, "jacobian", None)):
        raise ValueError(
            f'alpha="adaptive" needs rnn.jacobian(z); {type(rnn).__name__} has none (use a constant alpha)'
        )
