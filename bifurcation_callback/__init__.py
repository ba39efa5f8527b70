"""bifurcation-callback: exact cycle finding and bifurcation tracking for piecewise-linear RNNs.

The handful of names most users need; everything else lives in the submodules
(``models``, ``cycles``, ``bifurcations``, ``loss_jumps``, ``callback``, ``dashboard``, ``plots``,
``training``, ``data``, ``cli``).

Examples
--------
>>> from bifurcation_callback import PLRNN, find_cycles
>>> cycles = find_cycles(PLRNN(2), max_order=2)
>>> cycles.orders
(1, 2)
"""

from .bifurcations import (
    BIFURCATION_KINDS,
    BifurcationDiagram,
    BifurcationEvent,
    Localization,
    classify,
    detect_bifurcations,
    localize,
    match,
    scan,
)
from .callback import BifurcationMonitor
from .cycles import Cycle, CycleSet, FinderStats, exhaustive_cycles, find_cycles
from .data import TimeSeriesDataModule, load_array, lorenz63, plrnn_teacher
from .loss_jumps import Correlation, LossJump, correlate, detect_loss_jumps
from .models import (
    ALRNN,
    PLRNN,
    ClippedShallowPLRNN,
    PiecewiseLinear,
    ShallowPLRNN,
    model_from_state,
    model_to_state,
)
from .training import DSRModule

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # models
    "ALRNN",
    "PLRNN",
    "ClippedShallowPLRNN",
    "ShallowPLRNN",
    "PiecewiseLinear",
    "model_from_state",
    "model_to_state",
    # cycles
    "Cycle",
    "CycleSet",
    "FinderStats",
    "find_cycles",
    "exhaustive_cycles",
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
    # loss jumps
    "Correlation",
    "LossJump",
    "correlate",
    "detect_loss_jumps",
    # training
    "BifurcationMonitor",
    "DSRModule",
    "TimeSeriesDataModule",
    "load_array",
    "lorenz63",
    "plrnn_teacher",
]
