"""Training data for dynamical-systems reconstruction (DSR) and the measures that score a reconstruction.

* ``lorenz63`` — the standard chaotic benchmark, integrated with ``scipy.integrate.solve_ivp``.
* ``plrnn_teacher`` — data from the paper's 2-D PLRNN, whose attractor (a stable 16-cycle) is known,
  so a trained model's cycles can be compared with the ground truth.
* ``load_array`` — a user's ``.npy`` file, validated.
* ``TimeSeriesDataModule`` — random subsequences of one or several trajectories.
* ``state_space_divergence`` and ``power_spectrum_distance`` — the geometric and temporal
  DSR measures used in the GTF literature (``D_stsp`` and ``D_H``); they live in ``metrics`` and are
  re-exported here.

Every array here is ``(T, N)``: time first, observed dimension last.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

import lightning.pytorch as pl
import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from bifurcation_callback._checks import require_int
from bifurcation_callback._lightning import for_namespace
from bifurcation_callback.metrics import DIVERGENCE_METHODS, power_spectrum_distance, state_space_divergence
from bifurcation_callback.models import PLRNN

__all__ = [
    "lorenz63",
    "plrnn_teacher",
    "plrnn_teacher_cycle",
    "PLRNN_TEACHER_PARAMS",
    "PLRNN_TEACHERS",
    "load_array",
    "TimeSeriesDataModule",
    "state_space_divergence",
    "power_spectrum_distance",
    "DIVERGENCE_METHODS",
]

ArrayLike = Union[np.ndarray, Tensor]
PathLike = Union[str, "os.PathLike[str]"]

# 2-D PLRNN teachers whose attractor is one globally attracting, stable cycle: name -> parameters and order.
PLRNN_TEACHERS: dict[str, dict] = {
    # The paper's Fig. 3 system with the exact values of the SCYFI unit tests (DurstewitzLab/SCYFI:
    # two 16-cycles, no 15-cycle); the stable one attracts every start we tried.
    "16-cycle": {
        "params": {"A": [0.8377689, 0.96461297], "W": [[0.0, -0.64375], [0.52505308, 0.0]], "h": [0.37298253, -0.97931491]},
        "order": 16,
    },
    # Found by a random search over 2-D PLRNNs for a single stable 4-cycle (|λ|max 0.28) that 200 random
    # starts in [-5, 5]² all reach; besides it: one unstable fixed point and one saddle 4-cycle.  Small
    # enough that a short GTF run learns it (tests/test_training.py).
    "4-cycle": {
        "params": {"A": [-0.058, -0.238], "W": [[0.0, 1.748], [-1.119, 0.0]], "h": [-0.818, 2.328]},
        "order": 4,
    },
}
PLRNN_TEACHER_PARAMS: dict[str, list] = PLRNN_TEACHERS["16-cycle"]["params"]


def lorenz63(
    n_steps: int,
    *,
    dt: float = 0.01,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
    transient: int = 1000,
    standardize: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Simulate the Lorenz-63 system and sample it every ``dt``.

    Integrated with RK45 at ``rtol = atol = 1e-9`` (dense ``t_eval``, so sampling does not change the
    step control); the first ``transient`` samples are discarded so the data lie on the attractor.

    Parameters
    ----------
    n_steps : int
        Number of returned samples ``T``.
    dt : float
        Sampling interval (time units).
    sigma, rho, beta : float
        Lorenz parameters (chaotic at the classic values).
    transient : int
        Samples discarded before the returned ones.
    standardize : bool
        Shift and scale each dimension to zero mean and unit standard deviation (over the returned part).
    seed : int
        Seeds the random initial condition (standard normal around ``(0, 0, 25)``).

    Returns
    -------
    ndarray, shape (T, 3), float64

    Examples
    --------
    >>> x = lorenz63(200, transient=100)
    >>> x.shape, bool(abs(x.mean()) < 1e-12), bool(np.allclose(x.std(axis=0), 1.0))
    ((200, 3), True, True)
    """
    require_int("n_steps", n_steps, 2)
    require_int("transient", transient, 0)
    _require_positive_float("dt", dt)

    def vector_field(_: float, s: np.ndarray) -> list[float]:
        x, y, z = s
        return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]

    start = np.random.default_rng(seed).normal(size=3) + np.array([0.0, 0.0, 25.0])
    times = np.arange(transient + n_steps) * dt
    solution = solve_ivp(vector_field, (0.0, times[-1]), start, method="RK45", t_eval=times, rtol=1e-9, atol=1e-9)
    if not solution.success:  # pragma: no cover - RK45 on Lorenz does not fail at these tolerances
        raise RuntimeError(f"solve_ivp failed: {solution.message}")
    x = solution.y.T[transient:]
    if standardize:
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x


