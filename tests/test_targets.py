"""`distill-and-export` for the TFLite and Core ML targets, on the default data and on MNIST.

The student is trained identically whatever the target (same data, teachers and seed), so the torch
student's accuracy is the fp32 reference for every exported variant.
"""

from __future__ import annotations

import pytest

from compress.pipeline import RunConfig, run
from tests.conftest import require_mnist

FAST = dict(teachers=["mlp-800", "cnn-small"], teacher_epochs=3, epochs=40, latency_runs=20)


def rows(report):
    return {r["model"].split(" (")[0] if r["role"] != "student" else r["model"]: r for r in report["rows"]}


def student_rows(report):
    torch_row = next(r for r in report["rows"] if r["model"] == "student")
    exported = next(r for r in report["rows"] if r["model"].startswith("student ("))
    return torch_row, exported


@pytest.mark.parametrize("quantize", ["none", "fp16", "int8-weights", "int8"])
def test_tflite_variants_on_digits(tmp_path, quantize):
    report = run(RunConfig.from_settings(target="tflite", quantize=quantize, out=str(tmp_path), **FAST), quiet=True)
    torch_row, tfl = student_rows(report)
    assert tfl["runtime"].startswith("LiteRT ") and tfl["latency_ms"]["runs"] == 20
    assert tfl["parity"]["passed"], tfl["parity"]
    assert report["comparison"]["same_runtime"] is True  # teachers were exported to TFLite and timed in LiteRT too
    assert all(r["runtime"].startswith("LiteRT ") for r in report["rows"] if r["role"] == "member")
    assert report["compatibility"]["min_runtime"] and report["compatibility"]["operators"]
    if quantize == "int8":
        assert abs(tfl["accuracy"] - torch_row["accuracy"]) <= 0.005
    artifact = tmp_path / f"digits-mlp-small-tflite{'' if quantize == 'none' else '-' + quantize}" / "model.tflite"
    assert artifact.is_file() and artifact.stat().st_size == tfl["size_bytes"]


def test_tflite_min_runtime_gate(tmp_path):
    report = run(RunConfig.from_settings(target="tflite", quantize="int8-weights", target_options={"min_runtime": "2.14"}, out=str(tmp_path), **FAST),
                 quiet=True)
    gate = next(c for c in report["checks"] if c["name"] == "loads in TFLite 2.14")
    assert not gate["passed"] and "FULLY_CONNECTED v12" in gate["detail"] and not report["passed"]
    report = run(RunConfig.from_settings(target="tflite", target_options={"min_runtime": "2.14"}, out=str(tmp_path), **FAST), quiet=True)
    assert report["passed"]


def _precision(precision: str | None) -> dict:
    return {} if precision is None else {"precision": precision}


@pytest.mark.parametrize("quantize, precision", [("none", "fp32"), ("none", "fp16"), ("int8-weights", None),
                                                 ("palettize-4", None)])
def test_coreml_variants_on_digits(tmp_path, quantize, precision):
    report = run(RunConfig.from_settings(target="coreml", quantize=quantize, target_options=_precision(precision), out=str(tmp_path), **FAST),
                 quiet=True)
    torch_row, ml = student_rows(report)
    assert ml["runtime"] == "Core ML (macOS)" or ml["runtime"].startswith("MIL reference (Linux")
    if ml["runtime"].startswith("MIL reference"):
        # fp16 numbers are the evaluator's fp16 (rounded after every op), and the label says so
        assert ("fp16 rounded after every op" in ml["runtime"]) == (precision != "fp32")
        assert ml["latency_ms"] is None  # the evaluator's speed is not a device latency
        assert report["comparison"]["same_runtime"] is False and "NOT compared" in report["comparison"]["timing_note"]
    assert ml["parity"]["passed"], ml["parity"]
    if precision == "fp32":
        assert ml["parity"]["max_abs_diff"] <= 1e-4
    assert abs(ml["accuracy"] - torch_row["accuracy"]) <= 0.01


@pytest.fixture(scope="module")
def mnist():
    return str(require_mnist())


MNIST = dict(limit_train=3000, limit_test=1000, teachers=["mlp-1200", "cnn-small"], teacher_epochs=3, epochs=10,
             latency_runs=20)


