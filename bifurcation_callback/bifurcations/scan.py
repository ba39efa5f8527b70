"""2-D parameter scans: number and stability of cycles per grid cell (the paper's existence / stability regions).

``scan`` is batched over cells: the model's protocol methods are ``torch.func.vmap``-ed over stacked
per-cell parameters and every cell's region sequences go through the one SCYFI kernel (``_scyfi``) at once.
Plotting lives in ``plots.plot_bifurcation_diagram`` (plots imports bifurcations, never the reverse).
This module imports neither Lightning nor TensorBoard.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import _scyfi
from .._search import _region_count_bound, _region_table
from ..cycles import _free_finder_kwargs, _prepare_model, find_cycles
from ..models import all_codes, require_piecewise_linear

__all__ = ["SCAN_METHODS", "SCAN_EXHAUSTIVE_LIMIT", "BifurcationDiagram", "scan", "parse_param_spec"]

# The ways scan can count cycles: exact batched enumeration over cells, or SCYFI cell by cell.
SCAN_METHODS = ("auto", "exhaustive", "scyfi")
# Exhaustive scans enumerate at most this many region sequences per cell (all orders together).
SCAN_EXHAUSTIVE_LIMIT = 200_000

_SPEC_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\])?\s*$")


def _parameter_table(model: torch.nn.Module) -> str:
    return ", ".join(f"{name} {tuple(p.shape)}" for name, p in model.named_parameters())


def parse_param_spec(model: torch.nn.Module, spec: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``"A[0]"``, ``"W[0,1]"``, ``"h1[1]"`` into ``(name, index)`` and check it against ``model``.

    Raises
    ------
    ValueError
        Syntax error, unknown parameter, wrong number of indices, index out of range, or an entry that
        the model masks (the PLRNN's zero diagonal); the message names the spec and lists the model's
        parameters with their shapes.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> parse_param_spec(PLRNN(2), "W[0, 1]")
    ('W', (0, 1))
    >>> parse_param_spec(PLRNN(2), "B[0]")
    Traceback (most recent call last):
    ...
    ValueError: unknown parameter in spec 'B[0]'; PLRNN has parameters A (2,), W (2, 2), h (2,)
    """
    if not isinstance(spec, str):
        raise TypeError(f"parameter spec must be a string such as 'A[0]', got {type(spec).__name__}")
    parsed = _SPEC_PATTERN.match(spec)
    table = _parameter_table(model)
    kind = type(model).__name__
    if parsed is None:
        raise ValueError(f"cannot parse parameter spec {spec!r}: write NAME[i] or NAME[i,j]; {kind} has parameters {table}")
    name, raw_index = parsed.group(1), parsed.group(2)
    parameters = dict(model.named_parameters())
    if name not in parameters:
        raise ValueError(f"unknown parameter in spec {spec!r}; {kind} has parameters {table}")
    shape = tuple(parameters[name].shape)
    index = tuple(int(x) for x in raw_index.split(",")) if raw_index else ()
    if not index and parameters[name].numel() == 1:
        index = (0,) * len(shape)
    if len(index) != len(shape):
        raise ValueError(f"spec {spec!r} needs {len(shape)} indices for {name} of shape {shape}; {kind} has parameters {table}")
    normalised = []
    for i, size in zip(index, shape):
        if not -size <= i < size:
            raise ValueError(f"index {i} out of range in spec {spec!r}: {name} has shape {shape}")
        normalised.append(i % size)
    mask = getattr(model, "off_diagonal_mask", None)
    if name == "W" and isinstance(mask, Tensor) and mask.shape == shape and mask[tuple(normalised)] == 0:
        raise ValueError(f"spec {spec!r} is on the masked diagonal of W, which the model keeps at zero")
    return name, tuple(normalised)


