"""The piecewise-linear models: affine pieces, Jacobians, shape checks, protocol checks, serialisation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bifurcation_callback import ALRNN, PLRNN, ClippedShallowPLRNN, ShallowPLRNN, model_from_state, model_to_state
from bifurcation_callback.models import MODEL_REGISTRY, MODEL_SPECS, PiecewiseLinear, require_piecewise_linear
from problems import BISTABLE_2D, DEVICES, DTYPES, MODEL_KINDS, random_model, unmasked_plrnn


def _model(kind: str, seed: int = 0, dim: int = 3):
    return random_model(kind, seed, dim=dim, hidden=5)


def test_model_kinds_cover_the_registry():
    assert set(MODEL_KINDS) == set(MODEL_REGISTRY)


# ------------------------------------------------------------------------------------------------------------
# affine_pieces(region_codes(z)) reproduces step(z); jacobian equals autograd


@pytest.mark.parametrize("batch", [(), (7,), (2, 3, 4)], ids=["single", "1d-batch", "3d-batch"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_affine_pieces_reproduce_step(kind, batch):
    model = _model(kind)
    generator = torch.Generator().manual_seed(1)
    z = 3 * torch.randn(*batch, model.state_dim, generator=generator, dtype=torch.float64)
    codes = model.region_codes(z)
    assert codes.dtype == torch.bool and codes.shape == (*batch, model.n_switches)
    J, c = model.affine_pieces(codes)
    assert J.shape == (*batch, model.state_dim, model.state_dim) and c.shape == (*batch, model.state_dim)
    affine = (J @ z.unsqueeze(-1)).squeeze(-1) + c
    stepped = model.step(z)
    assert stepped.shape == z.shape
    torch.testing.assert_close(affine, stepped, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(z), stepped, rtol=0, atol=0)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_region_codes_are_signs_of_switching_planes(kind):
    model = _model(kind)
    z = torch.randn(50, model.state_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    G, g = model.switching_planes()
    torch.testing.assert_close(model.region_codes(z), z @ G.T + g > 0)


def test_region_codes_are_strict_at_the_border():
    # d(z) = 1[z > 0]: exactly zero is "off".
    assert PLRNN(2).region_codes(torch.tensor([0.0, 1e-300], dtype=torch.float64)).tolist() == [False, True]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_jacobian_equals_autograd(kind):
    model = _model(kind)
    z = 2 * torch.randn(10, model.state_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # Generic points: no switch input within 1e-6 of zero, so relu is differentiable there.
    assert model.switch_inputs(z).abs().min() > 1e-6
    batched = model.jacobian(z)
    assert batched.shape == (10, model.state_dim, model.state_dim)
    for point, J in zip(z, batched):
        expected = torch.autograd.functional.jacobian(model.step, point)
        torch.testing.assert_close(J, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_affine_pieces_on_dtype_and_device(kind, dtype, device):
    model = _model(kind).to(device=device, dtype=dtype)
    z = torch.randn(4, 5, model.state_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z = z.to(device=device, dtype=dtype)
    J, c = model.affine_pieces(model.region_codes(z))
    assert J.dtype == dtype and J.device.type == device
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close((J @ z.unsqueeze(-1)).squeeze(-1) + c, model.step(z), rtol=0, atol=atol)


def test_plrnn_w_diagonal_is_masked():
    model = PLRNN(2).double()
    with torch.no_grad():
        model.A.fill_(0.0)
        model.h.fill_(0.0)
        model.W.copy_(torch.tensor([[5.0, 0.0], [0.0, 7.0]]))
    z = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert model.step(z).tolist() == [0.0, 0.0]
    assert model.jacobian(z).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_plrnn_hand_example():
    # z' = A z + W relu(z) + h with z = (1, -2): relu = (1, 0).
    model = PLRNN(2).double()
    with torch.no_grad():
        model.A.copy_(torch.tensor([0.5, 0.25]))
        model.W.copy_(torch.tensor([[0.0, 3.0], [2.0, 0.0]]))
        model.h.copy_(torch.tensor([0.1, 0.2]))
    z = torch.tensor([1.0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(model.step(z), torch.tensor([0.6, -0.5 + 2.0 + 0.2], dtype=torch.float64))
    torch.testing.assert_close(model.jacobian(z), torch.tensor([[0.5, 0.0], [2.0, 0.25]], dtype=torch.float64))


def test_alrnn_linear_units_have_no_switch():
    model = ALRNN(3, n_relu=1)
    assert model.n_switches == 1
    codes = model.region_codes(torch.tensor([[-1.0, -1.0, 2.0], [1.0, 1.0, -2.0]]))
    assert codes.tolist() == [[True], [False]]


def test_clipped_shallow_has_two_switches_per_hidden_unit():
    model = ClippedShallowPLRNN(2, 3)
    assert model.n_switches == 6
    G, g = model.switching_planes()
    assert G.shape == (6, 2) and g.shape == (6,)


# ------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("method", ["step", "region_codes", "jacobian", "switch_inputs"])
@pytest.mark.parametrize("shape", [(), (4,), (5, 2)], ids=["scalar", "wrong-dim", "batched-wrong-dim"])
def test_wrong_state_shape_raises(kind, method, shape):
    model = _model(kind, dim=3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        getattr(model, method)(torch.zeros(shape, dtype=torch.float64))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_wrong_code_shape_raises(kind):
    model = _model(kind, dim=3)
    with pytest.raises(ValueError, match="codes must have shape"):
        model.affine_pieces(torch.zeros(model.n_switches + 1, dtype=torch.bool))


@pytest.mark.parametrize(
    "model, missing",
    [(torch.nn.LSTM(2, 2), "region_codes"), (object(), "affine_pieces"), (torch.nn.Linear(2, 2), "step")],
    ids=["LSTM", "object", "Linear"],
)
def test_require_piecewise_linear_names_what_is_missing(model, missing):
    with pytest.raises(TypeError, match=missing):
        require_piecewise_linear(model)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_builtin_models_are_piecewise_linear(kind):
    model = _model(kind)
    require_piecewise_linear(model)  # raises TypeError naming what is missing
    assert isinstance(model, PiecewiseLinear)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: PLRNN(0), "dim"),
        (lambda: PLRNN(True), "dim"),
        (lambda: ShallowPLRNN(2, 0), "hidden_dim"),
        (lambda: ShallowPLRNN(2.0, 3), "latent_dim"),
        (lambda: ClippedShallowPLRNN(-1, 3), "latent_dim"),
        (lambda: ALRNN(2, n_relu=3), "n_relu"),
        (lambda: ALRNN(2, n_relu=-1), "n_relu"),
    ],
)
def test_constructor_arguments_validated(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


# ------------------------------------------------------------------------------------------------------------
# Realizable regions


def test_realizable_codes_of_a_line_arrangement():
    # Three lines in general position in the plane cut it into 1 + 3 + 3 = 7 cells.
    model = ShallowPLRNN(2, 3).double()
    with torch.no_grad():
        model.W2.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model.h2.copy_(torch.tensor([0.0, 0.0, -1.0]))
    codes = model.realizable_codes()
    assert codes.shape == (7, 3)
    # x <= 0, y <= 0 and x + y > 1 is impossible: the missing code is (0, 0, 1).
    assert [False, False, True] not in codes.tolist()
    # Every listed code is reached by some sampled state, and every sampled code is listed.
    z = 5 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert {tuple(c) for c in model.region_codes(z).tolist()} == {tuple(c) for c in codes.tolist()}


def test_realizable_codes_plrnn_is_every_orthant():
    assert PLRNN(3).realizable_codes().shape == (8, 3)


def test_realizable_codes_without_switches():
    # A linear ALRNN has exactly one region, the empty code.
    assert ALRNN(2, n_relu=0).realizable_codes().shape == (1, 0)


# ------------------------------------------------------------------------------------------------------------
# model_to_state / model_from_state


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_state_round_trip_through_json(kind):
    model = _model(kind, seed=6)
    state = json.loads(json.dumps(model_to_state(model)))
    assert state["model"] == kind
    rebuilt = model_from_state(state)
    assert type(rebuilt) is type(model)
    assert (rebuilt.state_dim, rebuilt.n_switches) == (model.state_dim, model.n_switches)
    for (name, p), (name2, q) in zip(model.named_parameters(), rebuilt.named_parameters()):
        assert name == name2
        assert q.dtype == torch.float64
        if name == "W" and hasattr(model, "off_diagonal_mask"):
            p = p * model.off_diagonal_mask  # the saved W carries the zero diagonal the map uses
        torch.testing.assert_close(q, p.detach().double(), rtol=0, atol=0)
    z = torch.randn(6, model.state_dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(rebuilt.step(z), model.step(z), rtol=0, atol=0)


def test_model_from_state_infers_config():
    model = model_from_state(
        {"model": "ShallowPLRNN", "params": {"A": [0.5, 0.5], "W1": [[1, 2, 3]] * 2, "W2": [[1, 0]] * 3,
                                              "h1": [0, 0], "h2": [0, 0, 0]}}
    )
    assert (model.state_dim, model.hidden_dim) == (2, 3)


def _plrnn_state(**overrides):
    state = {"model": "PLRNN", "config": {"dim": 2},
             "params": {"A": [0.5, 0.5], "W": [[0.0, 1.0], [1.0, 0.0]], "h": [0.1, 0.2]}}
    for key, value in overrides.items():
        if key in state["params"]:
            state["params"][key] = value
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    "state, match",
    [
        (_plrnn_state(A=[0.5, 0.5, 0.5]), r"parameter A .*shape \(2,\)"),
        (_plrnn_state(W=[[0.0, 1.0]]), r"parameter W .*shape \(2, 2\)"),
        (_plrnn_state(h=[math.nan, 0.0]), "parameter h contains NaN"),
        (_plrnn_state(A=[math.inf, 0.0]), "parameter A contains NaN"),
        (_plrnn_state(model="LSTM"), "unknown model 'LSTM'.*PLRNN"),
        (_plrnn_state(config={"dim": 0}), "dim must be a positive int"),
        ({"model": "PLRNN", "params": {"A": [0.5], "h": [0.0]}}, r"exactly \['A', 'W', 'h'\]"),
        ({"model": "PLRNN", "params": {"A": [0.5], "W": [[0.0]], "h": [0.0], "B": [1.0]}}, "exactly"),
        ({"model": "ALRNN", "params": {"A": [0.5], "W": [[0.0]], "h": [0.0]}}, "ALRNN needs"),
        ({"params": {}}, '"model"'),
        ([1, 2], '"model"'),
    ],
    ids=["A-shape", "W-shape", "h-nan", "A-inf", "unknown-kind", "bad-config", "missing-param", "extra-param",
         "alrnn-no-config", "no-model-key", "not-a-dict"],
)
def test_model_from_state_rejects_bad_input(state, match):
    with pytest.raises(ValueError, match=match):
        model_from_state(state)


@pytest.mark.parametrize("kind, config", [("PLRNN", {"dim": 2}), ("ALRNN", {"dim": 2, "n_relu": 1})])
def test_model_from_state_rejects_a_non_zero_w_diagonal(kind, config):
    # Bug: the masked diagonal was loaded and silently acted as zero, so the state did not say what it ran.
    state = {"model": kind, "config": config, "params": {"A": [0.5, 0.5], "W": [[0.3, 1.0], [1.0, 0.0]], "h": [0.1, 0.2]}}
    with pytest.raises(ValueError, match=r"W must have a zero diagonal.*\[0.3, 0.0\]"):
        model_from_state(state)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_registry_drives_config_and_parameter_names(kind):
    spec = MODEL_SPECS[kind]
    model = random_model(kind, 0)
    state = model_to_state(model)
    assert tuple(state["config"]) == tuple(spec.config) and set(state["params"]) == set(spec.parameters)
    assert MODEL_REGISTRY[kind] is spec.cls is type(model_from_state(state))


def test_model_from_state_unknown_config_key_is_value_error():
    with pytest.raises(ValueError, match="dimension"):
        model_from_state(_plrnn_state(config={"dimension": 2}))


def test_model_from_state_params_not_a_dict_is_value_error():
    with pytest.raises(ValueError, match="params"):
        model_from_state({"model": "PLRNN", "params": [[0.5], [[0.0]], [0.0]]})


def test_model_to_state_rejects_foreign_models():
    with pytest.raises(TypeError, match="PLRNN"):
        model_to_state(torch.nn.Linear(2, 2))


def test_snapshot_is_detached_copy():
    model = _model("PLRNN")
    snap = model.snapshot()
    assert all(not p.requires_grad for p in snap.parameters())
    with torch.no_grad():
        snap.h.add_(1.0)
    assert not torch.equal(snap.h, model.h)


def test_saved_state_shows_the_masked_diagonal_as_zero():
    state = model_to_state(PLRNN(3))
    assert [state["params"]["W"][i][i] for i in range(3)] == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------------------
# check_protocol: affine_pieces must agree with step (a user model that disagrees used to give 0 cycles)

from bifurcation_callback.cycles import exhaustive_cycles, find_cycles  # noqa: E402
from bifurcation_callback.models import check_protocol  # noqa: E402


def _bistable_unmasked():
    """BISTABLE_2D's parameters in a model whose affine_pieces forgets W's (nonzero, stored) diagonal."""
    return unmasked_plrnn(A=[0.5, 0.5], W=[[1.0, -1.0], [-1.0, 1.0]], h=[1.0, 1.0])


@pytest.mark.parametrize("search", [find_cycles, exhaustive_cycles])
def test_affine_pieces_that_disagree_with_step_raise_instead_of_finding_no_cycles(search):
    # The correct model has three fixed points (closed form in problems.BISTABLE_2D) ...
    assert len(search(BISTABLE_2D.build(), max_order=2)) == 3
    # ... the faulty one used to return 0 cycles silently; now the finder names the mismatch.
    with pytest.raises(ValueError, match=r"affine_pieces disagrees with step at z=\[.*J z \+ c = .*step\(z\) = .*W's zero diagonal"):
        search(_bistable_unmasked(), max_order=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_check_protocol_passes_for_every_model_kind(kind, dtype, device):
    model = random_model(kind, seed=3).to(device=device, dtype=dtype)
    states = torch.randn(16, model.state_dim, dtype=dtype, device=device) * 5
    assert check_protocol(model, states) is None


def test_check_protocol_at_given_states_names_the_first_bad_state():
    model = _bistable_unmasked()
    # At z = (-1, -1) no unit is active, so the missing mask does not matter; z = (1, -1) shows it.
    states = torch.tensor([[-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"z=\[ 1., -1.\]: J z \+ c = \[ 2.5, -0.5\], step\(z\) = \[ 1.5, -0.5\]"):
        check_protocol(model, states, n_random=0)
    assert check_protocol(model, states[:1], n_random=0) is None


def test_check_protocol_leaves_the_global_random_state_alone():
    model = PLRNN(3)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_protocol(model)
    assert torch.equal(torch.rand(3), expected)


class _Broken(PLRNN):
    """PLRNN(2) with one protocol method replaced by ``kind``'s fault."""

    def __init__(self, fault: str) -> None:
        super().__init__(2)
        self.fault = fault

    def region_codes(self, z):
        codes = super().region_codes(z)
        if self.fault == "int codes":
            return codes.int()
        if self.fault == "codes shape":
            return codes[..., :1]
        return codes

    def affine_pieces(self, codes):
        J, c = super().affine_pieces(codes)
        if self.fault == "J shape":
            return J[..., :1], c
        if self.fault == "not a pair":
            return J
        return J, c


