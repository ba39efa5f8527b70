"""Loss landscapes (bifurcations/landscape.py), training in the plane (landscape_runs.py), the CLI's landscape.

The references here are written independently of the code under test: losses by stepping the cell's model
one step at a time in numpy, gradients by plain autograd on one cell's model, boundaries by exhaustive
enumeration of every cell and its neighbours, the cliff statistic on planted landscapes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bifurcation_callback.bifurcations import (
    RUN_PATH_FILE,
    LossLandscape,
    RunPath,
    boundary_cells,
    cliff_statistic,
    loss_landscape,
    path_crossings,
    scan,
)
from bifurcation_callback.cli import main as cli_main
from bifurcation_callback.cycles import exhaustive_cycles
from bifurcation_callback.data import plrnn_teacher
from bifurcation_callback.models import model_to_state
from problems import busy_plrnn, cell_model, paper_model, plrnn_1d

ROOT = Path(__file__).resolve().parent.parent


def _numpy_plrnn_step(z: np.ndarray, A: np.ndarray, W: np.ndarray, h: np.ndarray) -> np.ndarray:
    return A * z + (W * (1 - np.eye(len(A)))) @ np.maximum(z, 0.0) + h


def _reference_mse(model: torch.nn.Module, x: np.ndarray, *, alpha: float = 0.0) -> float:
    """The loss written out plainly: from z_1 = x_1, step the PLRNN (forced by alpha towards x_t), MSE vs x_2..x_T."""
    A, W, h = (getattr(model, name).detach().double().numpy() for name in ("A", "W", "h"))
    errors = []
    for sequence in x.reshape(-1, *x.shape[-2:]):
        z = sequence[0].copy()
        for t in range(1, len(sequence)):
            z = _numpy_plrnn_step((1 - alpha) * z + alpha * sequence[t - 1], A, W, h)
            errors.append((z - sequence[t]) ** 2)
    return float(np.mean(errors))


def _with_A(model: torch.nn.Module, a0: float, a1: float) -> torch.nn.Module:
    cell = copy.deepcopy(model).double()
    with torch.no_grad():
        cell.A.copy_(torch.tensor([a0, a1], dtype=torch.float64))
    return cell


@pytest.fixture(scope="module")
def teacher_data():
    x, teacher = plrnn_teacher(41)
    return x, teacher


# ------------------------------------------------------------------------------------------------ losses


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5])
def test_losses_equal_an_independent_stepwise_mse_at_sampled_cells(teacher_data, alpha):
    x, teacher = teacher_data
    grid = (np.linspace(0.3, 1.2, 7), np.linspace(-0.6, 0.9, 6))
    landscape = loss_landscape(teacher, x, "A[0]", "W[1,0]", grid, alpha=alpha, max_order=1)
    rng = np.random.default_rng(0)
    for i, j in zip(rng.integers(0, 7, 8), rng.integers(0, 6, 8)):
        cell = cell_model(teacher, {"A": ((0,), grid[0][i]), "W": ((1, 0), grid[1][j])})
        assert landscape.loss[i, j] == pytest.approx(_reference_mse(cell, x, alpha=alpha), rel=1e-10)


def test_several_sequences_and_seq_len_average_as_the_training_loss(teacher_data):
    x, teacher = teacher_data
    batch = np.stack([x, x[::-1].copy(), 0.5 * x])  # (3, 41, 2)
    grid = ([0.5, 0.9], [0.7, 1.1])
    landscape = loss_landscape(teacher, batch, "A[0]", "A[1]", grid, seq_len=20, max_order=1)
    assert landscape.seq_len == 20 and landscape.n_sequences == 3
    assert landscape.loss[1, 0] == pytest.approx(_reference_mse(_with_A(teacher, 0.9, 0.7), batch[:, :21]), rel=1e-10)


def test_losses_equal_dsrmodule_training_loss(teacher_data):
    """The landscape's loss is the loss DSRModule trains on (same forcing code), cell by cell."""
    from bifurcation_callback import DSRModule

    x, teacher = teacher_data
    grid = ([0.6, 0.84], [0.5, 0.96])
    for alpha, mode in ((0.0, "bptt"), (0.2, "gtf")):
        landscape = loss_landscape(teacher, x, "A[0]", "A[1]", grid, alpha=alpha, max_order=1)
        for i, j in ((0, 1), (1, 0)):
            module = DSRModule(_with_A(teacher, grid[0][i], grid[1][j]), training=mode, alpha=alpha)
            batch = torch.as_tensor(x)[None]
            with torch.no_grad():
                expected = float(torch.mean((module.rollout(batch) - batch[:, 1:]) ** 2))
            assert landscape.loss[i, j] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("gradient", ["model", "plane"])
