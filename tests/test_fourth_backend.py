"""The target seam: a fourth, test-only backend (TorchScript run by torch) registered from this module,
driven through ``distill-and-export`` and ``validate`` end to end without editing any project file.

If anything outside ``export/<target>/`` still named a target, this backend would be refused (the CLI's
choices, the recipe, the validate stage), crash (runner, tolerances, manifest I/O) or be measured in
another runtime (the teacher members); each assertion below checks that it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from compress.core.atomic import atomic_path
from compress.core.runner import Runner
from compress.export import TARGETS, register
from compress.export.backend import Backend

ENGINE = f"TorchScript (torch {torch.__version__})"


def ts_export(model, example, path, info, *, scheme="none", calibration=None, float_layers=()) -> Path:
    """Trace ``model`` and save it with the run's metadata inside the archive."""
    path = Path(path)
    traced = torch.jit.trace(model.eval(), example.detach().to(torch.float32))
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={"metadata.json": json.dumps(info.metadata())})
    return path


def ts_open(path, threads: int = 1) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return Runner(engine=ENGINE, predict=predict, threads=int(threads))


def ts_io(path) -> dict:
    extra = {"metadata.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return {"inputs": [{"name": "x", "dtype": "float32"}], "outputs": [{"name": "logits", "dtype": "float32"}],
            "metadata": json.loads(extra["metadata.json"])}


TORCHSCRIPT = Backend(
    name="torchscript", suffix=".ts", runtime="TorchScript", export=ts_export, open=ts_open, describe_io=ts_io,
    schemes={"none": "fp32"}, variant=lambda scheme, options: "fp32",
    tolerances={"fp32": {"max_abs": 1e-5, "reason": "the same torch kernels"}},
)


@pytest.fixture
def torchscript(monkeypatch):
    """The backend registered for one test only (the registry is restored after)."""
    monkeypatch.setitem(TARGETS, "torchscript", TORCHSCRIPT)
    yield TORCHSCRIPT
    assert TARGETS["torchscript"] is TORCHSCRIPT


def test_registering_is_one_call(monkeypatch):
    monkeypatch.delitem(TARGETS, "torchscript", raising=False)
    assert register(TORCHSCRIPT) is TORCHSCRIPT and TARGETS["torchscript"] is TORCHSCRIPT
    monkeypatch.delitem(TARGETS, "torchscript")


def test_distill_and_export_then_validate_through_the_fourth_backend(torchscript, tmp_path, monkeypatch):
    from compress.cli import app

    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    result = cli.invoke(app, ["distill-and-export", "--target", "torchscript", "--teacher", "mlp-800",
                              "--teacher", "cnn-small", "--teacher-epochs", "2", "--epochs", "10", "--latency-runs",
                              "5", "--limit-train", "600", "--name", "ts", "--out", str(tmp_path / "dist"), "--json",
                              "--max-size-kb", "1000"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "dist" / "ts"
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] and report["run"]["target"] == "torchscript"
    exported = next(r for r in report["rows"] if r["model"].startswith("student ("))
    assert exported["model"] == "student (torchscript fp32)" and exported["runtime"] == ENGINE
    assert exported["parity"]["passed"] and exported["parity"]["max_abs_diff"] <= 1e-5
    assert exported["latency_ms"]["runs"] == 5 and exported["size_bytes"] == (folder / "model.ts").stat().st_size
    members = [r for r in report["rows"] if r["role"] == "member"]
    assert members and all(r["runtime"] == ENGINE for r in members)  # teachers timed in the same runtime
    assert report["comparison"]["same_runtime"] and report["comparison"]["latency_ratio_p50"] > 0
    assert [b["name"] for b in report["budgets"]] and all(b["passed"] for b in report["budgets"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["artifact"] == "model.ts" and manifest["metadata"]["name"] == "ts"
    assert manifest["files"]["model.ts"]["bytes"] == exported["size_bytes"]

    # the loaded model reproduces the torch student's accuracy recorded in the report, in its own runtime
    from compress.data import load_digits

    data = load_digits()
    logits = ts_open(folder / "model.ts").predict(data.x_test)
    assert float(np.mean(logits.argmax(1) == data.y_test)) == pytest.approx(exported["accuracy"])

    result = cli.invoke(app, ["validate", str(folder), "--json", "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["run"]["target"] == "torchscript" and checked["passed"]
    assert {c["name"] for c in checked["checks"]} >= {"artifact matches manifest.json", "accuracy reproduces report.json"}
    result = cli.invoke(app, ["validate", str(folder / "model.ts"), "--data", "digits", "--reference", "mlp-800",
                              "--json", "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][-1]["runtime"] == ENGINE


def test_a_scheme_the_backend_lacks_is_refused_before_training(torchscript, tmp_path):
    from compress.core.errors import InputError
    from compress.pipeline import RunConfig

    with pytest.raises(InputError, match=r"--quantize 'int8': not supported for target 'torchscript'"):
        RunConfig(target="torchscript", quantize="int8").validate()
    with pytest.raises(InputError, match="only the coreml target"):
        RunConfig(target="torchscript", target_options={"precision": "fp32"}).validate()
    with pytest.raises(InputError, match="--qat"):
        RunConfig(target="torchscript", qat=True).validate()
