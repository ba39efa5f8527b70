"""Speed of the exact cell listing (regions.py): cells per second against the LP enumeration, the per-step cost
of CellListing along a training run, and what the listing adds to the monitor's per-step find_cycles.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/bench_regions.py [--path readme300.pt] [--steps 300] [--repeats 3] [--no-lp]

One torch thread (``torch.set_num_threads(1)``, as find_cycles and the monitor's worker use).

1. ``list_cells`` against ``models.enumerate_region_codes`` (one LP per partial cell no known state reaches) on
   the switching planes of ShallowPLRNN(2, 8), (3, 8), (3, 12), (3, 16), ClippedShallowPLRNN(3, 8), and, for
   the listing alone (the LPs would take hours), ShallowPLRNN(3, 50), (6, 20), (4, 50) and ClippedShallowPLRNN(3, 50).
   Medians of ``--repeats`` runs.
2. Along a training run of ShallowPLRNN(3, 50) (the README's GTF example; ``--path``: a list of per-step
   ``state_dict`` saved with ``torch.save``; without it the run is trained here, 300 steps, which needs
   Lightning): ``CellListing.update`` per step against a fresh ``list_cells``, the outcomes (certified /
   reused / updated / listed), and how many cells change per step.
3. The monitor's per-step call, ``find_cycles(model, max_order=4, n_starts=32, inner=5, outer=1,
   warm_start=previous)``, with the listing (order 1 exhaustive) and without it (``REGION_LISTING_LIMIT``
   set to 128, the old cap: every order searched, as before issue 20), and the order-1 counts of both
   against the exact count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bifurcation_callback import ClippedShallowPLRNN, ShallowPLRNN, find_cycles  # noqa: E402
from bifurcation_callback import _search as cycles_module  # noqa: E402  (where the region limits are read)
from bifurcation_callback.models import enumerate_region_codes  # noqa: E402
from bifurcation_callback.regions import CellListing, list_cells  # noqa: E402

WITH_LP = [("ShallowPLRNN", 2, 8), ("ShallowPLRNN", 3, 8), ("ShallowPLRNN", 3, 12), ("ShallowPLRNN", 3, 16), ("ClippedShallowPLRNN", 3, 8)]
LISTING_ONLY = [("ShallowPLRNN", 3, 50), ("ShallowPLRNN", 6, 20), ("ShallowPLRNN", 4, 50), ("ClippedShallowPLRNN", 3, 50)]
CLASSES = {"ShallowPLRNN": ShallowPLRNN, "ClippedShallowPLRNN": ClippedShallowPLRNN}


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def cells_per_second(repeats: int, with_lp: bool) -> None:
    print("1. cells per second: list_cells (vertices, exact) vs enumerate_region_codes (LPs); medians of", repeats)
    print(f"   {'model':<28} {'cells':>7} {'list_cells s':>13} {'cells/s':>10} {'LP s':>8} {'LP cells/s':>10} {'speed-up':>9}")
    for kind, dim, hidden in WITH_LP + LISTING_ONLY:
        torch.manual_seed(0)
        model = CLASSES[kind](dim, hidden).double()
        G, g = (t.detach() for t in model.switching_planes())
        fast, codes = timed(lambda: list_cells(G, g), repeats)
        line = f"   {f'{kind}({dim}, {hidden})':<28} {codes.shape[0]:>7} {fast:>13.4f} {codes.shape[0] / fast:>10.0f}"
        if with_lp and (kind, dim, hidden) in WITH_LP:
            slow, reference = timed(lambda: enumerate_region_codes(G, g), 1)
            assert torch.equal(reference, codes), "the listings differ"
            line += f" {slow:>8.2f} {codes.shape[0] / slow:>10.0f} {slow / fast:>8.0f}x"
        else:
            line += f" {'-':>8} {'-':>10} {'-':>9}"
        print(line, flush=True)


def training_path(path: Path | None, steps: int) -> list[dict]:
    if path is not None and path.exists():
        return torch.load(path)[:steps]
    print(f"   (no saved path: training the README's GTF example for {steps} steps)", flush=True)
    import logging
    import warnings

    import lightning.pytorch as pl

    from bifurcation_callback import DSRModule, TimeSeriesDataModule, lorenz63

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(0)
    states: list[dict] = []

    class Grab(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            states.append({k: v.detach().clone() for k, v in pl_module.rnn.state_dict().items()})

    module = DSRModule(ShallowPLRNN(latent_dim=3, hidden_dim=50), training="gtf", alpha="adaptive")
    trainer = pl.Trainer(
        max_steps=steps, callbacks=[Grab()], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, TimeSeriesDataModule(lorenz63(5000), seq_len=200, batch_size=16))
    return states


def models_of(states: list[dict]) -> list[ShallowPLRNN]:
    models = []
    for state in states:
        model = ShallowPLRNN(3, 50).double()
        model.load_state_dict({k: v.double() for k, v in state.items()})
        models.append(model)
    return models


def per_step_listing(models: list[ShallowPLRNN]) -> None:
    print(f"2. CellListing along {len(models)} training steps of ShallowPLRNN(3, 50)")
    listing = CellListing()
    update_times, fresh_times, changed = [], [], []
    previous = None
    for model in models:
        G, g = (t.detach() for t in model.switching_planes())
        started = time.perf_counter()
        codes = listing.update(G, g)
        update_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        fresh = list_cells(G, g)
        fresh_times.append(time.perf_counter() - started)
        assert torch.equal(codes, fresh), "CellListing differs from a fresh listing"
        if previous is not None:
            before = {row.tobytes() for row in np.packbits(previous.numpy(), axis=1)}
            changed.append(sum(row.tobytes() not in before for row in np.packbits(codes.numpy(), axis=1)))
        previous = codes
    later = update_times[1:]
    print(f"   cells per step: {codes.shape[0]}; cells that change per step: median {statistics.median(changed):.0f}, "
          f"max {max(changed)}; steps with a change: {sum(c > 0 for c in changed)} of {len(changed)}")
    print(f"   outcomes: {listing.counts}")
    print(f"   CellListing.update: median {1e3 * statistics.median(later):.1f} ms, mean {1e3 * statistics.mean(later):.1f} ms, "
          f"p95 {1e3 * float(np.percentile(later, 95)):.1f} ms (first listing {1e3 * update_times[0]:.0f} ms)")
    print(f"   fresh list_cells:   median {1e3 * statistics.median(fresh_times):.1f} ms; all {len(models)} equal", flush=True)


def monitor_cost(models: list[ShallowPLRNN]) -> None:
    print("3. the monitor's per-step find_cycles(max_order=4, n_starts=32, inner=5, outer=1, warm start)")
    per_step = {"n_starts": 32, "inner": 5, "outer": 1}
    rows = {}
    for label, limit in (("with the listing", cycles_module.REGION_LISTING_LIMIT), ("without (old cap 128)", 128)):
        saved = cycles_module.REGION_LISTING_LIMIT
        cycles_module.REGION_LISTING_LIMIT = limit
        cycles_module._CELL_LISTINGS.clear()
        try:
            previous = find_cycles(models[0], max_order=4)
            times, counts, statuses = [], [], set()
            for model in models[1:]:
                started = time.perf_counter()
                previous = find_cycles(model, max_order=4, warm_start=previous, **per_step)
                times.append(time.perf_counter() - started)
                counts.append(len(previous.by_order(1)))
                statuses.add(previous.statuses[1])
        finally:
            cycles_module.REGION_LISTING_LIMIT = saved
        rows[label] = counts
        print(f"   {label:<22} median {1e3 * statistics.median(times):.1f} ms, mean {1e3 * statistics.mean(times):.1f} ms, "
              f"p95 {1e3 * float(np.percentile(times, 95)):.1f} ms; order 1 {sorted(statuses)}", flush=True)
    exact = [len(find_cycles(model, max_order=1, exhaustive_limit=2**18).by_order(1)) for model in models[1:]]
    for label, counts in rows.items():
        wrong = sum(a != b for a, b in zip(counts, exact))
        print(f"   {label:<22} order-1 count differs from the exact count at {wrong} of {len(exact)} steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", type=Path, default=None, help="torch.save'd list of ShallowPLRNN(3, 50) state_dicts")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-lp", action="store_true", help="skip the LP enumeration (minutes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread")
    cells_per_second(args.repeats, not args.no_lp)
    models = models_of(training_path(args.path, args.steps))
    per_step_listing(models)
    monitor_cost(models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
