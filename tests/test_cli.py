"""The ``bifurcation-callback find`` console command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bifurcation_callback import ALRNN, PLRNN, ClippedShallowPLRNN, CycleSet, ShallowPLRNN, find_cycles, model_to_state
from bifurcation_callback.models import MODEL_SPECS
from bifurcation_callback.cli import main
from problems import PAPER_MODEL_PATH, PLRNN_2D, random_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "plrnn.json"
    path.write_text(json.dumps(model_to_state(PLRNN_2D.build())))
    return path


def test_find_prints_the_table(model_file, capsys):
    assert main(["find", str(model_file), "--max-order", "2"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("PLRNN (state dim 2)") and "3 cycles" in lines[0]
    assert "order 1: 2, order 2: 1" in lines[0]
    assert lines[1].split()[:2] == ["order", "kind"]
    rows = [line.split() for line in lines[2:5]]
    assert sorted((row[0], row[1]) for row in rows) == [("1", "stable"), ("1", "unstable"), ("2", "saddle")]
    # 4 regions: both orders enumerated, so the counts are exact and no lower-bound legend is printed
    assert lines[5:] == ["counts: order 1: 2 (exhaustive), order 2: 1 (exhaustive)"]


def test_find_writes_loadable_json(model_file, tmp_path, capsys):
    out_path = tmp_path / "out.json"
    assert main(["find", str(model_file), "--max-order", "2", "--json", str(out_path)]) == 0
    assert f"wrote {out_path}" in capsys.readouterr().out
    cycles = CycleSet.from_dict(json.loads(out_path.read_text()))
    assert cycles.orders == (1, 2) and cycles.counts() == {1: 2, 2: 1} and not cycles.cut
    assert json.loads(out_path.read_text())["statuses"] == {"1": "exhaustive", "2": "exhaustive"}
    assert cycles.statuses == {1: "exhaustive", 2: "exhaustive"} and cycles.complete


def test_find_json_to_stdout(model_file, capsys):
    assert main(["find", str(model_file), "--orders", "2", "--json", "-"]) == 0
    cycles = CycleSet.from_dict(json.loads(capsys.readouterr().out))
    assert cycles.counts() == {2: 1}


def test_find_paper_model_orders(capsys):
    assert main(["find", str(PAPER_MODEL_PATH), "--orders", "15", "16"]) == 0
    out = capsys.readouterr().out
    # 4**15 sequences are beyond enumeration: the counts of the heuristic search are lower bounds
    assert "— ≥ 2 cycles (order 15: ≥ 0, order 16: ≥ 2)" in out.splitlines()[0]
    assert "counts: order 15: ≥ 0 (searched), order 16: ≥ 2 (searched)" in out
    assert "(≥ n: a lower bound; only exhaustive orders are proved complete)" in out


def test_find_json_carries_the_status_per_order(capsys):
    assert main(["find", str(PAPER_MODEL_PATH), "--orders", "1", "16", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["statuses"] == {"1": "exhaustive", "16": "searched"}
    assert data["complete"] is False and data["cut"] is False


def test_find_float32_and_seed(model_file, capsys):
    assert main(["find", str(model_file), "--max-order", "2", "--float32", "--seed", "3", "--n-starts", "16"]) == 0
    assert "order 1: 2, order 2: 1" in capsys.readouterr().out


def test_find_refuses_an_ambiguous_guess(tmp_path, capsys):
    # Bug: a checkpoint without the model's identity was analysed as whichever class its parameter names
    # suggested (an ALRNN as a PLRNN, a ClippedShallowPLRNN as a ShallowPLRNN), with exit status 0.
    model = random_model("ShallowPLRNN", 3, dim=2, hidden=4)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in model.state_dict().items()}}, path)
    assert main(["find", str(path), "--max-order", "1"]) == 2
    _assert_one_line_error(capsys, "ShallowPLRNN and ClippedShallowPLRNN", "--model-class NAME")
    assert main(["find", str(path), "--max-order", "1", "--model-class", "ShallowPLRNN"]) == 0
    assert capsys.readouterr().out.startswith("ShallowPLRNN (state dim 2)")


def test_find_alrnn_state_dict_needs_its_config(tmp_path, capsys):
    model = ALRNN(3, n_relu=1)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in model.state_dict().items()}}, path)
    assert main(["find", str(path), "--max-order", "1"]) == 2
    _assert_one_line_error(capsys, "PLRNN and ALRNN")
    assert main(["find", str(path), "--max-order", "1", "--model-class", "ALRNN"]) == 2
    _assert_one_line_error(capsys, "--config n_relu=INT")
    argv = ["find", str(path), "--orders", "1", "--json", "-", "--model-class", "ALRNN", "--config", "n_relu=1"]
    assert main(argv) == 0
    found = CycleSet.from_dict(json.loads(capsys.readouterr().out))
    assert _cycle_keys(found) == _cycle_keys(find_cycles(model, orders=[1], n_starts=256, seed=0))


def _cycle_keys(cycles) -> list:
    return sorted((c.order, np.asarray(c.codes).tolist()) for c in cycles)


def _assert_same_cycles(found, expected) -> None:
    assert _cycle_keys(found) == _cycle_keys(expected)
    by_key = {(c.order, str(np.asarray(c.codes).tolist())): c for c in expected}
    for cycle in found:
        other = by_key[(cycle.order, str(np.asarray(cycle.codes).tolist()))]
        np.testing.assert_allclose(cycle.points, other.points, rtol=1e-9, atol=1e-9)


TRAINED_MODELS = {
    "PLRNN": lambda: PLRNN(3),
    "ShallowPLRNN": lambda: ShallowPLRNN(3, 6),
    "ClippedShallowPLRNN": lambda: ClippedShallowPLRNN(3, 6),
    "ALRNN": lambda: ALRNN(3, n_relu=2),
}


@pytest.mark.parametrize("kind", TRAINED_MODELS)
def test_find_on_a_dsrmodule_checkpoint_reports_the_trained_models_cycles(kind, tmp_path):
    # Acceptance test: train 2 steps, checkpoint, `find CKPT --json` == find_cycles(module.rnn).
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from bifurcation_callback import DSRModule

    torch.manual_seed(0)
    module = DSRModule(TRAINED_MODELS[kind](), lr=1e-2)
    data = DataLoader(TensorDataset(torch.randn(8, 11, 3)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=False)["bifurcation_model"]["model"] == kind
    out = tmp_path / "out.json"
    assert main(["find", str(checkpoint), "--max-order", "3", "--json", str(out)]) == 0
    found = CycleSet.from_dict(json.loads(out.read_text()))
    expected = find_cycles(module.rnn, 3, n_starts=256, seed=0)
    assert len(expected) > 0 or kind != "PLRNN"
    _assert_same_cycles(found, expected)


class LabPLRNN(torch.nn.Module):
    """A user's own protocol model, as a lab's code would have it: masked W as a buffer, no registry entry."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.state_dim = self.n_switches = dim
        self.A = torch.nn.Parameter(torch.full((dim,), 0.5))
        self.W = torch.nn.Parameter(torch.zeros(dim, dim))
        self.h = torch.nn.Parameter(torch.zeros(dim))
        self.register_buffer("mask", 1.0 - torch.eye(dim))

    def region_codes(self, z):
        return z > 0

    def affine_pieces(self, codes):
        J = torch.diag(self.A) + (self.W * self.mask) * codes.to(self.A.dtype).unsqueeze(-2)
        return J, self.h.expand(codes.shape[:-1] + (self.state_dim,))

    def step(self, z):
        return self.A * z + torch.relu(z) @ (self.W * self.mask).T + self.h


