"""Dynamical-systems-reconstruction measures: how well generated trajectories match the data.

* ``state_space_divergence`` (``D_stsp``) — Kullback–Leibler divergence between the occupation
  measures of the true and generated trajectories in state space (binned, or a Gaussian-mixture
  estimate in higher dimensions): the geometric measure.
* ``power_spectrum_distance`` (``D_H``) — mean Hellinger distance between the smoothed power spectra
  of each dimension: the temporal measure.

Both follow the GTF literature.  Every array is ``(T, N)``: time first, observed dimension last.
``bifurcation_callback.data`` re-exports both for backward compatibility.  No Lightning here.
"""

from __future__ import annotations

from typing import Union

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import logsumexp
from torch import Tensor

from bifurcation_callback._checks import require_int, require_real

__all__ = ["state_space_divergence", "power_spectrum_distance", "DIVERGENCE_METHODS"]

ArrayLike = Union[np.ndarray, Tensor]

DIVERGENCE_METHODS = ("auto", "bins", "gmm")


def _as_2d(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (T, N) with T >= 2, got {x.shape}")
    return x


def _pair(x_true: ArrayLike, x_gen: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(x_true, "x_true"), _as_2d(x_gen, "x_gen")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x_true and x_gen must have the same dimension N, got {a.shape[1]} and {b.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError("x_true contains NaN or inf")
    return a, b


def state_space_divergence(
    x_true: ArrayLike,
    x_gen: ArrayLike,
    *,
    method: str = "auto",
    n_bins: int | None = None,
    smoothing: float = 1e-3,
    n_samples: int = 1000,
    bandwidth: float = 0.5,
    seed: int = 0,
) -> float:
    """Kullback–Leibler divergence ``KL(p_true ‖ p_gen)`` between the occupied state-space densities.

    ``"bins"`` (default for ``N <= 3``): ``n_bins`` equal bins per dimension over the range of
    ``x_true`` widened by 10 %, plus one extra "outside" cell that collects every generated point out of
    range or non-finite, so a diverging generator scores high instead of being silently ignored.
    ``smoothing`` is a total probability mass spread evenly over all cells of both histograms before
    normalisation; it keeps the KL finite (at most about ``log(n_cells / smoothing)``).

    ``"gmm"`` (default for ``N > 3``, where ``n_bins**N`` cells would be nearly all empty): each density
    is a Gaussian mixture with one isotropic component of standard deviation
    ``bandwidth * mean(std(x_true))`` on each of ``n_samples`` randomly drawn time points; the KL is
    a Monte-Carlo average of ``log p_true − log p_gen`` over one sample of the ``x_true`` mixture per
    component (Koppe et al. 2019).  Non-finite generated points are dropped; if none remain the result
    is ``inf``.  Cost ``O(n_samples² N)``.

    Both estimates are biased upwards for short series: two independent 500-step pieces of Lorenz-63
    (5 time units, a few loops) differ much more than two 5000-step pieces.  Compare models on equally
    long series.

    Parameters
    ----------
    x_true, x_gen : array or Tensor, shape (T, N)
        Lengths may differ.
    method : {"auto", "bins", "gmm"}
        See ``DIVERGENCE_METHODS``.
    n_bins : int, optional
        Bins per dimension; ``None`` picks ``min(30, max(2, floor((T_true / 20) ** (1 / N))))`` so the
        cells are not mostly empty (30 is the literature's value for long 3-D series).
    smoothing : float
    n_samples : int
    bandwidth : float
    seed : int
        Subsampling seed of the ``"gmm"`` estimate.

    Returns
    -------
    float
        0 for identical data (≈ 0 with ``"gmm"``); larger is worse.

    Examples
    --------
    >>> from bifurcation_callback.data import lorenz63
    >>> x = lorenz63(2000, transient=100)
    >>> state_space_divergence(x, x)
    0.0
    >>> state_space_divergence(x, 0.2 * x) > 1.0
    True
    """
    if method not in DIVERGENCE_METHODS:
        raise ValueError(f"method must be one of {', '.join(DIVERGENCE_METHODS)}, got {method!r}")
    if n_bins is not None:
        require_int("n_bins", n_bins, 1)
    require_int("n_samples", n_samples, 1)
    require_real("smoothing", smoothing, minimum=0.0, exclusive_minimum=True)
    require_real("bandwidth", bandwidth, minimum=0.0, exclusive_minimum=True)
    a, b = _pair(x_true, x_gen)
    if method == "bins" or (method == "auto" and a.shape[1] <= 3):
        if n_bins is None:
            n_bins = int(min(30, max(2, np.floor((len(a) / 20) ** (1 / a.shape[1])))))
        return _binned_kl(a, b, n_bins=n_bins, smoothing=smoothing)
    return _gmm_kl(a, b, n_samples=n_samples, bandwidth=bandwidth, seed=seed)


def _binned_kl(a: np.ndarray, b: np.ndarray, *, n_bins: int, smoothing: float) -> float:
    if n_bins ** a.shape[1] > 10**7:
        raise ValueError(f"n_bins={n_bins} in N={a.shape[1]} dimensions gives over 1e7 cells; use method='gmm'")
    lo, hi = a.min(axis=0), a.max(axis=0)
    pad = 0.05 * np.where(hi > lo, hi - lo, 1.0)
    lo, hi = lo - pad, hi + pad

    def histogram(x: np.ndarray) -> np.ndarray:
        finite = np.isfinite(x).all(axis=1)
        inside = finite & ((x >= lo) & (x <= hi)).all(axis=1)
        counts, _ = np.histogramdd(x[inside], bins=n_bins, range=list(zip(lo, hi)))
        p = np.append(counts.ravel(), len(x) - inside.sum()) / len(x)
        p = p + smoothing / p.size
        return p / p.sum()

    p, q = histogram(a), histogram(b)
    return max(0.0, float(np.sum(p * np.log(p / q))))


def _gmm_kl(a: np.ndarray, b: np.ndarray, *, n_samples: int, bandwidth: float, seed: int) -> float:
    b = b[np.isfinite(b).all(axis=1)]
    if len(b) == 0:
        return float("inf")
    def subsample(x: np.ndarray) -> np.ndarray:
        # A fresh generator per array: equal inputs get equal centres, so KL(x, x) is exactly 0.
        return x[np.random.default_rng(seed).choice(len(x), size=min(n_samples, len(x)), replace=False)]

    centres_a, centres_b = subsample(a), subsample(b)
    sigma = bandwidth * float(np.mean(a.std(axis=0))) or bandwidth
    # Samples of the smoothed p_true itself (not its centres), so the average estimates a true KL (>= 0).
    points = centres_a + sigma * np.random.default_rng(seed + 1).standard_normal(centres_a.shape)

    def log_density(centres: np.ndarray) -> np.ndarray:
        sq = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        # The Gaussian normalisation is the same for both mixtures and cancels in the difference.
        return logsumexp(-0.5 * sq / sigma**2, axis=1) - np.log(len(centres))

    return max(0.0, float(np.mean(log_density(centres_a) - log_density(centres_b))))


def power_spectrum_distance(
    x_true: ArrayLike,
    x_gen: ArrayLike,
    *,
    smoothing: float = 2.0,
) -> float:
    """Hellinger distance between the power spectra of ``x_true`` and ``x_gen``, averaged over dimensions.

    Per dimension: the series is centred and scaled to unit variance (so only the *shape* of the
    spectrum counts), its power ``|rfft|²`` without the DC term is smoothed with a Gaussian kernel of
    width ``smoothing`` frequency bins (raw periodograms are too noisy to compare) and normalised to a
    probability vector; then ``H(p, q) = sqrt(1 − Σ sqrt(p q))``.  Both series are cut to the shorter
    length so their frequency grids coincide.  A non-finite ``x_gen`` scores the maximum, 1.

    Parameters
    ----------
    x_true, x_gen : array or Tensor, shape (T, N)
    smoothing : float
        Standard deviation of the smoothing kernel in frequency bins; 0 disables smoothing.

    Returns
    -------
    float
        In ``[0, 1]``; 0 for identical series.

    Examples
    --------
    >>> t = np.arange(1000)[:, None]
    >>> round(power_spectrum_distance(np.sin(0.3 * t), np.sin(0.3 * t)), 6)
    0.0
    >>> power_spectrum_distance(np.sin(0.3 * t), np.sin(1.1 * t)) > 0.9
    True
    """
    if not isinstance(smoothing, (int, float)) or isinstance(smoothing, bool) or not smoothing >= 0:
        raise ValueError(f"smoothing must be a float >= 0, got {smoothing!r}")
    a, b = _pair(x_true, x_gen)
    if not np.isfinite(b).all():
        return 1.0
    length = min(len(a), len(b))
    if length < 4:
        raise ValueError(f"power_spectrum_distance needs at least 4 common time steps, got {length}")

    def spectra(x: np.ndarray) -> np.ndarray:
        x = x[:length] - x[:length].mean(axis=0)
        x = x / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        power = np.abs(np.fft.rfft(x, axis=0)[1:]) ** 2
        if smoothing > 0:
            power = gaussian_filter1d(power, smoothing, axis=0, mode="nearest")
        # A constant series has no power at all; give it a flat spectrum rather than 0/0.
        power = power + 1e-12 * power.sum(axis=0, keepdims=True).max() + 1e-300
        return power / power.sum(axis=0, keepdims=True)

    p, q = spectra(a), spectra(b)
    bhattacharyya = np.clip(np.sqrt(p * q).sum(axis=0), 0.0, 1.0)
    return float(np.mean(np.sqrt(1.0 - bhattacharyya)))
