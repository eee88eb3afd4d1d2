"""Per-layer quantization error finding for static int8 ONNX models, and float fallback for the worst layers.

``layer_errors`` uses ONNX Runtime's QDQ debugging helpers (``onnxruntime.quantization.qdq_loss_debug``):
both the fp32 model (pre-processed exactly as ``export.onnx_quant.quantize`` pre-processes it, so node and
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

``quantize_with_fallback`` quantizes to static int8 and, while the accuracy drop exceeds the budget, keeps
the worst layer in float (``nodes_to_exclude``), one more at a time, re-validating each time.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from compress.atomic import atomic_path
from compress.errors import InputError

# Ops whose output ORT's QDQ quantizer shares with (or folds into) the quantized op before them.
PASSTHROUGH = {"Relu", "Clip", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "Identity",
               "Cast", "Dropout"}
MAX_SAMPLES = 256  # activations of every tensor are kept in memory: a few hundred samples are plenty


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def layer_errors(fp32_path: Path | str, quantized_path: Path | str, calibration: np.ndarray) -> list[dict]:
    """Per-layer error of the QDQ model at ``quantized_path`` against the fp32 model, worst first.

    ``calibration``: real float32 model inputs (N, ...), e.g. transfer-set or held-out samples (at most
    ``MAX_SAMPLES`` are used). Each row: ``node`` (the name ``quantize(..., nodes_to_exclude=...)`` takes),
    ``op_type``, ``tensor`` (the quantized output compared), ``sqnr_db`` (that tensor vs the float model),
    ``input_sqnr_db`` (the layer's activation input vs the float model; None for an unquantized graph
    input), ``error_added_db`` (input minus output SQNR: what this layer loses), ``weight_sqnr_db`` (its
    int8 weights vs the float weights; None without weights).
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as dbg

    from export.onnx_quant import calibration_reader, check_calibration, preprocess

    fp32_path, quantized_path = Path(fp32_path), Path(quantized_path)
    for p in (fp32_path, quantized_path):
        if not p.is_file():
            raise InputError(f"{p}: no such ONNX model")
    samples = check_calibration(calibration, "int8")[:MAX_SAMPLES]
    qmodel = onnx.load(str(quantized_path), load_external_data=False)
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
    producer = {out: node for node in graph.node for out in node.output}
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
        for key in ("sqnr_db", "input_sqnr_db", "error_added_db", "weight_sqnr_db"):
            r[key] = _finite(r[key]) if r[key] is not None else None
    return out


def _is_constant(node) -> bool:
    return node is not None and node.op_type == "Constant"


# Ranking shared by the TFLite and Core ML per-layer finders (ONNX rows keep their error-added order).
EXACT_DB = 150.0  # SQNR of an exact float input (float32 round-off)
COLLAPSE_DB = 20.0  # a layer whose own noise is within 20 dB of the signal breaks it


def rank_key(row: dict) -> tuple:
    """Worst first: layers that collapse the signal (``layer_sqnr_db`` < ``COLLAPSE_DB``) in graph order, the
    earliest first (behind a collapsed signal every later layer's numbers are noise about noise), then the
    others by ``layer_sqnr_db``."""
    if row["layer_sqnr_db"] < COLLAPSE_DB:
        return (0, row["position"], row["layer_sqnr_db"])
    return (1, row["layer_sqnr_db"], -_sortable(row["error_added_db"]))


def layer_sqnr(input_sqnr: float | None, output_sqnr: float) -> float:
    """SQNR of the noise a layer adds by itself: noise-to-signal out minus noise-to-signal in (noise power
    relative to signal propagates through a layer roughly unchanged), in dB. Unlike the difference of the
    dBs, a layer behind an exact float input (150 dB) that brings its output to a healthy 50 dB is not
    mistaken for the worst one."""
    nsr_in = 0.0 if input_sqnr is None else 10.0 ** (-input_sqnr / 10.0)
    added = 10.0 ** (-output_sqnr / 10.0) - nsr_in
    return EXACT_DB if added <= 0 else max(-EXACT_DB, min(EXACT_DB, -10.0 * math.log10(added)))


def _sortable(v: float | None) -> float:
    return -math.inf if v is None or math.isnan(v) else v



