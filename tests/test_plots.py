"""Figures render headless (Agg), show what they claim, and reject wrong input."""

from __future__ import annotations

import numpy as np
import pytest

from bifurcation_callback.bifurcations import BIFURCATION_KINDS, BifurcationDiagram, scan
from bifurcation_callback.cycles import CycleSet, exhaustive_cycles
from bifurcation_callback.plots import KIND_COLOURS, plot_bifurcation_diagram, plot_cycles
from problems import FLIP_1D


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