def test_gradient_norms_equal_autograd_on_one_cell(teacher_data, gradient):
    x, teacher = teacher_data
    grid = (np.linspace(0.4, 1.0, 4), np.linspace(-0.5, 0.9, 3))
    landscape = loss_landscape(teacher, x, "A[0]", "W[1,0]", grid, alpha=0.1, gradient=gradient, max_order=1)
    for i, j in ((0, 0), (2, 1), (3, 2)):
        cell = cell_model(teacher, {"A": ((0,), grid[0][i]), "W": ((1, 0), grid[1][j])}).requires_grad_(True)
        data = torch.as_tensor(x)
        z = data[0]
        loss = 0.0
        for t in range(1, len(data)):
            z = cell.step(0.9 * z + 0.1 * data[t - 1])
            loss = loss + ((z - data[t]) ** 2).sum()
        loss = loss / ((len(data) - 1) * data.shape[1])
        loss.backward()
        if gradient == "model":
            norm = math.sqrt(sum(float((p.grad**2).sum()) for p in cell.parameters()))
        else:
            norm = math.hypot(float(cell.A.grad[0]), float(cell.W.grad[1, 0]))
        assert landscape.log_grad_norm[i, j] == pytest.approx(math.log10(norm), abs=1e-10)


def test_diverging_cells_are_infinite_and_not_bounded():
    model = plrnn_1d(0.5, 0.0)
    x = np.array([[1.0], [0.5], [0.25], [0.125]])
    landscape = loss_landscape(model, x, "A[0]", "h[0]", ([0.5, 1e120], [0.0]), max_order=1)
    assert landscape.loss[0, 0] == 0.0 and landscape.bounded[0, 0]
    assert landscape.loss[1, 0] == math.inf and not landscape.bounded[1, 0]


# ------------------------------------------------------------------------------------------------ boundaries


def _signature(model: torch.nn.Module, max_order: int) -> tuple:
    truth = exhaustive_cycles(model, max_order=max_order)
    return tuple(truth.counts()[k] for k in truth.orders) + tuple(truth.stable_counts()[k] for k in truth.orders)


def test_boundary_flags_equal_exhaustive_enumeration_of_cells_and_neighbours():
    base = busy_plrnn()
    values_a, values_b = np.linspace(-1.2, 1.2, 6), np.linspace(-2.5, 2.5, 5)
    data = np.zeros((5, 2))
    landscape = loss_landscape(base, data, "A[0]", "W[1,0]", (values_a, values_b), max_order=2)
    signatures = {
        (i, j): _signature(cell_model(base, {"A": ((0,), a), "W": ((1, 0), b)}), 2)
        for i, a in enumerate(values_a)
        for j, b in enumerate(values_b)
    }
    expected = np.zeros(landscape.boundary.shape, dtype=bool)
    for (i, j), signature in signatures.items():
        neighbours = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)) if (i + di, j + dj) in signatures]
        expected[i, j] = any(signatures[n] != signature for n in neighbours)
    assert 0 < expected.sum() < expected.size  # the grid holds curves, and cells away from them
    np.testing.assert_array_equal(landscape.boundary, expected)


def test_boundary_cells_mark_both_sides_of_a_curve():
    # z' = a z + 1 has a fixed point for every a != 1, stable iff |a| < 1: one change between 0.9 and 1.1.
    diagram = scan(plrnn_1d(0.5, 1.0), "A[0]", "h[0]", ([0.5, 0.7, 0.9, 1.1, 1.3], [1.0, 2.0]), max_order=1)
    assert boundary_cells(diagram)[:, 0].tolist() == [False, False, True, True, False]


# ------------------------------------------------------------------------------------------------ cliff statistic


def _ring(n: int = 60, radius: float = 18.0) -> np.ndarray:
    i, j = np.mgrid[:n, :n]
    distance = np.hypot(i - n / 2, j - n / 2)
    return np.abs(distance - radius) < 1.0


