"""Per-layer int8 error finding and float fallback for TFLite and Core ML (ONNX: tests/test_quant_debug.py).

The same deliberately fragile digits MLP as the ONNX test, with named layers: ``fc2`` is broken by int8
(huge weights multiplying a dead unit) without changing the float function. Each target must name ``fc2``
(TFLite: the torch module; Core ML: its MIL op, whose weights are ``fc2``'s) as the worst layer, and the
fallback must keep exactly that layer in float and recover the accuracy within budget.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import InputError
from compress.export.common.fallback import int8_with_fallback
from compress.export.registry import layer_errors_for
from compress.distill.train import fit, predict_logits, seed_everything
from compress.export import TARGETS
from compress.core.metrics import accuracy, batched
from compress.export.common import ModelInfo

BUDGET_POINTS = 2.0


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, digits):
    seed_everything(0)
    model = nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), fc1=nn.Linear(64, 32), act1=nn.ReLU(), fc2=nn.Linear(32, 32), act2=nn.ReLU(),
        fc3=nn.Linear(32, 10)))
    y = torch.as_tensor(digits.y_train)
    fit(model, digits.x_train, lambda z, idx: F.cross_entropy(z, y[idx]), epochs=15, lr=3e-3, seed=0,
        device=torch.device("cpu"))
    with torch.no_grad():  # a dead fc1 unit feeding +-1000 weights of fc2: int8 scales of fc2 explode
        model.fc1.weight[0].zero_()
        model.fc1.bias[0] = -1.0
        model.fc2.weight[:, 0] = torch.where(torch.arange(32) % 2 == 0, 1000.0, -1000.0)
    model.eval()
    calib = digits.x_train[np.random.default_rng(0).permutation(len(digits.x_train))[:200]]
    return {"model": model, "calib": calib, "folder": tmp_path_factory.mktemp("fragile-targets"),
            "example": torch.as_tensor(digits.x_test[:1]), "info": ModelInfo(name="fragile", labels=digits.labels),
            "torch_acc": accuracy(predict_logits(model, digits.x_test), digits.y_test)}


def _acc(target, path, digits):
    return accuracy(batched(TARGETS[target].open(path).predict, digits.x_test), digits.y_test)


@pytest.fixture(scope="module")
def tflite_pair(fragile):
    from compress.export.tflite.convert import export

    f = fragile
    fp32 = export(f["model"], f["example"], f["folder"] / "fp32.tflite", f["info"])
    int8 = export(f["model"], f["example"], f["folder"] / "int8.tflite", f["info"], variant="int8",
                  calibration=f["calib"])
    return fp32, int8


@pytest.fixture(scope="module")
def coreml_pair(fragile):
    from compress.export.coreml.convert import export

    f = fragile
    fp16 = export(f["model"], f["example"], f["folder"] / "fp16.mlpackage", f["info"],
                  minimum_deployment_target="iOS17")
    int8 = export(f["model"], f["example"], f["folder"] / "int8.mlpackage", f["info"], compression="int8",
                  calibration=f["calib"], minimum_deployment_target="iOS17")
    return fp16, int8


def _check_ranking(rows):
    worst = rows[0]
    assert worst["weight_sqnr_db"] is not None
    assert worst["sqnr_db"] < 10 < rows[0]["input_sqnr_db"], rows  # fc2 destroys a clean input
    assert all(rows[i]["layer_sqnr_db"] <= rows[i + 1]["layer_sqnr_db"] for i in range(len(rows) - 1))
    assert worst["layer_sqnr_db"] + 10 < min(r["layer_sqnr_db"] for r in rows[1:]), rows


def test_tflite_layer_errors_name_the_fragile_module(fragile, tflite_pair, digits):
    fp32, int8 = tflite_pair
    fp32_acc, int8_acc = _acc("tflite", fp32, digits), _acc("tflite", int8, digits)
    assert fp32_acc == pytest.approx(fragile["torch_acc"], abs=0.01) and fp32_acc > 0.9
    assert int8_acc < fp32_acc - 0.2, "the fragile layer should break full int8"
    rows = layer_errors_for(fp32, int8, fragile["calib"], model=fragile["model"])
    assert [r["node"] for r in rows if r["op_type"] == "FULLY_CONNECTED"] and {r["node"] for r in rows} == {
        "fc1", "fc2", "fc3"}, rows
    assert rows[0]["node"] == "fc2" and rows[0]["module"] == "fc2" and rows[0]["op_type"] == "FULLY_CONNECTED"
    _check_ranking(rows)
    # without the model, the names come from the tensor names alone
    assert layer_errors_for(fp32, int8, fragile["calib"][:32])[0]["node"] == "fc2"


def test_tflite_fallback_keeps_the_fragile_module_in_float(fragile, tflite_pair, digits):
    from ai_edge_litert.interpreter import Interpreter

    f = fragile
    out = f["folder"] / "fallback.tflite"
    result = int8_with_fallback(TARGETS["tflite"], f["model"], f["example"], out, f["info"], f["calib"], digits.x_test,
                                digits.y_test, BUDGET_POINTS, f["folder"] / "work-tflite", {"scheme": "int8"})
    assert result["kept_in_float"] == ["fc2"], result["attempts"]
    assert [a["excluded"] for a in result["attempts"]] == [[], ["fc2"]]
    assert result["within_budget"] and result["drop"] <= BUDGET_POINTS / 100
    assert result["int8_accuracy"] < result["accuracy"] - 0.2
    assert result["layer_errors"][0]["node"] == "fc2" and result["target"] == "tflite"
    assert _acc("tflite", out, digits) == pytest.approx(result["accuracy"])
    it = Interpreter(model_path=str(out))
    it.allocate_tensors()
    kinds = [(op["op_name"], it.get_tensor_details()[op["outputs"][0]]["dtype"]) for op in it._get_ops_details()
             if op["op_name"] == "FULLY_CONNECTED"]
    assert kinds == [("FULLY_CONNECTED", np.int8), ("FULLY_CONNECTED", np.float32), ("FULLY_CONNECTED", np.int8)]


def test_tflite_float_layers_must_name_modules(fragile):
    from compress.export.tflite.convert import export

    f = fragile
    with pytest.raises(InputError, match="not a module"):
        export(f["model"], f["example"], f["folder"] / "x.tflite", f["info"], variant="int8",
               calibration=f["calib"], float_layers=["fc9"])
    with pytest.raises(InputError, match="only variants"):
        export(f["model"], f["example"], f["folder"] / "x.tflite", f["info"], float_layers=["fc2"])


def test_coreml_layer_errors_name_the_fragile_op(fragile, coreml_pair, digits):
    fp16, int8 = coreml_pair
    x = digits.x_test[:200]
    fp16_acc = accuracy(batched(TARGETS["coreml"].open(fp16).predict, x), digits.y_test[:200])
    int8_acc = accuracy(batched(TARGETS["coreml"].open(int8).predict, x), digits.y_test[:200])
    assert fp16_acc > 0.9 and int8_acc < fp16_acc - 0.2
    rows = layer_errors_for(fp16, int8, fragile["calib"][:64], model=fragile["model"])
    assert [r["op_type"] for r in rows].count("linear") == 3
    assert rows[0]["module"] == "fc2" and rows[0]["op_type"] == "linear", rows
    assert rows[0]["node"].startswith("linear_1")  # the MIL op name compress.export.coreml.convert(float_layers=...) takes
    _check_ranking(rows)


def test_coreml_fallback_keeps_the_fragile_op_in_float(fragile, coreml_pair, digits):
    from compress.export.coreml.mil.evaluator import load_program

    f = fragile
    out = f["folder"] / "fallback.mlpackage"
    x_eval, y_eval = digits.x_test[:200], digits.y_test[:200]
    result = int8_with_fallback(TARGETS["coreml"], f["model"], f["example"], out, f["info"], f["calib"][:64], x_eval, y_eval,
                                BUDGET_POINTS, f["folder"] / "work-coreml",
                                {"scheme": "int8", "precision": "fp16", "deployment_target": "iOS17"})
    assert len(result["kept_in_float"]) == 1 and result["kept_modules"] == ["fc2"], result["attempts"]
    assert result["within_budget"] and result["drop"] <= BUDGET_POINTS / 100
    assert result["int8_accuracy"] < result["accuracy"] - 0.2
    assert result["reference"] == "fp16"
    ops = load_program(out).op_types
    assert ops.count("quantize") >= 2 and ops.count("constexpr_affine_dequantize") == 2  # fc1, fc3 stay int8


def test_layer_errors_for_rejects_mixed_or_float_files(fragile, tflite_pair, coreml_pair):
    fp32, _ = tflite_pair
    fp16, _ = coreml_pair
    with pytest.raises(InputError, match="one target"):
        layer_errors_for(fp32, fp16, fragile["calib"])
    with pytest.raises(InputError, match="no int8 activations"):
        layer_errors_for(fp32, fp32, fragile["calib"])
    with pytest.raises(InputError, match="not a compressed"):
        layer_errors_for(fp16, fp16, fragile["calib"])


def test_tflite_full_int8_of_a_speech_model_keeps_its_front_end_float_from_the_first_attempt(tmp_path):
    """LiteRT cannot convert the LogMel front-end of the speech students to full int8 (a same-scale
    constraint on the input reshape): the model declares it (``float_under_int8``), so the first int8 file
    already keeps it float, converts and needs no fallback attempt."""
    from compress.models.speech import ds_cnn
    from compress.export.common.fallback import quantize_with_fallback
    from compress.export.tflite.convert import export

    torch.manual_seed(0)
    model = ds_cnn((8000,), 10, channels=4, blocks=1).eval()
    x = (np.random.default_rng(0).standard_normal((24, 8000)) * 0.1).astype(np.float32)
    info = ModelInfo(name="tiny-speech", labels=[str(i) for i in range(10)])
    example = torch.as_tensor(x[:1])
    fp32 = export(model, example, tmp_path / "fp32.tflite", info)
    ref = np.argmax(batched(TARGETS["tflite"].open(fp32).predict, x[8:]), axis=1)

    def agreement(path):
        return float(np.mean(np.argmax(batched(TARGETS["tflite"].open(path).predict, x[8:]), axis=1) == ref))

    result = quantize_with_fallback(TARGETS["tflite"], model, example, fp32, tmp_path / "int8.tflite", info, x[:8],
                                    agreement, budget=1.0)
    assert result["int8_error"] is None and result["int8_accuracy"] is not None and result["within_budget"]
    assert [a["excluded"] for a in result["attempts"]] == [[]]
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tmp_path / "int8.tflite"))
    it.allocate_tensors()
    assert any(op["op_name"] == "QUANTIZE" for op in it._get_ops_details())  # the body is int8
