"""Per-member input contracts: a user's own teachers, trained elsewhere on their own preprocessing.

Three small members are trained here, outside the tool, on differently preprocessed copies of the digits
(``x/16`` flattened, ``x/255`` NHWC, ``x/16`` standardized with its own mean/std), saved as TorchScript,
ONNX and ``.pt2``. Declaring each member's contract makes the report's member accuracy equal the accuracy
the member reaches when fed what it was trained on (computed here, outside the tool); a wrong contract
fires the warning. Every teacher format goes through every target: where a member cannot be converted to
the target (a ``.pt2`` graph, a TorchScript module for LiteRT), its timing is skipped with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compress.teachers.contracts import make_contract, member_view, raw_values
from compress.core.errors import InputError
from compress.data import load_data
from compress.pipeline import RunConfig, run

FAST = dict(epochs=3, teacher_epochs=1, latency_runs=3, limit_test=200)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 60) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    for _ in range(epochs):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return model.eval()


class Nhwc(nn.Module):
    """A member that takes (batch, 8, 8, 1) images, as a TensorFlow-trained model would."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Three members in three file formats, each with its preprocessing and its own test accuracy."""
    folder = tmp_path_factory.mktemp("members")
    data = load_data(None, limit_test=FAST["limit_test"])
    raw_train, raw_test = raw_values(data.x_train, data.normalization), raw_values(data.x_test, data.normalization)
    assert raw_train.max() == pytest.approx(16.0)  # the digits' own pixel range: 0..16
    out = {}

    flat = _train(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), (raw_train / 16).reshape(-1, 64),
                  data.y_train)
    torch.jit.save(torch.jit.trace(flat, torch.zeros(1, 64)), str(folder / "flat.ts"))
    out["flat.ts"] = ("scale=1/16&shape=64", _accuracy(flat, (raw_test / 16).reshape(-1, 64), data.y_test))

    nhwc = _train(Nhwc(), (raw_train / 255).transpose(0, 2, 3, 1), data.y_train, epochs=120)
    torch.onnx.export(nhwc, (torch.zeros(1, 8, 8, 1),), str(folder / "nhwc.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    out["nhwc.onnx"] = ("scale=1/255&layout=nhwc", _accuracy(nhwc, (raw_test / 255).transpose(0, 2, 3, 1), data.y_test))

    std = _train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (raw_train / 16 - 0.5) / 0.25, data.y_train)
    program = torch.export.export(std, (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096)},))
    torch.export.save(program, str(folder / "std.pt2"))
    out["std.pt2"] = ("scale=1/16&mean=0.5&std=0.25", _accuracy(std, (raw_test / 16 - 0.5) / 0.25, data.y_test))
    for name, (_, acc) in out.items():
        assert acc > 0.85, (name, acc)  # trained members that work when fed what they were trained on
    return folder, out


def _member_rows(report: dict) -> dict:
    return {r["model"].removeprefix("member "): r for r in report["rows"] if r["role"] == "member"}


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_declared_contracts_reproduce_each_members_own_accuracy(members, tmp_path, monkeypatch, target):
    folder, expected = members
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    specs = [f"{folder / name}?{query}" for name, (query, _) in expected.items()]
    extra = {"target_options": {"deployment_target": "iOS17"}} if target == "coreml" else {}
    report = run(RunConfig.from_settings(target=target, teachers=specs, out=str(tmp_path / "dist"), name="c", **FAST, **extra),
                 quiet=True)
    rows = _member_rows(report)
    for name, (_, own) in expected.items():
        assert abs(rows[name]["accuracy"] - own) <= 0.001, (name, rows[name]["accuracy"], own)
    assert report["run"]["warnings"] == []
    contracts = {t["name"]: t["contract"] for t in report["run"]["teachers"]}
    assert contracts["flat.ts"]["shape"] == [64] and contracts["flat.ts"]["source"] == "command line"
    manifest = json.loads((tmp_path / "dist" / "c" / "manifest.json").read_text())
    assert {t["name"]: t["contract"] for t in manifest["teachers"]} == contracts
    # every format through every target: converted and timed in the target's runtime, or a stated reason
    for name, row in rows.items():
        assert row["latency_ms"] is not None, name
        if "timing_note" in row:
            assert row["runtime"].startswith("torch") and "does not convert" in row["timing_note"], row
    assert "does not convert" in rows["std.pt2"].get("timing_note", "does not convert")


