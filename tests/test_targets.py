"""`distill-and-export` for the TFLite and Core ML targets, on the default data and on MNIST.

The student is trained identically whatever the target (same data, teachers and seed), so the torch
student's accuracy is the fp32 reference for every exported variant.
"""

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
    report = run(RunConfig(target="tflite", quantize=quantize, out=str(tmp_path), **FAST), quiet=True)
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
    report = run(RunConfig(target="tflite", quantize="int8-weights", min_runtime="2.14", out=str(tmp_path), **FAST),
                 quiet=True)
    gate = next(c for c in report["checks"] if c["name"] == "loads in TFLite 2.14")
    assert not gate["passed"] and "FULLY_CONNECTED v12" in gate["detail"] and not report["passed"]
    report = run(RunConfig(target="tflite", min_runtime="2.14", out=str(tmp_path), **FAST), quiet=True)
    assert report["passed"]


@pytest.mark.parametrize("quantize, precision", [("none", "fp32"), ("none", "fp16"), ("int8-weights", None),
                                                 ("palettize-4", None)])
def test_coreml_variants_on_digits(tmp_path, quantize, precision):
    report = run(RunConfig(target="coreml", quantize=quantize, precision=precision, out=str(tmp_path), **FAST),
                 quiet=True)
    torch_row, ml = student_rows(report)
    assert ml["runtime"] in ("MIL reference (Linux)", "Core ML (macOS)")
    if ml["runtime"] == "MIL reference (Linux)":
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
    report = run(RunConfig(target=target, quantize=quantize, precision=precision, data=mnist, out=str(tmp_path),
                           **MNIST), quiet=True)
    torch_row, exported = student_rows(report)
    assert report["run"]["data"]["input_shape"] == [1, 28, 28]
    assert exported["parity"]["passed"], exported["parity"]
    assert exported["accuracy"] > 0.85
    if quantize == "int8":
        assert abs(exported["accuracy"] - torch_row["accuracy"]) <= 0.005
