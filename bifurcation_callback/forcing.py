"""Observation models and the forced rollout: what the next step of a latent RNN receives during training.

``DSRModule`` (training.py) trains with these, and ``bifurcations.landscape.loss_landscape`` evaluates its loss
with the very same rollout on a grid of parameters; this module imports neither Lightning nor TensorBoard, so
the landscape does not either.  The training modes (``paper-notes`` §7):

* ``"bptt"`` — free running: ``z_{t+1} = F(z_t)`` from the data-inferred ``z_1``.
* ``"stf"`` — sparse teacher forcing: every ``tf_interval`` steps the state is replaced by ``ẑ_t``.
* ``"gtf"`` — generalized teacher forcing: ``z_{t+1} = F((1 − α) z_t + α ẑ_t)`` at every step.

In every mode the predictions are the observations ``x̂_t`` of the *un-forced* states, ``t = 2..T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ._checks import require_choice, require_int, require_real

__all__ = [
    "TRAINING_MODES",
    "OBSERVATION_MODELS",
    "ObservationModel",
    "IdentityObservation",
    "LinearObservation",
    "forced_rollout",
]

# Single registry of training modes: validation errors, docs and the CLI's choices= read it.
TRAINING_MODES = ("bptt", "stf", "gtf")


class ObservationModel(nn.Module):
    """How latent states ``z`` (M units) and observations ``x`` (N dims) relate; what ``DSRModule`` forces with.

    Subclasses implement ``observe`` and ``forcing_signal`` and, where they differ from full forcing,
    ``force``, ``initial_state`` and ``forced_latent``.

    Parameters
    ----------
    state_dim : int
        ``M``.
    obs_dim : int
        ``N``.
    dtype : torch.dtype
        Of the learned parameters.
    """

    def __init__(self, state_dim: int, obs_dim: int, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.state_dim, self.obs_dim = state_dim, obs_dim

    def observe(self, z: Tensor) -> Tensor:
        """``x̂ = O(z)``, shape ``(..., M) -> (..., N)``."""
        raise NotImplementedError

    def forcing_signal(self, x: Tensor) -> Tensor:
        """``ẑ = O⁻¹(x)`` as used for forcing (no gradient flows through an inversion)."""
        raise NotImplementedError

    def force(self, z: Tensor, target: Tensor, weight: float | Tensor) -> Tensor:
        """``(1 − weight) z + weight ẑ`` on the units the forcing signal covers (here: all)."""
        return (1 - weight) * z + weight * target

    def initial_state(self, x1: Tensor) -> Tensor:
        """``z_1`` from ``x_1``, shape ``(..., N) -> (..., M)``."""
        return self.forcing_signal(x1)

    def forced_latent(self, x: Tensor) -> Tensor:
        """The full latent state ``ẑ`` (..., M) at which adaptive α takes Jacobian norms."""
        return self.forcing_signal(x)


class IdentityObservation(ObservationModel):
    """``x̂ = z[:N]``; ``ẑ = x`` forces the first ``N`` units only (GTF's partial forcing), so unobserved
    units are never overwritten by zero padding; ``z_1 = [x_1, L x_1]`` with a learned ``L`` (zero at
    start), shape ``(M − N, N)``, or ``None`` when ``N = M``."""

    def __init__(self, state_dim: int, obs_dim: int, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(state_dim, obs_dim, dtype=dtype)
        M, N = state_dim, obs_dim
        self.L = nn.Parameter(torch.zeros(M - N, N, dtype=dtype)) if M > N else None

    def observe(self, z: Tensor) -> Tensor:
        return z[..., : self.obs_dim]

    def forcing_signal(self, x: Tensor) -> Tensor:
        return x

    def force(self, z: Tensor, target: Tensor, weight: float | Tensor) -> Tensor:
        n = self.obs_dim
        return torch.cat([(1 - weight) * z[..., :n] + weight * target, z[..., n:]], dim=-1)

    def initial_state(self, x1: Tensor) -> Tensor:
        return x1 if self.L is None else torch.cat([x1, x1 @ self.L.T], dim=-1)

    def forced_latent(self, x: Tensor) -> Tensor:
        # Unobserved units padded with zeros.
        if self.state_dim == self.obs_dim:
            return x
        return torch.cat([x, x.new_zeros(x.shape[:-1] + (self.state_dim - self.obs_dim,))], -1)


class LinearObservation(ObservationModel):
    """``x̂ = B z + b`` with ``B`` (N, M) starting as ``[I_N 0]`` (so "linear" generalises "identity" at
    step 0) and ``b`` (N,) at zero; ``ẑ = pinv(B)(x − b)``, the least-squares state, forces all units;
    ``z_1 = ẑ_1``.  ``B`` and ``b`` learn through the readout only."""

    def __init__(self, state_dim: int, obs_dim: int, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(state_dim, obs_dim, dtype=dtype)
        self.B = nn.Parameter(torch.eye(obs_dim, state_dim, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(obs_dim, dtype=dtype))

    def observe(self, z: Tensor) -> Tensor:
        return z @ self.B.T + self.b

    def forcing_signal(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return (x - self.b) @ torch.linalg.pinv(self.B).T


# name -> class: the single list of observation models (DSRModule's obs=, its validation and the docs).
OBSERVATION_MODELS: dict[str, type[ObservationModel]] = {
    "identity": IdentityObservation,
    "linear": LinearObservation,
}


def forced_rollout(
    step: Callable[[Tensor], Tensor],
    observation: ObservationModel,
    x: Tensor,
    *,
    mode: str,
    alpha: float | Tensor = 0.0,
    tf_interval: int = 25,
) -> Tensor:
    """Predictions ``x̂_2..x̂_T`` of a latent map ``step`` under a training mode, from ``z_1 = initial_state(x_1)``.

    The loop ``DSRModule.rollout`` runs (it calls this function): before step ``t`` the state is forced
    towards ``ẑ_t = observation.forcing_signal(x_t)`` (``"gtf"``: weight ``alpha`` every step; ``"stf"``:
    weight 1 every ``tf_interval`` steps; ``"bptt"``: never); the predictions observe the un-forced states.

    Parameters
    ----------
    step : callable
        One step of the latent map, ``(..., M) -> (..., M)``.  It may add leading dimensions (e.g. one per
        grid cell of a loss landscape): the forcing broadcasts against them.
    observation : ObservationModel
    x : Tensor, shape (..., T, N)
        Observed sequences, ``T >= 2``.
    mode : {"bptt", "stf", "gtf"}
        One of ``TRAINING_MODES``.
    alpha : float or 0-d Tensor
        GTF forcing weight in ``[0, 1]`` (``"gtf"`` only).
    tf_interval : int
        Forcing interval of ``"stf"``.

    Returns
    -------
    Tensor, shape (..., T - 1, N)
        ``x̂_t = O(z_t)``, with any leading dimensions ``step`` added.

    Examples
    --------
    >>> observation = IdentityObservation(1, 1, dtype=torch.float64)
    >>> x = torch.tensor([[1.0], [5.0], [7.0]], dtype=torch.float64)
    >>> forced_rollout(lambda z: 2 * z, observation, x, mode="bptt").flatten().tolist()   # 1 -> 2 -> 4
    [2.0, 4.0]
    >>> forced_rollout(lambda z: 2 * z, observation, x, mode="gtf", alpha=0.5).flatten().tolist()  # 2 -> 2 * (1 + 2.5)
    [2.0, 7.0]
    """
    require_choice("mode", mode, TRAINING_MODES)
    require_int("tf_interval", tf_interval, 1)
    if not isinstance(alpha, Tensor):
        require_real("alpha", alpha, minimum=0.0, maximum=1.0)
    targets = observation.forcing_signal(x)
    z = observation.initial_state(x[..., 0, :])
    predictions = []
    for t in range(1, x.shape[-2]):
        if mode == "gtf":
            z = observation.force(z, targets[..., t - 1, :], alpha)
        elif mode == "stf" and (t - 1) % tf_interval == 0:
            z = observation.force(z, targets[..., t - 1, :], 1.0)
        z = step(z)
        predictions.append(observation.observe(z))
    return torch.stack(predictions, dim=-2)