class LabPLRNNWithFactory(LabPLRNN):
    @classmethod
    def from_state_dict(cls, state_dict):
        model = cls(int(state_dict["A"].shape[0]))
        model.load_state_dict(state_dict)
        return model


@pytest.mark.parametrize("cls", [LabPLRNN, LabPLRNNWithFactory])
def test_find_a_users_own_model_through_model_class(cls, tmp_path, capsys):
    model = cls(2)
    with torch.no_grad():
        model.A.copy_(torch.tensor([0.5, 0.6]))
        model.W.copy_(torch.tensor([[7.0, -0.4], [0.3, 7.0]]))  # the diagonal is masked
        model.h.copy_(torch.tensor([0.2, -0.1]))
    state = {f"latent_model.{k}": v for k, v in model.state_dict().items()}
    state["observation.weight"] = torch.eye(2)
    path = tmp_path / "lab.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {}}, path)
    assert main(["find", str(path), "--max-order", "2"]) == 2
    _assert_one_line_error(capsys, "--model-class package.module:Class")
    argv = ["find", str(path), "--max-order", "2", "--json", "-", "--model-class", f"{cls.__module__}:{cls.__name__}"]
    if cls is LabPLRNN:
        argv += ["--config", "dim=2"]
    assert main(argv) == 0
    found = CycleSet.from_dict(json.loads(capsys.readouterr().out))
    _assert_same_cycles(found, find_cycles(model, 2, n_starts=256, seed=0))
    assert len(found) >= 1


