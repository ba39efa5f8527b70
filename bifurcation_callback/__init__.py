"""bifurcation-callback: exact cycle finding and bifurcation tracking for piecewise-linear RNNs."""

__version__ = "0.1.0"