@pytest.mark.parametrize(
    "fault, message",
    [
        ("int codes", r"region_codes must return a bool Tensor of shape \(N, n_switches\).*torch.int32"),
        ("codes shape", r"region_codes must return a bool Tensor of shape \(N, n_switches\) = \(\d+, 2\).*\(\d+, 1\)"),
        ("J shape", r"affine_pieces must return J of shape \(N, M, M\)"),
        ("not a pair", r"affine_pieces must return a pair of Tensors"),
    ],
)
def test_check_protocol_names_shape_and_dtype_faults(fault, message):
    with pytest.raises(ValueError, match=message):
        check_protocol(_Broken(fault))


@pytest.mark.parametrize("states", [torch.zeros(4, 3), torch.zeros(2), [[0.0, 0.0]]], ids=["wrong M", "1-D", "list"])
def test_check_protocol_rejects_bad_states(states):
    with pytest.raises(ValueError, match=r"states must be a Tensor of shape \(N, 2\)"):
        check_protocol(PLRNN(2), states)


def test_find_cycles_checks_a_model_object_once(monkeypatch):
    import bifurcation_callback.cycles as cycles_module

    calls = []
    monkeypatch.setattr(cycles_module, "check_protocol", lambda model: calls.append(model))
    model = BISTABLE_2D.build()
    for seed in range(3):
        find_cycles(model, max_order=1, seed=seed)
    exhaustive_cycles(model, max_order=1)
    assert calls == [model]
    find_cycles(BISTABLE_2D.build(), max_order=1)  # a new object is checked again
    assert len(calls) == 2


def test_the_protocols_list_of_built_in_models_is_the_registry():
    from bifurcation_callback.protocol import BUILT_IN_MODELS

    assert BUILT_IN_MODELS == tuple(MODEL_REGISTRY)
