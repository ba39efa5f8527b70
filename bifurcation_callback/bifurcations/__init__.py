"""Bifurcations of piecewise-linear RNNs: match cycle sets, classify changes, localise them, scan 2-D grids.

Five modules, one job each:

* ``events`` — the closed vocabulary (``BIFURCATION_KINDS``, ``CROSSINGS``, ...), ``Match``,
  ``BifurcationEvent``, ``match``, ``classify`` and ``detect_bifurcations``;
* ``localize`` — ``Localization`` and ``localize``: bisection between two weight snapshots;
* ``scan`` — ``BifurcationDiagram`` and ``scan``: batched 2-D parameter sweeps (plot them with
  ``bifurcation_callback.plots.plot_bifurcation_diagram``);
* ``landscape`` — ``LossLandscape`` and ``loss_landscape``: loss and gradient norm on such a grid with its
  bifurcation curves, and ``cliff_statistic`` (plot with ``bifurcation_callback.plots.plot_loss_landscape``);
* ``paths`` — training paths across the curves (``RunPath``, ``path_crossings``).

Every public name is re-exported here, so ``from bifurcation_callback.bifurcations import scan`` works.
None of these modules imports Lightning or TensorBoard; every function is pure.

Examples
--------
>>> from bifurcation_callback.bifurcations import BIFURCATION_KINDS
>>> "border_collision" in BIFURCATION_KINDS
True
"""

from __future__ import annotations

from .events import (
    BIFURCATION_KINDS,
    CROSSING_RTOL,
    CROSSINGS,
    DEGENERATE_EIGENVALUE_GAP,
    DEGENERATE_NORM_FACTOR,
    MATCH_STATUSES,
    MATCHED_BY,
    REAL_TOLERANCE,
    BifurcationEvent,
    Comparison,
    Match,
    classify,
    compare_snapshots,
    detect_bifurcations,
    match,
)
from .landscape import (
    BOUNDED_FACTOR,
    LANDSCAPE_GRADIENTS,
    CliffStatistic,
    LossLandscape,
    boundary_cells,
    cliff_statistic,
    loss_landscape,
    signature_changes,
)
from .localize import EXHAUSTIVE_LIMIT, Localization, localize
from .paths import RUN_EVENTS_FILE, RUN_PATH_FILE, RUN_SUMMARY_FILE, PathCrossings, RunPath, path_crossings
from .scan import SCAN_EXHAUSTIVE_LIMIT, SCAN_METHODS, BifurcationDiagram, parse_param_spec, scan

__all__ = [
    "BIFURCATION_KINDS",
    "CROSSINGS",
    "MATCH_STATUSES",
    "MATCHED_BY",
    "CROSSING_RTOL",
    "DEGENERATE_EIGENVALUE_GAP",
    "DEGENERATE_NORM_FACTOR",
    "REAL_TOLERANCE",
    "EXHAUSTIVE_LIMIT",
    "SCAN_METHODS",
    "SCAN_EXHAUSTIVE_LIMIT",
    "Match",
    "BifurcationEvent",
    "Localization",
    "BifurcationDiagram",
    "match",
    "classify",
    "Comparison",
    "compare_snapshots",
    "detect_bifurcations",
    "localize",
    "scan",
    "parse_param_spec",
    "BOUNDED_FACTOR",
    "LANDSCAPE_GRADIENTS",
    "RUN_PATH_FILE",
    "RUN_EVENTS_FILE",
    "RUN_SUMMARY_FILE",
    "LossLandscape",
    "CliffStatistic",
    "RunPath",
    "PathCrossings",
    "loss_landscape",
    "signature_changes",
    "boundary_cells",
    "cliff_statistic",
    "path_crossings",
]
