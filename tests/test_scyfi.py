"""Tests for bifurcation_callback._scyfi: the one kernel behind find_cycles, exhaustive_cycles and scan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifurcation_callback import _scyfi
from bifurcation_callback.bifurcations import scan
from bifurcation_callback.cycles import exhaustive_cycles, find_cycles
from problems import DTYPES, FLIP_1D, PLRNN_2D


@pytest.mark.parametrize("dtype", DTYPES)
def test_verify_rejects_open_orbits_lower_periods_and_singular_systems(dtype):
    eye = torch.eye(1, dtype=dtype)
    # z' = -z + 2 has the fixed point 1; every other point lies on a (neutral) 2-cycle with I - P = 0.
    closed_fixed_point = torch.tensor([[[1.0], [1.0], [1.0]]], dtype=dtype)  # as a 2-cycle: period 1
    neutral_pair = torch.tensor([[[0.0], [2.0], [0.0]]], dtype=dtype)       # P = 1: singular
    genuine = torch.tensor([[[-2 / 7], [6 / 7], [-2 / 7]]], dtype=dtype)    # FLIP_1D's 2-cycle, P = -0.75
    open_orbit = torch.tensor([[[0.0], [1.0], [0.5]]], dtype=dtype)
    trajectories = torch.cat([closed_fixed_point, neutral_pair, genuine, open_orbit])
    products = torch.stack([eye * 0.25, eye, eye * -0.75, eye * -0.75])
    valid, residuals = _scyfi.verify(trajectories, products, dtype)
    assert valid.tolist() == [False, False, True, False]
    assert residuals.dtype == torch.float64 and float(residuals[3]) == pytest.approx(0.5)


def test_canonical_rotation_and_rotation_table():
    codes = np.array([[1, 0], [0, 1], [0, 0]], dtype=bool)
    assert _scyfi.canonical_rotation(codes) == 2  # (00, 10, 01) is the smallest rotation
    np.testing.assert_array_equal(_scyfi.rotation_table(3)[2], [2, 0, 1])


def test_finder_exhaustive_and_scan_share_the_one_verify(monkeypatch):
    calls = []
    original = _scyfi.verify

    def counting(trajectories, products, dtype):
        calls.append(trajectories.shape[-2] - 1)
        return original(trajectories, products, dtype)

    monkeypatch.setattr(_scyfi, "verify", counting)
    assert len(find_cycles(PLRNN_2D.build(), max_order=2)) == 3
    found_by_finder = len(calls)
    assert len(exhaustive_cycles(FLIP_1D.build(), max_order=2)) == 2
    found_by_exhaustive = len(calls) - found_by_finder
    diagram = scan(FLIP_1D.build(), "A[0]", "h1[0]", ([0.5], [1.0]), max_order=2)
    assert diagram.counts[0, 0].tolist() == [1, 1]
    assert found_by_finder > 0 and found_by_exhaustive > 0 and len(calls) > found_by_finder + found_by_exhaustive
