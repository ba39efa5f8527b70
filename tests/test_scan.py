"""Tests for bifurcation_callback.bifurcations.scan: 2-D grids against closed forms and cell-by-cell searches."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from bifurcation_callback.bifurcations import BifurcationDiagram, parse_param_spec, scan
from bifurcation_callback.cycles import exhaustive_cycles, find_cycles
from bifurcation_callback.models import PLRNN, ShallowPLRNN, model_to_state
from problems import DEVICES, DTYPES, KNOWN_PROBLEMS, busy_plrnn, cell_model, tent


def test_scan_reproduces_the_analytic_existence_region():
    # tent(a, 1, mu): tau_L = a, tau_R = a + 1.  z_L = mu / (1 - a) is real iff z_L <= 0; z_R = mu / (1 - a - 1)
    # = -mu / a is real iff z_R > 0.  Stable iff |tau| < 1.  The grid avoids a in {-2, -1, 0, 1} and mu = 0.
    a_values = np.linspace(-2.45, 1.55, 9)
    mu_values = np.linspace(-1.0, 1.0, 8)
    diagram = scan(tent(0.0, 1.0, 0.0), "A[0]", "h1[0]", (a_values, mu_values), max_order=1)
    assert diagram.method == "exhaustive" and diagram.counts.shape == (9, 8, 1)
    for i, a in enumerate(a_values):
        for j, mu in enumerate(mu_values):
            left = mu / (1 - a) <= 0
            right = -mu / a > 0
            expected = int(left) + int(right)
            expected_stable = int(left and abs(a) < 1) + int(right and abs(a + 1) < 1)
            assert diagram.counts[i, j, 0] == expected, (a, mu)
            assert diagram.stable[i, j, 0] == expected_stable, (a, mu)
    assert 0 < diagram.counts.sum() < 2 * diagram.counts.size  # the region is non-trivial


def test_scan_agrees_with_find_cycles_cell_by_cell():
    base = busy_plrnn()
    a_values, b_values = np.linspace(-1.0, 1.2, 8), np.linspace(-0.9, 1.1, 8)
    diagram = scan(base, "A[0]", "W[1,0]", (a_values, b_values), max_order=3)
    for i, a in enumerate(a_values):
        for j, b in enumerate(b_values):
            model = cell_model(base, {"A": ((0,), a), "W": ((1, 0), b)})
            found = find_cycles(model, max_order=3, n_starts=32, inner=10, outer=2)
            assert diagram.counts[i, j].tolist() == list(found.counts().values()), (a, b)
            assert diagram.stable[i, j].tolist() == list(found.stable_counts().values()), (a, b)
    assert diagram.counts[..., 1].any()  # some cell has a 2-cycle, so the comparison is not vacuous


def test_scan_moving_switching_planes_and_scyfi_method_agree_with_exhaustive():
    torch.manual_seed(1)
    base = ShallowPLRNN(latent_dim=2, hidden_dim=3, weight_scale=1.2).double()
    grid = (np.linspace(-1.0, 1.0, 3), np.linspace(-1.5, 1.5, 3))
    exact = scan(base, "h2[0]", "W1[0,1]", grid, max_order=2)
    heuristic = scan(base, "h2[0]", "W1[0,1]", grid, max_order=2, method="scyfi", finder_kwargs={"n_starts": 64})
    assert exact.method == "exhaustive" and heuristic.method == "scyfi"
    for i, h2 in enumerate(grid[0]):
        for j, w in enumerate(grid[1]):
            model = cell_model(base, {"h2": ((0,), h2), "W1": ((0, 1), w)})
            truth = exhaustive_cycles(model, max_order=2)
            assert exact.counts[i, j].tolist() == list(truth.counts().values())
            assert exact.stable[i, j].tolist() == list(truth.stable_counts().values())
    np.testing.assert_array_equal(exact.counts, heuristic.counts)


def test_diagram_round_trips_through_json(tmp_path):
    diagram = scan(busy_plrnn(), "A[0]", "A[1]", ([0.1, 0.5], [0.2, 0.3, 0.4]), max_order=2)
    restored = BifurcationDiagram.load(diagram.save(tmp_path / "d.json"))
    assert restored.to_dict() == diagram.to_dict()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("B[0]", "unknown parameter in spec 'B\\[0\\]'; PLRNN has parameters A \\(2,\\), W \\(2, 2\\), h \\(2,\\)"),
        ("A[2]", "out of range"),
        ("W[0]", "needs 2 indices"),
        ("A[0", "cannot parse"),
        ("W[1,1]", "masked diagonal"),
    ],
)
def test_bad_param_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        scan(PLRNN(2), spec, "h[0]", ([0.0], [0.0]))
    with pytest.raises(ValueError, match=message):
        parse_param_spec(PLRNN(2), spec)


def test_bad_grids_and_options():
    with pytest.raises(ValueError, match="values_a is empty"):
        scan(PLRNN(2), "A[0]", "A[1]", ([], [0.1]))
    with pytest.raises(ValueError, match="values_b is empty"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], np.zeros(0)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        scan(PLRNN(2), "A[0]", "A[1]", ([np.nan], [0.1]))
    with pytest.raises(ValueError, match="same entry"):
        scan(PLRNN(2), "A[0]", "A[0]", ([0.1], [0.1]))
    with pytest.raises(ValueError, match="method must be one of"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], [0.1]), method="fast")
    with pytest.raises(TypeError, match="nn.Module"):
        scan(object(), "A[0]", "A[1]", ([0.1], [0.1]))
    with pytest.raises(ValueError, match="dtype must be"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], [0.1]), dtype=torch.float16)


def test_scan_rejects_finder_kwargs_it_sets_itself():
    with pytest.raises(ValueError, match=r"finder_kwargs must not set \['orders'\]"):
        scan(PLRNN(2), "A[0]", "A[1]", ([0.1], [0.2]), method="scyfi", finder_kwargs={"orders": [16]})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["exhaustive", "scyfi"])
def test_scan_on_dtype_and_device(dtype, device, method):
    # tent(a, 1, mu) as in test_scan_reproduces_the_analytic_existence_region, on a coarser grid.
    a_values, mu_values = np.array([-1.45, -0.45, 0.55]), np.array([-0.75, 0.5])
    diagram = scan(
        tent(0.0, 1.0, 0.0), "A[0]", "h1[0]", (a_values, mu_values), max_order=2, method=method, dtype=dtype,
        device=device, finder_kwargs={"n_starts": 32} if method == "scyfi" else None,
    )
    reference = scan(tent(0.0, 1.0, 0.0), "A[0]", "h1[0]", (a_values, mu_values), max_order=2)
    assert diagram.method == method
    np.testing.assert_array_equal(diagram.counts, reference.counts)
    np.testing.assert_array_equal(diagram.stable, reference.stable)
    assert reference.counts[..., 0].any() and reference.counts[..., 1].any()  # fixed points and 2-cycles present


# Two scanned entries per known problem; a 1 x 1 grid at the model's own values must count its cycles.
SCAN_AXES = {
    "flip_1d": ("A[0]", "h1[0]"),
    "two_fixed_points_1d": ("A[0]", "h1[0]"),
    "plrnn_2d": ("A[0]", "h[1]"),
    "bistable_2d": ("W[0,1]", "h[1]"),
}


def _own_value(model: torch.nn.Module, spec: str) -> float:
    name, index = parse_param_spec(model, spec)
    return float(dict(model.named_parameters())[name].detach()[index])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", KNOWN_PROBLEMS, ids=lambda p: p.name)
def test_scan_at_a_known_problem_counts_its_cycles(problem, dtype, device):
    model = problem.build()
    spec_a, spec_b = SCAN_AXES[problem.name]
    grid = ([_own_value(model, spec_a)], [_own_value(model, spec_b)])
    diagram = scan(model, spec_a, spec_b, grid, max_order=problem.max_order, dtype=dtype, device=device)
    assert diagram.method == "exhaustive"
    orders = range(1, problem.max_order + 1)
    expected = collections.Counter(c.order for c in problem.cycles)
    expected_stable = collections.Counter(c.order for c in problem.cycles if c.kind == "stable")
    assert diagram.counts[0, 0].tolist() == [expected[k] for k in orders]
    assert diagram.stable[0, 0].tolist() == [expected_stable[k] for k in orders]


def test_cli_scan_writes_png_and_json(tmp_path, capsys):
    from bifurcation_callback.cli import main

    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(busy_plrnn())))
    out = tmp_path / "out" / "diagram"
    status = main(
        [
            "scan", str(model_path), "--param-a", "A[0]", "--range-a", "-1", "1", "--param-b", "h[1]",
            "--range-b", "-1", "1", "--n", "5", "--max-order", "2", "--out", str(out), "--no-progress",
        ]
    )
    assert status == 0
    diagram = BifurcationDiagram.load(tmp_path / "out" / "diagram.json")
    assert diagram.counts.shape == (5, 5, 2) and diagram.param_b == "h[1]"
    assert (tmp_path / "out" / "diagram.png").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--param-a", "Q[0]"], "unknown parameter in spec 'Q[0]'"), (["--n", "0"], "--n must be >= 1")],
)
def test_cli_scan_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    from bifurcation_callback.cli import main

    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(model_to_state(busy_plrnn())))
    args = ["scan", str(model_path), "--param-a", "A[0]", "--range-a", "-1", "1", "--param-b", "A[1]", "--range-b", "0", "1"]
    assert main(args + extra + ["--out", str(tmp_path / "d"), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bifurcation-callback scan: error:") and message in error and "\n" not in error