def _teacher_params(system: str) -> dict[str, list]:
    if system not in PLRNN_TEACHERS:
        raise ValueError(f"system must be one of {list(PLRNN_TEACHERS)}, got {system!r}")
    return PLRNN_TEACHERS[system]["params"]


def _teacher_model(system: str) -> PLRNN:
    model = PLRNN(2).double()
    with torch.no_grad():
        for name, value in _teacher_params(system).items():
            getattr(model, name).copy_(torch.tensor(value, dtype=torch.float64))
    return model


def _teacher_step(z: np.ndarray, A: np.ndarray, W: np.ndarray, h: np.ndarray) -> np.ndarray:
    return A * z + W @ np.maximum(z, 0.0) + h


def plrnn_teacher_cycle(system: str = "16-cycle") -> np.ndarray:
    """The stable cycle of a teacher PLRNN (raw coordinates), starting at its point of largest ``z1``.

    Computed exactly: the region sequence is read off a converged orbit, then ``(I − P) z = c`` is solved
    with the affine pieces (see ``paper-notes`` §1).

    Parameters
    ----------
    system : str
        A key of ``PLRNN_TEACHERS``: ``"16-cycle"`` (the paper's Fig. 3 system) or ``"4-cycle"``.

    Returns
    -------
    ndarray, shape (k, 2), float64

    Examples
    --------
    >>> cycle = plrnn_teacher_cycle()
    >>> cycle.shape, np.round(cycle[0], 4).tolist()
    ((16, 2), [2.16, 0.1356])
    >>> plrnn_teacher_cycle("4-cycle").round(3).tolist()
    [[3.129, 1.792], [2.133, -1.6], [-0.942, 0.322], [-0.201, 2.251]]
    """
    A, W, h = (np.asarray(_teacher_params(system)[k]) for k in ("A", "W", "h"))
    order = PLRNN_TEACHERS[system]["order"]
    z = np.zeros(2)
    # Multipliers have modulus 0.519 per period, so 2000 steps leave an error far below float64 resolution.
    for _ in range(2000):
        z = _teacher_step(z, A, W, h)
    orbit = [z]
    for _ in range(order - 1):
        orbit.append(_teacher_step(orbit[-1], A, W, h))
    jacobians = [np.diag(A) + W * (point > 0) for point in orbit]
    P, c = np.eye(2), np.zeros(2)
    for J in jacobians:
        P, c = J @ P, J @ c + h
    orbit[0] = np.linalg.solve(np.eye(2) - P, c)
    for k in range(1, order):
        orbit[k] = _teacher_step(orbit[k - 1], A, W, h)
    cycle = np.array(orbit)
    return np.roll(cycle, -int(np.argmax(cycle[:, 0])), axis=0)


