"""Tests for bifurcation_callback.metrics: the DSR measures D_stsp (state_space_divergence) and D_H."""

from __future__ import annotations

import numpy as np
import pytest

from bifurcation_callback.data import lorenz63
from bifurcation_callback.metrics import DIVERGENCE_METHODS, power_spectrum_distance, state_space_divergence


@pytest.fixture(scope="module")
def lorenz_pair() -> tuple[np.ndarray, np.ndarray]:
    return lorenz63(4000, seed=0), lorenz63(4000, seed=7)


@pytest.mark.parametrize("method", DIVERGENCE_METHODS)
def test_state_space_divergence_orders_similarity(lorenz_pair, method):
    x, y = lorenz_pair
    kwargs = {"method": method, "n_samples": 400}
    same = state_space_divergence(x, x, **kwargs)
    independent = state_space_divergence(x, y, **kwargs)  # another piece of the same attractor
    cycle = np.c_[np.sin(0.1 * np.arange(4000)), np.cos(0.1 * np.arange(4000)), np.zeros(4000)]
    different = state_space_divergence(x, cycle, **kwargs)
    shrunk = state_space_divergence(x, 0.2 * x, **kwargs)
    assert same == pytest.approx(0.0, abs=1e-12)
    assert independent < 0.3
    assert different > 5 * max(independent, 0.1) and shrunk > 5 * max(independent, 0.1)


def test_state_space_divergence_high_dim_and_divergent_generators(lorenz_pair):
    x, _ = lorenz_pair
    rng = np.random.default_rng(0)
    x6 = np.c_[x, x @ rng.normal(size=(3, 3))]
    assert state_space_divergence(x6, x6, n_samples=300) == pytest.approx(0.0, abs=1e-9)
    assert state_space_divergence(x6, x6 + 3.0, n_samples=300) > 1.0
    exploding = x.copy()
    exploding[2000:] = np.inf
    # Half the generated mass escapes to the "outside" cell: KL grows by about log 2 over the finite half.
    finite_half = state_space_divergence(x, x[:2000])
    assert state_space_divergence(x, exploding) == pytest.approx(finite_half + np.log(2), abs=0.05)
    assert state_space_divergence(x6, np.full_like(x6, np.nan), method="gmm") == np.inf


def test_power_spectrum_distance(lorenz_pair):
    x, y = lorenz_pair
    t = np.arange(4000)[:, None]
    assert power_spectrum_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    independent = power_spectrum_distance(x, y)
    slow = power_spectrum_distance(x, lorenz63(4000, dt=0.03))  # same attractor, 3x faster in samples
    noise = power_spectrum_distance(x, np.random.default_rng(0).normal(size=x.shape))
    sine = power_spectrum_distance(np.sin(0.3 * t), np.sin(0.35 * t))
    assert independent < 0.25 and slow > 2 * independent and noise > 0.6 and sine > 0.9
    assert power_spectrum_distance(x, np.full_like(x, np.nan)) == 1.0
    assert 0.0 <= power_spectrum_distance(x, np.zeros_like(x)) <= 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: state_space_divergence(x, x, method="kde"), "method must be one of auto, bins, gmm"),
        (lambda x: state_space_divergence(x, x[:, :2]), "same dimension N, got 3 and 2"),
        (lambda x: state_space_divergence(x, x, n_bins=0), "n_bins"),
        (lambda x: state_space_divergence(np.full_like(x, np.nan), x), "x_true contains NaN"),
        (lambda x: power_spectrum_distance(x, x, smoothing=-1.0), "smoothing"),
        (lambda x: power_spectrum_distance(x[:3], x[:3]), "at least 4"),
    ],
)
def test_measures_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(np.random.default_rng(0).normal(size=(50, 3)))
