"""The ``bifurcation-callback`` console script.

Each subcommand is one function ``_run_<name>(args) -> int`` registered in ``COMMANDS``;
errors the user can fix (bad files, bad arguments) print one line to stderr and exit with status 2.
Heavy modules are imported inside the subcommands that need them: ``find``, ``scan`` and ``landscape``
never import Lightning or TensorBoard.  A reader that closes the pipe early (``... | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, load_model

__all__ = ["main", "load_model"]


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


MODEL_CLASS_HELP = (
    "the model class of a checkpoint that does not name it: one of {names}, or your own class as "
    "package.module:Class, built by its classmethod from_state_dict(state_dict) when it has one, else as "
    "Class(**CONFIG) followed by load_state_dict (default: the class DSRModule stored in the checkpoint, "
    "else a guess from the parameter names that must be unambiguous)"
)


def _parse_config(entries: Sequence[str] | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for entry in entries or ():
        name, sep, raw = entry.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--config must be NAME=VALUE, got {entry!r}")
        try:
            config[name] = json.loads(raw)
        except json.JSONDecodeError:
            config[name] = raw
    return config


def _model_class(value: str) -> str:
    from .models import MODEL_SPECS

    if value in MODEL_SPECS or (":" in value and all(value.partition(":")[::2])):
        return value
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(MODEL_SPECS)} or package.module:Class, got {value!r}"
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model file and how to read it: shared by find, scan and landscape."""
    parser.add_argument("model", help="parameter JSON (model_to_state) or checkpoint file")
    _add_model_reading_arguments(parser)


def _add_model_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """How to read a model from a checkpoint: shared by the model file's commands and analyse."""
    from .models import MODEL_SPECS

    parser.add_argument(
        "--model-class", type=_model_class, metavar="NAME", help=MODEL_CLASS_HELP.format(names=", ".join(MODEL_SPECS))
    )
    parser.add_argument(
        "--config",
        nargs="+",
        metavar="NAME=VALUE",
        help="constructor arguments for --model-class (e.g. n_relu=2 for an ALRNN checkpoint without its config)",
    )
    parser.add_argument(
        "--prefix",
        help="state_dict prefix of the model's entries, e.g. 'latent_model.' (default: the one that fits)",
    )


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The two parameter entries and their ranges: shared by scan and landscape."""
    parser.add_argument("--param-a", required=True, help="first parameter entry, e.g. A[0] or W[0,1]")
    parser.add_argument("--range-a", required=True, type=float, nargs=2, metavar=("LO", "HI"), help="values of param-a")
    parser.add_argument("--param-b", required=True, help="second parameter entry, e.g. A[1] or h[1]")
    parser.add_argument("--range-b", required=True, type=float, nargs=2, metavar=("LO", "HI"), help="values of param-b")


def _output_paths(prefix: str) -> tuple[Path, Path]:
    """``(PREFIX.json, PREFIX.png)``, with PREFIX's folder created."""
    out = Path(prefix)
    if out.parent != Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".png")


def _load_model_from_args(args: argparse.Namespace):
    return load_model(args.model, model_class=args.model_class, config=_parse_config(args.config), prefix=args.prefix)


def _add_find(subparsers) -> None:
    parser = subparsers.add_parser(
        "find",
        help="all fixed points and cycles of a saved model",
        description="Find every fixed point and k-cycle of a saved piecewise-linear model (SCYFI).",
    )
    _add_model_arguments(parser)
    _add_search_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help="also write the CycleSet as JSON ('-' for stdout)")


def _add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """find_cycles' options: shared by find and analyse."""
    parser.add_argument("--max-order", type=int, default=4, help="search orders 1..K (default 4)")
    parser.add_argument("--orders", type=int, nargs="+", help="search exactly these orders instead")
    parser.add_argument("--n-starts", type=int, default=256, help="parallel random starts per order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float32", action="store_true", help="search in float32 (default float64)")