def plrnn_teacher(
    n_steps: int,
    *,
    system: str = "16-cycle",
    seed: int = 0,
    noise_std: float = 0.0,
    transient: int = 1000,
    rescale: bool = False,
) -> tuple[np.ndarray, PLRNN]:
    """Data from a 2-D PLRNN whose attractor is known: a globally attracting, stable cycle.

    The default teacher (``system="16-cycle"``) is the paper's Fig. 3 system (``PLRNN_TEACHER_PARAMS``),
    ``A = diag(0.8377689, 0.96461297)``, ``W = [[0, −0.64375], [0.52505308, 0]]``,
    ``h = (0.37298253, −0.97931491)``.  Checked by simulation: 200 random starts in ``[−5, 5]²`` all
    converge to the same 16-cycle, whose 16-step Jacobian product has a complex pair of multipliers with
    ``|λ| = 0.519``.  (The SCYFI tests report *two* 16-cycles; the second one is therefore unstable.)
    In raw coordinates the cycle runs through, from its rightmost point,
    (2.160, 0.136), (2.095, 0.286), (1.945, 0.396), (1.747, 0.424), (1.564, 0.347), (1.460, 0.176),
    (1.482, −0.043), (1.615, −0.242), (1.726, −0.365), (1.819, −0.426), (1.897, −0.435), (1.962, −0.403),
    (2.017, −0.338), (2.063, −0.246), (2.101, −0.134), (2.133, −0.005); ``z1 > 0`` throughout and
    ``z2`` changes sign, so the cycle visits two regions.  Exact points: ``plrnn_teacher_cycle``.

    ``system="4-cycle"`` is a smaller teacher with a stable 4-cycle (``plrnn_teacher_cycle("4-cycle")``)
    that a 2-D PLRNN learns in a few thousand GTF steps.

    Parameters
    ----------
    n_steps : int
        Number of returned samples ``T``.
    system : str
        Which teacher: a key of ``PLRNN_TEACHERS``.
    seed : int
        Seeds the initial condition (uniform in ``[−5, 5]²``) and the observation noise.
    noise_std : float
        Standard deviation of i.i.d. Gaussian *observation* noise added to the returned data (in
        returned units); the dynamics themselves stay deterministic.
    transient : int
        Steps discarded first; with the default 1000 the data lie on the cycle to float64 precision.
    rescale : bool
        Divide each dimension by its standard deviation (no centring).  For ``s > 0``,
        ``relu(s x) = s relu(x)``, so the rescaled data are generated *exactly* by the PLRNN with
        ``W' = S⁻¹ W S``, ``h' = S⁻¹ h`` (``S = diag(s)``, same ``A``), and that is the model returned:
        its cycles are the teacher's cycles in data coordinates.  Centring would move the ReLU
        thresholds off zero, which a PLRNN cannot express, hence it is not offered.

    Returns
    -------
    x : ndarray, shape (T, 2), float64
    teacher : PLRNN
        The generating model in data coordinates, float64.

    Examples
    --------
    >>> x, teacher = plrnn_teacher(64)
    >>> x.shape, bool(np.allclose(x[16:], x[:-16]))   # exactly periodic with period 16
    ((64, 2), True)
    """
    require_int("n_steps", n_steps, 1)
    require_int("transient", transient, 0)
    if not isinstance(noise_std, (int, float)) or isinstance(noise_std, bool) or not noise_std >= 0:
        raise ValueError(f"noise_std must be a float >= 0, got {noise_std!r}")
    A, W, h = (np.asarray(_teacher_params(system)[k]) for k in ("A", "W", "h"))
    rng = np.random.default_rng(seed)
    z = rng.uniform(-5.0, 5.0, size=2)
    for _ in range(transient):
        z = _teacher_step(z, A, W, h)
    x = np.empty((n_steps, 2))
    for t in range(n_steps):
        x[t] = z
        z = _teacher_step(z, A, W, h)
    model = _teacher_model(system)
    if rescale:
        scale = x.std(axis=0)
        if np.any(scale == 0):
            raise ValueError("rescale=True needs n_steps >= 2 distinct states (the standard deviation is zero)")
        x = x / scale
        with torch.no_grad():
            s = torch.as_tensor(scale)
            model.W.copy_(model.W * s[None, :] / s[:, None])
            model.h.copy_(model.h / s)
    if noise_std > 0:
        x = x + noise_std * rng.standard_normal(x.shape)
    return x, model


