"""Matplotlib figures: cycles in state space, 2-D bifurcation diagrams, and the bifurcation timeline.

Figures are built with the object-oriented API on an Agg canvas (no pyplot, no display needed), so
they work in headless training jobs and can be handed to TensorBoard's ``add_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

# plots reads bifurcations, never the reverse (data flows models -> cycles -> bifurcations -> plots).
from .bifurcations import BIFURCATION_KINDS, BifurcationDiagram
from .bifurcations.events import is_qualitative

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .bifurcations.landscape import LossLandscape
    from .bifurcations.paths import PathCrossings, RunPath
    from .cycles import CycleSet

__all__ = [
    "plot_cycles", "plot_bifurcation_diagram", "plot_timeline", "new_axes", "sample_orbits", "render_figures",
    "figure_pixels", "KIND_COLOURS", "plot_loss_landscape",
]


def new_axes(figsize: tuple[float, float] = (5.0, 4.0)) -> "Axes":
    """A fresh Axes on its own Figure with an Agg canvas (``ax.figure.savefig`` works headless).

    Examples
    --------
    >>> ax = new_axes()
    >>> type(ax.figure.canvas).__name__
    'FigureCanvasAgg'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure.add_subplot()


def sample_orbits(
    model: Any, cycle_set: "CycleSet", *, n_random: int = 4, n_steps: int = 200, n_transient: int = 50, seed: int = 0,
) -> list[np.ndarray]:
    """Orbits to draw under the cycles: the model iterated from every point of its stable cycles and from
    ``n_random`` fixed random states (``attractors.simulate``), without the first ``n_transient`` steps.

    The random states are the same at every call (``seed``), scaled to the cycles' extent (``1 +`` the
    largest |coordinate| of any cycle point), so successive figures of one run are comparable.  Orbits that
    diverge (non-finite, or beyond 1000 times that extent) are dropped: they would only stretch the axes.

    Parameters
    ----------
    model : PiecewiseLinear
        The model whose cycles ``cycle_set`` holds.
    cycle_set : CycleSet
    n_random, n_steps, n_transient, seed : int
        Number of random initial states, length of each orbit, steps dropped first, seed of the states.

    Returns
    -------
    list of ndarray, each shape (n_steps - n_transient + 1, M)

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import PLRNN
    >>> from bifurcation_callback.cycles import find_cycles
    >>> model = PLRNN(1)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.h.fill_(1.0)   # z' = z / 2 + 1: a stable fixed point at 2
    >>> orbits = sample_orbits(model, find_cycles(model, max_order=1), n_random=2, n_steps=60, n_transient=10)
    >>> len(orbits), orbits[0].shape, bool(np.allclose(orbits[-1][-1], [2.0]))
    (3, (51, 1), True)
    """
    from .attractors import simulate

    points = [cycle.points for cycle in cycle_set if cycle.is_stable]
    extent = 1.0 + max((float(np.abs(c.points).max()) for c in cycle_set if c.points.size), default=0.0)
    random = np.random.default_rng(seed).standard_normal((n_random, int(model.state_dim))) * extent
    starts = np.concatenate(points + [random]) if points else random
    if not len(starts):
        return []
    orbits = simulate(model, starts, n_steps).cpu().numpy()[:, n_transient:]
    keep = np.isfinite(orbits).all(axis=(1, 2)) & (np.abs(orbits).max(axis=(1, 2), initial=0.0) < 1e3 * extent)
    return list(orbits[keep])


