"""2-D bifurcation diagram of the paper's PLRNN: how many cycles, and how many stable ones, on a grid of
two parameters (by default the auto-regressive weights A[0] and A[1]).

``scan`` counts every cycle of orders 1..K exactly in each grid cell (all region sequences are solved at
once); the diagram's own ``plot`` and ``save`` write the PNG and the JSON.

    python examples/bifurcation_diagram.py                  # 40 x 40 grid, orders 1..6, ~10 s
    python examples/bifurcation_diagram.py --quick          # 8 x 8 grid, orders 1..4
    python examples/bifurcation_diagram.py --param-b "W[1,0]" --range-b 0 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bifurcation_callback import find_cycles, model_from_state, scan
from bifurcation_callback.bifurcations import parse_param_spec
from bifurcation_callback.plots import plot_bifurcation_diagram

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "plrnn_2d_16cycles.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="parameter JSON (model_to_state format)")
    parser.add_argument("--out", default="example_out/bifurcation_diagram", help="output folder (default %(default)s)")
    parser.add_argument("--param-a", default="A[0]")
    parser.add_argument("--range-a", type=float, nargs=2, default=(0.5, 1.1), metavar=("LO", "HI"))
    parser.add_argument("--param-b", default="A[1]")
    parser.add_argument("--range-b", type=float, nargs=2, default=(0.5, 1.1), metavar=("LO", "HI"))
    parser.add_argument("--n", type=int, default=40, help="grid points per axis (default %(default)s)")
    parser.add_argument("--max-order", type=int, default=6, help="count orders 1..K (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="8 x 8 grid, orders 1..4")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    n, max_order = (8, 4) if args.quick else (args.n, args.max_order)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = model_from_state(json.loads(Path(args.model).read_text()))

    grid = (np.linspace(*args.range_a, n), np.linspace(*args.range_b, n))
    diagram = scan(model, args.param_a, args.param_b, grid, max_order=max_order)
    print(f"{diagram.model}: {n} x {n} grid of {diagram.param_a} in {list(args.range_a)} x {diagram.param_b} in "
          f"{list(args.range_b)}, orders 1..{max_order}, {diagram.method}, {diagram.elapsed_s:.1f} s")

    # A short text summary of the counts (shape (n_a, n_b, K)).
    cells = n * n
    totals, frequency = np.unique(diagram.total_counts, return_counts=True)
    print("cells by number of cycles: " + ", ".join(f"{f} with {t}" for t, f in zip(totals, frequency)))
    for column, order in enumerate(diagram.orders):
        with_any = int((diagram.counts[..., column] > 0).sum())
        with_stable = int((diagram.stable[..., column] > 0).sum())
        if with_any:
            name = "fixed points" if order == 1 else f"{order}-cycles"
            print(f"  {name:<12} exist in {with_any:>5} / {cells} cells, a stable one in {with_stable}")
    no_stable = int((diagram.total_stable == 0).sum())
    print(f"cells with a stable cycle of order <= {max_order}: {cells - no_stable}; with none: {no_stable} "
          "(the attractor there is a longer cycle, chaotic, or orbits diverge)")

    # Where does the model itself sit?  Its own attractor is a 16-cycle, beyond the orders scanned.
    parameters = dict(model.named_parameters())
    own = []
    for spec in (diagram.param_a, diagram.param_b):
        name, index = parse_param_spec(model, spec)  # "A[0]" -> ("A", (0,))
        own.append(float(parameters[name].detach()[index]))
    i, j = (int(np.abs(values - value).argmin()) for values, value in zip(grid, own))
    print(f"the model itself ({diagram.param_a} = {own[0]:.4f}, {diagram.param_b} = {own[1]:.4f}): nearest cell has "
          f"{int(diagram.total_counts[i, j])} cycle(s) of order <= {max_order}, {int(diagram.total_stable[i, j])} stable")
    long_cycles = find_cycles(model, orders=[16])
    print(f"  find_cycles(model, orders=[16]) at that point: {len(long_cycles)} 16-cycles, {long_cycles.n_stable} stable")

    # The diagram's own save, plots.plot_bifurcation_diagram, plus a marker at the model's parameters.
    json_path = diagram.save(out / "diagram.json")
    ax = plot_bifurcation_diagram(diagram)
    ax.plot(*own, marker="*", color="red", markersize=12, linestyle="none", label="the model")
    ax.legend(loc="lower left", fontsize="small")
    png_path = out / "diagram.png"
    ax.figure.savefig(png_path, dpi=120)
    print(f"wrote {png_path} and {json_path}")


if __name__ == "__main__":
    main()
