"""bifurcation-callback: exact cycle finding and bifurcation tracking for piecewise-linear RNNs.

Examples
--------
>>> from bifurcation_callback import PLRNN, find_cycles
>>> cycles = find_cycles(PLRNN(2), max_order=2)
>>> cycles.orders
(1, 2)
"""

from .cycles import Cycle, CycleSet, FinderStats, exhaustive_cycles, find_cycles
from .models import (
    ALRNN,
    PLRNN,
    ClippedShallowPLRNN,
    PiecewiseLinear,
    ShallowPLRNN,
    model_from_state,
    model_to_state,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ALRNN",
    "PLRNN",
    "ClippedShallowPLRNN",
    "ShallowPLRNN",
    "PiecewiseLinear",
    "model_from_state",
    "model_to_state",
    "Cycle",
    "CycleSet",
    "FinderStats",
    "find_cycles",
    "exhaustive_cycles",
]