@dataclass(frozen=True, eq=False)
class BifurcationDiagram:
    """Number and stability of cycles on a 2-D parameter grid (the paper's existence / stability regions).

    Attributes
    ----------
    model : str
        The model's class name.
    param_a, param_b : str
        Parameter specs (``"A[0]"``) of the grid axes.
    values_a : ndarray, shape (n_a,)
    values_b : ndarray, shape (n_b,)
    orders : tuple[int, ...]
        Orders counted, ``K = len(orders)``.
    counts : ndarray, shape (n_a, n_b, K), int
        Number of cycles of each order in cell ``(i, j)`` (``param_a = values_a[i]``, ``param_b = values_b[j]``).
    stable : ndarray, shape (n_a, n_b, K), int
        Number of stable ones.
    method : str
        ``"exhaustive"`` (exact) or ``"scyfi"`` (heuristic, may miss cycles).
    elapsed_s : float
        Wall time of the scan.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> diagram = scan(PLRNN(2), "A[0]", "A[1]", ([-0.5, 0.5], [0.2, 0.4, 0.6]), max_order=2)
    >>> diagram.counts.shape, diagram.method
    ((2, 3, 2), 'exhaustive')
    """

    model: str
    param_a: str
    param_b: str
    values_a: np.ndarray
    values_b: np.ndarray
    orders: tuple[int, ...]
    counts: np.ndarray
    stable: np.ndarray
    method: str = "exhaustive"
    elapsed_s: float = 0.0

    @property
    def total_counts(self) -> np.ndarray:
        """Cycles of all orders per cell, shape (n_a, n_b)."""
        return self.counts.sum(-1)

    @property
    def total_stable(self) -> np.ndarray:
        """Stable cycles of all orders per cell, shape (n_a, n_b)."""
        return self.stable.sum(-1)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``from_dict`` inverts it."""
        return {
            "model": self.model,
            "param_a": self.param_a,
            "param_b": self.param_b,
            "values_a": self.values_a.tolist(),
            "values_b": self.values_b.tolist(),
            "orders": list(self.orders),
            "counts": self.counts.tolist(),
            "stable": self.stable.tolist(),
            "method": self.method,
            "elapsed_s": self.elapsed_s,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "BifurcationDiagram":
        """Inverse of ``to_dict``."""
        n_a, n_b, n_orders = len(data["values_a"]), len(data["values_b"]), len(data["orders"])
        return cls(
            model=data["model"],
            param_a=data["param_a"],
            param_b=data["param_b"],
            values_a=np.asarray(data["values_a"], dtype=np.float64),
            values_b=np.asarray(data["values_b"], dtype=np.float64),
            orders=tuple(int(k) for k in data["orders"]),
            counts=np.asarray(data["counts"], dtype=np.int64).reshape(n_a, n_b, n_orders),
            stable=np.asarray(data["stable"], dtype=np.int64).reshape(n_a, n_b, n_orders),
            method=data.get("method", "exhaustive"),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
        )

    def save(self, path: str | Path) -> Path:
        """Write the diagram as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BifurcationDiagram":
        """Read a diagram written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))


class _BoundMethod(torch.nn.Module):
    """Expose one method of a model as ``forward`` so ``torch.func.functional_call`` can swap its parameters."""

    def __init__(self, model: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


def _cell_functions(model: torch.nn.Module) -> dict[str, Callable]:
    """``name -> f(cell_params, *args)`` for the protocol methods, vmapped over the leading cell axis."""
    functions = {}
    for method, arg_dims in (("affine_pieces", None), ("step", 0), ("region_codes", 0)):
        bound = _BoundMethod(model, method)

        def call(params, arg, _bound=bound):
            return torch.func.functional_call(_bound, {f"model.{k}": v for k, v in params.items()}, (arg,))

        functions[method] = torch.func.vmap(call, in_dims=(0, arg_dims))
    return functions


def _grid_axes(grid: tuple[Sequence[float], Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The grid's two axes as float64 arrays; ValueError for anything but two non-empty finite sequences."""
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
        raise ValueError("grid must be a pair (values_a, values_b) of sequences of numbers")
    axes = []
    for name, values in zip(("values_a", "values_b"), grid):
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 0:
            raise ValueError(f"grid {name} is empty; give at least one value")
        if not np.isfinite(array).all():
            raise ValueError(f"grid {name} contains NaN or Inf")
        axes.append(array)
    return axes[0], axes[1]


