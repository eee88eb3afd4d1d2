"""Per-layer int8 error of a Core ML ML Program, and float fallback for the worst ops (Core ML target).

``layer_errors(float_path, int8_path, x)`` runs both ``.mlpackage`` files in the MIL reference evaluator
(``devices.mil_reference``, numpy; Core ML itself only runs on macOS) on the same real samples, keeping every
intermediate variable (``run_single(..., keep_all=True)``), and compares each variable of the compressed
program with the variable of the same name in the float program (coremltools keeps op and variable names
through its compression passes; ``_cast_fp16``/``_cast_fp32`` suffixes are ignored so an fp32 reference
matches an fp16 one). Quantized weights are compared after decompression (the ``constexpr_*`` ops).

SQNR in dB and the attribution are those of ``devices.quant_debug``: ``error_added_db`` = SQNR of the op's
activation input minus SQNR of its output; rows are sorted by ``layer_sqnr_db`` (the noise the op adds by
itself, as an SQNR, lowest first; see ``devices.quant_debug_tflite``: the input of a Core ML program is
exact float, so the dB difference would rank the first layer worst whatever it does); ``quantize``/``dequantize``/``cast``/``relu``/
reshape-like ops are attributed to the compute op before them. Each quantize/dequantize pair belongs to
the op coremltools inserted it for, since keeping that op in float removes it: behind a
conv/linear/add/pool (or its activation) to that op (a suffix pair), otherwise to the conv/linear/add/pool
reading it (a prefix pair), whose error then includes its input's quantization.

Each row's ``node`` is the MIL op name the fallback keeps in float (e.g. ``linear_1_cast_fp16``):
``export.coreml.export(..., float_ops=[...])`` leaves those ops without quantize/dequantize pairs and with
uncompressed weights (coremltools ``op_name_configs={name: None}`` for the activation passes and for weight
compression). coremltools only quantizes around conv/linear/add/pool ops, so the error an op of another
type suffers (``op``; e.g. a ``log`` reading quantized mel energies) is charged to the op that quantized its
input (a conv whose output pair feeds it); ``keepable`` is False where there is none. One row per
``node``: its worst op. With ``model`` given, ``module`` names the torch module whose weights the op holds
(where the converted weights still equal them, i.e. no batch norm was folded in).
``quantize_with_fallback`` is the budgeted loop (keys as in ``devices.quant_debug``).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from compress.errors import InputError
from devices.quant_debug import (DAMAGED_INPUT_DB, EXACT_DB, MAX_SAMPLES, layer_sqnr, rank_key, ship_best,
                                  source_layer, sqnr_db)

PASSTHROUGH = {"quantize", "dequantize", "cast", "relu", "relu6", "reshape", "transpose", "squeeze",
               "expand_dims", "max_pool", "identity", "clip", "slice_by_index", "slice_by_size", "pad"}
SKIP = {"classify"}
# op types coremltools' activation quantization inserts quantize/dequantize pairs for (in front of them, and
# behind them or their activation): the ops ``op_name_configs={name: None}`` can keep in float
QUANTIZABLE = {"conv", "linear", "add", "avg_pool", "max_pool"}
MAX_COREML_SAMPLES = 128  # the numpy evaluator is slow on conv nets: a hundred samples rank layers fine


def _norm(name: str) -> str:
    for suffix in ("_cast_fp16", "_cast_fp32"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _weight_modules(model: torch.nn.Module | None) -> list[tuple[str, np.ndarray]]:
    if model is None:
        return []
    out = []
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if name and isinstance(w, torch.Tensor) and w.ndim >= 2:
            out.append((name, w.detach().float().cpu().numpy()))
    return out


def layer_errors(float_path: Path | str, quantized_path: Path | str, samples: np.ndarray,
                 model: torch.nn.Module | None = None, max_samples: int = MAX_COREML_SAMPLES) -> list[dict]:
    """Per-op error of the compressed ``.mlpackage`` at ``quantized_path`` against the float one, worst first.

    ``samples``: real float32 model inputs (N, ...) (at most ``max_samples``, the numpy evaluator is slow).
    Rows as in ``devices.quant_debug.layer_errors``: ``node`` (MIL op name, what ``float_ops`` takes),
    ``module`` (torch module name when ``model`` is given and its weights match, else None), ``op_type``,
    ``tensor``, ``sqnr_db``, ``input_sqnr_db``, ``error_added_db``, ``weight_sqnr_db``, ``layer_sqnr_db``
    (the sort key, lowest = worst).
    """
    from devices.mil_reference import load_program

    float_path, quantized_path = Path(float_path), Path(quantized_path)
    for p in (float_path, quantized_path):
        if not p.exists():
            raise InputError(f"{p}: no such Core ML package")
    fprog, qprog = load_program(float_path), load_program(quantized_path)
    if not any(t in ("quantize", "dequantize") or t.startswith("constexpr_") for t in qprog.op_types):
        raise InputError(f"{quantized_path}: not a compressed program (no quantize/dequantize or constexpr_* ops); "
                         "export it with compression 'int8' or 'int8-weights'")
    samples = np.asarray(samples, dtype=np.float32)[: min(MAX_SAMPLES, max_samples)]
    if len(samples) == 0:
        raise InputError("samples: need at least one real model input")
    (in_name,) = qprog.inputs
    shape = qprog.inputs[in_name][1]

    qops = [op for op in qprog._ops if op.type != "const" and not op.type.startswith("constexpr_")]
    fops = [op for op in fprog._ops if op.type != "const" and not op.type.startswith("constexpr_")]
    f_vars = {_norm(name): name for op in fops for name, dt in op.outputs if dt is not None}
    producer = {name: op for op in qops for name, _ in op.outputs}
    pairs = {name: f_vars[_norm(name)] for op in qops if op.type not in SKIP
             for name, dt in op.outputs if dt is not None and _norm(name) in f_vars}
    # a dequantize output is the float variable its quantize read, after int8 round-trip
    for op in qops:
        if op.type == "dequantize":
            src = [v for kind, v in op.bindings.get("input", []) if kind == "name"]
            qop = producer.get(src[0]) if src else None
            if qop is not None and qop.type == "quantize":
                orig = [v for kind, v in qop.bindings.get("input", []) if kind == "name"]
                if orig and _norm(orig[0]) in f_vars:
                    pairs[op.outputs[0][0]] = f_vars[_norm(orig[0])]
    pairs[in_name] = in_name

    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    for x in samples:
        x = x[None] if shape is None else x.reshape(shape)
        fenv = fprog.run_single({in_name: x}, keep_all=True)
        qenv = qprog.run_single({in_name: x}, keep_all=True)
        for qn, fn in pairs.items():
            a = np.asarray(fenv[fn], dtype=np.float64).reshape(-1)
            b = np.asarray(qenv[qn], dtype=np.float64).reshape(-1)
            if a.size != b.size:
                continue
            signal[qn] += float(np.dot(a, a))
            d = a - b
            noise[qn] += float(np.dot(d, d))
    sqnr = {n: sqnr_db(signal[n], noise[n]) for n in pairs}

    qconsts, fconsts = qprog._constants(), fprog._constants()

    def activation_inputs(op) -> list[str]:
        names = [v for key in ("x", "y", "input", "values") for kind, v in op.bindings.get(key, []) if kind == "name"]
        return [n for n in names if n in producer or n == in_name]

    def source_of(var: str):
        return source_layer(var, producer, activation_inputs, lambda op: op.type in PASSTHROUGH)

    def pair_source(dq) -> str | None:
        """The float variable a dequantize's quantize read (None: not a quantize/dequantize pair)."""
        src = [v for kind, v in dq.bindings.get("input", []) if kind == "name"]
        qop = producer.get(src[0]) if src else None
        if qop is None or qop.type != "quantize":
            return None
        orig = [v for kind, v in qop.bindings.get("input", []) if kind == "name"]
        return orig[0] if orig else None

    def pair_owner(dq):
        """The op a quantize/dequantize pair belongs to: the conv/linear/add/pool before it (coremltools'
        suffix pair behind it or its activation), or None: a prefix pair of the ops reading it."""
        orig = pair_source(dq)
        found = source_of(orig) if orig else None
        return found if found is not None and found.type in QUANTIZABLE else None

    def upstream_sqnr(var: str, consumer) -> float | None:
        seen = set()
        while var not in seen:
            seen.add(var)
            op = producer.get(var)
            # a prefix pair in front of a conv/linear/add/pool is that op's own: measure above it
            own_prefix = (op is not None and op.type == "dequantize" and consumer.type in QUANTIZABLE
                          and pair_owner(op) is None)
            if var in sqnr and not own_prefix:
                return sqnr[var]
            if op is not None and op.type == "dequantize":
                orig = pair_source(op)
                if orig is None:
                    return None
                var = orig
                continue
            ins = activation_inputs(op) if op is not None else []
            if not ins:
                return None
            var = ins[0]
        return None

    fop_by_out = {_norm(op.outputs[0][0]): op for op in fops if op.outputs}
    modules = _weight_modules(model)

    def weights(op) -> tuple[float | None, str | None]:
        fop = fop_by_out.get(_norm(op.outputs[0][0]))
        binds = op.bindings.get("weight", [])
        if fop is None or not binds or binds[0][0] != "name":
            return None, None
        fb = fop.bindings.get("weight", [])
        if not fb or fb[0][0] != "name" or binds[0][1] not in qconsts or fb[0][1] not in fconsts:
            return None, None
        a = np.asarray(fconsts[fb[0][1]], dtype=np.float64)
        b = np.asarray(qconsts[binds[0][1]], dtype=np.float64)
        module = None
        for name, w in modules:
            if w.shape == a.shape and np.allclose(w, a, rtol=1e-2, atol=1e-3):
                module = name
                break
        if a.size != b.size:
            return None, module
        d = (a - b.reshape(a.shape)).reshape(-1)
        return sqnr_db(float(np.sum(a * a)), float(np.dot(d, d))), module

    def owner(op):
        """The op whose float fallback removes the quantization ``op`` suffers: itself for the op types
        coremltools quantizes; else the owner of the pair that quantized its input."""
        if op.type in QUANTIZABLE:
            return op
        for var in activation_inputs(op):
            dq = producer.get(var)
            if dq is not None and dq.type == "dequantize" and pair_owner(dq) is not None:
                return pair_owner(dq)
        return None

    per_op: dict[str, dict] = {}
    for var, value in sqnr.items():
        op = source_of(var)
        if op is None or op.type in SKIP:
            continue
        dq = producer.get(var)
        if dq is not None and dq.type == "dequantize" and pair_owner(dq) is None:
            continue  # a prefix pair: charged to the conv/linear/add/pool reading it
        key = op.name or op.outputs[0][0]
        row = per_op.get(key)
        if row is not None and row["sqnr_db"] <= value:
            continue
        ins = [upstream_sqnr(i, op) for i in activation_inputs(op)]
        ins = [v for v in ins if v is not None]
        input_sqnr = min(ins) if ins else None
        w_sqnr, module = weights(op)
        keeper = owner(op)
        upstream, stack, seen = [], list(activation_inputs(op)), set()
        while stack:  # every keepable op this one's input came through (for the damaged-input fallback)
            prev = producer.get(stack.pop())
            if prev is None or id(prev) in seen:
                continue
            seen.add(id(prev))
            prev_keeper = owner(prev)
            if prev_keeper is not None:
                upstream.append(prev_keeper.name or prev_keeper.outputs[0][0])
            stack.extend(activation_inputs(prev))
        per_op[key] = {
            "upstream": sorted(set(upstream)),
            "node": (keeper.name or keeper.outputs[0][0]) if keeper is not None else key,
            "op": key,
            "keepable": keeper is not None,
            "module": module,
            "op_type": op.type,
            "position": op.index,
            "tensor": var,
            "sqnr_db": value,
            "input_sqnr_db": input_sqnr,
            "error_added_db": (input_sqnr if input_sqnr is not None else EXACT_DB) - value,
            "weight_sqnr_db": w_sqnr,
        }
    rows: dict[str, dict] = {}
    for r in per_op.values():  # one row per node the fallback can keep: the worst op charged to it
        r["layer_sqnr_db"] = layer_sqnr(r["input_sqnr_db"], r["sqnr_db"])
        best = rows.get(r["node"])
        if best is None or rank_key(r) < rank_key(best):
            if best is not None and r["op"] != r["node"]:  # keep the node's own op type/module for display
                r = {**r, "module": best["module"] or r["module"], "weight_sqnr_db": best["weight_sqnr_db"]}
            rows[r["node"]] = r
    out = sorted(rows.values(), key=rank_key)
    for r in out:
        for key in ("sqnr_db", "input_sqnr_db", "error_added_db", "weight_sqnr_db", "layer_sqnr_db"):
            v = r[key]
            r[key] = None if v is None or math.isnan(v) else min(max(float(v), -EXACT_DB), EXACT_DB)
    return out