def plot_cycles(
    cycle_set: "CycleSet",
    ax: "Axes | None" = None,
    *,
    dims: tuple[int, int] = (0, 1),
    orbits: Sequence[Any] = (),
    reference: Any = None,
) -> "Axes":
    """Draw every cycle of ``cycle_set`` in state space: filled markers stable, open markers not, over the
    orbits of the map and a stretch of training data when given.

    Each k-cycle's points are joined in visiting order (closed polygon); colour encodes the order.
    One-dimensional models are drawn on the line ``y = 0``.

    Parameters
    ----------
    cycle_set : CycleSet
    ax : Axes, optional
        Where to draw; a new Agg figure when None.
    dims : (int, int)
        State coordinates on the x and y axes.
    orbits : sequence of array, each shape (T, M)
        Orbits of the map (e.g. ``sample_orbits``, or an attractor's orbit), drawn as thin lines under the
        cycles so the attractor shows, not only its periodic points.
    reference : array, shape (T, M), optional
        States of the training data in the model's state space, drawn as small grey dots underneath.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import PLRNN
    >>> from bifurcation_callback.cycles import find_cycles
    >>> model = PLRNN(2)
    >>> with torch.no_grad():
    ...     _ = model.A.fill_(0.5); _ = model.W.zero_(); _ = model.h.fill_(1.0)
    >>> ax = plot_cycles(find_cycles(model, max_order=2), orbits=[np.zeros((5, 2))], reference=np.ones((9, 2)))
    >>> len(ax.collections) > 0, [line.get_label() for line in ax.lines]
    (True, ['orbits'])
    """
    from .cycles import CycleSet

    if not isinstance(cycle_set, CycleSet):
        raise TypeError(f"plot_cycles needs a CycleSet, got {type(cycle_set).__name__}")
    if ax is None:
        ax = new_axes()
    from matplotlib import colormaps

    def coordinates(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return tuple(points[:, d] if points.shape[1] > d else np.zeros(len(points)) for d in dims)

    if reference is not None:
        x, y = coordinates(_state_array("reference", reference))
        ax.scatter(x, y, s=6, color="0.45", alpha=0.5, linewidths=0, label="training data", zorder=1)
    for index, orbit in enumerate(orbits):
        x, y = coordinates(_state_array("orbits", orbit))
        ax.plot(x, y, color="tab:cyan", lw=0.6, alpha=0.6, label="orbits" if index == 0 else None, zorder=2)
    orders = list(cycle_set.orders) or sorted({c.order for c in cycle_set})
    palette = colormaps["tab10"]
    colour = {order: palette(i % 10) for i, order in enumerate(orders)}
    labelled: set[tuple[int, bool]] = set()
    for cycle in cycle_set:
        x, y = coordinates(cycle.points)
        c = colour.get(cycle.order, "black")
        if cycle.order > 1:
            ax.plot(np.append(x, x[0]), np.append(y, y[0]), color=c, linewidth=0.8, alpha=0.6)
        stable = cycle.is_stable
        label_key = (cycle.order, stable)
        label = None
        if label_key not in labelled:
            labelled.add(label_key)
            label = f"{'fixed point' if cycle.order == 1 else f'{cycle.order}-cycle'} ({'stable' if stable else cycle.kind})"
        ax.scatter(
            x, y, s=40, marker="o", edgecolors=[c], facecolors=[c] if stable else "none", linewidths=1.5, label=label,
            zorder=3,
        )
    ax.set_xlabel(f"z[{dims[0]}]")
    ax.set_ylabel(f"z[{dims[1]}]")
    ax.set_title(f"{len(cycle_set)} cycle{'s' if len(cycle_set) != 1 else ''} (filled = stable)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    if not cycle_set.cycles:
        ax.text(0.5, 0.5, "no cycles found", transform=ax.transAxes, ha="center", va="center")
    return ax


def _state_array(name: str, value: Any) -> np.ndarray:
    """``value`` as a finite-rows (T, M) float array; a TypeError / ValueError names ``name`` otherwise."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must hold arrays of shape (T, M), got shape {array.shape}")
    return array[np.isfinite(array).all(axis=1)]


def plot_bifurcation_diagram(
    diagram: "BifurcationDiagram", ax: "Axes | None" = None, *, order: int | None = None, colorbar: bool = True
) -> "Axes":
    """Existence / stability regions of a ``BifurcationDiagram``.

    The image is the number of stable cycles per cell (of all orders, or of ``order``); black contour
    lines are drawn where the number of cycles changes (the bifurcation curves of the scan).

    Parameters
    ----------
    diagram : BifurcationDiagram
    ax : Axes, optional
        Where to draw; a new Agg figure when None.
    order : int, optional
        Show only cycles of this order.
    colorbar : bool
        Add a colour bar.

    Returns
    -------
    Axes

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import PLRNN
    >>> from bifurcation_callback.bifurcations import scan
    >>> model = PLRNN(2)
    >>> diagram = scan(model, "A[0]", "A[1]", ([-1.5, 0.0, 1.5], [-1.5, 0.0, 1.5]), max_order=2)
    >>> plot_bifurcation_diagram(diagram).get_xlabel()
    'A[0]'
    """
    if not isinstance(diagram, BifurcationDiagram):
        raise TypeError(f"plot_bifurcation_diagram needs a BifurcationDiagram, got {type(diagram).__name__}")
    if order is not None and order not in diagram.orders:
        raise ValueError(f"order {order} was not scanned; the diagram has orders {diagram.orders}")
    if ax is None:
        ax = new_axes()
    if order is None:
        stable, counts, what = diagram.total_stable, diagram.total_counts, f"orders ≤ {max(diagram.orders)}"
    else:
        column = diagram.orders.index(order)
        stable, counts, what = diagram.stable[..., column], diagram.counts[..., column], f"order {order}"
    a, b = diagram.values_a, diagram.values_b
    extent = _extent(a, b)
    # Rows of the image are values_b (y), columns values_a (x).
    image = ax.imshow(
        stable.T, origin="lower", extent=extent, aspect="auto", interpolation="nearest", cmap="viridis",
        vmin=0, vmax=max(1, int(stable.max())),
    )
    if a.size > 1 and b.size > 1 and counts.min() != counts.max():
        levels = np.arange(counts.min(), counts.max()) + 0.5
        ax.contour(a, b, counts.T, levels=levels, colors="black", linewidths=0.8)
    ax.set_xlabel(diagram.param_a)
    ax.set_ylabel(diagram.param_b)
    ax.set_title(f"{diagram.model}: stable cycles ({what})\nlines: the number of cycles changes", fontsize="medium")
    if colorbar:
        from matplotlib.ticker import MaxNLocator

        bar = ax.figure.colorbar(image, ax=ax, label="number of stable cycles")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
    return ax


def _extent(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    def edges(values: np.ndarray) -> tuple[float, float]:
        if values.size == 1:
            return float(values[0]) - 0.5, float(values[0]) + 0.5
        half = 0.5 * (values[1] - values[0]), 0.5 * (values[-1] - values[-2])
        return float(values[0] - half[0]), float(values[-1] + half[1])

    return (*edges(a), *edges(b))


# Colours in the order of BIFURCATION_KINDS (births green, deaths red, ...); cycled if the vocabulary grows.
_KIND_PALETTE = ("tab:green", "tab:red", "tab:purple", "tab:orange", "black", "tab:brown", "tab:pink", "tab:olive")
# One colour per bifurcation kind, shared by every figure and the docs.  The keys are read from the one
# vocabulary, BIFURCATION_KINDS, so a kind can never be missing here.
KIND_COLOURS: dict[str, str] = {
    kind: _KIND_PALETTE[i % len(_KIND_PALETTE)] for i, kind in enumerate(BIFURCATION_KINDS)
}


def plot_timeline(
    records: Sequence[Mapping[str, Any]],
    loss_jumps: Sequence[Mapping[str, Any]] = (),
    *,
    losses: Sequence[Sequence[Any]] | None = None,
    ax: "Axes | None" = None,
) -> "Axes":
    """Loss curve with a vertical line at every qualitative bifurcation event (coloured by kind), a short tick
    on the bottom edge at every border crossing that left stability unchanged (``is_qualitative`` False),
    and a triangle at every detected loss jump; the number of cycles on a twin axis.

    Parameters
    ----------
    records : sequence of dict
        The monitor's per-step records (``step``, ``loss``, ``n_cycles``, ``events``), as in ``events.jsonl``.
    loss_jumps : sequence of dict
        ``LossJump.to_dict()`` entries.
    losses : sequence of (step, loss, ...), optional
        The loss at every training step (the monitor's history); by default the records' losses.

    Examples
    --------
    >>> records = [{"step": 1, "loss": 1.0, "n_cycles": {"1": 1}, "events": []},
    ...            {"step": 2, "loss": 0.1, "n_cycles": {"1": 2}, "events": [{"step": 2, "kind": "appearance"}]}]
    >>> plot_timeline(records, [{"step": 2, "direction": "down"}]).get_xlabel()
    'training step'
    """
    if ax is None:
        ax = new_axes((8.0, 3.5))
    if losses is None:
        losses = [(r["step"], r.get("loss")) for r in records]
    curve = {int(entry[0]): entry[1] for entry in losses if entry[1] is not None}
    ax.plot(list(curve), list(curve.values()), color="tab:blue", lw=1.2, label="loss")
    if curve and min(curve.values()) > 0:
        ax.set_yscale("log")
    seen: set[str] = set()
    crossings: list[int] = []
    for record in records:
        for event in record.get("events", []):
            if not is_qualitative(event):
                crossings.append(event["step"])
                continue
            kind = event["kind"]
            ax.axvline(
                event["step"], color=KIND_COLOURS.get(kind, "grey"), alpha=0.6, lw=1,
                label=kind.replace("_", " ") if kind not in seen else None,
            )
            seen.add(kind)
    if crossings:
        # Short ticks on the bottom edge: border crossings that changed no stability would hide the loss curve.
        ax.vlines(
            crossings, 0.0, 0.05, transform=ax.get_xaxis_transform(), color=KIND_COLOURS["border_collision"],
            lw=1.0, alpha=0.8, label="border crossing (stability unchanged)",
        )
    jump_steps = [j["step"] for j in loss_jumps if j["step"] in curve]
    if jump_steps:
        ax.scatter(jump_steps, [curve[s] for s in jump_steps], marker="v", color="crimson", zorder=3, label="loss jump")
    counted = [r for r in records if "n_cycles" in r]
    if counted:
        twin = ax.twinx()
        twin.step([r["step"] for r in counted], [sum(r["n_cycles"].values()) for r in counted], where="post",
                  color="grey", lw=0.8, alpha=0.7)
        twin.set_ylabel("number of cycles", color="grey")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("Bifurcations and loss jumps")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    return ax


def figure_pixels(figure: Any) -> np.ndarray:
    """Render a matplotlib figure (Agg canvas) to an RGB image, shape (H, W, 3), dtype uint8.

    Examples
    --------
    >>> figure_pixels(new_axes((2.0, 1.0)).figure).shape
    (100, 200, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def render_figures(
    cycles: "CycleSet | None",
    records: Sequence[Mapping[str, Any]],
    history: Sequence[Sequence[Any]] | None = None,
    loss_jumps: Sequence[Mapping[str, Any]] = (),
    *,
    orbits: Sequence[np.ndarray] = (),
    reference: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The monitor's figures as RGB images, keyed by their TensorBoard tag: the state space with ``cycles``
    (``plot_cycles``; absent when ``cycles`` is None) and the timeline of ``records`` over the loss
    ``history`` (``plot_timeline``).  Pixels, not figures, so they can be drawn in the monitor's worker
    process and sent back.

    Examples
    --------
    >>> records = [{"step": 0, "loss": 1.0, "n_cycles": {"1": 1}, "events": []}]
    >>> sorted(render_figures(None, records))
    ['bifurcation/timeline']
    """
    images = {}
    if cycles is not None:
        images["bifurcation/state_space"] = figure_pixels(plot_cycles(cycles, orbits=orbits, reference=reference).figure)
    images["bifurcation/timeline"] = figure_pixels(plot_timeline(records, loss_jumps, losses=history).figure)
    return images


def _cell_edges(values: np.ndarray) -> np.ndarray:
    """Edges of the cells centred on ``values`` (midpoints inside, half a spacing beyond the ends)."""
    low, high = _extent(values, values)[:2]
    return np.concatenate([[low], 0.5 * (values[1:] + values[:-1]), [high]])


def _curve_segments(landscape: "LossLandscape") -> list[list[tuple[float, float]]]:
    """The shared cell edges where (count, stable count) changes: the bifurcation curves at grid resolution."""
    from .bifurcations.landscape import signature_changes

    along_a, along_b = signature_changes(landscape.diagram)
    edges_a, edges_b = _cell_edges(landscape.a_values), _cell_edges(landscape.b_values)
    segments = [[(edges_a[i + 1], edges_b[j]), (edges_a[i + 1], edges_b[j + 1])] for i, j in zip(*np.nonzero(along_a))]
    segments += [[(edges_a[i], edges_b[j + 1]), (edges_a[i + 1], edges_b[j + 1])] for i, j in zip(*np.nonzero(along_b))]
    return segments


def _colour_limits(values: np.ndarray, focus: np.ndarray) -> tuple[float, float]:
    """Colour range of a log-scale panel: the finite values on the ``focus`` cells (all cells when none is
    finite there), from their minimum to their 99th percentile; larger values show in the top colour."""
    finite = values[np.isfinite(values) & focus]
    if finite.size == 0:
        finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [0, 99]))
    return low, max(high, low + 1e-9)


def plot_loss_landscape(
    landscape: "LossLandscape",
    runs: Sequence["RunPath"] = (),
    *,
    statistics: Sequence["PathCrossings"] | None = None,
    axes: Sequence["Axes"] | None = None,
) -> "Figure":
    """The paper's Fig. 3: log10 loss and log10 gradient norm over the grid, the bifurcation curves on both,
    and training paths with their loss jumps and bifurcation events.

    Curves are drawn on the cell edges where the (count, stable count) signature changes
    (``bifurcations.landscape.signature_changes``).  Each run's path is a line coloured by its ``method``
    (start: circle, end: square), its loss jumps red triangles, the monitor's qualitative events (from its
    ``events.jsonl``) small dots in the kind's colour (``KIND_COLOURS``).  Colours of a panel span the values
    on the cells with bounded rollouts (``LossLandscape.bounded``) up to their 99th percentile: diverging
    orbits reach losses of 1e200 and more and would leave one colour for everything else; they, and ``inf``,
    show in the top colour.

    Parameters
    ----------
    landscape : LossLandscape
    runs : sequence of RunPath
    statistics : sequence of PathCrossings, optional
        One per run (their loss jumps are marked); computed with ``path_crossings``' defaults when None.
    axes : pair of Axes, optional
        Where to draw the loss and the gradient panel; a new 1 × 2 Agg figure when None.

    Returns
    -------
    Figure

    Examples
    --------
    >>> import torch
    >>> from bifurcation_callback.models import PLRNN
    >>> from bifurcation_callback.bifurcations import loss_landscape
    >>> landscape = loss_landscape(PLRNN(2), np.ones((10, 2)), "A[0]", "A[1]", ([0.0, 0.5, 1.2], [0.2, 0.9]))
    >>> [ax.get_xlabel() for ax in plot_loss_landscape(landscape).axes[:2]]
    ['A[0]', 'A[0]']
    """
    from matplotlib.collections import LineCollection

    from .bifurcations.landscape import LossLandscape
    from .bifurcations.paths import path_crossings

    if not isinstance(landscape, LossLandscape):
        raise TypeError(f"plot_loss_landscape needs a LossLandscape, got {type(landscape).__name__}")
    if statistics is None:
        statistics = [path_crossings(landscape, run) for run in runs]
    if len(statistics) != len(runs):
        raise ValueError(f"statistics must hold one PathCrossings per run: {len(statistics)} for {len(runs)} runs")
    if axes is None:
        axes = _two_axes()
    extent = _extent(landscape.a_values, landscape.b_values)
    with np.errstate(divide="ignore"):
        panels = (
            (np.log10(landscape.loss), "log10 loss", "viridis"),
            (landscape.log_grad_norm, "log10 ‖∇L‖" + (" (plane)" if landscape.gradient == "plane" else ""), "magma"),
        )
    forcing = "free running" if landscape.alpha == 0 else f"GTF α = {landscape.alpha:g}"
    methods = list(dict.fromkeys(run.method for run in runs))
    method_colours = {method: f"C{k}" for k, method in enumerate(methods)}
    for ax, (values, label, cmap) in zip(axes, panels):
        low, high = _colour_limits(values, landscape.bounded)
        shown = np.where(np.isnan(values), np.nan, np.clip(values, low, high))
        image = ax.imshow(shown.T, origin="lower", extent=extent, aspect="auto", interpolation="nearest", cmap=cmap,
                          vmin=low, vmax=high)
        ax.figure.colorbar(image, ax=ax, label=label)
        ax.add_collection(LineCollection(_curve_segments(landscape), colors="white", linewidths=0.8, alpha=0.9))
        for run, stats in zip(runs, statistics):
            colour = method_colours[run.method]
            ax.plot(run.a, run.b, color=colour, lw=1.2, label=run.method if run is _first_of(runs, run.method) else None)
            ax.plot(run.a[:1], run.b[:1], marker="o", color=colour, markersize=5, linestyle="none")
            ax.plot(run.a[-1:], run.b[-1:], marker="s", color=colour, markersize=5, linestyle="none")
            index = {int(step): k for k, step in enumerate(run.steps)}
            # The monitor records step s after its update: the point of step s + 1 on the path.
            for event in run.events:
                k = index.get(int(event["step"]) + 1)
                if k is not None and is_qualitative(event):
                    ax.plot(run.a[k], run.b[k], marker=".", color=KIND_COLOURS.get(event["kind"], "grey"), markersize=4)
            jumps = [index[j.step] for j in stats.loss_jumps if j.step in index]
            ax.plot(run.a[jumps], run.b[jumps], marker="v", color="red", markersize=7, linestyle="none",
                    markeredgecolor="white", markeredgewidth=0.6, zorder=4)
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set_xlabel(landscape.param_a)
        ax.set_ylabel(landscape.param_b)
        ax.set_title(f"{label}, {forcing}, T = {landscape.seq_len}", fontsize="medium")
    if methods:
        axes[0].legend(loc="upper right", fontsize="small", title="paths (▼ loss jump)", title_fontsize="small")
    return axes[0].figure


def _two_axes() -> list["Axes"]:
    figure = new_axes((11.0, 4.6)).figure
    figure.clear()
    return list(figure.subplots(1, 2))


def _first_of(runs: Sequence["RunPath"], method: str) -> "RunPath":
    return next(run for run in runs if run.method == method)
