"""Snapshots and the StepAnalyser without a Trainer."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bifurcation_callback.analysis import (
    TIMING_KEYS,
    Snapshot,
    StepAnalyser,
    model_tensors,
    take_snapshot,
    without_timings,
)
from bifurcation_callback.models import ShallowPLRNN
from bifurcation_callback.tracking import CycleTracker

from .tiny_modules import plrnn_2d


def test_a_copied_snapshot_does_not_follow_the_model_and_a_live_one_does():
    model = plrnn_2d()
    copied, live = take_snapshot(model, 0), take_snapshot(model, 0, copy=False)
    with torch.no_grad():
        model.h.add_(1.0)
    h_index = [name for name, _ in model.named_parameters()].index("h")
    assert torch.equal(torch.as_tensor(copied.wait().tensors[h_index]), torch.tensor([0.2, -0.1]))
    assert live.tensors[h_index] is not model.h and torch.equal(live.tensors[h_index], model.h.detach())
    assert len(copied.tensors) == len(model_tensors(model))  # parameters and buffers (the W mask)


def test_snapshot_round_trips_through_a_checkpoint_dict():
    snapshot = take_snapshot(plrnn_2d(), 7, loss=0.25, grad_norm=1.5, reference=torch.randn(5, 2))
    state = snapshot.to_dict()
    assert all(isinstance(t, torch.Tensor) for t in state["tensors"]) and isinstance(state["reference"], torch.Tensor)
    restored = Snapshot.from_dict(pickle.loads(pickle.dumps(state)))
    assert (restored.step, restored.loss, restored.grad_norm) == (7, 0.25, 1.5)
    assert all(np.array_equal(a, b) for a, b in zip(restored.tensors, snapshot.tensors))
    # The reference keeps its dtype (float32 here): it is converted to float64 where the analysis reads it.
    assert restored.reference.dtype == np.float32 and np.array_equal(restored.reference, snapshot.reference)


@pytest.mark.parametrize("kind", ["tensor", "array"])
def test_a_copied_snapshot_copies_the_reference_states_too(kind):
    reference = torch.randn(5, 2) if kind == "tensor" else np.random.default_rng(0).normal(size=(5, 2))
    before = np.array(reference, dtype=float)
    copied, live = take_snapshot(plrnn_2d(), 0, reference=reference), take_snapshot(plrnn_2d(), 0, reference=reference, copy=False)
    reference[:] = 0  # the module refills its buffer in place at the next step
    assert np.array_equal(copied.wait().reference, before) and not np.any(live.wait().reference)


def test_a_snapshot_with_pending_cuda_copies_refuses_to_be_pickled():
    snapshot = take_snapshot(plrnn_2d(), 0)
    snapshot.ready = object()  # as after a non-blocking copy from CUDA
    with pytest.raises(RuntimeError, match=r"wait\(\) must be called"):
        pickle.dumps(snapshot)


def test_the_analyser_gives_the_trackers_results_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = ShallowPLRNN(2, 6)
    analyser = StepAnalyser(model, max_order=2, max_attractor_period=0, seed=3)
    tracker = CycleTracker(2, seed=3)
    for step in range(3):
        with torch.no_grad():
            model.h1.add_(0.05)
        before = [t.clone() for t in model_tensors(model)]
        result = analyser.analyse(take_snapshot(model, step, loss=float(step)))
        assert all(torch.equal(a, b) for a, b in zip(model_tensors(model), before))
        expected = tracker.update(model, step)
        assert result.record.n_cycles == expected.cycles.counts()
        assert result.record.loss == float(step) and "attractor" not in result.record.to_json()
    assert analyser.model is not model


def test_analyser_state_round_trips_and_a_wrong_snapshot_is_named():
    model = plrnn_2d()
    analyser = StepAnalyser(model, max_order=1, max_attractor_period=8)
    analyser.analyse(take_snapshot(model, 0))
    state = analyser.state_dict()
    fresh = StepAnalyser(model, max_order=1, max_attractor_period=8)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(ValueError, match="the snapshot of step 4 has 1 tensors, the model 4"):
        fresh.analyse(Snapshot(4, None, None, [np.zeros(2)]))


def test_a_pickled_result_unpacks_its_cycles_and_orbits_only_when_read():
    torch.manual_seed(0)
    model = ShallowPLRNN(2, 6)
    result = StepAnalyser(model, max_order=2, max_attractor_period=16).analyse(take_snapshot(model, 0, loss=1.0))
    assert result.orbits  # something to carry
    copy = pickle.loads(pickle.dumps(result))
    assert "cycles" not in copy.__dict__ and "orbits" not in copy.__dict__  # still packed
    assert (copy.record, copy.notes) == (result.record, result.notes)
    assert copy.cycles.counts() == result.cycles.counts()
    assert all(np.array_equal(a, b) for a, b in zip(copy.orbits, result.orbits))
    assert "_detail" not in copy.__dict__  # unpacked once, for both
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        copy.colour  # noqa: B018


def test_without_timings_drops_exactly_the_timing_keys():
    record = {"step": 1, "n_cycles": {"1": 1}, **{key: 1.0 for key in TIMING_KEYS}}
    assert without_timings([record]) == [{"step": 1, "n_cycles": {"1": 1}}]