def quantize_with_fallback(model: torch.nn.Module, example: torch.Tensor, float_path: Path | str,
                           out_path: Path | str, info, calibration: np.ndarray, eval_fn: Callable[[Path], float],
                           budget: float, max_excluded: int = 3, compression: str = "int8",
                           minimum_deployment_target: str = "iOS17") -> dict:
    """Compressed ``.mlpackage`` within an accuracy budget, keeping the worst MIL ops in float.

    ``float_path``: the uncompressed fp16 package of ``model`` (the reference; int8 activation
    quantization needs fp16 precision). Each try exports ``model`` again with
    ``export.coreml.export(..., compression=compression, float_ops=kept)``. Same loop and result keys as
    ``devices.quant_debug.quantize_with_fallback``; ``kept_in_float`` lists MIL op names and
    ``kept_modules`` the torch modules they hold (None where unknown).
    """
    from export.coreml import export

    float_path, out_path = Path(float_path), Path(out_path)
    if budget < 0:
        raise InputError(f"budget: {budget} must be >= 0 (an accuracy drop, e.g. 0.01)")
    fp32_acc = float(eval_fn(float_path))
    attempts: list[dict] = []
    first_ranking: list[dict] | None = None
    excluded: list[str] = []
    modules: dict[str, str | None] = {}
    options = dict(precision="fp16", compression=compression, minimum_deployment_target=minimum_deployment_target)
    if compression == "int8":
        options["calibration"] = calibration
    with tempfile.TemporaryDirectory(prefix="quant-fallback-coreml-") as work:
        work = Path(work)
        best = None
        while True:
            candidate = work / f"int8-{len(excluded)}.mlpackage"
            export(model, example, candidate, info, float_ops=excluded, **options)
            acc = float(eval_fn(candidate))
            attempts.append({"excluded": list(excluded), "accuracy": acc, "drop": fp32_acc - acc})
            if best is None or acc > best[0]:
                best = (acc, candidate, list(excluded))
            if fp32_acc - acc <= budget or len(attempts) > max_excluded:
                break
            ranking = layer_errors(float_path, candidate, calibration, model=model)
            if first_ranking is None:
                first_ranking = ranking
            modules.update({r["node"]: r["module"] for r in ranking})
            # only ops that compression touches can be kept in float (those with weights or inserted pairs)
            remaining = [r for r in ranking if r["node"] not in excluded and r["keepable"]]
            if not remaining:
                break
            worst = remaining[0]
            excluded.append(worst["node"])
            if worst["input_sqnr_db"] is not None and worst["input_sqnr_db"] < DAMAGED_INPUT_DB:
                # its input arrived damaged: keep the chain that feeds it too (devices.quant_debug._fallback_group)
                excluded.extend(n for n in worst.get("upstream", []) if n not in excluded)
        result = ship_best(best, out_path, fp32_acc, budget, attempts, first_ranking)
    result["kept_modules"] = [modules.get(k) for k in result["kept_in_float"]]
    return result