def test_cliff_statistic_finds_a_planted_cliff_on_the_curves():
    boundary = _ring()
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 0.1, boundary.shape) + np.where(boundary, 2.0, 0.0)
    result = cliff_statistic(values, boundary, n_permutations=499)
    assert result.ratio == pytest.approx(100.0, rel=0.1)  # 10 ** 2 planted, up to the noise's medians
    assert result.p_value == pytest.approx(1 / 500) and result.p_value_shift <= 0.02
    assert (result.n_boundary, result.n_rest, result.n_excluded) == (int(boundary.sum()), int((~boundary).sum()), 0)


def test_cliff_statistic_is_not_significant_when_the_cliffs_lie_elsewhere():
    boundary = _ring()
    cliffs = np.roll(boundary, 12, axis=0)  # the same ring, moved off the curves
    rng = np.random.default_rng(2)
    values = rng.normal(0.0, 0.1, boundary.shape) + np.where(cliffs & ~boundary, 2.0, 0.0)
    result = cliff_statistic(values, boundary, n_permutations=499)
    assert result.ratio < 1.1 and result.p_value > 0.05 and result.p_value_shift > 0.05


def test_cliff_statistic_of_a_flat_landscape_is_one_with_p_one():
    result = cliff_statistic(np.ones((20, 20)), _ring(20, 6.0), n_permutations=99)
    assert (result.ratio, result.p_value, result.p_value_shift) == (1.0, 1.0, 1.0)


def test_cliff_statistic_leaves_out_nan_and_cells_outside_within():
    boundary = _ring(30, 9.0)
    values = np.where(boundary, 1.0, 0.0)
    values[0, :5] = np.nan
    within = np.ones_like(boundary)
    within[-1] = False
    result = cliff_statistic(values, boundary, within=within, n_permutations=9)
    assert result.n_excluded == 5 + 30 and result.n_boundary + result.n_rest == 900 - 35
    assert result.ratio == pytest.approx(10.0)


def test_cliff_statistic_counts_overflowed_gradients_as_largest():
    boundary = np.zeros((10, 10), dtype=bool)
    boundary[3:7, 3:7] = True
    values = np.where(boundary, np.inf, 1.0)
    result = cliff_statistic(values, boundary, n_permutations=99)
    assert result.ratio == math.inf and result.p_value == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(log_grad_norm=np.zeros((3, 3)), boundary=np.zeros((3, 2), dtype=bool)), "one shape"),
        (dict(log_grad_norm=np.zeros((3, 3)), boundary=np.zeros((3, 3))), "boolean"),
        (dict(log_grad_norm=np.zeros(3), boundary=np.zeros(3, dtype=bool)), "2-D"),
        (dict(log_grad_norm=np.zeros((3, 3)), boundary=np.zeros((3, 3), dtype=bool), n_permutations=0), "n_permutations"),
        (dict(log_grad_norm=np.zeros((3, 3)), boundary=np.zeros((3, 3), dtype=bool), within=np.ones((2, 2), bool)), "within"),
    ],
)
def test_cliff_statistic_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cliff_statistic(**kwargs)


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(data=np.zeros((1, 2))), r"T >= 2"),
        (dict(data=np.zeros((2, 3, 4, 5))), r"shape \(T, N\) or \(B, T, N\)"),
        (dict(data=np.full((5, 2), np.nan)), "NaN"),
        (dict(data="data.npy"), "array of numbers"),
        (dict(data=np.zeros((5, 3))), "N=3 dimensions but the model has state_dim=2"),
        (dict(alpha=1.5), "alpha must be a finite number >= 0.0 and <= 1.0"),
        (dict(seq_len=10), "seq_len=10 needs sequences of at least 11 points"),
        (dict(gradient="all"), "gradient must be one of 'model', 'plane'"),
        (dict(param_b="A[0]"), "same entry"),
        (dict(param_b="B[0]"), "unknown parameter"),
        (dict(grid=([], [1.0])), "values_a is empty"),
    ],
)
def test_loss_landscape_rejects_bad_input(change, message):
    arguments = dict(model=paper_model(), data=np.zeros((5, 2)), param_a="A[0]", param_b="A[1]", grid=([0.1], [0.2]))
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        loss_landscape(**arguments)