def _grid_cell_parameters(
    parameters: dict[str, Tensor],
    entry_a: tuple[str, tuple[int, ...]],
    entry_b: tuple[str, tuple[int, ...]],
    values_a: np.ndarray,
    values_b: np.ndarray,
) -> dict[str, Tensor]:
    """Stacked per-cell copies of ``parameters``, cell ``i * n_b + j`` with ``entry_a = values_a[i]`` and
    ``entry_b = values_b[j]``: the leading axis ``torch.func.vmap`` runs over (scan, loss landscape)."""
    n_a, n_b = values_a.size, values_b.size
    cells = {name: p.detach().unsqueeze(0).repeat(n_a * n_b, *([1] * p.dim())) for name, p in parameters.items()}
    for (name, index), values in ((entry_a, np.repeat(values_a, n_b)), (entry_b, np.tile(values_b, n_a))):
        column = cells[name]
        column[(slice(None),) + index] = torch.as_tensor(values, dtype=column.dtype, device=column.device)
    return cells


def _sequence_tables(n_regions: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aperiodic region-index sequences of one order, their rotations and which are canonical.

    Returns ``digits (N, k)``, ``rotations (N, k)`` (row positions of each rotation inside ``digits``)
    and ``canonical (N,)`` bool (lexicographically smallest rotation).  Sequences with a smaller period
    are left out: their solutions are lower-order cycles (a genuine k-cycle would need ``I - P`` singular).
    """
    total = n_regions**order
    digits = (np.arange(total)[:, None] // n_regions ** np.arange(order - 1, -1, -1)[None, :]) % n_regions
    rotated_numbers = np.stack(
        [(np.roll(digits, -s, axis=1) * n_regions ** np.arange(order - 1, -1, -1)).sum(1) for s in range(order)],
        axis=1,
    )
    periodic = np.zeros(total, dtype=bool)
    for divisor in (d for d in range(1, order) if order % d == 0):
        periodic |= rotated_numbers[:, divisor] == np.arange(total)
    keep = np.nonzero(~periodic)[0]
    position = np.full(total, -1)
    position[keep] = np.arange(keep.size)
    rotations = position[rotated_numbers[keep]]
    canonical = rotated_numbers[keep].min(axis=1) == keep
    return digits[keep], rotations, canonical


def _planes_vary(model: torch.nn.Module, entries: Sequence[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether moving the scanned entries moves the switching planes (then every code must be tried)."""
    planes_of = getattr(model, "switching_planes", None)
    if planes_of is None:
        return True
    base = [t.clone() for t in planes_of()]
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, index in entries:
            saved = parameters[name][index].clone()
            try:
                parameters[name][index] += 1.0
                moved = any(not torch.equal(a, b) for a, b in zip(base, planes_of()))
            finally:
                parameters[name][index] = saved
            if moved:
                return True
    return False


def _scan_exhaustive(
    model, cell_params: dict[str, Tensor], regions: Tensor, orders: tuple[int, ...], dtype, *, chunk_elements: int, progress
) -> tuple[np.ndarray, np.ndarray]:
    """Exact counts for every cell: all aperiodic region sequences of each order, batched over cells.

    The solve, the simulation and the verification are ``_scyfi``'s, the same as ``find_cycles``'s; only
    the counting differs (a cycle is present when any rotation of its sequence verified).
    """
    n_cells = next(iter(cell_params.values())).shape[0]
    dim = model.state_dim
    functions = _cell_functions(model)
    counts = np.zeros((n_cells, len(orders)), dtype=np.int64)
    stable = np.zeros((n_cells, len(orders)), dtype=np.int64)
    device = regions.device
    tables = {k: _sequence_tables(regions.shape[0], k) for k in orders}
    work = sum(len(tables[k][0]) * k for k in orders)
    chunk = max(1, chunk_elements // max(1, work * dim * dim))
    bar = _progress_bar(n_cells, progress)
    for begin in range(0, n_cells, chunk):
        cells = slice(begin, min(begin + chunk, n_cells))
        params = {name: values[cells] for name, values in cell_params.items()}

        def affine_pieces(codes: Tensor, _params=params) -> tuple[Tensor, Tensor]:
            return functions["affine_pieces"](_params, codes)  # (C, N, k, M, M), (C, N, k, M)

        def step_with_codes(z: Tensor, _params=params) -> tuple[Tensor, Tensor]:
            return functions["step"](_params, z), functions["region_codes"](_params, z)

        for column, order in enumerate(orders):
            digits, rotations, canonical = tables[order]
            if digits.shape[0] == 0:
                continue
            codes = regions[torch.as_tensor(digits, device=device)]  # (N, k, S)
            evaluation = _scyfi.evaluate(affine_pieces, step_with_codes, codes)  # leading dims (C, N)
            ok = torch.zeros_like(evaluation.real)
            stable_ok = torch.zeros_like(evaluation.real)
            if evaluation.real.any():
                # Only the (few) real candidates pay for the verification and the eigenvalues.
                chosen = evaluation.real.nonzero(as_tuple=True)
                valid, _ = _scyfi.verify(evaluation.trajectory[chosen], evaluation.products[chosen], dtype)
                moduli = torch.linalg.eigvals(evaluation.products[chosen]).abs()
                ok[chosen] = valid
                stable_ok[chosen] = valid & (moduli.amax(-1) < 1 - _scyfi.NEUTRAL_TOLERANCE)
            # A cycle is present when any rotation of its sequence verified (robust to points on a border).
            rotation_index = torch.as_tensor(rotations[canonical], device=device)
            counts[cells, column] = ok[:, rotation_index].any(-1).sum(-1).cpu().numpy()
            stable[cells, column] = stable_ok[:, rotation_index].any(-1).sum(-1).cpu().numpy()
        bar.update(cells.stop - cells.start)
    bar.close()
    return counts, stable


def _scan_scyfi(
    model, cell_params: dict[str, Tensor], orders: tuple[int, ...], dtype, finder_kwargs: dict, progress
) -> tuple[np.ndarray, np.ndarray]:
    """SCYFI cell by cell (not batched over cells), warm-started from the previous cell."""
    n_cells = next(iter(cell_params.values())).shape[0]
    parameters = dict(model.named_parameters())
    counts = np.zeros((n_cells, len(orders)), dtype=np.int64)
    stable = np.zeros((n_cells, len(orders)), dtype=np.int64)
    warm = None
    bar = _progress_bar(n_cells, progress)
    for cell in range(n_cells):
        with torch.no_grad():
            for name, values in cell_params.items():
                parameters[name].copy_(values[cell])
        found = find_cycles(model, orders=orders, dtype=dtype, warm_start=warm, **finder_kwargs)
        counts[cell] = [found.counts()[k] for k in orders]
        stable[cell] = [found.stable_counts()[k] for k in orders]
        warm = found
        bar.update(1)
    bar.close()
    return counts, stable


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", disable=not enabled, desc="scan", leave=False)


def scan(
    model: object,
    param_a: str,
    param_b: str,
    grid: tuple[Sequence[float], Sequence[float]],
    *,
    max_order: int = 4,
    method: str = "auto",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    finder_kwargs: dict | None = None,
    chunk_elements: int = 1 << 22,
    progress: bool = False,
) -> BifurcationDiagram:
    """Count cycles and stable cycles of orders ``1 .. max_order`` on a 2-D parameter grid.

    Cell ``(i, j)`` is the model with ``param_a = grid[0][i]`` and ``param_b = grid[1][j]`` (all other
    parameters unchanged).  ``method="exhaustive"`` solves every aperiodic sequence of realizable region
    codes of each order for every cell at once (``torch.func.vmap`` of the model's ``affine_pieces``,
    ``step`` and ``region_codes`` over stacked per-cell parameters, one batched solve per chunk of
    cells), verifies each real candidate with the nonlinear map exactly as ``find_cycles`` does, and is
    therefore exact.  When the parameters move the switching planes (e.g. ``h2`` of a shPLRNN), all
    ``2**S`` codes are tried.  ``"scyfi"`` runs ``find_cycles`` cell by cell (not batched; for models
    too large to enumerate).  ``"auto"`` picks exhaustive when ``sum_k R**k <= SCAN_EXHAUSTIVE_LIMIT``.

    Parameters
    ----------
    model : PiecewiseLinear nn.Module
        The base model (not changed).
    param_a, param_b : str
        Parameter entries, e.g. ``"A[0]"``, ``"W[0,1]"``, ``"h[1]"`` (see ``parse_param_spec``).
    grid : (values_a, values_b)
        Non-empty sequences of parameter values.
    max_order : int
        Count orders ``1 .. max_order``.
    method : str
        One of ``SCAN_METHODS``.
    device, dtype
        Where and in which precision to compute (float64 by default).
    finder_kwargs : dict, optional
        Extra keyword arguments of ``find_cycles`` for ``method="scyfi"``.
    chunk_elements : int
        Memory knob: cells per batch are chosen so a batch of Jacobians has about this many entries.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    BifurcationDiagram

    Raises
    ------
    TypeError
        The model is not a piecewise-linear ``nn.Module``.
    ValueError
        Bad parameter spec (the message lists the model's parameters), the same entry twice, an empty or
        non-finite grid, unknown method, an exhaustive scan that is too large.

    Examples
    --------
    >>> from bifurcation_callback.models import PLRNN
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.h.fill_(1.0)
    >>> diagram = scan(model, "A[0]", "h[0]", ([0.5, 2.0], [1.0]), max_order=1)  # z* = h / (1 - A), stable iff |A| < 1
    >>> diagram.counts[:, 0, 0].tolist(), diagram.stable[:, 0, 0].tolist()
    ([1, 1], [1, 0])
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"scan needs a piecewise-linear torch.nn.Module, got {type(model).__name__}")
    require_piecewise_linear(model)
    if method not in SCAN_METHODS:
        raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    if not isinstance(max_order, int) or isinstance(max_order, bool) or max_order < 1:
        raise ValueError(f"max_order must be an int >= 1, got {max_order!r}")
    finder_kwargs = _free_finder_kwargs(finder_kwargs, "scan")
    values_a, values_b = _grid_axes(grid)
    started = time.monotonic()
    analysed, device = _prepare_model(model, dtype, device)
    name_a, index_a = parse_param_spec(analysed, param_a)
    name_b, index_b = parse_param_spec(analysed, param_b)
    if (name_a, index_a) == (name_b, index_b):
        raise ValueError(f"param_a and param_b name the same entry ({param_a!r} and {param_b!r})")
    orders = tuple(range(1, max_order + 1))

    # Per-cell copies of the (one or two) parameter tensors involved.
    parameters = dict(analysed.named_parameters())
    n_a, n_b = values_a.size, values_b.size
    involved = {name: parameters[name] for name in (name_a, name_b)}
    cell_params = _grid_cell_parameters(involved, (name_a, index_a), (name_b, index_b), values_a, values_b)

    chosen = method
    regions = None
    if method in ("auto", "exhaustive"):
        regions, reason = _scan_regions(analysed, [(name_a, index_a), (name_b, index_b)], max_order)
        if regions is None:
            if method == "exhaustive":
                raise ValueError(f"exhaustive scan not possible: {reason}; use method='scyfi'")
            chosen = "scyfi"
        else:
            chosen = "exhaustive"
    with torch.no_grad():
        if chosen == "exhaustive":
            counts, stable = _scan_exhaustive(
                analysed, cell_params, regions.to(device), orders, dtype, chunk_elements=chunk_elements, progress=progress
            )
        else:
            counts, stable = _scan_scyfi(analysed, cell_params, orders, dtype, finder_kwargs, progress)
    return BifurcationDiagram(
        model=type(model).__name__,
        param_a=param_a,
        param_b=param_b,
        values_a=values_a,
        values_b=values_b,
        orders=orders,
        counts=counts.reshape(n_a, n_b, len(orders)),
        stable=stable.reshape(n_a, n_b, len(orders)),
        method=chosen,
        elapsed_s=time.monotonic() - started,
    )


def _scan_regions(model, entries: Sequence[tuple[str, tuple[int, ...]]], max_order: int) -> tuple[Tensor | None, str]:
    """The region codes to enumerate in every cell, or None and the reason exhaustive is not possible."""
    n_switches = model.n_switches
    if _planes_vary(model, entries):
        if n_switches > 16:
            return None, f"the scanned parameters move the switching planes and the model has {n_switches} switches"
        regions = all_codes(n_switches)
    else:
        bound = _region_count_bound(model)
        if sum(bound**k for k in range(1, max_order + 1)) > 50 * SCAN_EXHAUSTIVE_LIMIT:
            return None, f"up to {bound} regions, too many to enumerate to order {max_order}"
        try:  # more regions than this give more sequences than the limit below anyway
            regions = _region_table(model, SCAN_EXHAUSTIVE_LIMIT)
        except ValueError as error:
            return None, str(error)
    n_regions = regions.shape[0]
    total = sum(n_regions**k for k in range(1, max_order + 1))
    if total > SCAN_EXHAUSTIVE_LIMIT:
        return None, f"{n_regions} regions give {total} sequences per cell up to order {max_order}, more than {SCAN_EXHAUSTIVE_LIMIT}"
    return regions, ""

