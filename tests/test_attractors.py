"""Lyapunov exponents and orbits against analytic values: tent and skew-tent maps, linear region maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bifurcation_callback.attractors import lyapunov_exponents, simulate
from bifurcation_callback.models import PLRNN, ShallowPLRNN


def tent_like(slope_left: float, slope_right: float, corner: float) -> ShallowPLRNN:
    """A 1-D map with slope ``slope_left`` below ``corner`` and ``slope_right`` above, through (0, 0).

    Written as a ShallowPLRNN(1, 1): z' = s_l z + (s_r - s_l) relu(z - corner).
    """
    model = ShallowPLRNN(latent_dim=1, hidden_dim=1).double()
    with torch.no_grad():
        model.A.fill_(slope_left)
        model.W1.fill_(slope_right - slope_left)
        model.W2.fill_(1.0)
        model.h2.fill_(-corner)
        model.h1.zero_()
    return model


@pytest.mark.parametrize("mu", [1.3, 1.7, 1.9])
def test_tent_map_exponent_is_log_mu(mu: float) -> None:
    # z' = mu * min(z, 1 - z): slopes mu and -mu, corner 1/2; on its attractor every step stretches by mu.
    model = tent_like(mu, -mu, 0.5)
    exponent = lyapunov_exponents(model, [0.2345], n_steps=20_000, n_transient=100)
    assert exponent.shape == (1,)
    assert exponent[0] == pytest.approx(math.log(mu), abs=1e-12)


@pytest.mark.parametrize("corner", [0.3, 0.618034])
def test_skew_tent_exponent_is_the_entropy_of_its_uniform_measure(corner: float) -> None:
    # Slopes 1/a and -1/(1-a); the invariant measure is uniform, so lambda = -a log a - (1-a) log(1-a).
    model = tent_like(1 / corner, -1 / (1 - corner), corner)
    expected = -corner * math.log(corner) - (1 - corner) * math.log(1 - corner)
    exponents = lyapunov_exponents(model, [[0.1234], [0.5678], [0.9012]], n_steps=20_000, n_transient=100)
    assert exponents.shape == (3, 1)
    # Ergodic averages converge like 1/sqrt(n): 2e4 steps give about 2 decimals.
    np.testing.assert_allclose(exponents[:, 0], expected, atol=1e-2)


def test_linear_region_map_spectrum_is_log_of_moduli() -> None:
    model = PLRNN(3).double()
    with torch.no_grad():
        model.A.copy_(torch.tensor([0.9, -0.5, 0.2], dtype=torch.float64))
        model.W.zero_()
        model.h.zero_()
    # With W = 0 every region's Jacobian is diag(A), although the orbit's second coordinate changes sign.
    exponents = lyapunov_exponents(model, [1.0, 1.0, 1.0], n_steps=200, n_transient=0)
    np.testing.assert_allclose(exponents, np.log([0.9, 0.5, 0.2]), atol=1e-12)


def test_rotation_block_gives_a_pair_of_equal_exponents() -> None:
    # A user model (protocol only) whose every region maps by r R(theta): the spectrum is (log r, log r).
    class Rotation(torch.nn.Module):
        state_dim, n_switches = 2, 1

        def __init__(self, radius: float, angle: float) -> None:
            super().__init__()
            c, s = math.cos(angle), math.sin(angle)
            self.register_buffer("J", radius * torch.tensor([[c, -s], [s, c]], dtype=torch.float64))

        def region_codes(self, z):
            return z[..., :1] > 0

        def affine_pieces(self, codes):
            J = self.J.expand(*codes.shape[:-1], 2, 2)
            return J, torch.zeros(*codes.shape[:-1], 2, dtype=self.J.dtype)

        def step(self, z):
            return z @ self.J.T

    exponents = lyapunov_exponents(Rotation(1.1, 0.7), [1.0, 0.0], n_steps=300, n_transient=0)
    np.testing.assert_allclose(exponents, [math.log(1.1)] * 2, atol=1e-12)


def test_superstable_region_gives_minus_infinity() -> None:
    # z' = relu-gated: slope 0 below the corner, so the orbit from the left sits at 0 with Jacobian 0.
    model = tent_like(0.0, 0.0, 10.0)
    assert lyapunov_exponents(model, [-1.0], n_steps=5, n_transient=0)[0] == -math.inf


def test_diverging_orbit_gives_nan_not_a_number_that_looks_valid() -> None:
    model = tent_like(3.0, 3.0, 0.0)
    exponents = lyapunov_exponents(model, [[1.0], [0.0]], n_steps=2000, n_transient=0)
    assert math.isnan(exponents[0, 0])
    assert exponents[1, 0] == pytest.approx(math.log(3.0))


def test_float32_matches_float64_loosely() -> None:
    model = tent_like(1.7, -1.7, 0.5)
    exponent32 = lyapunov_exponents(model, [0.3], n_steps=2000, n_transient=10, dtype="float32")
    assert exponent32[0] == pytest.approx(math.log(1.7), abs=1e-5)
    assert model.A.dtype == torch.float64  # the caller's model is not converted in place


def test_simulate_matches_repeated_steps() -> None:
    model = ShallowPLRNN(latent_dim=2, hidden_dim=5).double()
    start = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float64)
    orbit = simulate(model, start, 4)
    assert orbit.shape == (2, 5, 2)
    expected = start
    for t in range(5):
        torch.testing.assert_close(orbit[:, t], expected)
        expected = model.step(expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: lyapunov_exponents(m, [0.0, 1.0]), r"z0 must have shape \(1,\)"),
        (lambda m: lyapunov_exponents(m, [float("nan")]), "NaN"),
        (lambda m: lyapunov_exponents(m, [0.1], n_steps=0), "n_steps must be an int >= 1"),
        (lambda m: lyapunov_exponents(m, [0.1], n_transient=-1), "n_transient must be an int >= 0"),
        (lambda m: lyapunov_exponents(m, [0.1], dtype=torch.float16), "dtype must be one of"),
        (lambda m: simulate(m, [0.1], n_steps=True), "n_steps must be an int"),
    ],
)
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(tent_like(1.5, -1.5, 0.5))


def test_non_model_is_rejected() -> None:
    with pytest.raises(TypeError):
        lyapunov_exponents(object(), [0.0])
