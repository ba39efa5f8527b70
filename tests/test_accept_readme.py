"""The acceptance check of issue 20 on the README's GTF example (benchmarks/accept_readme_fixed_points.py): its
independent exact count of fixed points, its comparison with the monitor's records (which must catch planted
errors), and a short version of the run itself (slow)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import accept_readme_fixed_points as acceptance  # noqa: E402
from accept_readme_fixed_points import (  # noqa: E402
    compare_with_exact,
    exact_fixed_points,
    general_position_cell_count,
    self_check,
)
from problems import general_position_cells, independent_fixed_points  # noqa: E402

from bifurcation_callback.models import ShallowPLRNN  # noqa: E402


def one_dimensional(h1: float) -> dict[str, np.ndarray]:
    """``z' = z/2 + relu(z) + h1``: for h1 = -1/4 two fixed points (-1/2 stable, 1/2 unstable), for h1 = +1/4 none."""
    return {"A": np.array([0.5]), "W1": np.array([[1.0]]), "W2": np.array([[1.0]]), "h1": np.array([h1]),
            "h2": np.array([0.0])}


def crossing(h1: float) -> dict[str, np.ndarray]:
    """``z' = z/2 + h1``, with a switching plane at 0 that changes nothing: one fixed point 2 h1, on the side of h1."""
    return {**one_dimensional(h1), "W1": np.array([[0.0]])}


def record(step: int, count: int, stable: int, events: tuple[dict, ...] = ()) -> dict:
    """An ``events.jsonl`` line with order 1 only."""
    return {"step": step, "n_cycles": {"1": count}, "n_stable": {"1": stable}, "statuses": {"1": "exhaustive"},
            "events": list(events), "late_discoveries": []}


def birth(step: int, point: float, kind: str = "appearance") -> dict:
    return {"kind": kind, "order": 1, "step": step, "step_interval": [step - 1, step], "eigenvalues_before": None,
            "eigenvalues_after": [[0.5, 0.0]], "point": [point], "verified": True}


def death(step: int, point: float) -> dict:
    return {**birth(step, point, kind="disappearance"), "eigenvalues_before": [[0.5, 0.0]], "eigenvalues_after": None}


def exact_records(exact: dict) -> list[dict]:
    return [record(step, truth.count, truth.stable) for step, truth in sorted(exact.items())]


def test_the_independent_count_agrees_with_sampling_linear_programs_and_all_sign_patterns():
    check = self_check(n_models=8, seed=3, n_samples=50_000)
    assert check["ok"], check
    assert check["models"] == 8 and check["fixed_points"] > 0


def test_the_self_check_catches_a_listing_that_misses_a_cell(monkeypatch):
    listing = acceptance.arrangement_cells

    def one_cell_short(planes, offsets):
        cells = listing(planes, offsets)
        return acceptance.Arrangement(cells.codes[1:], cells.n_vertices, cells.n_singular_subsets, cells.n_crowded_vertices)

    monkeypatch.setattr(acceptance, "arrangement_cells", one_cell_short)
    check = self_check(n_models=4, seed=3, n_samples=50_000)
    assert not check["ok"] and check["cells_count_wrong"] == 4 and check["sampled_not_listed"] >= 1


def test_the_count_on_a_readme_sized_model_agrees_with_the_test_suites_own_reference():
    """ShallowPLRNN(3, 50) as the README builds it (float32 weights, analysed in float64), with W1 scaled up so that
    it has several fixed points: the same fixed points as tests/problems.py's witnessed listing."""
    torch.manual_seed(2)
    model = ShallowPLRNN(3, 50)
    with torch.no_grad():
        model.W1.mul_(4.0)
    weights = {name: parameter.detach().double().numpy() for name, parameter in model.named_parameters()}
    exact = exact_fixed_points(weights)
    codes, _, general = general_position_cells(weights["W2"], weights["h2"])
    reference = independent_fixed_points(model.double(), codes)
    assert general and exact.n_cells == len(codes) == general_position_cell_count(50, 3)
    assert exact.count == len(reference) == 4 and exact.stable == 2
    assert {tuple(code.tolist()) for code in exact.codes} == set(reference)
    assert exact.ambiguous.size == 0 and exact.n_singular_cells == 0 and exact.max_residual < 1e-12


