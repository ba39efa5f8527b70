"""Figures render headless (Agg), show what they claim, and reject wrong input."""

from __future__ import annotations

import numpy as np
import pytest

from bifurcation_callback.bifurcations import BIFURCATION_KINDS, BifurcationDiagram, scan
from bifurcation_callback.cycles import CycleSet, exhaustive_cycles
from bifurcation_callback.plots import (
    KIND_COLOURS,
    plot_bifurcation_diagram,
    plot_cycles,
    plot_timeline,
    sample_orbits,
)
from problems import FLIP_1D, plrnn


def test_plot_cycles_marks_stable_filled_and_unstable_open(tmp_path):
    cycles = exhaustive_cycles(FLIP_1D.build(), max_order=2)
    assert cycles.counts() == {1: 1, 2: 1}
    ax = plot_cycles(cycles)
    labels = sorted(t.get_text() for t in ax.get_legend().get_texts())
    assert labels == ["2-cycle (stable)", "fixed point (unstable)"]
    filled = [len(c.get_facecolors()) > 0 and c.get_facecolors()[0][3] > 0 for c in ax.collections]
    assert sorted(filled) == [False, True]
    path = tmp_path / "cycles.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000


def test_plot_cycles_empty_set_and_existing_axes():
    from bifurcation_callback.plots import new_axes

    ax = new_axes()
    assert plot_cycles(CycleSet(orders=(1,)), ax=ax) is ax
    assert any("no cycles" in t.get_text() for t in ax.texts)


def test_diagram_plot_shows_stable_counts_and_boundaries(tmp_path):
    model = FLIP_1D.build()
    diagram = scan(model, "W1[0,0]", "h1[0]", (np.linspace(-2.5, 0.0, 6), np.linspace(0.5, 1.5, 4)), max_order=2)
    ax = plot_bifurcation_diagram(diagram)
    image = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(image), diagram.total_stable.T)
    assert ax.get_xlabel() == "W1[0,0]" and ax.get_ylabel() == "h1[0]"
    assert len(ax.collections) > 0  # contour lines where the number of cycles changes
    path = tmp_path / "diagram.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
    one_order = plot_bifurcation_diagram(diagram, order=2, colorbar=False)
    np.testing.assert_array_equal(np.asarray(one_order.get_images()[0].get_array()), diagram.stable[..., 1].T)


def test_plot_functions_reject_wrong_input():
    with pytest.raises(TypeError, match="CycleSet"):
        plot_cycles([])
    with pytest.raises(TypeError, match="BifurcationDiagram"):
        plot_bifurcation_diagram({})
    diagram = BifurcationDiagram(
        "PLRNN", "A[0]", "A[1]", np.zeros(1), np.zeros(1), (1,), np.zeros((1, 1, 1), int), np.zeros((1, 1, 1), int)
    )
    with pytest.raises(ValueError, match="order 3 was not scanned"):
        plot_bifurcation_diagram(diagram, order=3)
    plot_bifurcation_diagram(diagram)  # a single cell draws without contour lines


def test_kind_colours_come_from_the_bifurcation_vocabulary():
    # One list of kinds (BIFURCATION_KINDS), read here too: no kind without a colour, no colour without a kind.
    assert tuple(KIND_COLOURS) == BIFURCATION_KINDS
    assert len(set(KIND_COLOURS.values())) == len(BIFURCATION_KINDS)


def test_core_modules_import_neither_plots_nor_lightning():
    # Data flows one way (models -> _scyfi -> cycles -> bifurcations -> plots); the core needs no Trainer.
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "bifurcation_callback"
    core = [package / name for name in ("models.py", "_scyfi.py", "cycles.py", "metrics.py")]
    core += sorted((package / "bifurcations").glob("*.py"))
    forbidden = ("lightning", "pytorch_lightning", "tensorboard", "matplotlib", "plots", "callback", "dashboard")
    for path in core:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                assert not any(part in forbidden for part in parts), f"{path.name} imports {name}"