def test_landscape_round_trips_through_json(teacher_data):
    x, teacher = teacher_data
    landscape = loss_landscape(teacher, x, "A[0]", "A[1]", ([0.5, 1e10], [0.9, 2.5]), max_order=2)
    assert np.isinf(landscape.loss[1]).all()  # 1e10 ** 40 overflows float64: non-finite values survive JSON too
    again = LossLandscape.from_dict(json.loads(json.dumps(landscape.to_dict())))
    np.testing.assert_array_equal(again.loss, landscape.loss)
    np.testing.assert_array_equal(again.log_grad_norm, landscape.log_grad_norm)
    np.testing.assert_array_equal(again.boundary, landscape.boundary)
    np.testing.assert_array_equal(again.diagram.counts, landscape.diagram.counts)
    assert again.cliff(n_permutations=9) == landscape.cliff(n_permutations=9)


# ------------------------------------------------------------------------------------------------ paths


def _linear_landscape() -> LossLandscape:
    # z' = a z + 1: a stable fixed point for a < 1, an unstable one for a > 1; cells at 0.55, 0.65, .., 1.45.
    return loss_landscape(plrnn_1d(0.5, 1.0), np.ones((4, 1)), "A[0]", "h[0]", (np.linspace(0.55, 1.45, 10), [1.0]),
                          max_order=1)


def _run(a: np.ndarray, loss: np.ndarray, **fields) -> RunPath:
    n = len(a)
    return RunPath("A[0]", "h[0]", np.arange(n), a, np.ones(n), loss, np.ones(n), **fields)