def load_array(path: PathLike, *, min_steps: int = 2) -> np.ndarray:
    """Load a user time series from a ``.npy`` file as float32 ``(T, N)``.

    Parameters
    ----------
    path : str or PathLike
        A file written by ``numpy.save``; a 2-D array with time along axis 0.
    min_steps : int
        The smallest acceptable ``T`` (for training: ``seq_len + 1``).

    Returns
    -------
    ndarray, shape (T, N), float32

    Raises
    ------
    ValueError
        Unreadable file, not 2-D, non-numeric, NaN or inf entries, fewer than ``min_steps`` time steps.
        The message names the file.
    FileNotFoundError
        No such file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.npy"
    >>> np.save(path, np.zeros((10, 3)))
    >>> load_array(path).dtype
    dtype('float32')
    >>> np.save(path, np.zeros(10))
    >>> load_array(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../x.npy: expected a 2-D array (T, N) with time along axis 0, got shape (10,); ...
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"{name}: no such file")
    try:
        raw = np.load(name, allow_pickle=False)
    except Exception as error:  # np.load raises several types for bad files
        raise ValueError(f"{name}: cannot read as a .npy array ({error})") from None
    if not isinstance(raw, np.ndarray):
        raise ValueError(f"{name}: expected a single .npy array, got {type(raw).__name__} (an .npz archive?)")
    return _validate_series(raw, what=name, min_steps=min_steps)


def _validate_series(raw: ArrayLike, *, what: str, min_steps: int) -> np.ndarray:
    if isinstance(raw, Tensor):
        raw = raw.detach().cpu().numpy()
    raw = np.asarray(raw)
    if raw.ndim != 2:
        hint = " (for a single channel use x[:, None])" if raw.ndim == 1 else ""
        raise ValueError(
            f"{what}: expected a 2-D array (T, N) with time along axis 0, got shape {raw.shape}; "
            f"several trajectories go in as a list of 2-D arrays{hint}"
        )
    if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == np.bool_) or np.iscomplexobj(raw):
        raise ValueError(f"{what}: expected a real numeric array, got dtype {raw.dtype}")
    x = raw.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what}: {int(bad.sum())} NaN/inf entries (first at index {first}); clean or interpolate")
    if x.shape[0] < min_steps:
        raise ValueError(f"{what}: {x.shape[0]} time steps, need at least {min_steps}")
    if x.shape[1] < 1:
        raise ValueError(f"{what}: zero observed dimensions (shape {x.shape})")
    return x


class _Windows(Dataset):
    """All windows of length ``window`` of several trajectories, flat-indexed."""

    def __init__(self, trajectories: list[Tensor], window: int) -> None:
        self.trajectories = trajectories
        self.window = window
        counts = torch.tensor([len(x) - window + 1 for x in trajectories])
        self.offsets = torch.cumsum(counts, 0)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> Tensor:
        k = int(torch.searchsorted(self.offsets, torch.tensor(index), right=True))
        start = index - (int(self.offsets[k - 1]) if k else 0)
        return self.trajectories[k][start : start + self.window]


class _TimeSeriesDataModuleMixin:
    def __init__(
        self,
        data: ArrayLike | PathLike | Sequence[ArrayLike | PathLike],
        *,
        seq_len: int = 200,
        batch_size: int = 16,
        n_batches_per_epoch: int = 50,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        require_int("seq_len", seq_len, 1)
        require_int("batch_size", batch_size, 1)
        require_int("n_batches_per_epoch", n_batches_per_epoch, 1)
        require_int("seed", seed, 0)
        require_int("num_workers", num_workers, 0)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.n_batches_per_epoch = n_batches_per_epoch
        self.seed = seed
        self.num_workers = num_workers
        items = list(data) if isinstance(data, (list, tuple)) else [data]
        if not items:
            raise ValueError("data must hold at least one trajectory, got an empty sequence")
        arrays = []
        for k, item in enumerate(items):
            what = f"trajectory {k}" if len(items) > 1 else "data"
            if isinstance(item, (str, os.PathLike)):
                arrays.append(load_array(item, min_steps=seq_len + 1))
            else:
                arrays.append(_validate_series(item, what=what, min_steps=1))
                if len(arrays[-1]) <= seq_len:
                    raise ValueError(
                        f"{what}: seq_len={seq_len} needs T >= seq_len + 1 = {seq_len + 1} time steps, "
                        f"got T = {len(arrays[-1])}"
                    )
        dims = {a.shape[1] for a in arrays}
        if len(dims) > 1:
            raise ValueError(f"all trajectories must have the same dimension N, got {sorted(dims)}")
        self.trajectories = [torch.from_numpy(a) for a in arrays]
        self.data_dim = arrays[0].shape[1]

    def train_dataloader(self) -> DataLoader:
        dataset = _Windows(self.trajectories, self.seq_len + 1)
        generator = torch.Generator().manual_seed(self.seed)
        # Sampling with replacement decouples the epoch length from T, as in the GTF reference code.
        sampler = RandomSampler(
            dataset, replacement=True, num_samples=self.batch_size * self.n_batches_per_epoch, generator=generator
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers, drop_last=True
        )

    @classmethod
    def for_namespace(cls, namespace: str) -> type:
        """This class built on ``namespace``'s ``LightningDataModule`` (see ``LIGHTNING_NAMESPACES``)."""
        return for_namespace(TimeSeriesDataModule, namespace)


