"""bifurcation-callback: exact cycle finding and bifurcation tracking for piecewise-linear RNNs.

The handful of names most users need; everything else lives in the submodules
(``models``, ``cycles``, ``attractors``, ``bifurcations``, ``tracking``, ``loss_jumps``, ``callback``,
``dashboard``, ``plots``, ``forcing``, ``training``, ``landscape_runs``, ``data``, ``metrics``, ``cli``).
``import bifurcation_callback`` does not import Lightning: the Lightning-bound names (``BifurcationMonitor``,
``DSRModule``, ``TimeSeriesDataModule``, the data helpers and ``train_in_plane``) and the offline analysis of
checkpoints (``analyse_checkpoints``) are imported on first use.

Examples
--------
>>> from bifurcation_callback import PLRNN, find_cycles
>>> cycles = find_cycles(PLRNN(2), max_order=2)
>>> cycles.orders
(1, 2)
"""

import importlib

from .attractors import ATTRACTOR_KINDS, Attractor, AttractorReport, find_attractors, lyapunov_exponents
from .bifurcations import (
    BIFURCATION_KINDS,
    BifurcationDiagram,
    BifurcationEvent,
    CliffStatistic,
    Localization,
    LossLandscape,
    PathCrossings,
    RunPath,
    boundary_cells,
    classify,
    cliff_statistic,
    detect_bifurcations,
    localize,
    loss_landscape,
    match,
    path_crossings,
    scan,
)
from .cycles import Cycle, CycleSet, FinderStats, exhaustive_cycles, find_cycles
from .loss_jumps import Correlation, LossJump, correlate, detect_loss_jumps
from .models import (
    ALRNN,
    PLRNN,
    ClippedShallowPLRNN,
    PiecewiseLinear,
    ShallowPLRNN,
    check_protocol,
    model_from_state,
    model_to_state,
)

__version__ = "0.1.0"

# Names whose modules import Lightning, or the monitor's whole pipeline (offline): loaded on first access
# (PEP 562), so that the models, the cycle finder, the bifurcation analysis and the CLI's find / scan start fast
# and without Lightning.
_LAZY: dict[str, str] = {
    "analyse_checkpoints": "offline",
    "BifurcationMonitor": "callback",
    "DSRModule": "training",
    "TimeSeriesDataModule": "data",
    "load_array": "data",
    "lorenz63": "data",
    "plrnn_teacher": "data",
    "train_in_plane": "landscape_runs",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "__version__",
    # models
    "ALRNN",
    "PLRNN",
    "ClippedShallowPLRNN",
    "ShallowPLRNN",
    "PiecewiseLinear",
    "check_protocol",
    "model_from_state",
    "model_to_state",
    # cycles
    "Cycle",
    "CycleSet",
    "FinderStats",
    "find_cycles",
    "exhaustive_cycles",
    # attractors
    "ATTRACTOR_KINDS",
    "Attractor",
    "AttractorReport",
    "find_attractors",
    "lyapunov_exponents",
    # bifurcations
    "BIFURCATION_KINDS",
    "BifurcationDiagram",
    "BifurcationEvent",
    "Localization",
    "classify",
    "detect_bifurcations",
    "localize",
    "match",
    "scan",
    # loss landscapes
    "LossLandscape",
    "CliffStatistic",
    "RunPath",
    "PathCrossings",
    "loss_landscape",
    "boundary_cells",
    "cliff_statistic",
    "path_crossings",
    # loss jumps
    "Correlation",
    "LossJump",
    "correlate",
    "detect_loss_jumps",
    # finished runs
    "analyse_checkpoints",
    # training
    "BifurcationMonitor",
    "DSRModule",
    "TimeSeriesDataModule",
    "load_array",
    "lorenz63",
    "plrnn_teacher",
    "train_in_plane",
]