@pytest.mark.parametrize("target, quantize, precision", [
    ("tflite", "none", None), ("tflite", "int8", None),
    ("coreml", "none", "fp32"), ("coreml", "none", "fp16"), ("coreml", "int8-weights", None),
    ("coreml", "palettize-4", None),
])
def test_targets_on_mnist(tmp_path, mnist, target, quantize, precision):
    report = run(RunConfig.from_settings(target=target, quantize=quantize, target_options=_precision(precision), data=mnist, out=str(tmp_path),
                           **MNIST), quiet=True)
    torch_row, exported = student_rows(report)
    assert report["run"]["data"]["input_shape"] == [1, 28, 28]
    assert exported["parity"]["passed"], exported["parity"]
    assert exported["accuracy"] > 0.85
    if quantize == "int8":
        assert abs(exported["accuracy"] - torch_row["accuracy"]) <= 0.005


@pytest.mark.parametrize("quantize", ["fp16", "int8-weights", "int8"])
def test_onnx_quantized_variants_on_digits(tmp_path, quantize):
    report = run(RunConfig.from_settings(target="onnx", quantize=quantize, out=str(tmp_path), **FAST), quiet=True)
    torch_row, exported = student_rows(report)
    assert exported["model"] == f"student (onnx {quantize})" and exported["parity"]["passed"], exported["parity"]
    assert exported["size_bytes"] < 0.75 * next(r for r in report["rows"] if r["model"] == "member mlp-800")["size_bytes"]
    assert abs(exported["accuracy"] - torch_row["accuracy"]) <= 0.01


def test_unsupported_combination_names_what_the_target_supports():
    from compress.core.errors import InputError

    with pytest.raises(InputError, match=r"--quantize 'palettize-4': not supported for target 'onnx'; expected one of "
                                         r"\['fp16', 'int8', 'int8-weights', 'none'\]"):
        RunConfig.from_settings(target="onnx", quantize="palettize-4").validate()
    with pytest.raises(InputError, match="--qat: quantization-aware distillation is available for --target tflite"):
        RunConfig.from_settings(target="onnx", quantize="int8", qat=True).validate()


def test_qat_tflite_int8_is_checked_against_its_own_int8_graph(tmp_path):
    report = run(RunConfig.from_settings(target="tflite", quantize="int8", qat=True, qat_epochs=1, out=str(tmp_path), **FAST),
                 quiet=True)
    torch_row, exported = student_rows(report)
    assert exported["model"] == "student (tflite int8-qat)"
    check = next(c for c in report["checks"] if "parity" in c["name"] and "student" not in c["name"])
    assert "torch QAT int8 graph" in check["name"] and check["passed"]
    assert abs(exported["accuracy"] - torch_row["accuracy"]) <= 0.01