class TimeSeriesDataModule(_TimeSeriesDataModuleMixin, pl.LightningDataModule):
    """Random subsequences of one or several trajectories, for any training mode of ``DSRModule``.

    Each batch has shape ``(batch_size, seq_len + 1, N)``: ``seq_len`` prediction targets after the
    initial observation.  Windows are drawn uniformly over all valid start positions of all
    trajectories, with replacement, from a ``torch.Generator`` seeded with ``seed`` (the same seed gives
    the same batches).  An epoch is ``n_batches_per_epoch`` batches.

    This class derives from ``lightning.pytorch.LightningDataModule``.  For a ``pytorch_lightning.Trainer``
    use ``TimeSeriesDataModule.for_namespace("pytorch_lightning")(...)`` (same arguments), or pass
    ``dm.train_dataloader()`` to ``fit`` directly.

    Parameters
    ----------
    data : array (T, N), path to a ``.npy`` file, or a list of those
        Several trajectories are never concatenated: windows do not cross their boundaries.
    seq_len : int
        Number of predicted steps per window; every trajectory needs ``T >= seq_len + 1``.
    batch_size : int
    n_batches_per_epoch : int
    seed : int
    num_workers : int
        DataLoader workers (0 is fastest for data that fit in memory).

    Attributes
    ----------
    trajectories : list of Tensor, each (T_k, N), float32
    data_dim : int
        ``N``.

    Raises
    ------
    ValueError
        Bad arguments, bad arrays or files (see ``load_array``), a trajectory shorter than
        ``seq_len + 1``, trajectories of different dimension.

    Examples
    --------
    >>> dm = TimeSeriesDataModule(np.zeros((100, 2)), seq_len=20, batch_size=4, n_batches_per_epoch=3)
    >>> [tuple(batch.shape) for batch in dm.train_dataloader()]
    [(4, 21, 2), (4, 21, 2), (4, 21, 2)]
    """


# --------------------------------------------------------------------------------------------------


def _require_positive_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float, np.floating)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")
