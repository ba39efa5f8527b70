"""Regenerate the package-made figures of the documentation (``make docs-figures``).

Both figures come from the paper's 2-D PLRNN in ``examples/models/plrnn_2d_16cycles.json`` (Eisenmann et al.
2023, Fig. 3: two 16-cycles and no 15-cycle), analysed with :func:`bifurcation_callback.find_cycles` and
:func:`bifurcation_callback.bifurcations.detect_bifurcations`, coloured with
:data:`bifurcation_callback.plots.KIND_COLOURS`:

- ``docs/images/plrnn_2d_16cycles.png``: state space with an orbit, the switching lines and every cycle of
  order 1 and 16;
- ``docs/images/sweep_a1.png``: the largest |multiplier| of every fixed point and 2-cycle while the
  parameter ``a1 = A[0]`` is swept, with each detected bifurcation marked by its kind.

Run from the repository root: ``python docs/gen_figures.py`` (about half a minute on a laptop CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bifurcation_callback import find_cycles, model_from_state  # noqa: E402
from bifurcation_callback.bifurcations import detect_bifurcations  # noqa: E402
from bifurcation_callback.plots import KIND_COLOURS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "models" / "plrnn_2d_16cycles.json"
OUT = ROOT / "docs" / "images"
STYLE = {"stable": ("o", "full"), "unstable": ("o", "none"), "saddle": ("s", "none"), "neutral": ("D", "none")}
ORDER_COLOURS = {1: "black", 2: "tab:blue", 16: "tab:purple"}


def load_model():
    return model_from_state(json.loads(MODEL.read_text()))


def state_space(path: Path) -> None:
    model = load_model()
    cycles = find_cycles(model, orders=[1, 16], seed=0)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    z = torch.tensor([0.5, 0.5], dtype=torch.float64)
    orbit = []
    with torch.no_grad():
        for t in range(3000):
            z = model.step(z)
            if t >= 500:
                orbit.append(z.numpy().copy())
    orbit = np.array(orbit)
    ax.plot(orbit[:, 0], orbit[:, 1], ".", color="0.75", ms=2, label="orbit from (0.5, 0.5)", zorder=1)
    ax.axvline(0, color="0.4", lw=0.8, ls="--")
    ax.axhline(0, color="0.4", lw=0.8, ls="--", label="switching lines $z_i = 0$")
    for cycle in cycles:
        marker, fill = STYLE[cycle.kind]
        closed = np.vstack([cycle.points, cycle.points[:1]])
        colour = ORDER_COLOURS.get(cycle.order, "tab:green")
        if cycle.order > 1:
            ax.plot(closed[:, 0], closed[:, 1], "-", color=colour, lw=0.7, alpha=0.6, zorder=2)
        name = "fixed point" if cycle.order == 1 else f"{cycle.order}-cycle"
        ax.plot(
            cycle.points[:, 0], cycle.points[:, 1], marker, fillstyle=fill, color=colour, ms=6, zorder=3,
            label=f"{cycle.kind} {name} (max |λ| = {cycle.spectral_radius:.2f})",
        )
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("Paper's 2-D PLRNN: every cycle of order 1 and 16 (find_cycles)")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(path: Path, n_points: int) -> None:
    model = load_model()
    grid = np.linspace(-1.6, 1.0, n_points)
    previous = None
    radii: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    events = []
    for index, a1 in enumerate(grid):
        with torch.no_grad():
            model.A[0] = float(a1)
        cycles = find_cycles(model, max_order=2, seed=0)
        for cycle in cycles:
            radii[cycle.order].append((a1, cycle.spectral_radius))
        if previous is not None:
            for event in detect_bifurcations(previous, cycles, step=index, prev_step=index - 1):
                events.append((0.5 * (grid[index - 1] + a1), event))
        previous = cycles
    fig, (ax, strip) = plt.subplots(
        2, 1, figsize=(7.5, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    for order, marker in ((1, "o"), (2, "s")):
        if radii[order]:
            x, y = np.array(radii[order]).T
            name = "fixed points" if order == 1 else "2-cycles"
            ax.plot(x, y, marker, ms=3.5, color=ORDER_COLOURS[order], label=f"max |λ| of {name}")
    ax.axhline(1.0, color="0.3", lw=0.8, ls=":", label="|λ| = 1")
    ax.set_ylabel("largest |multiplier|")
    ax.set_title("Sweeping $a_1$ of the paper's 2-D PLRNN: cycles and detected bifurcations")
    ax.legend(fontsize="small", loc="upper center")
    kinds = list(KIND_COLOURS)
    for position, event in events:
        strip.plot(position, kinds.index(event.kind), "|", ms=12, mew=2.5, color=KIND_COLOURS[event.kind])
    strip.set_yticks(range(len(kinds)), [kind.replace("_", " ") for kind in kinds], fontsize="small")
    strip.set_ylim(-0.7, len(kinds) - 0.3)
    strip.invert_yaxis()
    strip.grid(axis="y", color="0.9")
    strip.set_xlabel("$a_1$ (first entry of A)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    for position, event in events:
        print(f"a1 ≈ {position:+.3f}: {event.kind} (order {event.order}) {event.description}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the PNG files (default docs/images)")
    parser.add_argument("--points", type=int, default=53, help="grid points of the a1 sweep")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    state_space(args.out / "plrnn_2d_16cycles.png")
    sweep(args.out / "sweep_a1.png", args.points)
    print(f"wrote {args.out / 'plrnn_2d_16cycles.png'} and {args.out / 'sweep_a1.png'}")


if __name__ == "__main__":
    main()