def _run_find(args: argparse.Namespace) -> int:
    from .cycles import find_cycles

    model = _load_model_from_args(args)
    try:
        cycles = find_cycles(
            model,
            args.max_order,
            orders=args.orders,
            n_starts=args.n_starts,
            seed=args.seed,
            dtype=torch.float32 if args.float32 else torch.float64,
            progress=True,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json == "-":
        print(json.dumps(cycles.to_dict(), indent=2))
        return 0
    # Counts of orders that were not enumerated exhaustively are lower bounds, shown as "≥ n" (legend in summary).
    counts = ", ".join(f"order {k}: {cycles.count_label(k)}" for k in cycles.orders)
    total = f"{len(cycles)}" if cycles.complete else f"≥ {len(cycles)}"
    print(f"{type(model).__name__} (state dim {model.state_dim}) — {total} cycles ({counts})")
    print(cycles.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(cycles.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return 0


def _add_scan(subparsers) -> None:
    from .bifurcations import SCAN_METHODS

    parser = subparsers.add_parser(
        "scan",
        help="2-D bifurcation diagram of a saved model",
        description="Count fixed points and k-cycles (and how many are stable) on a grid of two parameters; "
        "writes OUT.png and OUT.json.",
    )
    _add_model_arguments(parser)
    _add_grid_arguments(parser)
    parser.add_argument("--n", type=int, default=50, help="grid points per axis (default 50)")
    parser.add_argument("--max-order", type=int, default=4, help="count orders 1..K (default 4)")
    parser.add_argument("--method", choices=SCAN_METHODS, default="auto", help="default auto: exact when small enough")
    parser.add_argument("--out", default="diagram", help="output prefix: writes OUT.png and OUT.json (default diagram)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_scan(args: argparse.Namespace) -> int:
    import numpy as np

    from .bifurcations import scan

    if args.n < 1:  # wording pinned by tests/test_bifurcations.py (not this branch's file)
        raise UsageError(f"--n must be >= 1, got {args.n}")
    model = _load_model_from_args(args)
    grid = (np.linspace(*args.range_a, args.n), np.linspace(*args.range_b, args.n))
    try:
        diagram = scan(
            model, args.param_a, args.param_b, grid, max_order=args.max_order, method=args.method,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    json_path, png_path = _output_paths(args.out)
    diagram.save(json_path)
    from .plots import plot_bifurcation_diagram

    plot_bifurcation_diagram(diagram).figure.savefig(png_path, dpi=120)
    print(
        f"{diagram.model}: {args.n}x{args.n} grid of {args.param_a} x {args.param_b}, orders 1..{args.max_order} "
        f"({diagram.method}, {diagram.elapsed_s:.2f} s); wrote {png_path} and {json_path}"
    )
    return 0


def _add_landscape(subparsers) -> None:
    from .bifurcations import LANDSCAPE_GRADIENTS, RUN_EVENTS_FILE, RUN_PATH_FILE, RUN_SUMMARY_FILE, SCAN_METHODS

    parser = subparsers.add_parser(
        "landscape",
        help="loss landscape over two parameters with its bifurcation curves and training paths (paper's Fig. 3)",
        description=(
            "Evaluate the loss on DATA (free running from the first data point, or GTF with --alpha) and log10 of "
            "its gradient norm on a grid of two parameters, with the bifurcation curves of the exact scan (cells "
            "whose cycle counts or stable counts of some order 1..K differ from a neighbour's) and the cliff "
            "statistic (gradient on those cells against the rest); draw training paths from run folders; write "
            "OUT.png and OUT.json."
        ),
        epilog=(
            f"A RUN_DIR holds {RUN_PATH_FILE} (the two parameters, loss and gradient norm at every training step, "
            f"written by bifurcation_callback.landscape_runs.train_in_plane or RunPath.save) and, when a "
            f"BifurcationMonitor watched the run with jsonl_path there, its {RUN_EVENTS_FILE} and {RUN_SUMMARY_FILE}."
        ),
    )
    _add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DATA.npy", help="observed sequences, shape (T, N) or (B, T, N)")
    _add_grid_arguments(parser)
    parser.add_argument("--n", type=int, default=100, help="grid points per axis (default 100)")
    parser.add_argument(
        "--alpha", type=float, default=0.0, help="GTF forcing weight of the loss in [0, 1] (default 0: free running)"
    )
    parser.add_argument("--seq-len", type=int, help="use the first SEQ_LEN + 1 points of each sequence (default all)")
    parser.add_argument("--max-order", type=int, default=4, help="bifurcation curves of orders 1..K (default 4)")
    parser.add_argument(
        "--gradient", choices=list(LANDSCAPE_GRADIENTS), default="model",
        help="; ".join(f"{name}: {what}" for name, what in LANDSCAPE_GRADIENTS.items()) + " (default model)",
    )
    parser.add_argument("--method", choices=SCAN_METHODS, default="auto", help="scan method for the curves (default auto)")
    parser.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR", help="run folders whose paths to draw (see below)")
    parser.add_argument(
        "--window", type=int, default=5, help="steps within which a crossing and a loss jump count as together (default 5)"
    )
    parser.add_argument(
        "--loss-floor", type=float, default=0.0,
        help="raise a run's losses below this to it before looking for loss jumps (a converged run jitters by "
        "orders of magnitude at losses of 1e-10; default 0: keep all)",
    )
    parser.add_argument("--out", default="landscape", help="output prefix: writes OUT.png and OUT.json (default landscape)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _load_sequences(path: str):
    import numpy as np

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--data {path}: no such file")
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UsageError(f"--data {path}: not a .npy array ({error})") from None


def _run_landscape(args: argparse.Namespace) -> int:
    import numpy as np

    from .bifurcations import RunPath, loss_landscape, path_crossings

    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    data = _load_sequences(args.data)
    try:
        runs = [RunPath.load(folder) for folder in args.runs]
    except ValueError as error:
        raise UsageError(f"--runs: {error}") from None
    model = _load_model_from_args(args)
    grid = (np.linspace(*args.range_a, args.n), np.linspace(*args.range_b, args.n))
    try:
        landscape = loss_landscape(
            model, data, args.param_a, args.param_b, grid, alpha=args.alpha, seq_len=args.seq_len,
            max_order=args.max_order, gradient=args.gradient, scan_method=args.method, progress=not args.no_progress,
        )
        statistics = [path_crossings(landscape, run, window=args.window, loss_floor=args.loss_floor) for run in runs]
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    cliff, cliff_bounded = landscape.cliff(), landscape.cliff(bounded_only=True)
    json_path, png_path = _output_paths(args.out)
    result = {
        **landscape.to_dict(),
        "cliff": cliff.to_dict(),
        "cliff_bounded": cliff_bounded.to_dict(),
        "runs": [
            {
                "dir": str(folder),
                "method": run.method,
                "path": {key: run.to_dict()[key] for key in ("steps", "a", "b", "loss")},
                "crossings": stats.to_dict(),
                "monitor_jump_correlation": (run.monitor_summary or {}).get("jump_correlation"),
            }
            for folder, run, stats in zip(args.runs, runs, statistics)
        ],
    }
    json_path.write_text(json.dumps(result))
    from .plots import plot_loss_landscape

    plot_loss_landscape(landscape, runs, statistics=statistics).savefig(png_path, dpi=120)
    print(
        f"{landscape.diagram.model}: {args.n}x{args.n} grid of {args.param_a} x {args.param_b}, T = {landscape.seq_len}, "
        f"alpha = {landscape.alpha:g}; loss and gradient {landscape.elapsed_s:.2f} s, curves of orders 1..{args.max_order} "
        f"({landscape.diagram.method}) {landscape.diagram.elapsed_s:.2f} s"
    )
    print(
        f"boundary cells: {int(landscape.boundary.sum())} of {landscape.boundary.size}; gradient on them / elsewhere "
        f"(ratio of medians): {cliff.ratio:.3g}, p = {cliff.p_value:.3g} (labels shuffled), {cliff.p_value_shift:.3g} "
        f"(curves shifted); over the {int(landscape.bounded.sum())} cells with bounded orbits: {cliff_bounded.ratio:.3g}, "
        f"p = {cliff_bounded.p_value:.3g}, {cliff_bounded.p_value_shift:.3g}"
    )
    for stats in statistics:
        row = stats.to_dict()
        together, explained, p_value = (
            "n/a" if row[key] is None else f"{row[key]:.3g}" for key in ("crossings_with_jump", "jumps_at_crossing", "p_value")
        )
        print(
            f"  {stats.name} ({stats.method}): {stats.n_crossings} crossings, {len(stats.loss_jumps)} loss jumps; "
            f"crossings with a jump {together}, jumps at a crossing {explained}, p = {p_value}"
        )
    print(f"wrote {png_path} and {json_path}")
    return 0


def _add_demo(subparsers) -> None:
    from .demo import DEMO_DATASETS, DemoConfig

    full = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        help="train BPTT and GTF with the monitor attached and compare them",
        description=(
            "Train the same PLRNN on the same data and seeds by BPTT (free running) and by generalized "
            "teacher forcing, with a BifurcationMonitor attached; print a side-by-side table (final loss, "
            "D_stsp, D_H, final attractor, attractor changes, loss jumps, bifurcation events by kind with "
            "border collisions and degenerate events of the attractor apart, jumps with an event nearby, "
            "p-value, monitor overhead; with several seeds, BPTT vs GTF tests) and write TensorBoard logs.  "
            "Full mode takes a few minutes on a laptop CPU."
        ),
    )
    parser.add_argument("--fast", action="store_true", help="1 seed per method, few short steps (about a minute)")
    parser.add_argument("--seeds", type=int, help=f"seeds per method (default {full.seeds}; --fast: 1)")
    parser.add_argument("--steps", type=int, help=f"training steps per run (default {full.steps})")
    parser.add_argument(
        "--data",
        choices=list(DEMO_DATASETS),
        default=full.data,
        help="; ".join(f"{name}: {what}" for name, what in DEMO_DATASETS.items()) + f" (default {full.data})",
    )
    parser.add_argument("--logdir", default="runs/demo", help="TensorBoard root; one folder per run (default runs/demo)")
    # Knobs for tests and experiments, not advertised in --help.
    for name in ("seq-len", "every-n-steps", "max-order", "batch-size"):
        parser.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--alpha", type=float, help=argparse.SUPPRESS)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import demo_config, run_demo

    try:
        config = demo_config(
            fast=args.fast,
            data=args.data,
            seeds=args.seeds,
            steps=args.steps,
            seq_len=args.seq_len,
            every_n_steps=args.every_n_steps,
            max_order=args.max_order,
            batch_size=args.batch_size,
            lr=args.lr,
            alpha=args.alpha,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    run_demo(config, args.logdir)
    return 0


def _add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="side-by-side table of finished runs (summary.json)",
        description=(
            "Print the demo's comparison table from saved runs: every summary.json under the given folders "
            "(searched recursively) or files, with the demo.json beside it when present.  Runs are named by "
            "their folder relative to the folders' common root; a summary.json that BifurcationMonitor did "
            "not write is an error."
        ),
    )
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="run folder, root folder or summary.json")
    parser.add_argument(
        "--json", metavar="PATH", help="write the runs (name, path, summary, demo) as JSON ('-' for stdout) instead of the table"
    )


def _run_compare(args: argparse.Namespace) -> int:
    from .compare import collect_runs, comparison_table

    try:
        runs = collect_runs(args.logdirs)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json == "-":
        print(json.dumps(runs, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
        print(f"wrote {args.json}")
    else:
        print(comparison_table(runs))
    return 0


def _add_analyse(subparsers) -> None:
    from .offline import CACHE_FOLDER, EXECUTORS

    parser = subparsers.add_parser(
        "analyse",
        help="a finished run's checkpoints, analysed as the monitor would have, in parallel",
        description=(
            "Find the cycles and attractors of every checkpoint of a finished run independently (in parallel: local "
            "processes, or Dask on a cluster), then track them in step order as BifurcationMonitor does (the "
            "previous checkpoint's cycles carried over, appearances and disappearances checked against both "
            "checkpoints' weights, the attractor followed), detect the events and, with --logs, the loss jumps.  Writes the "
            "monitor's files to OUT: events.jsonl (one record per checkpoint, at step global_step - 1, with the "
            "checkpoint's path), summary.json and TensorBoard event files; `tensorboard --logdir OUT` and "
            "`bifurcation-callback compare` read them like a monitored run's."
        ),
        epilog=(
            f"A re-run with the same OUT analyses only new or changed checkpoints (the cache in OUT/{CACHE_FOLDER} "
            "is keyed by each file's content and the settings).  An unreadable checkpoint is reported and left out."
        ),
    )
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="checkpoint files, or folders searched recursively for *.ckpt")
    _add_model_reading_arguments(parser)
    _add_search_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (its earlier results are replaced)")
    parser.add_argument("--logs", metavar="PATH",
                        help="the run's TensorBoard event files or CSV metrics.csv (a file or the run's folder): "
                        "the loss per step, for the records and the loss jumps")
    parser.add_argument("--loss-key", default="train_loss", help="the loss metric in --logs (default train_loss)")
    parser.add_argument("--executor", choices=list(EXECUTORS), default="process",
                        help="; ".join(f"{name}: {what}" for name, what in EXECUTORS.items()) + " (default process)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes analysing checkpoints (default 1: this process)")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="a running Dask scheduler, e.g. tcp://10.0.0.1:8786 (with --executor dask; default: a "
                        "local cluster of --workers processes)")
    parser.add_argument("--chunk-size", type=int, default=1, help="checkpoints per task (default 1)")
    parser.add_argument("--max-attractor-period", type=int, default=256,
                        help="longest attractor period detected (0: no attractor analysis; default 256)")
    parser.add_argument("--no-cache", action="store_true", help="analyse every checkpoint again, keep no cache")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _run_analyse(args: argparse.Namespace) -> int:
    import warnings

    from .dashboard import summary_line
    from .offline import analyse_checkpoints

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            run = analyse_checkpoints(
                args.checkpoints, out=args.out, max_order=args.max_order, orders=args.orders, logs=args.logs,
                loss_key=args.loss_key, executor=args.executor, workers=args.workers, scheduler=args.scheduler,
                chunk_size=args.chunk_size, model_class=args.model_class, config=_parse_config(args.config),
                prefix=args.prefix, seed=args.seed, max_attractor_period=args.max_attractor_period,
                finder_kwargs={"n_starts": args.n_starts, "dtype": torch.float32 if args.float32 else torch.float64},
                cache=not args.no_cache, progress=not args.no_progress,
            )
        except ValueError as error:
            raise UsageError(str(error)) from None
    for warning in caught:  # one line each, without the source line Python's warning format adds
        print(f"bifurcation-callback analyse: warning: {warning.message}", file=sys.stderr)
    steps = [record.step for record in run.records]
    offline = run.summary["offline"]
    print(f"{len(run.records)} checkpoints (steps {steps[0]}..{steps[-1]}): {run.n_analysed} analysed now, "
          f"{run.n_cached} from the cache, {len(run.left_out)} left out; orders {offline['orders']}, "
          f"{offline['wall_seconds']:.1f} s")
    print(summary_line(run.summary).replace("BifurcationMonitor:", "offline analysis:", 1))
    print(f"wrote {run.out / 'events.jsonl'}, summary.json and TensorBoard event files; tensorboard --logdir {run.out}")
    return 0


# name -> (add the subparser, run it): the single list of subcommands.
COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "demo": (_add_demo, _run_demo),
    "find": (_add_find, _run_find),
    "scan": (_add_scan, _run_scan),
    "landscape": (_add_landscape, _run_landscape),
    "compare": (_add_compare, _run_compare),
    "analyse": (_add_analyse, _run_analyse),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bifurcation-callback",
        description="Exact cycles, bifurcations and loss jumps of piecewise-linear RNNs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = COMMANDS[args.command][1](args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
        return status
    except (UsageError, CheckpointError) as error:
        print(f"bifurcation-callback {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `... | head`: the reader is gone.  Python's documented recipe: point stdout at devnull so the
        # flush at interpreter exit does not raise again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