def test_model_class_errors_exit_2(tmp_path, capsys):
    path = tmp_path / "lab.ckpt"
    torch.save({"state_dict": {f"latent_model.{k}": v for k, v in LabPLRNN(2).state_dict().items()}}, path)
    assert main(["find", str(path), "--model-class", "no_such_module:Model"]) == 2
    _assert_one_line_error(capsys, "cannot import")
    assert main(["find", str(path), "--model-class", f"{LabPLRNN.__module__}:LabPLRNN"]) == 2
    _assert_one_line_error(capsys, "--config NAME=VALUE", "from_state_dict")
    with pytest.raises(SystemExit):
        main(["find", str(path), "--model-class", "LSTM"])
    assert "PLRNN, ShallowPLRNN, ClippedShallowPLRNN, ALRNN" in capsys.readouterr().err


def test_model_class_help_reads_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ", ".join(MODEL_SPECS) in out and "from_state_dict" in out


def _run_python(code: str, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300)


_NO_LIGHTNING = (
    "import sys; bad = [m for m in sys.modules if m == 'lightning' or m.startswith('lightning.') "
    "or m.startswith('pytorch_lightning') or m.startswith('tensorboard')]; assert not bad, bad[:5]"
)


def test_core_imports_without_lightning():
    code = "import bifurcation_callback, bifurcation_callback.cycles, bifurcation_callback.bifurcations, bifurcation_callback.models\n"
    result = _run_python(code + _NO_LIGHTNING)
    assert result.returncode == 0, result.stderr


def test_find_runs_without_lightning(tmp_path):
    code = (
        "import sys\nfrom bifurcation_callback.cli import main\n"
        "assert main(['find', sys.argv[1], '--max-order', '2']) == 0\n" + _NO_LIGHTNING
    )
    path = tmp_path / "plrnn.json"
    path.write_text(json.dumps(model_to_state(PLRNN_2D.build())))
    result = _run_python(code, str(path))
    assert result.returncode == 0, result.stderr


def test_lazy_names_stay_public():
    import bifurcation_callback

    for name in ("BifurcationMonitor", "DSRModule", "TimeSeriesDataModule", "lorenz63"):
        assert name in bifurcation_callback.__all__ and name in dir(bifurcation_callback)
        assert getattr(bifurcation_callback, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bifurcation_callback.nope


def _assert_one_line_error(capsys, *needles):
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("bifurcation-callback find: error: ")
    for needle in needles:
        assert needle in err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["find", str(tmp_path / "nope.json")]) == 2
    _assert_one_line_error(capsys, "no such file")


def test_invalid_json_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.json"
    path.write_text('{"model": "PLRNN", ')
    assert main(["find", str(path)]) == 2
    _assert_one_line_error(capsys, "not valid JSON")


@pytest.mark.parametrize(
    "state, needle",
    [
        ({"model": "LSTM", "params": {}}, "unknown model"),
        ({"model": "PLRNN", "params": {"A": [0.5], "W": [[0.0, 1.0]], "h": [0.0]}}, "shape"),
        ([1, 2, 3], '"model"'),
    ],
    ids=["unknown-kind", "wrong-shape", "not-a-dict"],
)
def test_bad_model_json_exits_2(tmp_path, capsys, state, needle):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(state))
    assert main(["find", str(path)]) == 2
    _assert_one_line_error(capsys, needle)


