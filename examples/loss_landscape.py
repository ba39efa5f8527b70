"""The paper's Fig. 3 in small: the loss landscape of its 2-D PLRNN over (A[0], A[1]) with the bifurcation
curves, and a BPTT and a GTF run trained in that plane from the same start, drawn on it.

``loss_landscape`` evaluates the free-running loss and its gradient norm in every grid cell at once and marks
the cells on the curves (exact cycle counts of orders 1..4 from ``scan``); ``train_in_plane`` trains only
A[0] and A[1] with ``DSRModule`` and the ``BifurcationMonitor`` attached and writes one run folder per run;
``path_crossings`` counts where a path crosses the curves and whether its loss jumps there.

    python examples/loss_landscape.py            # 60 x 60 grid, T = 200, 2 starts x 2 methods, ~40 s
    python examples/loss_landscape.py --quick    # 15 x 15 grid, T = 50, 1 start, a few seconds
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import numpy as np
import torch

from bifurcation_callback.bifurcations import RunPath, loss_landscape, path_crossings
from bifurcation_callback.data import plrnn_teacher
from bifurcation_callback.landscape_runs import train_in_plane
from bifurcation_callback.models import model_to_state
from bifurcation_callback.plots import plot_loss_landscape


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="example_out/loss_landscape", help="output folder (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="15 x 15 grid, T = 50, one start, 20 steps")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    n, seq_len, starts, steps = (15, 50, [[0.3, 0.5]], 20) if args.quick else (60, 200, [[0.3, 0.5], [1.15, 0.4]], 150)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, teacher = plrnn_teacher(seq_len + 1)  # the paper's teacher on its stable 16-cycle, and the teacher itself
    a11, a22 = (float(v) for v in teacher.A.detach())
    grid = (np.linspace(a11 - 1, a11 + 1, n), np.linspace(a22 - 1, a22 + 1, n))  # the paper's Δa ∈ [-1, 1]²

    landscape = loss_landscape(teacher, x, "A[0]", "A[1]", grid, max_order=4)
    cliff = landscape.cliff(bounded_only=True)
    print(f"{n} x {n} cells, T = {seq_len}: loss and gradient in {landscape.elapsed_s:.2f} s, curves in "
          f"{landscape.diagram.elapsed_s:.2f} s; {int(landscape.boundary.sum())} cells on the curves")
    print(f"gradient on the curves / elsewhere (cells with bounded orbits): {cliff.ratio:.3g}, "
          f"p = {cliff.p_value:.3g} (labels shuffled), {cliff.p_value_shift:.3g} (curves shifted)")

    folders = train_in_plane(teacher, x, "A[0]", "A[1]", starts, out_dir=out / "runs", n_steps=steps, progress=False)
    runs = [RunPath.load(folder) for folder in folders]
    statistics = [path_crossings(landscape, run) for run in runs]
    for run, stats in zip(runs, statistics):
        print(f"{run.name}: ({run.a[0]:.2f}, {run.b[0]:.2f}) -> ({run.a[-1]:.2f}, {run.b[-1]:.2f}), loss "
              f"{run.loss[0]:.3g} -> {run.loss[-1]:.3g}, {stats.n_crossings} curve crossings, {len(stats.loss_jumps)} loss jumps")

    figure = plot_loss_landscape(landscape, runs, statistics=statistics)
    figure.savefig(out / "landscape.png", dpi=100)
    (out / "landscape.json").write_text(json.dumps(landscape.to_dict()))
    np.save(out / "teacher.npy", x)
    (out / "teacher.json").write_text(json.dumps(model_to_state(teacher)))
    command = [
        "bifurcation-callback", "landscape", str(out / "teacher.json"), "--data", str(out / "teacher.npy"),
        "--param-a", "A[0]", "--range-a", repr(float(grid[0][0])), repr(float(grid[0][-1])),
        "--param-b", "A[1]", "--range-b", repr(float(grid[1][0])), repr(float(grid[1][-1])), "--n", str(n),
        "--runs", *map(str, folders), "--out", str(out / "cli_landscape"),
    ]
    print(f"wrote {out / 'landscape.png'} and {out / 'landscape.json'}; the same from the command line:\n  {shlex.join(command)}")


if __name__ == "__main__":
    main()