def test_debug_quant_names_layers_worst_first(tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app

    common = dict(out=str(tmp_path), name="m", **FAST)
    run(RunConfig.from_settings(target="onnx", **common), quiet=True)
    (tmp_path / "m" / "model.onnx").rename(tmp_path / "fp32.onnx")
    run(RunConfig.from_settings(target="onnx", quantize="int8", **common), quiet=True)
    result = CliRunner().invoke(app, ["debug-quant", str(tmp_path / "m" / "model.onnx"), "--fp32",
                                      str(tmp_path / "fp32.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.output[result.output.index("["):])
    assert [r["op_type"] for r in rows] and all(r["op_type"] == "Gemm" for r in rows)
    added = [r["error_added_db"] for r in rows]
    assert added == sorted(added, reverse=True)


def test_debug_quant_on_tflite_names_torch_modules(tmp_path):
    """The same command on a TFLite pair: LiteRT intermediates, rows named by the student's torch modules."""
    import json

    from typer.testing import CliRunner

    from compress.cli import app
    from compress import models

    common = dict(out=str(tmp_path), name="m", **FAST)
    run(RunConfig.from_settings(target="tflite", **common), quiet=True)
    (tmp_path / "m" / "model.tflite").rename(tmp_path / "fp32.tflite")
    run(RunConfig.from_settings(target="tflite", quantize="int8", **common), quiet=True)
    result = CliRunner().invoke(app, ["debug-quant", str(tmp_path / "m" / "model.tflite"), "--fp32",
                                      str(tmp_path / "fp32.tflite"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[result.output.index("["):])
    student_modules = {name for name, _ in models.build("mlp-small", (1, 8, 8), 10).named_modules()}
    assert rows and {r["op_type"] for r in rows} == {"FULLY_CONNECTED"}
    assert all(r["module"] in student_modules for r in rows) and all(r["layer_sqnr_db"] > 10 for r in rows)
    mixed = CliRunner().invoke(app, ["debug-quant", str(tmp_path / "m" / "model.tflite"), "--fp32",
                                     str(tmp_path / "fp32.onnx")])
    assert mixed.exit_code == 2


def test_int8_budget_reports_the_fallback(tmp_path):
    report = run(RunConfig.from_settings(target="onnx", quantize="int8", int8_budget=0.5, out=str(tmp_path), name="q", **FAST),
                 quiet=True)
    fb = report["quantization_fallback"]
    assert fb["eval_samples"] > 0 and fb["attempts"][0]["excluded"] == []
    assert fb["within_budget"] == (fb["drop"] <= 0.005)
    assert any(c["name"] == "int8 accuracy drop within 0.5 points" for c in report["checks"])
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["labels.txt", "manifest.json", "model.onnx", "report.html", "report.json"]
    from compress.core.errors import InputError

    with pytest.raises(InputError, match="--int8-budget: the float fallback applies to --quantize int8, not --quantize fp16"):
        RunConfig.from_settings(target="tflite", quantize="fp16", int8_budget=1.0).validate()
    RunConfig.from_settings(target="tflite", quantize="int8", int8_budget=1.0).validate()  # every int8 target has the fallback


@pytest.mark.parametrize("target, extra", [("tflite", {}), ("coreml", {"target_options": {"deployment_target": "iOS17"}})])
def test_int8_budget_on_tflite_and_coreml(tmp_path, target, extra):
    """The pipeline's --int8-budget reaches the TFLite and Core ML fallbacks; the shipped file is the int8 one."""
    report = run(RunConfig.from_settings(target=target, quantize="int8", int8_budget=0.5, out=str(tmp_path), name="q", **FAST, **extra),
                 quiet=True)
    fb = report["quantization_fallback"]
    assert fb["target"] == target and fb["eval_samples"] > 0
    assert fb["within_budget"] == (fb["drop"] <= 0.005)
    check = next(c for c in report["checks"] if c["name"] == "int8 accuracy drop within 0.5 points")
    assert check["passed"] == fb["within_budget"]
    assert report["rows"][-1]["model"] == f"student ({target} int8)"


def test_onnx_file_teacher_stays_in_onnx_runtime_for_another_target(tmp_path, digits):
    """A teacher given as .onnx has no torch module to convert: it is timed in ONNX Runtime, labelled so,
    and the report does not claim a same-runtime latency comparison with a TFLite student."""
    import torch

    from compress import models
    from compress.distill.train import fit
    from compress.export.common import ModelInfo
    from compress.export.onnx.convert import export

    teacher = models.build("mlp-small", digits.input_shape, 10)
    y = torch.as_tensor(digits.y_train)
    fit(teacher, digits.x_train, lambda z, i: torch.nn.functional.cross_entropy(z, y[i]), epochs=5)
    export(teacher, torch.as_tensor(digits.x_test[:1]), tmp_path / "t.onnx", ModelInfo("t", digits.labels))
    report = run(RunConfig.from_settings(target="tflite", teachers=[str(tmp_path / "t.onnx"), "cnn-small"], teacher_epochs=2,
                           epochs=10, latency_runs=5, out=str(tmp_path)), quiet=True)
    members = {r["model"]: r for r in report["rows"] if r["role"] == "member"}
    assert members["member t.onnx"]["runtime"].startswith("ONNX Runtime")
    assert members["member cnn-small"]["runtime"].startswith("LiteRT")
    assert report["rows"][0]["runtime"] == "mixed runtimes"
    assert report["comparison"]["same_runtime"] is False and report["comparison"]["latency_ratio_p50"] is None