def test_non_finite_parameter_exits_2(tmp_path, capsys):
    path = tmp_path / "nan.json"
    path.write_text('{"model": "PLRNN", "params": {"A": [NaN], "W": [[0.0]], "h": [0.0]}}')
    assert main(["find", str(path)]) == 2
    _assert_one_line_error(capsys, "NaN")


def test_unreadable_checkpoint_exits_2(tmp_path, capsys):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a checkpoint")
    assert main(["find", str(path)]) == 2
    _assert_one_line_error(capsys, "cannot be read")


def test_bad_max_order_exits_2(model_file, capsys):
    assert main(["find", str(model_file), "--max-order", "0"]) == 2
    _assert_one_line_error(capsys, "max_order")


def test_unknown_config_key_exits_2(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": "PLRNN", "config": {"dimension": 1},
                                "params": {"A": [0.5], "W": [[0.0]], "h": [0.0]}}))
    assert main(["find", str(path)]) == 2
    _assert_one_line_error(capsys, "dimension")


@pytest.mark.parametrize("argv", [["--help"], ["find", "--help"], ["--version"]])
def test_help_and_version_exit_0(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "find" in out or "bifurcation-callback" in out


def test_python_dash_m_runs_the_same_command():
    done = subprocess.run([sys.executable, "-m", "bifurcation_callback", "find", "examples/models/plrnn_2d_16cycles.json",
                           "--orders", "16"], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300)
    assert done.returncode == 0, done.stderr
    assert "counts: order 16: ≥ 2 (searched)" in done.stdout


def test_help_lists_find_options(capsys):
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    out = capsys.readouterr().out
    for option in ("--max-order", "--orders", "--n-starts", "--seed", "--float32", "--json"):
        assert option in out


@pytest.mark.parametrize("argv", [[], ["find"], ["frobnicate"], ["find", "x.json", "--max-order", "two"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def run_into_closed_pipe(*argv: str) -> tuple[int, str]:
    """Run the CLI with a stdout whose reader is gone before anything is written (as with `| head -1`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bifurcation_callback.cli", *argv],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    return process.wait(timeout=300), err


def test_find_json_into_a_closed_pipe_exits_quietly():
    # Bug: `find M --json - | head -1` ended in a BrokenPipeError traceback.
    assert run_into_closed_pipe("find", str(PAPER_MODEL_PATH), "--orders", "16", "--json", "-") == (1, "")


def test_scan_reads_the_model_a_checkpoint_names(tmp_path, capsys):
    model = random_model("ClippedShallowPLRNN", 1, dim=2, hidden=3)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in model.state_dict().items()},
                "bifurcation_model": model_to_state(model)}, path)
    out = tmp_path / "diagram"
    argv = ["scan", str(path), "--param-a", "A[0]", "--range-a", "0.1", "0.5", "--param-b", "h1[0]",
            "--range-b", "-0.1", "0.1", "--n", "2", "--max-order", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("ClippedShallowPLRNN")
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in model.state_dict().items()}}, path)
    assert main(argv) == 2
    assert "ShallowPLRNN and ClippedShallowPLRNN" in capsys.readouterr().err


def test_prefix_picks_one_of_several_models(tmp_path, capsys):
    student, teacher = random_model("PLRNN", 1), random_model("PLRNN", 2)
    state = {f"rnn.{k}": v for k, v in student.state_dict().items()}
    state.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    path = tmp_path / "two.ckpt"
    torch.save({"state_dict": state}, path)
    argv = ["find", str(path), "--orders", "1", "--model-class", "PLRNN"]
    assert main(argv) == 2
    _assert_one_line_error(capsys, "'rnn.', 'teacher.'", "--prefix")
    assert main([*argv, "--prefix", "teacher", "--json", "-"]) == 0
    found = CycleSet.from_dict(json.loads(capsys.readouterr().out))
    assert _cycle_keys(found) == _cycle_keys(find_cycles(teacher, orders=[1], n_starts=256, seed=0))
    assert main([*argv, "--prefix", "student."]) == 2
    _assert_one_line_error(capsys, "matches no state_dict entry")