def test_the_comparison_accepts_exact_records_and_flags_planted_wrong_counts():
    exact = {step: exact_fixed_points(one_dimensional(h1)) for step, h1 in enumerate((0.25, -0.25, -0.25, 0.25))}
    assert [(truth.count, truth.stable) for truth in exact.values()] == [(0, 0), (2, 1), (2, 1), (0, 0)]
    records = exact_records(exact)
    records[1]["events"] = [birth(1, -0.5), birth(1, 0.5)]
    records[3]["events"] = [death(3, -0.5), death(3, 0.5)]
    clean = compare_with_exact(records, exact, [0, 1, 2, 3])
    assert clean["ok"] and clean["analysed"] == 4
    assert [b["backed"] for b in clean["births"]] == ["count", "count"] and not clean["unbacked_births"]
    assert [d["backed"] for d in clean["deaths"]] == ["count", "count"] and not clean["unbacked_deaths"]

    records[1]["n_cycles"]["1"] = 1        # a fixed point missed
    records[2]["n_stable"]["1"] = 2        # an unstable one called stable
    wrong = compare_with_exact(records, exact, [0, 1, 2, 3])
    assert not wrong["ok"]
    assert wrong["count_mismatches"] == [[1, 1, 2]] and wrong["stable_mismatches"] == [[2, 2, 1]]


def test_the_comparison_flags_missing_skipped_and_searched_steps():
    exact = {step: exact_fixed_points(one_dimensional(-0.25)) for step in range(4)}
    records = exact_records(exact)
    records[2] = {"step": 2, "skipped": "ValueError: weights are not finite"}
    records[3]["statuses"]["1"] = "searched"
    report = compare_with_exact(records[1:], exact, [0, 1, 2, 3])
    assert not report["ok"]
    assert report["missing"] == [0] and report["skipped"] == [[2, "ValueError: weights are not finite"]]
    assert report["not_exhaustive"] == [[3, "searched"]] and report["analysed"] == 2


def test_an_appearance_without_a_new_fixed_point_is_unbacked():
    exact = {step: exact_fixed_points(one_dimensional(-0.25)) for step in range(2)}
    records = exact_records(exact)
    records[1]["events"] = [birth(1, -0.5), birth(1, 3.0, kind="degenerate")]
    report = compare_with_exact(records, exact, [0, 1])
    assert not report["ok"] and len(report["unbacked_births"]) == 2
    reasons = [verdict["why"] for verdict in report["unbacked_births"]]
    assert reasons == ["its cell held a fixed point at the other end too",
                       "the event's point is no exact fixed point at that end"]


def test_an_appearance_in_a_cell_that_held_no_fixed_point_is_backed_even_at_a_constant_count():
    """The fixed point jumped across the plane (a moved cycle the monitor could not pair): the count stays 1, but
    the new cell's fixed point is new."""
    exact = {0: exact_fixed_points(crossing(-0.25)), 1: exact_fixed_points(crossing(0.25))}
    assert [truth.points.ravel().tolist() for truth in exact.values()] == [[-0.5], [0.5]]
    records = exact_records(exact)
    records[1]["events"] = [birth(1, 0.5)]
    report = compare_with_exact(records, exact, [0, 1])
    assert report["ok"] and [verdict["backed"] for verdict in report["births"]] == ["new cell"]


@pytest.mark.slow
def test_readme_example_60_steps_order_one_is_exact_at_every_step(tmp_path):
    started = time.perf_counter()
    report = acceptance.run_acceptance(60, seed=0, out_dir=tmp_path, with_self_check=False)
    elapsed = time.perf_counter() - started
    assert report["trained_steps"] == 60 and report["records"] == 60 and report["analysed"] == 60, report
    assert not report["missing"] and not report["skipped"] and not report["dropped_steps"]
    assert not report["not_exhaustive"], report["not_exhaustive"]
    assert not report["count_mismatches"] and not report["stable_mismatches"], (
        report["count_mismatches"], report["stable_mismatches"])
    assert not report["unbacked_births"], report["unbacked_births"]
    assert report["jsonl_matches_records"] and not report["counter_disagreements"]
    # The recorded weights are the ones the monitor analysed: its last fixed points are the exact ones.
    assert report["last_step_point_distance"] < 1e-9
    assert all(distance < 1e-9 for _, distance in report["event_point_distances"]), report["event_point_distances"]
    assert report["ok"], f"accepted in {elapsed:.0f} s? {report}"