def test_path_crossings_pair_planted_jumps_with_the_crossings():
    landscape = _linear_landscape()
    # Back and forth across a = 1 (between the cells at 0.95 and 1.05): crossings at steps 50, 100, 150, 200;
    # the loss is 8 times higher on the far side, so every crossing comes with a jump at its step.
    steps = np.arange(250)
    far_side = (steps // 50) % 2 == 1
    a = np.where(far_side, 1.2, 0.8) + 0.001 * np.sin(steps)
    loss = np.exp(-0.002 * steps) * np.where(far_side, 8.0, 1.0)
    stats = path_crossings(landscape, _run(a, loss, name="planted"))
    assert stats.crossing_steps == (50, 100, 150, 200) and [j.step for j in stats.loss_jumps] == [50, 100, 150, 200]
    row = stats.to_dict()
    assert row["crossings_with_jump"] == 1.0 and row["jumps_at_crossing"] == 1.0 and row["p_value"] < 0.01
    # One crossing with one jump is no evidence: a random step lands within 5 steps of it 11 times in 250.
    single = path_crossings(landscape, _run(np.where(steps < 50, 0.8, 1.2), np.where(steps < 50, 1.0, 8.0)))
    assert single.to_dict()["jumps_at_crossing"] == 1.0 and single.to_dict()["p_value"] > 0.02


def test_path_crossings_report_a_jump_away_from_crossings_as_unexplained():
    landscape = _linear_landscape()
    a = np.linspace(0.6, 0.9, 120)  # never crosses
    loss = np.exp(-0.01 * np.arange(120)) * np.where(np.arange(120) < 80, 1.0, 8.0)
    stats = path_crossings(landscape, _run(a, loss))
    assert stats.n_crossings == 0 and len(stats.loss_jumps) == 1
    assert stats.to_dict()["jumps_at_crossing"] == 0.0 and stats.to_dict()["crossings_with_jump"] is None


def test_loss_floor_silences_the_jitter_of_a_converged_run():
    landscape = _linear_landscape()
    steps = np.arange(300)
    loss = np.maximum(np.exp(-0.2 * steps), 1e-11)  # smooth descent to 1e-11 by step 127, then
    loss[150::15] *= 30.0  # one-step excursions of 30x, as Adam's jitter around an exact optimum
    run = _run(np.full(300, 0.8), loss)
    assert [jump.step for jump in path_crossings(landscape, run).loss_jumps][:2] == [150, 151]
    assert path_crossings(landscape, run, loss_floor=1e-6).loss_jumps == ()


def test_points_off_the_grid_count_no_crossing():
    landscape = _linear_landscape()
    a = np.array([0.8, 0.9, 3.0, 1.2, 1.3])  # leaves the grid (0.5 .. 1.5) at step 2
    stats = path_crossings(landscape, _run(a, np.ones(5)), warmup_steps=0)
    assert stats.n_outside == 1 and stats.crossing_steps == ()


def test_path_crossings_refuse_runs_of_other_parameters_or_models():
    landscape = _linear_landscape()
    other_axes = RunPath("A[0]", "W[0,0]", np.arange(2), np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="trained A\\[0\\] and W\\[0,0\\], but the landscape is over A\\[0\\] and h\\[0\\]"):
        path_crossings(landscape, other_axes)
    base = busy_plrnn()
    plane = loss_landscape(base, np.zeros((3, 2)), "A[0]", "W[1,0]", ([0.1, 0.2], [0.3]), max_order=1)
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.A[0] += 1.0  # one of the plane's entries: allowed
        other.W[1, 0] += 1.0
    same_plane = RunPath("A[0]", "W[1,0]", np.arange(2), np.ones(2), np.ones(2), np.ones(2), np.ones(2),
                         start_model=model_to_state(other))
    assert path_crossings(plane, same_plane, warmup_steps=0).n_steps == 2
    with torch.no_grad():
        other.h[1] += 0.5
    moved = RunPath("A[0]", "W[1,0]", np.arange(2), np.ones(2), np.ones(2), np.ones(2), np.ones(2),
                    start_model=model_to_state(other), name="moved")
    with pytest.raises(ValueError, match="moved started from a model whose h differs"):
        path_crossings(plane, moved)


def test_run_folders_round_trip_and_bad_folders_are_named(tmp_path):
    run = _run(np.array([0.7, 0.8]), np.array([1.0, np.inf]), method="gtf", alpha=0.1)
    run.save(tmp_path / "run")
    (tmp_path / "run" / "events.jsonl").write_text(
        json.dumps({"step": 0, "events": [{"step": 0, "kind": "appearance"}]}) + "\n" + json.dumps({"step": 1}) + "\n"
    )
    loaded = RunPath.load(tmp_path / "run")
    assert loaded.loss[1] == math.inf and loaded.method == "gtf" and loaded.events == ({"step": 0, "kind": "appearance"},)
    with pytest.raises(ValueError, match=f"is not a run folder: it has no {RUN_PATH_FILE}; a run folder holds"):
        RunPath.load(tmp_path)
    with pytest.raises(ValueError, match="no such folder"):
        RunPath.load(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RUN_PATH_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not a run path"):
        RunPath.load(tmp_path / "bad")
    with pytest.raises(ValueError, match="one length"):
        RunPath("A[0]", "h[0]", np.arange(3), np.ones(2), np.ones(3), np.ones(3), np.ones(3))


# ------------------------------------------------------------------------------------------------ training in the plane


def test_training_in_the_plane_follows_the_landscape(tmp_path, teacher_data):
    from bifurcation_callback.landscape_runs import train_in_plane

    x, teacher = teacher_data
    folders = train_in_plane(teacher, x, "A[0]", "A[1]", [[0.5, 0.6]], out_dir=tmp_path, n_steps=6, lr=0.05,
                             max_order=2, progress=False)
    assert [folder.name for folder in folders] == ["bptt_start00", "gtf_start00"]
    for folder in folders:
        run = RunPath.load(folder)
        assert run.steps.tolist() == list(range(6)) and (run.a[0], run.b[0]) == (0.5, 0.6)
        assert run.monitor_summary is not None and run.monitor_summary["n_monitored_steps"] == 6
        # The recorded loss at each step is the landscape's loss at the recorded point (same data, same forcing).
        alpha = run.alpha or 0.0
        for k in (0, 3, 5):
            cell = loss_landscape(teacher, x, "A[0]", "A[1]", ([run.a[k]], [run.b[k]]), alpha=alpha, max_order=1)
            assert run.loss[k] == pytest.approx(cell.loss[0, 0], rel=1e-10)
        # Only the two entries moved: the run's start model is the teacher there.
        assert np.abs(np.diff(run.a)).max() > 0 and run.start_model["params"]["W"] == model_to_state(teacher)["params"]["W"]


# ------------------------------------------------------------------------------------------------ plot and CLI


def test_plot_draws_both_panels_with_curves_and_paths():
    from matplotlib.collections import LineCollection

    from bifurcation_callback.plots import plot_loss_landscape

    landscape = _linear_landscape()
    run = _run(np.linspace(0.6, 1.4, 30), np.exp(-0.1 * np.arange(30)), method="bptt")
    figure = plot_loss_landscape(landscape, [run])
    panels = figure.axes[:2]
    assert [ax.get_xlabel() for ax in panels] == ["A[0]", "A[0]"]
    for ax in panels:
        assert any(isinstance(c, LineCollection) and len(c.get_segments()) for c in ax.collections)
        assert any(len(line.get_xdata()) == 30 for line in ax.get_lines())
    with pytest.raises(ValueError, match="one PathCrossings per run"):
        plot_loss_landscape(landscape, [run], statistics=[])


def _cli(*args: str) -> int:
    return cli_main(["landscape", *args])


def test_cli_writes_the_landscape_json_and_png(tmp_path, teacher_data, capsys):
    x, teacher = teacher_data
    np.save(tmp_path / "data.npy", x)
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(teacher)))
    run = RunPath("A[0]", "A[1]", np.arange(3), np.array([0.5, 0.6, 0.7]), np.array([0.5, 0.6, 0.7]), np.ones(3),
                  np.ones(3), method="bptt", start_model=model_to_state(teacher))
    run.save(tmp_path / "run")
    status = _cli(str(model_path), "--data", str(tmp_path / "data.npy"), "--param-a", "A[0]", "--range-a", "0", "1.5",
                  "--param-b", "A[1]", "--range-b", "0", "1.5", "--n", "6", "--seq-len", "30", "--runs", str(tmp_path / "run"),
                  "--out", str(tmp_path / "out" / "land"), "--no-progress")
    assert status == 0
    result = json.loads((tmp_path / "out" / "land.json").read_text())
    assert len(result["a_values"]) == len(result["b_values"]) == 6
    for key in ("loss", "log_grad_norm", "boundary"):
        assert np.shape(result[key]) == (6, 6), key
    assert set(result["cliff"]) >= {"ratio", "p_value"} and result["seq_len"] == 30
    assert result["runs"][0]["path"]["a"] == [0.5, 0.6, 0.7] and "n_crossings" in result["runs"][0]["crossings"]
    # loss[i][j] belongs to a_values[i], b_values[j]
    i, j = 4, 1
    cell = _with_A(teacher, result["a_values"][i], result["b_values"][j])
    assert float(result["loss"][i][j]) == pytest.approx(_reference_mse(cell, x[:31]), rel=1e-10)
    assert (tmp_path / "out" / "land.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{missing}"], "no such file"),
        (["--data", "{text}"], "not a .npy array"),
        (["--n", "0"], "--n must be >= 1"),
        (["--alpha", "2"], "alpha must be a finite number"),
        (["--runs", "{folder}"], "is not a run folder"),
        (["--param-b", "A[0]"], "same entry"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, teacher_data, capsys, args, message):
    x, teacher = teacher_data
    np.save(tmp_path / "data.npy", x)
    (tmp_path / "text.npy").write_text("no array")
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(teacher)))
    base = {"--data": str(tmp_path / "data.npy"), "--param-a": "A[0]", "--param-b": "A[1]", "--n": "3"}
    names = {"missing": str(tmp_path / "missing.npy"), "text": str(tmp_path / "text.npy"), "folder": str(tmp_path)}
    given = [arg.format(**names) for arg in args]
    for option, value in base.items():
        if option not in given:
            given += [option, value]
    status = _cli(str(model_path), *given, "--range-a", "0", "1", "--range-b", "0", "1", "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.startswith("bifurcation-callback landscape: error:")
    assert len(err.strip().splitlines()) == 1


def test_cli_help_names_what_a_run_folder_holds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli("--help")
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "path.json" in out and "events.jsonl" in out and "--alpha" in out


def test_landscape_command_does_not_import_lightning(tmp_path, teacher_data):
    x, teacher = teacher_data
    np.save(tmp_path / "data.npy", x)
    (tmp_path / "model.json").write_text(json.dumps(model_to_state(teacher)))
    code = (
        "import sys\nfrom bifurcation_callback.cli import main\n"
        "assert main(['landscape', sys.argv[1], '--data', sys.argv[2], '--param-a', 'A[0]', '--range-a', '0', '1', "
        "'--param-b', 'A[1]', '--range-b', '0', '1', '--n', '3', '--out', sys.argv[3], '--no-progress']) == 0\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'tensorboard')]\n"
        "assert not bad, bad[:5]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "model.json"), str(tmp_path / "data.npy"), str(tmp_path / "o")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
