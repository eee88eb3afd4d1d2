"""ONNX quantization with ONNX Runtime's tools: fp16, int8-weights (dynamic), int8 (static QDQ, calibrated)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from compress import models
from compress.core.errors import InputError
from compress.distill.train import fit, predict_logits, seed_everything
from compress.export.onnx.runner import open_onnx
from compress.core.metrics import accuracy, batched, parity
from compress.export.common import ModelInfo
from compress.export.onnx.convert import export, read_metadata
from compress.export.onnx.quantize import SCHEMES, TOLERANCES, quantize


@pytest.fixture(scope="module")
def student(tmp_path_factory, digits):
    seed_everything(0)
    model = models.build("cnn-small", digits.input_shape, digits.num_classes)
    y = torch.as_tensor(digits.y_train)
    fit(model, digits.x_train, lambda z, idx: F.cross_entropy(z, y[idx]), epochs=8, lr=3e-3, seed=0,
        device=torch.device("cpu"))
    folder = tmp_path_factory.mktemp("onnx-quant")
    path = export(model, torch.as_tensor(digits.x_test[:1]), folder / "model.onnx",
                  ModelInfo(name="s", labels=digits.labels, normalization=digits.normalization))
    return {"model": model.eval(), "path": path, "folder": folder, "logits": predict_logits(model, digits.x_test)}


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_within_its_tolerance(student, digits, scheme):
    out = quantize(student["path"], student["folder"] / f"{scheme}.onnx", scheme, calibration=digits.x_train[:200])
    onnx.checker.check_model(str(out))
    runner = open_onnx(out)
    logits = batched(runner.predict, digits.x_test)
    tol = {k: TOLERANCES[scheme][k] for k in ("max_abs", "p99_abs", "top1")}
    par = parity(student["logits"], logits, tol)
    assert par["passed"], par
    assert accuracy(logits, digits.y_test) >= accuracy(student["logits"], digits.y_test) - 0.02
    assert out.stat().st_size < student["path"].stat().st_size
    meta = read_metadata(out)
    assert json.loads(meta["labels"]) == digits.labels and "normalization" in meta
    assert json.loads(meta["quantization"])["scheme"] == scheme
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    # the app keeps feeding float32 and reading float32 logits
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]
    if scheme == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        weights = {i.name: i for i in model.graph.initializer}
        per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                       and weights.get(n.input[1]) is not None and len(weights[n.input[1]].dims) == 1
                       and weights[n.input[1]].dims[0] > 1]
        assert per_channel, "weights should be quantized per channel"
    elif scheme == "int8-weights":
        assert ops & {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"}
    else:
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def test_int8_needs_calibration_and_known_scheme(student, tmp_path):
    with pytest.raises(InputError, match="calibration"):
        quantize(student["path"], tmp_path / "x.onnx", "int8")
    with pytest.raises(InputError, match="expected one of"):
        quantize(student["path"], tmp_path / "x.onnx", "int4")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_tolerances_state_reasons():
    assert set(TOLERANCES["fp32"]) == {"max_rel", "reason"}  # the one fp32 bound, relative to the logits, live data
    for scheme in SCHEMES:
        entry = TOLERANCES[scheme]
        assert set(entry) >= {"max_abs", "p99_abs", "top1", "reason"} and entry["reason"]
    assert np.isfinite(TOLERANCES["int8"]["p99_abs"])


def test_export_quantized_is_the_exporter_signature(student, digits, tmp_path):
    from compress.export.onnx.quantize import export_quantized

    out = export_quantized(student["model"], torch.as_tensor(digits.x_test[:1]), tmp_path / "m.onnx",
                           ModelInfo(name="s", labels=digits.labels), scheme="int8", calibration=digits.x_train[:100])
    assert json.loads(read_metadata(out)["quantization"])["calibration_samples"] == 100
    with pytest.raises(InputError, match="calibration"):
        export_quantized(student["model"], torch.as_tensor(digits.x_test[:1]), tmp_path / "n.onnx",
                         ModelInfo(name="s", labels=digits.labels), scheme="int8")
