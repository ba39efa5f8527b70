"""The ``bifurcation-callback find`` console command."""

from __future__ import annotations

import json

import pytest
import torch

from bifurcation_callback import CycleSet, model_to_state
from bifurcation_callback.cli import main
from problems import PAPER_MODEL_PATH, PLRNN_2D, random_model


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
    rows = [line.split() for line in lines[2:]]
    assert sorted((row[0], row[1]) for row in rows) == [("1", "stable"), ("1", "unstable"), ("2", "saddle")]


def test_find_writes_loadable_json(model_file, tmp_path, capsys):
    out_path = tmp_path / "out.json"
    assert main(["find", str(model_file), "--max-order", "2", "--json", str(out_path)]) == 0
    assert f"wrote {out_path}" in capsys.readouterr().out
    cycles = CycleSet.from_dict(json.loads(out_path.read_text()))
    assert cycles.orders == (1, 2) and cycles.counts() == {1: 2, 2: 1} and cycles.complete


def test_find_json_to_stdout(model_file, capsys):
    assert main(["find", str(model_file), "--orders", "2", "--json", "-"]) == 0
    cycles = CycleSet.from_dict(json.loads(capsys.readouterr().out))
    assert cycles.counts() == {2: 1}


def test_find_paper_model_orders(capsys):
    assert main(["find", str(PAPER_MODEL_PATH), "--orders", "15", "16"]) == 0
    assert "order 15: 0, order 16: 2" in capsys.readouterr().out


def test_find_float32_and_seed(model_file, capsys):
    assert main(["find", str(model_file), "--max-order", "2", "--float32", "--seed", "3", "--n-starts", "16"]) == 0
    assert "order 1: 2, order 2: 1" in capsys.readouterr().out


def test_find_reads_a_torch_state_dict(tmp_path, capsys):
    model = random_model("ShallowPLRNN", 3, dim=2, hidden=4)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {f"rnn.{k}": v for k, v in model.state_dict().items()}}, path)
    assert main(["find", str(path), "--max-order", "1"]) == 0
    assert capsys.readouterr().out.startswith("ShallowPLRNN (state dim 2)")


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