def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped at +-EXACT_DB (an exact copy is as good as float32 round-off)."""
    if noise <= 0:
        return EXACT_DB
    if signal <= 0:
        return -EXACT_DB
    return max(-EXACT_DB, min(EXACT_DB, 10.0 * math.log10(signal / noise)))


def source_layer(tensor, producer: dict, inputs_of: Callable, passthrough: Callable):
    """The compute op a tensor's quantization error belongs to, walking up through pass-through ops.
    Graph-format neutral: ``producer`` maps a tensor to the op writing it, ``inputs_of(op)`` lists an op's
    activation inputs, ``passthrough(op)`` says whether it only moves values (reshape, relu, ...)."""
    op = producer.get(tensor)
    while op is not None and passthrough(op):
        inputs = inputs_of(op)
        if not inputs:
            return op
        op = producer.get(inputs[0])
    return op


def upstream_sqnr(tensor, sqnr: dict, producer: dict, inputs_of: Callable) -> float | None:
    """SQNR of the nearest quantized tensor at or above ``tensor`` (None: reaches a float graph input)."""
    seen = set()
    while tensor not in seen:
        seen.add(tensor)
        if tensor in sqnr:
            return sqnr[tensor]
        op = producer.get(tensor)
        inputs = inputs_of(op) if op is not None else []
        if not inputs:
            return None
        tensor = inputs[0]
    return None


DAMAGED_INPUT_DB = 30.0  # an input this noisy (about 5 effective bits) was damaged upstream, not here


def _fallback_group(model_path: Path, worst: dict, ranked: set[str], excluded: list[str]) -> list[str]:
    """What to keep in float for the worst-ranked layer: the layer, plus every quantized layer upstream of
    it when its input SQNR is already below ``DAMAGED_INPUT_DB``.

    Why: a layer whose input arrives damaged adds the most error only because it amplifies what its
    producers lost (a speech front-end's log of int8 mel energies is the typical case: the STFT outputs
    look fine in linear SQNR, the log turns their lost low bits into noise). Keeping only that one layer in
    float fixes nothing; keeping the chain that feeds it does.
    """
    import onnx

    group = [worst["node"]]
    if worst.get("input_sqnr_db") is None or worst["input_sqnr_db"] >= DAMAGED_INPUT_DB:
        return group
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    stack, seen = list(by_name[worst["node"]].input) if worst["node"] in by_name else [], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in ranked and node.name not in excluded and node.name not in group:
            group.append(node.name)
        stack.extend(node.input)
    return group


def quantize_with_fallback(fp32_path: Path | str, out_path: Path | str, calibration: np.ndarray,
                           eval_fn: Callable[[Path], float], budget: float, max_excluded: int = 3) -> dict:
    """Static int8 within an accuracy budget, keeping the worst layers in float where needed.

    ``eval_fn(path) -> accuracy`` on held-out data (the caller's; never the calibration samples).
    ``budget``: the largest accepted accuracy drop vs fp32 (e.g. 0.01 = one point). Quantizes to static
    int8; while the drop exceeds ``budget`` and fewer than ``max_excluded`` fallback steps were taken, ranks
    the layers again with ``layer_errors`` and keeps the worst remaining one in float, together with its
    quantized ancestors when its input already arrives damaged (see ``_fallback_group``). The best variant found
    (highest accuracy; the first one within budget) is written to ``out_path``.

    Returns ``fp32_accuracy``, ``int8_accuracy`` (no fallback), ``accuracy`` and ``drop`` of what was
    written, ``budget``, ``within_budget``, ``kept_in_float`` (node names), ``attempts`` (one per try:
    ``excluded``, ``accuracy``, ``drop``) and ``layer_errors`` (the first ranking).
    """
    from export.onnx_quant import quantize

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if budget < 0:
        raise InputError(f"budget: {budget} must be >= 0 (an accuracy drop, e.g. 0.01)")
    fp32_acc = float(eval_fn(fp32_path))
    attempts: list[dict] = []
    first_ranking: list[dict] | None = None
    excluded: list[str] = []
    with tempfile.TemporaryDirectory(prefix="quant-fallback-") as work:
        work = Path(work)
        best: tuple[float, Path, list[str]] | None = None
        while True:
            candidate = work / f"int8-{len(excluded)}.onnx"
            quantize(fp32_path, candidate, "int8", calibration=calibration, nodes_to_exclude=excluded)
            acc = float(eval_fn(candidate))
            attempts.append({"excluded": list(excluded), "accuracy": acc, "drop": fp32_acc - acc})
            if best is None or acc > best[0]:
                best = (acc, candidate, list(excluded))
            if fp32_acc - acc <= budget or len(attempts) > max_excluded:
                break
            ranking = layer_errors(fp32_path, candidate, calibration)
            if first_ranking is None:
                first_ranking = ranking
            remaining = [r for r in ranking if r["node"] not in excluded]
            if not remaining:
                break
            excluded.extend(_fallback_group(candidate, remaining[0], {r["node"] for r in ranking}, excluded))
        return ship_best(best, out_path, fp32_acc, budget, attempts, first_ranking)


def ship_best(best: tuple[float, Path, list[str]], out_path: Path, fp32_acc: float, budget: float,
              attempts: list[dict], first_ranking: list[dict] | None) -> dict:
    """Write the most accurate try (the first within budget, when one is: the loop stops there) to
    ``out_path`` and return the fallback's result; shared by the ONNX, TFLite and Core ML loops."""
    acc, chosen, kept = best
    with atomic_path(out_path) as tmp:
        if chosen.is_dir():  # a .mlpackage
            shutil.copytree(chosen, tmp)
        else:
            shutil.copyfile(chosen, tmp)
    return {
        "path": str(out_path),
        "fp32_accuracy": fp32_acc,
        "int8_accuracy": attempts[0]["accuracy"],
        "accuracy": acc,
        "drop": fp32_acc - acc,
        "budget": budget,
        "within_budget": fp32_acc - acc <= budget,
        "kept_in_float": kept,
        "attempts": attempts,
        "layer_errors": first_ranking or [],
    }


def format_table(rows: list[dict], top: int | None = 10, title: str = "per-layer int8 error (worst first)"):
    """A rich Table of ``layer_errors`` rows (for ``compress debug-quant``)."""
    from rich.table import Table

    def db(v):
        return "—" if v is None else f"{v:.1f}"

    shown = rows[:top] if top else rows
    torch_names = any("module" in r for r in shown)  # TFLite / Core ML rows name the torch module too
    table = Table(title=title)
    cols = ["#", "node"] + (["torch module", "layer SQNR dB"] if torch_names else []) + [
        "op", "output tensor", "error added dB", "output SQNR dB", "input SQNR dB", "weight SQNR dB"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("node", "torch module", "op", "output tensor") else "right")
    for i, r in enumerate(shown, 1):
        extra = [str(r.get("module") or "—"), db(r.get("layer_sqnr_db"))] if torch_names else []
        table.add_row(str(i), str(r["node"]), *extra, str(r["op_type"]), str(r["tensor"]), db(r.get("error_added_db")),
                      db(r.get("sqnr_db")), db(r.get("input_sqnr_db")), db(r.get("weight_sqnr_db")))
    return table
