"""The monitor against ground truth at every step, with weights planted along straight paths (no learning):
between two random weight sets, crossing several bifurcations, the monitor's counts must equal exhaustive
enumeration of every region sequence at every monitored step; towards the paper's 16-cycle teacher, the
attractor must be its stable 16-cycle at every step once the teacher is reached."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from bifurcation_callback.callback import BifurcationMonitor
from bifurcation_callback.cycles import exhaustive_cycles, find_cycles
from bifurcation_callback.data import _teacher_model
from bifurcation_callback.models import PLRNN

from .tiny_modules import TinyRNNModule, quiet_trainer_kwargs, random_sequences

N_STEPS = 40
MAX_ORDER = 3


def random_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "A": torch.rand(3, generator=generator) * 2.2 - 1.1,
        "W": (torch.rand(3, 3, generator=generator) * 2 - 1) * 1.2,
        "h": torch.rand(3, generator=generator) * 2 - 1,
    }


def set_on_path(rnn: PLRNN, start: dict, end: dict, step: int) -> None:
    fraction = min(step, N_STEPS - 1) / (N_STEPS - 1)
    with torch.no_grad():
        for name in ("A", "W", "h"):
            getattr(rnn, name).copy_((1 - fraction) * start[name] + fraction * end[name])


# Seeds of path ends chosen (by exhaustive enumeration along the path) so that the path crosses 3-4 changes of the
# cycle counts, in two orders each: fixed points and 2-cycles (26), 2- and 3-cycles (48).
# Sync, and async with a queue that never drops a step: the worker process must give the same exact picture.
MODES = {"sync": {"mode": "sync"}, "async": {"mode": "async", "queue_size": None}}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("seed", [26, 48])
def test_counts_equal_exhaustive_enumeration_at_every_monitored_step(tmp_path, seed, mode):
    start, end = random_weights(seed), random_weights(seed + 1)
    module = TinyRNNModule(PLRNN(3), lr=0.0, schedule=lambda step, rnn: set_on_path(rnn, start, end, step))
    monitor = BifurcationMonitor(max_order=MAX_ORDER, jsonl_path=str(tmp_path / "events.jsonl"), **MODES[mode])
    trainer = pl.Trainer(max_steps=N_STEPS, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(module, random_sequences(n=8 * N_STEPS, dim=3))

    reference = PLRNN(3).double()
    wrong, changes, previous = [], 0, None
    records = [record for record in monitor.records if "skipped" not in record]
    assert [record["step"] for record in records] == list(range(N_STEPS))
    for record in records:
        set_on_path(reference, start, end, record["step"])
        exact = exhaustive_cycles(reference, max_order=MAX_ORDER)
        truth = ({str(k): n for k, n in exact.counts().items()}, {str(k): n for k, n in exact.stable_counts().items()})
        if (record["n_cycles"], record["n_stable"]) != truth:
            wrong.append((record["step"], record["n_cycles"], record["n_stable"], truth))
        changes += previous is not None and truth != previous
        previous = truth
    assert changes >= 3, "the planted path should cross several bifurcations"
    assert not wrong, f"{len(wrong)} of {len(records)} steps differ from exhaustive enumeration: {wrong[:5]}"


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_teachers_16_cycle_is_reported_as_the_attractor_at_every_step_once_reached(tmp_path, mode):
    """The paper's 2-D teacher's attractor is a stable 16-cycle, far beyond max_order 4.  Weights move along a
    straight path from a perturbed teacher to the teacher (reached at step 8); from then on the monitor must
    report a stable 16-cycle attractor at every step."""
    teacher = _teacher_model("16-cycle")
    generator = torch.Generator().manual_seed(3)
    end = {name: getattr(teacher, name).detach().float() for name in ("A", "W", "h")}
    start = {name: value + 0.15 * torch.randn(value.shape, generator=generator)
             for name, value in end.items()}
    reached = 8

    def schedule(step: int, rnn: PLRNN) -> None:
        fraction = min(step / reached, 1.0)
        for name in ("A", "W", "h"):
            getattr(rnn, name).copy_((1 - fraction) * start[name] + fraction * end[name])

    monitor = BifurcationMonitor(max_order=4, jsonl_path=str(tmp_path / "events.jsonl"), **MODES[mode])
    trainer = pl.Trainer(max_steps=16, callbacks=[monitor], **quiet_trainer_kwargs(tmp_path, logger=False))
    trainer.fit(TinyRNNModule(PLRNN(2), lr=0.0, schedule=schedule), random_sequences(n=8 * 16, dim=2))

    held = PLRNN(2)  # the teacher as the module holds it (float32 weights), analysed in float64 like the monitor
    with torch.no_grad():
        schedule(reached, held)
    (stable_16,) = [c for c in find_cycles(held, orders=[16]) if c.is_stable]
    after = [record for record in monitor.records if record["step"] >= reached]
    assert [record["step"] for record in after] == list(range(reached, 16))
    for record in after:
        attractor = record["attractor"]
        assert (attractor["kind"], attractor["period"], attractor["stable"]) == ("cycle", 16, True), record["step"]
        assert attractor["spectral_radius"] == pytest.approx(stable_16.spectral_radius, rel=1e-6)
    assert monitor.summary["final_attractor"]["label"] == "16-cycle"
