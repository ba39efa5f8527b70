"""Loss landscapes over two parameters with their bifurcation curves, and training paths across them (Fig. 3).

``loss_landscape`` evaluates, for every cell of a 2-D parameter grid (cells as in ``scan``), the training loss
on a data set and log10 of its gradient norm, batched over cells: the model's ``step`` is ``torch.func.vmap``-ed
over stacked per-cell parameters (scan's ``_cell_functions``), the rollout is ``forcing.forced_rollout`` (the
very loop ``DSRModule`` trains with), and one backward pass gives every cell's gradient.  The bifurcation curves
come from ``scan``; a *boundary cell* is one whose (count, stable count) of some order differs from one of its
four neighbours'.  ``cliff_statistic`` asks whether the gradient is larger on boundary cells than elsewhere.

Training runs in the plane and their crossings of the curves are in ``paths``.  Plotting lives in
``plots.plot_loss_landscape``.  This module imports neither Lightning nor TensorBoard.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import require_bool, require_choice, require_int, require_real
from ..cycles import _prepare_model
from ..forcing import IdentityObservation, ObservationModel, forced_rollout
from ..models import model_to_state
from .scan import BifurcationDiagram, _cell_functions, _grid_axes, _grid_cell_parameters, parse_param_spec, scan

__all__ = [
    "LANDSCAPE_GRADIENTS",
    "BOUNDED_FACTOR",
    "LossLandscape",
    "CliffStatistic",
    "loss_landscape",
    "signature_changes",
    "boundary_cells",
    "cliff_statistic",
]

# gradient= choice -> which parameters the gradient norm is taken over (validation, docs and the CLI read this).
LANDSCAPE_GRADIENTS: dict[str, str] = {
    "model": "every parameter of the model (the monitor's and DSRModule's grad_norm)",
    "plane": "the two grid parameters only (the gradient a path in the plane follows)",
}

# A cell's rollout is "bounded" when its observations stay within this many times the data's largest |x|.
BOUNDED_FACTOR = 10.0



def _float_or_text(value: float) -> float | str:
    # Strict JSON has no inf / nan: store them as the strings float() reads back (as loss_jumps does).
    return float(value) if math.isfinite(value) else str(float(value))


def _array_to_json(array: np.ndarray) -> list:
    if array.dtype == bool:
        return array.tolist()
    return np.vectorize(_float_or_text, otypes=[object])(array).tolist() if array.size else array.tolist()


def _array_from_json(data: Any, dtype: type = np.float64) -> np.ndarray:
    if dtype is bool:
        return np.asarray(data, dtype=bool)
    return np.vectorize(float, otypes=[np.float64])(np.asarray(data, dtype=object)) if len(data) else np.zeros(0)


# ------------------------------------------------------------------------------------------------ the landscape


@dataclass(frozen=True, eq=False)
class LossLandscape:
    """Loss and gradient norm on a 2-D parameter grid, with the grid's cycle counts and boundary cells.

    Attributes
    ----------
    diagram : BifurcationDiagram
        ``scan`` of the same grid: cycle counts and stable counts per cell (``diagram.counts``, shape
        (n_a, n_b, K)).
    loss : ndarray, shape (n_a, n_b)
        ``loss[i, j]``: the MSE of the rollout from the first data point with ``param_a = a_values[i]``,
        ``param_b = b_values[j]`` (free running for ``alpha = 0``, else GTF with that α).  ``inf`` where the
        orbit overflowed float64.
    log_grad_norm : ndarray, shape (n_a, n_b)
        log10 of the gradient norm of ``loss`` (``inf`` where it overflowed, ``nan`` where it is undefined).
    boundary : ndarray of bool, shape (n_a, n_b)
        ``boundary_cells(diagram)``.
    bounded : ndarray of bool, shape (n_a, n_b)
        The cell's rollout stayed within ``BOUNDED_FACTOR`` times the data's largest ``|x|``: outside, orbits
        diverge, the loss grows like ``|λ|^T`` and its gradient dwarfs every cliff (``cliff(bounded_only=True)``).
    alpha : float
        GTF forcing weight of the loss (0: free running).
    seq_len : int
        Predicted steps per sequence (``T - 1``).
    n_sequences : int
        Number of data sequences the loss averages over.
    gradient : str
        One of ``LANDSCAPE_GRADIENTS``.
    elapsed_s : float
        Wall time of the loss and gradient evaluation (the scan's is ``diagram.elapsed_s``).
    base_model : dict or None
        ``model_to_state`` of the model (its other parameters are the landscape's), None for a user's model.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> landscape = loss_landscape(PLRNN(2), np.ones((20, 2)), "A[0]", "A[1]", ([0.0, 0.5], [0.0, 0.5, 0.9]))
    >>> landscape.loss.shape, landscape.boundary.dtype
    ((2, 3), dtype('bool'))
    """

    diagram: BifurcationDiagram
    loss: np.ndarray
    log_grad_norm: np.ndarray
    boundary: np.ndarray
    bounded: np.ndarray
    alpha: float
    seq_len: int
    n_sequences: int
    gradient: str
    elapsed_s: float = 0.0
    base_model: dict | None = None

    @property
    def param_a(self) -> str:
        """Parameter spec of the first axis (rows of ``loss``)."""
        return self.diagram.param_a

    @property
    def param_b(self) -> str:
        """Parameter spec of the second axis (columns of ``loss``)."""
        return self.diagram.param_b

    @property
    def a_values(self) -> np.ndarray:
        """Grid values of ``param_a``, shape (n_a,)."""
        return self.diagram.values_a

    @property
    def b_values(self) -> np.ndarray:
        """Grid values of ``param_b``, shape (n_b,)."""
        return self.diagram.values_b

    def cliff(self, *, bounded_only: bool = False, n_permutations: int = 1000, seed: int = 0) -> "CliffStatistic":
        """``cliff_statistic(self.log_grad_norm, self.boundary, ...)``, over the ``bounded`` cells only if asked."""
        within = self.bounded if require_bool("bounded_only", bounded_only) else None
        return cliff_statistic(self.log_grad_norm, self.boundary, within=within, n_permutations=n_permutations, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers as the strings ``"inf"`` / ``"nan"``); ``from_dict`` inverts it."""
        return {
            "param_a": self.param_a,
            "param_b": self.param_b,
            "a_values": self.a_values.tolist(),
            "b_values": self.b_values.tolist(),
            "alpha": self.alpha,
            "seq_len": self.seq_len,
            "n_sequences": self.n_sequences,
            "gradient": self.gradient,
            "loss": _array_to_json(self.loss),
            "log_grad_norm": _array_to_json(self.log_grad_norm),
            "boundary": self.boundary.tolist(),
            "bounded": self.bounded.tolist(),
            "elapsed_s": self.elapsed_s,
            "base_model": self.base_model,
            "diagram": self.diagram.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LossLandscape":
        """Inverse of ``to_dict``."""
        diagram = BifurcationDiagram.from_dict(data["diagram"])
        shape = (diagram.values_a.size, diagram.values_b.size)
        return cls(
            diagram=diagram,
            loss=_array_from_json(data["loss"]).reshape(shape),
            log_grad_norm=_array_from_json(data["log_grad_norm"]).reshape(shape),
            boundary=_array_from_json(data["boundary"], bool).reshape(shape),
            bounded=_array_from_json(data["bounded"], bool).reshape(shape),
            alpha=float(data["alpha"]),
            seq_len=int(data["seq_len"]),
            n_sequences=int(data["n_sequences"]),
            gradient=data["gradient"],
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            base_model=data.get("base_model"),
        )


def _sequences(data: Any, seq_len: int | None) -> np.ndarray:
    """``data`` as float64 (B, seq_len + 1, N) sequences; ValueError naming what is wrong."""
    if isinstance(data, Tensor):
        data = data.detach().cpu().numpy()
    try:
        array = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"data must be an array of numbers of shape (T, N) or (B, T, N), got {type(data).__name__}"
        ) from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] < 2 or array.shape[2] < 1:
        raise ValueError(f"data must have shape (T, N) or (B, T, N) with T >= 2 and N >= 1, got {np.shape(data)}")
    if not np.isfinite(array).all():
        raise ValueError("data contains NaN or Inf")
    seq_len = require_int("seq_len", seq_len, 1, optional=True)
    if seq_len is not None:
        if seq_len + 1 > array.shape[1]:
            raise ValueError(
                f"seq_len={seq_len} needs sequences of at least {seq_len + 1} points (seq_len + 1), "
                f"the data have T = {array.shape[1]}"
            )
        array = array[:, : seq_len + 1]
    return array


def _observation_for(observation: ObservationModel | None, state_dim: int, obs_dim: int, dtype, device) -> ObservationModel:
    """The observation model in the landscape's dtype (a copy); the default is DSRModule's fresh identity."""
    if observation is None:
        if obs_dim > state_dim:
            raise ValueError(
                f"the data have N={obs_dim} dimensions but the model has state_dim={state_dim}: the identity observation "
                "reads out the first N latent units; pass observation=... (e.g. a trained DSRModule's .observation)"
            )
        return IdentityObservation(state_dim, obs_dim, dtype=dtype).to(device)
    if not isinstance(observation, ObservationModel):
        raise ValueError(f"observation must be an ObservationModel (forcing.py), got {type(observation).__name__}")
    if (observation.state_dim, observation.obs_dim) != (state_dim, obs_dim):
        raise ValueError(
            f"observation maps {observation.state_dim} latent units to {observation.obs_dim} observations, but the model "
            f"has state_dim={state_dim} and the data N={obs_dim}"
        )
    copied = copy.deepcopy(observation).to(device=device, dtype=dtype)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


def loss_landscape(
    model: torch.nn.Module,
    data: Any,
    param_a: str,
    param_b: str,
    grid: tuple[Sequence[float], Sequence[float]],
    *,
    alpha: float = 0.0,
    seq_len: int | None = None,
    max_order: int = 4,
    gradient: str = "model",
    observation: ObservationModel | None = None,
    scan_method: str = "auto",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    chunk_elements: int = 1 << 22,
    progress: bool = False,
) -> LossLandscape:
    """Loss, log10 gradient norm and bifurcation boundaries of ``model`` on a grid of two parameters.

    Cell ``(i, j)`` is the model with ``param_a = grid[0][i]`` and ``param_b = grid[1][j]``, every other
    parameter unchanged (as in ``scan``).  Its loss is DSRModule's training loss on ``data``: the MSE between
    the observations of the rollout started at ``z_1 = initial_state(x_1)`` and ``x_2 .. x_T``, free running
    for ``alpha = 0`` and generalized teacher forcing with weight α otherwise (``forcing.forced_rollout``,
    the loop ``DSRModule`` runs).  All cells of a chunk are one batched rollout (``torch.func.vmap`` of the
    model's ``step`` over per-cell parameters) and one backward pass, so each cell's gradient costs no
    extra rollout.  The cycle counts come from ``scan`` with the same grid and ``max_order``.

    Parameters
    ----------
    model : PiecewiseLinear nn.Module
        The base model (not changed).
    data : array_like, shape (T, N) or (B, T, N)
        Observed sequences (``N <= state_dim`` with the default identity observation).
    param_a, param_b : str
        Parameter entries such as ``"A[0]"`` (see ``parse_param_spec``).
    grid : (values_a, values_b)
        Non-empty finite sequences.
    alpha : float in [0, 1]
        GTF forcing weight of the loss; 0 is free running (BPTT).
    seq_len : int, optional
        Use the first ``seq_len + 1`` points of every sequence (``seq_len`` predicted steps); default all.
    max_order : int
        Orders ``1 .. max_order`` define the boundaries.
    gradient : str
        One of ``LANDSCAPE_GRADIENTS``: the norm over all model parameters (``"model"``) or over the two grid
        parameters (``"plane"``).
    observation : ObservationModel, optional
        How states are observed and forced (e.g. a trained ``DSRModule``'s ``.observation``); default the
        identity on the first ``N`` units with unobserved units starting at 0, as a fresh ``DSRModule``.
    scan_method : str
        ``method`` of ``scan`` (``"auto"``: exact when enumerable).
    dtype, device
        Precision (float64 by default, as the finder) and device.
    chunk_elements : int
        Memory knob: cells per batch are chosen so a batch's states hold about this many numbers per step.
    progress : bool
        Show tqdm progress bars (loss, then scan).

    Returns
    -------
    LossLandscape

    Raises
    ------
    ValueError
        Bad data shape or values, bad parameter spec (the message lists the model's parameters), the same
        entry twice, a bad grid, ``alpha`` outside [0, 1], unknown ``gradient``, an observation model that
        does not fit.
    TypeError
        The model is not a piecewise-linear ``nn.Module``.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> data = np.array([[1.0], [0.5], [0.25]])            # z' = 0.5 z: loss 0 where A = 0.5 (and h = 0)
    >>> with torch.no_grad():
    ...     _ = model.h.zero_()
    >>> landscape = loss_landscape(model, data, "A[0]", "h[0]", ([0.5, 1.0], [0.0]), max_order=1)
    >>> landscape.loss[:, 0].round(4).tolist()               # A = 1: predictions 1, 1 against 0.5, 0.25
    [0.0, 0.4062]
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"loss_landscape needs a piecewise-linear torch.nn.Module, got {type(model).__name__}")
    alpha = require_real("alpha", alpha, minimum=0.0, maximum=1.0)
    require_choice("gradient", gradient, LANDSCAPE_GRADIENTS)
    require_int("chunk_elements", chunk_elements, 1)
    sequences = _sequences(data, seq_len)
    values_a, values_b = _grid_axes(grid)
    analysed, device = _prepare_model(model, dtype, device)
    entry_a, entry_b = parse_param_spec(analysed, param_a), parse_param_spec(analysed, param_b)
    if entry_a == entry_b:
        raise ValueError(f"param_a and param_b name the same entry ({param_a!r} and {param_b!r})")
    n_sequences, n_points, obs_dim = sequences.shape
    observed = _observation_for(observation, analysed.state_dim, obs_dim, dtype, device)
    x = torch.as_tensor(sequences, dtype=dtype, device=device)

    started = time.monotonic()
    loss, grad_norm, extent = _batched_loss_and_gradient(
        analysed, observed, x, entry_a, entry_b, values_a, values_b,
        alpha=alpha, gradient=gradient, chunk_elements=chunk_elements, progress=progress,
    )
    elapsed = time.monotonic() - started
    diagram = scan(model, param_a, param_b, (values_a, values_b), max_order=max_order, method=scan_method,
                   dtype=dtype, device=device, progress=progress)
    with np.errstate(divide="ignore"):
        log_grad_norm = np.log10(grad_norm)
    try:
        base_model = model_to_state(model)
    except TypeError:  # a user's own model class: no registry state, so no check of runs against it
        base_model = None
    return LossLandscape(
        diagram=diagram,
        loss=loss,
        log_grad_norm=log_grad_norm,
        boundary=boundary_cells(diagram),
        bounded=extent <= BOUNDED_FACTOR * float(np.abs(sequences).max()),
        alpha=alpha,
        seq_len=n_points - 1,
        n_sequences=n_sequences,
        gradient=gradient,
        elapsed_s=elapsed,
        base_model=base_model,
    )


def _batched_loss_and_gradient(
    model: torch.nn.Module,
    observation: ObservationModel,
    x: Tensor,
    entry_a: tuple[str, tuple[int, ...]],
    entry_b: tuple[str, tuple[int, ...]],
    values_a: np.ndarray,
    values_b: np.ndarray,
    *,
    alpha: float,
    gradient: str,
    chunk_elements: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Loss, gradient norm and largest |prediction| of every cell, shape (n_a, n_b) each; grid rows in chunks."""
    from tqdm.auto import tqdm

    n_a, n_b = values_a.size, values_b.size
    n_sequences, n_points, _ = x.shape
    step = _cell_functions(model)["step"]
    parameters = dict(model.named_parameters())
    mode = "gtf" if alpha > 0 else "bptt"
    rows_per_chunk = max(1, chunk_elements // max(1, n_b * n_sequences * n_points * model.state_dim))
    loss = np.empty((n_a, n_b))
    grad_norm = np.empty((n_a, n_b))
    extent = np.empty((n_a, n_b))
    bar = tqdm(total=n_a * n_b, unit="cell", disable=not progress, desc="landscape", leave=False)
    for begin in range(0, n_a, rows_per_chunk):
        rows = slice(begin, min(begin + rows_per_chunk, n_a))
        cells = _grid_cell_parameters(parameters, entry_a, entry_b, values_a[rows], values_b)
        n_cells = (rows.stop - rows.start) * n_b
        for tensor in cells.values():
            tensor.requires_grad_(True)

        def cell_step(z: Tensor, _cells=cells, _n=n_cells) -> Tensor:
            # The first state (B, M) is shared by every cell; from then on each cell has its own.
            return step(_cells, z.expand(_n, *z.shape[-2:]))

        with torch.enable_grad():
            predictions = forced_rollout(cell_step, observation, x, mode=mode, alpha=alpha)  # (C, B, T - 1, N)
            cell_loss = ((predictions - x[:, 1:]) ** 2).mean(dim=(-3, -2, -1))
            grads = dict(zip(cells, torch.autograd.grad(cell_loss.sum(), list(cells.values()))))
        if gradient == "plane":
            squares = sum(grads[name][(slice(None),) + index] ** 2 for name, index in (entry_a, entry_b))
        else:
            squares = sum(g.reshape(n_cells, -1).pow(2).sum(-1) for g in grads.values())
        loss[rows] = cell_loss.detach().reshape(-1, n_b).cpu().numpy()
        grad_norm[rows] = torch.sqrt(squares).reshape(-1, n_b).cpu().numpy()
        extent[rows] = predictions.detach().abs().amax(dim=(-3, -2, -1)).reshape(-1, n_b).cpu().numpy()
        bar.update(n_cells)
    bar.close()
    # A diverging orbit overflows to inf (or nan through inf - inf): the loss is then reported as inf.
    loss[~np.isfinite(loss)] = np.inf
    extent[np.isnan(extent)] = np.inf
    return loss, grad_norm, extent


# ------------------------------------------------------------------------------------------- boundaries, cliffs


def _signatures(diagram: BifurcationDiagram) -> np.ndarray:
    """Per cell, the counts then the stable counts of every order, shape (n_a, n_b, 2K)."""
    return np.concatenate([diagram.counts, diagram.stable], axis=-1)


def signature_changes(diagram: BifurcationDiagram) -> tuple[np.ndarray, np.ndarray]:
    """Where neighbouring cells differ in (count, stable count) of some order: the bifurcation curves on the grid.

    Returns
    -------
    along_a : ndarray of bool, shape (n_a - 1, n_b)
        ``along_a[i, j]``: cells ``(i, j)`` and ``(i + 1, j)`` differ.
    along_b : ndarray of bool, shape (n_a, n_b - 1)
        ``along_b[i, j]``: cells ``(i, j)`` and ``(i, j + 1)`` differ.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.0)
    >>> diagram = scan(model, "A[0]", "h[0]", ([0.5, 0.9, 1.1], [1.0]), max_order=1)   # fixed point iff A < 1
    >>> [change.tolist() for change in signature_changes(diagram)]
    [[[False], [True]], [[], [], []]]
    """
    signatures = _signatures(diagram)
    along_a = (signatures[1:] != signatures[:-1]).any(-1)
    along_b = (signatures[:, 1:] != signatures[:, :-1]).any(-1)
    return along_a, along_b


def boundary_cells(diagram: BifurcationDiagram) -> np.ndarray:
    """Cells whose (count, stable count) of some order differs from one of their four grid neighbours'.

    Both cells of a differing pair are boundary cells, so a curve between two grid lines marks the cells on
    either side.

    Returns
    -------
    ndarray of bool, shape (n_a, n_b)

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.0)
    >>> diagram = scan(model, "A[0]", "h[0]", ([0.5, 0.9, 1.1], [1.0]), max_order=1)
    >>> boundary_cells(diagram)[:, 0].tolist()
    [False, True, True]
    """
    along_a, along_b = signature_changes(diagram)
    boundary = np.zeros(diagram.counts.shape[:2], dtype=bool)
    boundary[1:] |= along_a
    boundary[:-1] |= along_a
    boundary[:, 1:] |= along_b
    boundary[:, :-1] |= along_b
    return boundary


@dataclass(frozen=True)
class CliffStatistic:
    """Is the gradient larger on the bifurcation curves than elsewhere?  (``cliff_statistic``.)

    Attributes
    ----------
    ratio : float
        Median gradient norm on boundary cells over the median on the other cells (medians taken of
        log10 values: for an even number of cells the middle two are averaged geometrically).
    median_boundary, median_rest : float
        Medians of log10 gradient norm on boundary cells and on the others.
    p_value : float
        One-sided permutation p-value of the difference of medians against the same number of cells
        drawn at random (labels shuffled).
    p_value_shift : float
        The same against the boundary mask shifted circularly by a random offset along both axes: the null
        keeps the curves' shape and spatial extent, which the label shuffle ignores; neighbouring cells of a
        smooth landscape are not independent, so ``p_value`` is optimistic and this one is the safer read.
    n_boundary, n_rest : int
        Cells compared (finite or infinite values; NaN cells left out).
    n_excluded : int
        Cells left out (NaN, or outside ``within``).
    n_permutations : int

    Examples
    --------
    >>> boundary = np.zeros((10, 10), dtype=bool); boundary[:, 4] = True
    >>> result = cliff_statistic(np.where(boundary, 2.0, 0.0), boundary, n_permutations=99)
    >>> result.ratio, result.p_value
    (100.0, 0.01)
    """

    ratio: float
    median_boundary: float
    median_rest: float
    p_value: float
    p_value_shift: float
    n_boundary: int
    n_rest: int
    n_excluded: int
    n_permutations: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers as strings)."""
        return {
            key: _float_or_text(value) if isinstance(value, float) else value for key, value in self.__dict__.items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CliffStatistic":
        """Inverse of ``to_dict``."""
        return cls(**{key: (float(value) if isinstance(value, (float, str)) else value) for key, value in data.items()})


def _median_of_sorted(values: np.ndarray) -> float:
    n = values.size
    if n == 0:
        return math.nan
    middle = values[(n - 1) // 2 : n // 2 + 1]
    return float(middle[0]) if middle[0] == middle[-1] else float(middle.mean())


def _median_difference(sorted_values: np.ndarray, chosen_in_sorted_order: np.ndarray) -> float:
    inside = _median_of_sorted(sorted_values[chosen_in_sorted_order])
    outside = _median_of_sorted(sorted_values[~chosen_in_sorted_order])
    if inside == outside:  # also inf == inf: no difference, rather than nan
        return 0.0
    return inside - outside


def cliff_statistic(
    log_grad_norm: np.ndarray,
    boundary: np.ndarray,
    *,
    within: np.ndarray | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> CliffStatistic:
    """Gradient norm on boundary cells against the rest: ratio of medians and two permutation p-values.

    The statistic is ``median(log10 ‖∇L‖ on boundary cells) − median(on the others)``; ``p_value`` compares it
    with boundary labels shuffled over the cells (``n_permutations`` times), ``p_value_shift`` with the
    boundary mask shifted circularly by random offsets (``np.roll`` along both axes).  Both are one-sided
    (large on the curves), ``(1 + #{null >= observed}) / (1 + n_permutations)``.  NaN cells are left out;
    ``inf`` (an overflowed gradient) counts as larger than anything.

    Parameters
    ----------
    log_grad_norm : ndarray, shape (n_a, n_b)
    boundary : ndarray of bool, shape (n_a, n_b)
    within : ndarray of bool, shape (n_a, n_b), optional
        Compare only these cells (e.g. ``LossLandscape.bounded``); the others count as excluded.
    n_permutations : int
    seed : int
        Seed of the random labels and shifts.

    Returns
    -------
    CliffStatistic
        With no boundary cell or no other cell: ``ratio`` NaN and both p-values 1.

    Raises
    ------
    ValueError
        Shapes differ or are not 2-D, ``boundary`` or ``within`` is not boolean, ``n_permutations < 1``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> boundary = np.zeros((30, 30), dtype=bool); boundary[10, :] = True
    >>> values = rng.normal(size=(30, 30))                           # no cliff at all
    >>> cliff_statistic(values, boundary, n_permutations=199).p_value > 0.05
    True
    """
    values = np.asarray(log_grad_norm, dtype=np.float64)
    mask = np.asarray(boundary)
    if values.ndim != 2 or mask.shape != values.shape:
        raise ValueError(f"log_grad_norm and boundary must be 2-D arrays of one shape, got {values.shape} and {mask.shape}")
    if mask.dtype != bool:
        raise ValueError(f"boundary must be a boolean array, got dtype {mask.dtype}")
    region = np.ones(values.shape, dtype=bool) if within is None else np.asarray(within)
    if region.shape != values.shape or region.dtype != bool:
        raise ValueError(f"within must be a boolean array of shape {values.shape}, got {region.dtype} {region.shape}")
    n_permutations = require_int("n_permutations", n_permutations, 1)
    seed = require_int("seed", seed, 0)
    valid = ~np.isnan(values) & region
    flat_values, flat_mask = values[valid], mask[valid]
    n_boundary = int(flat_mask.sum())
    n_rest = int(flat_mask.size - n_boundary)
    n_excluded = int((~valid).sum())
    if n_boundary == 0 or n_rest == 0:
        return CliffStatistic(math.nan, math.nan, math.nan, 1.0, 1.0, n_boundary, n_rest, n_excluded, n_permutations)
    order = np.argsort(flat_values, kind="stable")
    sorted_values = flat_values[order]
    observed = _median_difference(sorted_values, flat_mask[order])
    median_boundary = _median_of_sorted(sorted_values[flat_mask[order]])
    median_rest = _median_of_sorted(sorted_values[~flat_mask[order]])

    rng = np.random.default_rng(seed)
    rank_of_cell = np.empty_like(order)
    rank_of_cell[order] = np.arange(order.size)
    shuffled_at_least = shifted_at_least = 0
    chosen = np.zeros(order.size, dtype=bool)
    valid_positions = np.flatnonzero(valid.ravel())
    rank_of_position = np.full(values.size, -1)
    rank_of_position[valid_positions] = rank_of_cell
    for _ in range(n_permutations):
        chosen[:] = False
        chosen[rng.choice(order.size, n_boundary, replace=False)] = True
        shuffled_at_least += _median_difference(sorted_values, chosen) >= observed
        shift = (int(rng.integers(values.shape[0])), int(rng.integers(values.shape[1])))
        moved = np.roll(mask, shift, axis=(0, 1)).ravel()
        chosen[:] = False
        chosen[rank_of_position[valid_positions[moved[valid_positions]]]] = True
        if chosen.any() and not chosen.all():
            shifted_at_least += _median_difference(sorted_values, chosen) >= observed
        else:  # every boundary cell shifted onto NaN cells: nothing to compare, counts as not smaller
            shifted_at_least += 1
    with np.errstate(over="ignore"):
        ratio = 10.0 ** observed if math.isfinite(observed) else (math.inf if observed > 0 else 0.0)
    return CliffStatistic(
        ratio=float(ratio),
        median_boundary=median_boundary,
        median_rest=median_rest,
        p_value=(1 + shuffled_at_least) / (1 + n_permutations),
        p_value_shift=(1 + shifted_at_least) / (1 + n_permutations),
        n_boundary=n_boundary,
        n_rest=n_rest,
        n_excluded=n_excluded,
        n_permutations=n_permutations,
    )
