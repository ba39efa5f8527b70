"""Tests for bifurcation_callback.data: generators, file loading and the DataModule (measures: test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bifurcation_callback.data import (
    DIVERGENCE_METHODS,
    TimeSeriesDataModule,
    load_array,
    lorenz63,
    plrnn_teacher,
    plrnn_teacher_cycle,
    power_spectrum_distance,
    state_space_divergence,
)

# ------------------------------------------------------------------------------------------ lorenz63


def test_lorenz63_is_standardised_reproducible_and_seeded():
    x = lorenz63(800, transient=200, seed=1)
    assert x.shape == (800, 3)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(x.std(axis=0), 1.0, rtol=1e-10)
    np.testing.assert_array_equal(x, lorenz63(800, transient=200, seed=1))
    assert not np.allclose(x, lorenz63(800, transient=200, seed=2))


def test_lorenz63_raw_lies_on_the_attractor():
    x = lorenz63(1000, transient=500, standardize=False)
    # Classic bounds of the Lorenz attractor at rho = 28 (z stays positive, |x| < 25).
    assert np.abs(x[:, 0]).max() < 25 and x[:, 2].min() > 0 and 20 < x[:, 2].mean() < 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_steps": 1}, r"n_steps must be an int >= 2, got 1"),
        ({"n_steps": 10, "dt": 0.0}, r"dt must be a float > 0, got 0.0"),
        ({"n_steps": 10, "transient": -1}, r"transient must be an int >= 0, got -1"),
    ],
)
def test_lorenz63_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lorenz63(**kwargs)


# ------------------------------------------------------------------------------------- plrnn teacher


def _period(x: np.ndarray, max_period: int = 64) -> int:
    for p in range(1, max_period + 1):
        if np.allclose(x[p:], x[:-p], atol=1e-9):
            return p
    raise AssertionError("not periodic")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("system, order, radius", [("16-cycle", 16, 0.5189), ("4-cycle", 4, 0.28)])
def test_teacher_converges_to_the_documented_stable_cycle(seed, system, order, radius):
    x, model = plrnn_teacher(100, system=system, seed=seed)
    assert _period(x) == order
    cycle = plrnn_teacher_cycle(system)
    # Same orbit whatever the start: every data point is a cycle point.
    distances = np.linalg.norm(x[:order, None, :] - cycle[None], axis=-1).min(axis=1)
    assert distances.max() < 1e-9
    # Stability from the model's own Jacobians: the spectral radius of the k-step product.
    product = torch.eye(2, dtype=torch.float64)
    for point in torch.as_tensor(cycle):
        product = model.jacobian(point) @ product
    assert torch.linalg.eigvals(product).abs().max().item() == pytest.approx(radius, abs=1e-2)


def test_unknown_teacher_is_named():
    with pytest.raises(ValueError, match="system must be one of"):
        plrnn_teacher(10, system="3-cycle")


@pytest.mark.parametrize("rescale", [False, True])
def test_teacher_model_generates_the_returned_data(rescale):
    x, model = plrnn_teacher(50, rescale=rescale)
    with torch.no_grad():
        predicted = model.step(torch.as_tensor(x[:-1])).numpy()
    np.testing.assert_allclose(predicted, x[1:], atol=1e-10)
    if rescale:
        np.testing.assert_allclose(x.std(axis=0), 1.0)


def test_teacher_noise_is_observation_noise_of_the_given_size():
    clean, _ = plrnn_teacher(4000, seed=3)
    noisy, _ = plrnn_teacher(4000, seed=3, noise_std=0.05)
    assert (noisy - clean).std() == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize(("kwargs", "match"), [({"noise_std": -1.0}, "noise_std"), ({"transient": -2}, "transient")])
def test_teacher_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plrnn_teacher(10, **kwargs)


# ---------------------------------------------------------------------------------------- load_array


def test_load_array_returns_float32(tmp_path):
    path = tmp_path / "good.npy"
    np.save(path, np.arange(12, dtype=np.int64).reshape(6, 2))
    x = load_array(path)
    assert x.dtype == np.float32 and x.shape == (6, 2)


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(10), r"bad\.npy: expected a 2-D array \(T, N\).*got shape \(10,\).*x\[:, None\]"),
        (np.zeros((2, 10, 3)), r"bad\.npy: expected a 2-D array.*got shape \(2, 10, 3\)"),
        (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]), r"bad\.npy: 1 NaN/inf entries \(first at index \(1, 0\)\)"),
        (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), r"bad\.npy: 1 NaN/inf"),
        (np.array([["a", "b"], ["c", "d"], ["e", "f"]]), r"bad\.npy: expected a real numeric array"),
        (np.zeros((3, 2), dtype=complex), r"bad\.npy: expected a real numeric array"),
    ],
    ids=["1d", "3d", "nan", "inf", "strings", "complex"],
)
def test_load_array_rejects_bad_files_naming_them(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=match):
        load_array(path)


def test_load_array_too_short_and_unreadable(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"short\.npy: 5 time steps, need at least 11"):
        load_array(path, min_steps=11)
    junk = tmp_path / "junk.npy"
    junk.write_text("not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy: cannot read"):
        load_array(junk)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy: cannot read"):
        load_array(obj)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_array(tmp_path / "missing.npy")


# ----------------------------------------------------------------------------------------- DataModule


def test_datamodule_batches_are_contiguous_windows_and_seeded():
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    dm = TimeSeriesDataModule(x, seq_len=9, batch_size=5, n_batches_per_epoch=4, seed=3)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(b.shape == (5, 10, 2) and b.dtype == torch.float32 for b in batches)
    for window in torch.cat(batches):
        start = int(window[0, 0]) // 2
        torch.testing.assert_close(window, torch.as_tensor(x[start : start + 10]))
    again = list(TimeSeriesDataModule(x, seq_len=9, batch_size=5, n_batches_per_epoch=4, seed=3).train_dataloader())
    assert all(torch.equal(a, b) for a, b in zip(batches, again))
    other = list(TimeSeriesDataModule(x, seq_len=9, batch_size=5, n_batches_per_epoch=4, seed=4).train_dataloader())
    assert not all(torch.equal(a, b) for a, b in zip(batches, other))
    assert dm.data_dim == 2


def test_datamodule_windows_never_cross_trajectories(tmp_path):
    first = np.zeros((12, 1))
    second = np.ones((30, 1))
    path = tmp_path / "second.npy"
    np.save(path, second)
    dm = TimeSeriesDataModule([first, path], seq_len=10, batch_size=64, n_batches_per_epoch=4, seed=0)
    windows = torch.cat(list(dm.train_dataloader()))
    assert all(len(torch.unique(w)) == 1 for w in windows)
    # 2 windows fit in the first trajectory and 20 in the second: both are sampled.
    assert set(torch.unique(windows[:, 0, 0]).tolist()) == {0.0, 1.0}


def test_datamodule_rejects_short_data_naming_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"seq_len=50 needs T >= seq_len \+ 1 = 51 time steps, got T = 50"):
        TimeSeriesDataModule(np.zeros((50, 2)), seq_len=50)
    path = tmp_path / "tiny.npy"
    np.save(path, np.zeros((20, 2)))
    with pytest.raises(ValueError, match=r"tiny\.npy: 20 time steps, need at least 31"):
        TimeSeriesDataModule(str(path), seq_len=30)
    with pytest.raises(ValueError, match="trajectory 1"):
        TimeSeriesDataModule([np.zeros((50, 2)), np.zeros((5, 2))], seq_len=10)
    with pytest.raises(ValueError, match=r"same dimension N, got \[2, 3\]"):
        TimeSeriesDataModule([np.zeros((50, 2)), np.zeros((50, 3))], seq_len=10)
    with pytest.raises(ValueError, match="at least one trajectory"):
        TimeSeriesDataModule([], seq_len=10)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": 2.5}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"n_batches_per_epoch": -1}, "n_batches_per_epoch"),
        ({"seed": -1}, "seed"),
        ({"num_workers": True}, "num_workers"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name} must be an int >= \d+, got {kwargs[name]!r}"):
        TimeSeriesDataModule(np.zeros((100, 2)), **kwargs)


# ------------------------------------------------------------------------- DSR measures (tests/test_metrics.py)


def test_data_reexports_the_metrics():
    from bifurcation_callback import metrics

    assert state_space_divergence is metrics.state_space_divergence
    assert power_spectrum_distance is metrics.power_spectrum_distance
    assert DIVERGENCE_METHODS is metrics.DIVERGENCE_METHODS
