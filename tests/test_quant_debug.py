"""Per-layer quantization error finding: a deliberately fragile layer is named worst, and float fallback
for it recovers the accuracy static int8 destroyed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import InputError
from compress.distill.train import fit, predict_logits, seed_everything
from compress.export.onnx.runner import open_onnx
from compress.export import TARGETS
from compress.export.common import fallback
from compress.export.onnx.debug import layer_errors
from compress.core.metrics import accuracy, batched
from compress.export.common import ModelInfo
from compress.export.onnx.convert import export
from compress.export.onnx.quantize import quantize


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, digits):
    """A digits MLP whose middle Linear (``fc2``) is fragile under int8 without changing the float function.

    One hidden unit of ``fc1`` is made dead (weights 0, bias -1: its ReLU output is always exactly 0) and
    ``fc2``'s weights from that unit are set to +-1000. In float those weights multiply zero; in int8 each
    of ``fc2``'s rows gets a scale of 1000/127, so every ordinary weight (|w| < 1) rounds to 0.
    """
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    y = torch.as_tensor(digits.y_train)
    fit(model, digits.x_train, lambda z, idx: F.cross_entropy(z, y[idx]), epochs=15, lr=3e-3, seed=0,
        device=torch.device("cpu"))
    with torch.no_grad():
        model[1].weight[0].zero_()
        model[1].bias[0] = -1.0
        model[3].weight[:, 0] = torch.where(torch.arange(32) % 2 == 0, 1000.0, -1000.0)
    model.eval()
    folder = tmp_path_factory.mktemp("fragile")
    path = export(model, torch.as_tensor(digits.x_test[:1]), folder / "fragile.onnx",
                  ModelInfo(name="fragile", labels=digits.labels))
    calib = digits.x_train[np.random.default_rng(0).permutation(len(digits.x_train))[:200]]
    return {"path": path, "calib": calib, "folder": folder,
            "torch_acc": accuracy(predict_logits(model, digits.x_test), digits.y_test)}


def _eval(digits):
    return lambda p: accuracy(batched(open_onnx(p).predict, digits.x_test), digits.y_test)



def quantize_with_fallback(reference, out, calibration, eval_fn, budget):
    """The one fallback loop on an ONNX file (the ONNX hook quantizes the reference file itself)."""
    return fallback.quantize_with_fallback(TARGETS["onnx"], None, None, reference, out, None, calibration, eval_fn,
                                           budget)

def test_layer_errors_names_the_fragile_layer(fragile, digits):
    q = quantize(fragile["path"], fragile["folder"] / "int8.onnx", "int8", calibration=fragile["calib"])
    fp32_acc, int8_acc = _eval(digits)(fragile["path"]), _eval(digits)(q)
    assert fp32_acc == pytest.approx(fragile["torch_acc"]) and fp32_acc > 0.9
    assert int8_acc < fp32_acc - 0.2, "the fragile layer should break plain static int8"
    rows = layer_errors(fragile["path"], q, fragile["calib"])
    assert [r["op_type"] for r in rows].count("Gemm") == 3
    worst = rows[0]
    assert worst["op_type"] == "Gemm" and worst["node"] == "node_linear_1", rows  # fc2, the second Linear
    assert worst["weight_sqnr_db"] is not None
    assert worst["error_added_db"] > 10 + max(r["error_added_db"] for r in rows[1:])
    assert all(rows[i]["error_added_db"] >= rows[i + 1]["error_added_db"] for i in range(len(rows) - 1))


def test_fallback_keeps_the_fragile_layer_in_float(fragile, digits):
    out = fragile["folder"] / "fallback.onnx"
    result = quantize_with_fallback(fragile["path"], out, fragile["calib"], _eval(digits), budget=0.02)
    assert result["kept_in_float"] == ["node_linear_1"]
    assert result["within_budget"] and result["drop"] <= 0.02
    assert result["int8_accuracy"] < result["accuracy"] - 0.2
    assert [a["excluded"] for a in result["attempts"]] == [[], ["node_linear_1"]]
    assert _eval(digits)(out) == pytest.approx(result["accuracy"])
    import onnx

    nodes = onnx.load(str(out)).graph.node
    assert any(n.op_type == "QuantizeLinear" for n in nodes)  # the other layers stay int8


def test_layer_errors_rejects_non_qdq_models(fragile):
    with pytest.raises(InputError, match="not a static"):
        layer_errors(fragile["path"], fragile["path"], fragile["calib"])


def test_format_table_lists_worst_first(fragile, digits):
    from rich.console import Console

    from compress.export.common.sqnr import format_table

    q = fragile["folder"] / "int8.onnx"
    if not q.exists():
        quantize(fragile["path"], q, "int8", calibration=fragile["calib"])
    console = Console(width=160, record=True)
    console.print(format_table(layer_errors(fragile["path"], q, fragile["calib"][:64]), top=2))
    text = console.export_text()
    assert "node_linear_1" in text and text.index("node_linear_1") < text.index("node_linear ")


def test_a_layer_with_a_damaged_input_falls_back_with_the_chain_that_feeds_it(tmp_path):
    """The speech front-end case: the worst layer's input already arrives damaged (log of int8 energies), so
    keeping that layer alone in float fixes nothing; its quantized ancestors are kept with it."""
    import onnx
    from onnx import TensorProto, helper

    from compress.export.common.fallback import fallback_group
    from compress.export.common.sqnr import DAMAGED_INPUT_DB
    from compress.export.onnx.debug import upstream_layers

    def _fallback_group(model_path, worst, ranked, excluded):  # the ONNX graph's upstream + the one group rule
        row = {**worst, "upstream": upstream_layers(onnx.load(str(model_path)).graph, worst["node"], ranked)}
        return fallback_group(row, [{"node": n} for n in ranked], excluded)

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], [0.1] * 16)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["energy"], name="stft"),
             helper.make_node("Log", ["energy"], ["logmel"], name="log"),
             helper.make_node("Relu", ["logmel"], ["feat"], name="norm"),
             helper.make_node("MatMul", ["feat", "w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    ranked = {"stft", "log", "norm", "head"}
    damaged = {"node": "norm", "input_sqnr_db": DAMAGED_INPUT_DB - 15}
    assert sorted(_fallback_group(path, damaged, ranked, [])) == ["log", "norm", "stft"]
    assert _fallback_group(path, damaged, ranked, ["stft"]) == ["norm", "log"]  # already kept: not repeated
    healthy = {"node": "norm", "input_sqnr_db": DAMAGED_INPUT_DB + 10}
    assert _fallback_group(path, healthy, ranked, []) == ["norm"]