def linear_plrnn(a: float):
    """z' = a z + h with W = 0 (a linear map): one fixed point, a sink for a < 1, a source for a > 1."""
    return plrnn(A=[a, a], W=[[0.0, 0.0], [0.0, 0.0]], h=[0.3, -0.2])


def test_sample_orbits_start_at_stable_cycles_and_fixed_random_states():
    from bifurcation_callback.cycles import find_cycles

    model = linear_plrnn(0.9)
    cycles = find_cycles(model, max_order=1)
    assert cycles.n_stable == 1
    orbits = sample_orbits(model, cycles, n_random=3, n_steps=40, n_transient=10)
    assert len(orbits) == 4 and all(o.shape == (31, 2) for o in orbits)
    np.testing.assert_allclose(orbits[0], np.repeat(cycles.cycles[0].points, 31, axis=0), atol=1e-12)
    again = sample_orbits(model, cycles, n_random=3, n_steps=40, n_transient=10)
    np.testing.assert_array_equal(np.stack(orbits), np.stack(again))  # the same states at every call
    assert sample_orbits(model, cycles, n_random=0, n_steps=5, n_transient=0)[0].shape == (6, 2)


def test_sample_orbits_drop_diverging_orbits():
    from bifurcation_callback.cycles import find_cycles

    model = linear_plrnn(1.5)  # the fixed point is a source: random orbits run off to infinity
    cycles = find_cycles(model, max_order=1)
    assert cycles.n_stable == 0
    assert sample_orbits(model, cycles, n_random=4, n_steps=200, n_transient=0) == []


def test_plot_cycles_draws_orbits_and_training_data_under_the_cycles(tmp_path):
    import torch

    cycles = exhaustive_cycles(FLIP_1D.build(), max_order=2)
    orbit = np.column_stack([np.linspace(-1, 1, 50), np.zeros(50)])
    data = torch.randn(30, 2)
    data[3] = float("nan")  # non-finite states are left out, not drawn at the origin
    ax = plot_cycles(cycles, orbits=[orbit, orbit[:10]], reference=data)
    orbit_lines = [line for line in ax.lines if line.get_color() == "tab:cyan"]
    assert len(orbit_lines) == 2 and np.array_equal(orbit_lines[0].get_xdata(), orbit[:, 0])
    (scatter,) = [c for c in ax.collections if c.get_label() == "training data"]
    assert len(scatter.get_offsets()) == 29
    assert all(line.get_zorder() < 3 for line in orbit_lines) and scatter.get_zorder() < 3
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"orbits", "training data", "2-cycle (stable)"} <= labels
    with pytest.raises(ValueError, match="orbits must hold arrays of shape"):
        plot_cycles(cycles, orbits=[np.zeros(5)])
    path = tmp_path / "state_space.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000


def test_timeline_draws_qualitative_events_as_lines_and_border_crossings_as_ticks(tmp_path):
    crossing = {"kind": "border_collision", "stable_before": True, "stable_after": True}
    records = [
        {"step": s, "loss": 1.0 / (1 + s), "n_cycles": {"1": 1}, "events": []} for s in range(0, 40)
    ]
    records[10]["events"] = [{"step": 10, "kind": "appearance"}]
    records[20]["events"] = [{"step": 20, **crossing}, {"step": 20, "kind": "stability_change"}]
    records[30]["events"] = [{"step": 30, **crossing}]
    ax = plot_timeline(records, [{"step": 30}])
    full_lines = sorted(line.get_xdata()[0] for line in ax.lines if list(line.get_ydata()) == [0, 1])
    assert full_lines == [10, 20]  # axvline: the qualitative events only
    (ticks,) = [c for c in ax.collections if c.get_label() == "border crossing (stability unchanged)"]
    segments = ticks.get_segments()
    assert sorted(seg[0][0] for seg in segments) == [20, 30]
    assert all(seg[0][1] == 0.0 and seg[1][1] <= 0.05 for seg in segments)  # short, on the bottom edge
    path = tmp_path / "timeline.png"
    ax.figure.savefig(path)
    assert path.stat().st_size > 1000
