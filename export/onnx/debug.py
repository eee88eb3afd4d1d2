"""Per-layer quantization error finding for static int8 ONNX models, and float fallback for the worst layers.

``layer_errors`` uses ONNX Runtime's QDQ debugging helpers (``onnxruntime.quantization.qdq_loss_debug``):
both the fp32 model (pre-processed exactly as ``compress.export.onnx.quantize.quantize`` pre-processes it, so node and
tensor names match) and the QDQ model are augmented to output every intermediate tensor
(``modify_model_output_intermediate_tensors``), run on the same real samples (``collect_activations``), and
each quantized activation of the QDQ model is compared with the same tensor of the float model
(``create_activation_matching`` + ``compute_activation_error``: SQNR in dB, higher is better). Weights are
compared with ``create_weight_matching`` + ``compute_weight_error``.

The SQNR of a tensor in the QDQ model includes every error made upstream of it, so the last layers always
look worst. What singles out the layer to blame is the SQNR a layer *loses*: ``error_added_db`` = SQNR of its
activation input minus SQNR of its output (both against the float model). Ops that only move data (Relu,
Reshape, pooling, ...) are attributed to the compute node before them, since ORT's QDQ format folds them
into that node's quantized output. The list is sorted by ``error_added_db``, worst first.

Each row also lists ``upstream``, the ranked nodes that feed it, for the damaged-input fallback of
``compress.export.common.fallback``; ``node`` is what ``quantize(..., float_layers=[...])`` keeps in float.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.export.common.preprocess import from_metadata, runner_input
from compress.export.common.sqnr import MAX_SAMPLES, source_layer, upstream_sqnr

# Ops whose output ORT's QDQ quantizer shares with (or folds into) the quantized op before them.
PASSTHROUGH = {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Identity",
               "Cast", "Dropout"}


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def layer_errors(fp32_path: Path | str, quantized_path: Path | str, calibration: np.ndarray, model=None) -> list[dict]:
    """Per-layer error of the QDQ model at ``quantized_path`` against the fp32 model, worst first.

    ``calibration``: real float32 model inputs (N, ...), e.g. transfer-set or held-out samples (at most
    ``MAX_SAMPLES`` are used), normalized (a model that takes raw pixels gets the pixels they came from). Each row: ``node`` (the name ``quantize(..., float_layers=...)`` takes),
    ``op_type``, ``tensor`` (the quantized output compared), ``sqnr_db`` (that tensor vs the float model),
    ``input_sqnr_db`` (the layer's activation input vs the float model; None for an unquantized graph
    input), ``error_added_db`` (input minus output SQNR: what this layer loses), ``weight_sqnr_db`` (its
    int8 weights vs the float weights; None without weights).
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from compress.export.onnx.quantize import calibration_reader, check_calibration, preprocess, preprocessing_nodes

    fp32_path, quantized_path = Path(fp32_path), Path(quantized_path)
    for p in (fp32_path, quantized_path):
        if not p.is_file():
            raise InputError(f"{p}: no such ONNX model")
    samples = check_calibration(calibration, "int8")[:MAX_SAMPLES]
    qmodel = onnx.load(str(quantized_path), load_external_data=False)
    samples = runner_input(samples, from_metadata({p.key: p.value for p in qmodel.metadata_props}))  # raw pixels?
    if not any(n.op_type == "QuantizeLinear" for n in qmodel.graph.node):
        raise InputError(f"{quantized_path}: not a static (QDQ) int8 model; per-layer errors need "
                         "QuantizeLinear/DequantizeLinear pairs (quantize with scheme 'int8')")

    with tempfile.TemporaryDirectory(prefix="quant-debug-") as work:
        work = Path(work)
        prepared = preprocess(fp32_path, work / "prepared.onnx")
        dbg.modify_model_output_intermediate_tensors(str(prepared), str(work / "float_aug.onnx"))
        dbg.modify_model_output_intermediate_tensors(str(quantized_path), str(work / "qdq_aug.onnx"))
        float_acts = dbg.collect_activations(str(work / "float_aug.onnx"), calibration_reader(prepared, samples))
        qdq_acts = dbg.collect_activations(str(work / "qdq_aug.onnx"), calibration_reader(prepared, samples))
        matched = dbg.create_activation_matching(qdq_acts, float_acts)
        act_err = dbg.compute_activation_error({k: v for k, v in matched.items() if v.get("float")})
        weights = dbg.create_weight_matching(str(prepared), str(quantized_path))
        # ORT's compute_weight_error fails on 0-d weights (e.g. a folded BatchNorm2d(1) scale): skip them
        weight_err = dbg.compute_weight_error({k: v for k, v in weights.items() if np.ndim(v.get("float")) > 0})
        graph = onnx.load(str(prepared), load_external_data=False).graph

    initializers = {i.name for i in graph.initializer}
    opening = set(preprocessing_nodes(graph))  # a raw-pixel model's (float) preprocessing counts as the input
    producer = {out: node for node in graph.node for out in node.output if node.name not in opening}
    sqnr = {name: float(err["xmodel_err"]) for name, err in act_err.items() if "xmodel_err" in err}

    def activation_inputs(node) -> list[str]:
        return [i for i in node.input if i and i not in initializers and not _is_constant(producer.get(i))]

    rows: dict[str, dict] = {}
    for tensor, value in sqnr.items():
        node = source_layer(tensor, producer, activation_inputs, lambda n: n.op_type in PASSTHROUGH)
        if node is None:  # the graph input itself: quantized, but not a layer one can keep in float
            continue
        row = rows.get(node.name)
        if row is not None and row["sqnr_db"] <= value:
            continue
        ins = [upstream_sqnr(i, sqnr, producer, activation_inputs) for i in activation_inputs(node)]
        ins = [v for v in ins if v is not None]
        input_sqnr = min(ins) if ins else None
        weights = [weight_err[i] for i in node.input if i in weight_err and i in initializers]
        rows[node.name] = {
            "node": node.name,
            "op_type": node.op_type,
            "tensor": tensor,
            "sqnr_db": value,
            "input_sqnr_db": input_sqnr,
            # an unquantized float input counts as exact: cap at the SQNR of a float32 round-off (~150 dB)
            "error_added_db": (input_sqnr if input_sqnr is not None else 150.0) - value,
            "weight_sqnr_db": min(weights) if weights else None,
        }
    out = sorted(rows.values(), key=lambda r: (-r["error_added_db"], r["sqnr_db"]))
    for r in out:
        r["upstream"] = upstream_layers(qmodel.graph, r["node"], set(rows))
        for key in ("sqnr_db", "input_sqnr_db", "error_added_db", "weight_sqnr_db"):
            r[key] = _finite(r[key]) if r[key] is not None else None
    return out


def _is_constant(node) -> bool:
    return node is not None and node.op_type == "Constant"


def upstream_layers(graph, node_name: str, ranked: set[str]) -> list[str]:
    """The ranked nodes that feed ``node_name`` in ``graph`` (depth first from its inputs, nearest first):
    the chain the damaged-input fallback keeps in float with it."""
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    stack, seen, found = list(by_name[node_name].input) if node_name in by_name else [], set(), []
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in ranked and node.name != node_name:
            found.append(node.name)
        stack.extend(node.input)
    return found
