"""The ``bifurcation-callback`` console script.

Each subcommand is one function ``_run_<name>(args) -> int`` registered in ``COMMANDS``;
errors the user can fix (bad files, bad arguments) print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["main", "load_model"]


class UsageError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


def load_model(path: str | Path):
    """Load a model from a parameter JSON (see ``model_to_state``) or a
    Lightning checkpoint / ``torch.save`` file holding a ``state_dict`` of one of the built-in models.

    Raises
    ------
    UsageError
        Missing file, unreadable content, unknown model kind or wrong parameter shapes.
    """
    from .models import model_from_state

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix == ".json":
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{path}: not valid JSON ({error})") from None
    else:
        state = _state_from_checkpoint(path)
    try:
        return model_from_state(state)
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from None


def _state_from_checkpoint(path: Path) -> dict:
    """Find a built-in model's parameters in a checkpoint's state_dict (prefix such as ``rnn.`` stripped)."""
    from .models import MODEL_REGISTRY

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for foreign files
        raise UsageError(f"{path}: cannot be read as a torch checkpoint ({error})") from None
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    hyper = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    described = checkpoint.get("bifurcation_model") if isinstance(checkpoint, dict) else None
    if isinstance(described, dict) and "model" in described:
        return described
    if not isinstance(state_dict, dict):
        raise UsageError(f"{path}: no state_dict inside")
    kind = hyper.get("rnn_class") if isinstance(hyper, dict) else None
    for prefix in sorted({name.rsplit(".", 1)[0] + "." if "." in name else "" for name in state_dict}):
        params = {name[len(prefix) :]: value for name, value in state_dict.items() if name.startswith(prefix)}
        params = {name: value for name, value in params.items() if "." not in name}
        guess = kind or _guess_kind(set(params))
        if guess in MODEL_REGISTRY:
            return {"model": guess, "params": {n: v.double().tolist() for n, v in params.items()}}
    raise UsageError(
        f"{path}: found no parameters of {', '.join(MODEL_REGISTRY)} in the state_dict; "
        "save the model with bifurcation_callback.models.model_to_state to a .json file instead"
    )


def _guess_kind(names: set[str]) -> str | None:
    if names == {"A", "W", "h"}:
        return "PLRNN"
    if names == {"A", "W1", "W2", "h1", "h2"}:
        return "ShallowPLRNN"
    return None


def _add_find(subparsers) -> None:
    parser = subparsers.add_parser(
        "find",
        help="all fixed points and cycles of a saved model",
        description="Find every fixed point and k-cycle of a saved piecewise-linear model (SCYFI).",
    )
    parser.add_argument("model", help="parameter JSON (model_to_state) or checkpoint file")
    parser.add_argument("--max-order", type=int, default=4, help="search orders 1..K (default 4)")
    parser.add_argument("--orders", type=int, nargs="+", help="search exactly these orders instead")
    parser.add_argument("--n-starts", type=int, default=256, help="parallel random starts per order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float32", action="store_true", help="search in float32 (default float64)")
    parser.add_argument("--json", metavar="PATH", help="also write the CycleSet as JSON ('-' for stdout)")


def _run_find(args: argparse.Namespace) -> int:
    from .cycles import find_cycles

    model = load_model(args.model)
    try:
        cycles = find_cycles(
            model,
            args.max_order,
            orders=args.orders,
            n_starts=args.n_starts,
            seed=args.seed,
            dtype=torch.float32 if args.float32 else torch.float64,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json == "-":
        print(json.dumps(cycles.to_dict(), indent=2))
        return 0
    counts = ", ".join(f"order {k}: {n}" for k, n in cycles.counts().items())
    print(f"{type(model).__name__} (state dim {model.state_dim}) — {len(cycles)} cycles ({counts})")
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
    parser.add_argument("model", help="parameter JSON (model_to_state) or checkpoint file")
    parser.add_argument("--param-a", required=True, help="first parameter entry, e.g. A[0] or W[0,1]")
    parser.add_argument("--range-a", required=True, type=float, nargs=2, metavar=("LO", "HI"), help="values of param-a")
    parser.add_argument("--param-b", required=True, help="second parameter entry, e.g. A[1] or h[1]")
    parser.add_argument("--range-b", required=True, type=float, nargs=2, metavar=("LO", "HI"), help="values of param-b")
    parser.add_argument("--n", type=int, default=50, help="grid points per axis (default 50)")
    parser.add_argument("--max-order", type=int, default=4, help="count orders 1..K (default 4)")
    parser.add_argument("--method", choices=SCAN_METHODS, default="auto", help="default auto: exact when small enough")
    parser.add_argument("--out", default="diagram", help="output prefix: writes OUT.png and OUT.json (default diagram)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _run_scan(args: argparse.Namespace) -> int:
    import numpy as np

    from .bifurcations import scan

    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    model = load_model(args.model)
    grid = (np.linspace(*args.range_a, args.n), np.linspace(*args.range_b, args.n))
    try:
        diagram = scan(
            model, args.param_a, args.param_b, grid, max_order=args.max_order, method=args.method,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    out = Path(args.out)
    if out.parent != Path("."):
        out.parent.mkdir(parents=True, exist_ok=True)
    json_path = diagram.save(out.with_name(out.name + ".json"))
    png_path = out.with_name(out.name + ".png")
    from .plots import plot_bifurcation_diagram

    plot_bifurcation_diagram(diagram).figure.savefig(png_path, dpi=120)
    print(
        f"{diagram.model}: {args.n}x{args.n} grid of {args.param_a} x {args.param_b}, orders 1..{args.max_order} "
        f"({diagram.method}, {diagram.elapsed_s:.2f} s); wrote {png_path} and {json_path}"
    )
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
            "D_stsp, D_H, loss jumps, bifurcation events by kind, jumps explained, p-value, monitor "
            "overhead) and write TensorBoard logs.  Full mode takes a few minutes on a laptop CPU."
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
    if config.lr <= 0 or not 0.0 <= config.alpha <= 1.0:
        raise UsageError(f"--lr must be > 0 and --alpha in [0, 1], got {config.lr} and {config.alpha}")
    run_demo(config, args.logdir)
    return 0


def _add_compare(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="side-by-side table of finished runs (summary.json)",
        description=(
            "Print the demo's comparison table from saved runs: every summary.json under the given folders "
            "(searched recursively) or files, with the demo.json beside it when present."
        ),
    )
    parser.add_argument("logdirs", nargs="+", metavar="LOGDIR", help="run folder, root folder or summary.json")


def _run_compare(args: argparse.Namespace) -> int:
    from .demo import collect_runs, comparison_table

    try:
        runs = collect_runs(args.logdirs)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(comparison_table(runs))
    return 0


# name -> (add the subparser, run it): the single list of subcommands.
COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int]]] = {
    "demo": (_add_demo, _run_demo),
    "find": (_add_find, _run_find),
    "scan": (_add_scan, _run_scan),
    "compare": (_add_compare, _run_compare),
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
        return COMMANDS[args.command][1](args)
    except UsageError as error:
        print(f"bifurcation-callback {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