def test_the_recipe_declares_contracts_and_a_wrong_one_fires_the_warning(members, tmp_path, monkeypatch):
    folder, expected = members
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    contracts = {str(folder / "flat.ts"): {"scale": "1/16", "shape": "64"},
                 str(folder / "nhwc.onnx"): {"scale": "1/255", "mean": 0.5, "layout": "nhwc"}}  # wrong: not centred
    report = run(RunConfig.from_settings(teachers=[str(folder / "flat.ts"), str(folder / "nhwc.onnx")], teacher_contracts=contracts,
                           out=str(tmp_path / "dist"), name="w", **FAST), quiet=True)
    (warning,) = report["run"]["warnings"]
    assert "'nhwc.onnx'" in warning and "check its input contract" in warning and '"mean": [0.5]' in warning
    rows = _member_rows(report)
    assert abs(rows["flat.ts"]["accuracy"] - expected["flat.ts"][1]) <= 0.001
    with pytest.raises(InputError, match="nhwc.onnx.*--strict"):
        run(RunConfig.from_settings(teachers=[str(folder / "flat.ts"), str(folder / "nhwc.onnx")], teacher_contracts=contracts,
                      strict_teachers=True, out=str(tmp_path / "dist"), name="s", **FAST), quiet=True)


def test_a_declared_accuracy_that_is_missed_is_an_error(members, tmp_path, monkeypatch):
    folder, _ = members
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    spec = f"{folder / 'flat.ts'}?scale=1/255&shape=64&accuracy=99"  # x/255 instead of x/16: far below 99%
    with pytest.raises(InputError, match=r"declares 99%; check its input contract"):
        run(RunConfig.from_settings(teachers=[spec], out=str(tmp_path / "dist"), **FAST), quiet=True)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_a_member_taking_flat_inputs_is_accepted_with_its_contract(members, tmp_path, monkeypatch):
    """The ONNX/TorchScript member taking (N, 64) on (1, 8, 8) digits: refused without a contract (the
    message says how to declare one), accepted with shape=64."""
    folder, _ = members
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    data = load_data(None, limit_test=50)
    from compress.teachers import load_teachers

    with pytest.raises(InputError, match=r"fails on the data's samples|shape"):
        load_teachers([str(folder / "flat.ts")], data, epochs=1, seed=0)
    (m,) = load_teachers([f"{folder / 'flat.ts'}?shape=64"], data, epochs=1, seed=0)
    assert m.own_input(data.x_test).shape == (50, 64) and m.logits(data.x_test).shape == (50, 10)


@pytest.mark.parametrize("table, message", [
    ({"shape": "63"}, r"contract shape 63 has 63 elements but the samples have 64"),
    ({"scael": "1/16"}, r"unknown contract key 'scael'; did you mean 'scale'\?"),
    ({"scale": "1/16", "mean": "0.1,0.2"}, r"contract mean has 2 values but the samples have 1 channels"),
    ({"layout": "hwcn"}, r"contract layout 'hwcn'; expected one of nchw, nhwc"),
    ({"scale": "one"}, r"contract scale 'one'; expected a number"),
])
def test_a_contract_that_does_not_fit_the_member_is_one_line(table, message):
    data = load_data(None, limit_test=20)
    with pytest.raises(InputError, match=message) as err:
        member_view(make_contract("m.onnx", table, "test"), data.x_test, data.normalization, data.input_kind, "m.onnx")
    assert "\n" not in str(err.value) and "'m.onnx'" in str(err.value)


def test_a_contract_through_the_cli_bad_key_exits_2(tmp_path, members):
    folder, _ = members
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["distill-and-export", "--teacher", f"{folder / 'flat.ts'}?shpe=64", "--out",
                                      str(tmp_path / "dist"), "--quiet"])
    assert result.exit_code == 2 and "unknown contract key 'shpe'; did you mean 'shape'?" in result.output
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
