"""Per-layer int8 error of a Core ML ML Program, and float fallback for the worst ops (Core ML target).

``layer_errors(float_path, int8_path, x)`` runs both ``.mlpackage`` files in the MIL reference evaluator
(``compress.export.coreml.mil.evaluator``, numpy; Core ML itself only runs on macOS) on the same real samples, keeping every
intermediate variable (``run_single(..., keep_all=True)``), and compares each variable of the compressed
program with the variable of the same name in the float program (coremltools keeps op and variable names
through its compression passes; ``_cast_fp16``/``_cast_fp32`` suffixes are ignored so an fp32 reference
matches an fp16 one). Quantized weights are compared after decompression (the ``constexpr_*`` ops).

SQNR in dB and the attribution are those of ``compress.export.onnx.debug``: ``error_added_db`` = SQNR of the op's
activation input minus SQNR of its output; rows are sorted by ``layer_sqnr_db`` (the noise the op adds by
itself, as an SQNR, lowest first; see ``compress.export.tflite.debug``: the input of a Core ML program is
exact float, so the dB difference would rank the first layer worst whatever it does); ``quantize``/``dequantize``/``cast``/``relu``/
reshape-like ops are attributed to the compute op before them. Each quantize/dequantize pair belongs to
the op coremltools inserted it for, since keeping that op in float removes it: behind a
conv/linear/add/pool (or its activation) to that op (a suffix pair), otherwise to the conv/linear/add/pool
reading it (a prefix pair), whose error then includes its input's quantization.

Each row's ``node`` is the MIL op name the fallback keeps in float (e.g. ``linear_1_cast_fp16``):
``compress.export.coreml.convert.export(..., float_layers=[...])`` leaves those ops without quantize/dequantize pairs and with
uncompressed weights (coremltools ``op_name_configs={name: None}`` for the activation passes and for weight
compression). coremltools only quantizes around conv/linear/add/pool ops, so the error an op of another
type suffers (``op``; e.g. a ``log`` reading quantized mel energies) is charged to the op that quantized its
input (a conv whose output pair feeds it); ``keepable`` is False where there is none. One row per
``node``: its worst op. With ``model`` given, ``module`` names the torch module whose weights the op holds
(where the converted weights still equal them, i.e. no batch norm was folded in).
``int8_keeping_float`` is this target's hook for the one budgeted loop (``compress.export.common.fallback``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.core.errors import InputError
from compress.export.common.sqnr import EXACT_DB, MAX_SAMPLES, layer_sqnr, rank_key, source_layer, sqnr_db

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


def _load_programs(float_path: Path, quantized_path: Path):
    """Both programs for the MIL reference evaluator, refusing a missing package or an uncompressed
    "compressed" one early (there would be nothing to compare)."""
    from compress.export.coreml.mil.evaluator import load_program

    for p in (float_path, quantized_path):
        if not p.exists():
            raise InputError(f"{p}: no such Core ML package")
    fprog, qprog = load_program(float_path), load_program(quantized_path)
    if not any(t in ("quantize", "dequantize") or t.startswith("constexpr_") for t in qprog.op_types):
        raise InputError(f"{quantized_path}: not a compressed program (no quantize/dequantize or constexpr_* ops); "
                         "export it with compression 'int8' or 'int8-weights'")
    return fprog, qprog


def _compute_ops(prog) -> list:
    """The ops that run per sample: constants and decompressed weights are compared separately."""
    return [op for op in prog._ops if op.type != "const" and not op.type.startswith("constexpr_")]


def _bound_names(op, key: str) -> list[str]:
    """The variable names (not literal values) bound to ``op``'s argument ``key``."""
    return [v for kind, v in op.bindings.get(key, []) if kind == "name"]


def _pair_source(dq, producer: dict) -> str | None:
    """The float variable a dequantize's quantize read (None: not a quantize/dequantize pair)."""
    src = _bound_names(dq, "input")
    qop = producer.get(src[0]) if src else None
    if qop is None or qop.type != "quantize":
        return None
    orig = _bound_names(qop, "input")
    return orig[0] if orig else None


def _matched_variables(qops: list, fops: list, producer: dict, in_name: str) -> dict[str, str]:
    """Compressed variable -> float variable it is compared with: same name (cast suffixes ignored); a
    dequantize output has no float twin of its own, so it is the variable its quantize read, round-tripped."""
    f_vars = {_norm(name): name for op in fops for name, dt in op.outputs if dt is not None}
    pairs = {name: f_vars[_norm(name)] for op in qops if op.type not in SKIP
             for name, dt in op.outputs if dt is not None and _norm(name) in f_vars}
    for op in qops:
        if op.type == "dequantize":
            orig = _pair_source(op, producer)
            if orig is not None and _norm(orig) in f_vars:
                pairs[op.outputs[0][0]] = f_vars[_norm(orig)]
    pairs[in_name] = in_name
    return pairs


def _variable_sqnr(fprog, qprog, in_name: str, pairs: dict[str, str], samples: np.ndarray) -> dict[str, float]:
    """SQNR of every matched compressed variable, signal and noise power summed over all samples (one
    SQNR per variable, not an average of per-sample dBs)."""
    shape = qprog.inputs[in_name][1]
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
    return {n: sqnr_db(signal[n], noise[n]) for n in pairs}


def _op_key(op) -> str:
    """The name a MIL op is known by (its first output where the op is unnamed)."""
    return op.name or op.outputs[0][0]


@dataclass
class _CompressedGraph:
    """The compressed program's op graph with the measured SQNRs and both programs' weights: what charging
    each variable's error to an op (and to the op whose float fallback removes it) needs."""

    producer: dict  # compressed variable -> the op writing it
    in_name: str
    sqnr: dict[str, float]  # compressed variable -> SQNR against its float twin
    qconsts: dict
    fconsts: dict
    fop_by_out: dict  # normalized first output name -> float op
    modules: list[tuple[str, np.ndarray]]

    def activation_inputs(self, op) -> list[str]:
        """The op's inputs that are computed per sample (not weights or literals)."""
        names = [v for key in ("x", "y", "input", "values") for v in _bound_names(op, key)]
        return [n for n in names if n in self.producer or n == self.in_name]

    def source_of(self, var: str):
        """The compute op ``var``'s error belongs to, above pass-through ops."""
        return source_layer(var, self.producer, self.activation_inputs, lambda op: op.type in PASSTHROUGH)

    def pair_owner(self, dq):
        """The op a quantize/dequantize pair belongs to: the conv/linear/add/pool before it (coremltools'
        suffix pair behind it or its activation), or None: a prefix pair of the ops reading it."""
        orig = _pair_source(dq, self.producer)
        found = self.source_of(orig) if orig else None
        return found if found is not None and found.type in QUANTIZABLE else None

    def is_prefix_pair(self, op) -> bool:
        """A dequantize whose pair coremltools put in front of the ops reading it (charged to them)."""
        return op is not None and op.type == "dequantize" and self.pair_owner(op) is None

    def upstream_sqnr(self, var: str, consumer) -> float | None:
        """SQNR of the nearest measured variable at or above ``var`` as ``consumer`` sees its input."""
        seen = set()
        while var not in seen:
            seen.add(var)
            op = self.producer.get(var)
            # a prefix pair in front of a conv/linear/add/pool is that op's own: measure above it
            own_prefix = consumer.type in QUANTIZABLE and self.is_prefix_pair(op)
            if var in self.sqnr and not own_prefix:
                return self.sqnr[var]
            if op is not None and op.type == "dequantize":
                orig = _pair_source(op, self.producer)
                if orig is None:
                    return None
                var = orig
                continue
            ins = self.activation_inputs(op) if op is not None else []
            if not ins:
                return None
            var = ins[0]
        return None

    def input_sqnr(self, op) -> float | None:
        """The worst SQNR among the op's activation inputs (None: all exact float)."""
        ins = [self.upstream_sqnr(i, op) for i in self.activation_inputs(op)]
        ins = [v for v in ins if v is not None]
        return min(ins) if ins else None

    def weights(self, op) -> tuple[float | None, str | None]:
        """(SQNR of the op's decompressed weight, torch module holding the same float weight)."""
        fop = self.fop_by_out.get(_norm(op.outputs[0][0]))
        binds = op.bindings.get("weight", [])
        if fop is None or not binds or binds[0][0] != "name":
            return None, None
        fb = fop.bindings.get("weight", [])
        if not fb or fb[0][0] != "name" or binds[0][1] not in self.qconsts or fb[0][1] not in self.fconsts:
            return None, None
        a = np.asarray(self.fconsts[fb[0][1]], dtype=np.float64)
        b = np.asarray(self.qconsts[binds[0][1]], dtype=np.float64)
        module = next((name for name, w in self.modules
                       if w.shape == a.shape and np.allclose(w, a, rtol=1e-2, atol=1e-3)), None)
        if a.size != b.size:
            return None, module
        d = (a - b.reshape(a.shape)).reshape(-1)
        return sqnr_db(float(np.sum(a * a)), float(np.dot(d, d))), module

    def owner(self, op):
        """The op whose float fallback removes the quantization ``op`` suffers: itself for the op types
        coremltools quantizes (not an image input's own scale/bias ops, ``<input>__scaled__``/``__biased__``,
        which export keeps in float); else the owner of the pair that quantized its input."""
        if op.type in QUANTIZABLE and not (op.name or "").startswith(self.in_name + "__"):
            return op
        for var in self.activation_inputs(op):
            dq = self.producer.get(var)
            if dq is not None and dq.type == "dequantize" and self.pair_owner(dq) is not None:
                return self.pair_owner(dq)
        return None

    def upstream_keepers(self, op) -> list[str]:
        """Every keepable op this one's input came through (for the damaged-input fallback), sorted."""
        upstream, stack, seen = [], list(self.activation_inputs(op)), set()
        while stack:
            prev = self.producer.get(stack.pop())
            if prev is None or id(prev) in seen:
                continue
            seen.add(id(prev))
            prev_keeper = self.owner(prev)
            if prev_keeper is not None:
                upstream.append(_op_key(prev_keeper))
            stack.extend(self.activation_inputs(prev))
        return sorted(set(upstream))

    def op_row(self, op, var: str, value: float) -> dict:
        """The row of ``op`` measured at its variable ``var`` (SQNR ``value``)."""
        key = _op_key(op)
        input_sqnr = self.input_sqnr(op)
        w_sqnr, module = self.weights(op)
        keeper = self.owner(op)
        return {
            "upstream": self.upstream_keepers(op),
            "node": _op_key(keeper) if keeper is not None else key,
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

    def rows_per_op(self) -> dict[str, dict]:
        """One row per compute op, at its worst measured variable."""
        per_op: dict[str, dict] = {}
        for var, value in self.sqnr.items():
            op = self.source_of(var)
            if op is None or op.type in SKIP:
                continue
            if self.is_prefix_pair(self.producer.get(var)):
                continue  # a prefix pair: charged to the conv/linear/add/pool reading it
            key = _op_key(op)
            row = per_op.get(key)
            if row is not None and row["sqnr_db"] <= value:
                continue
            per_op[key] = self.op_row(op, var, value)
        return per_op


def _worst_op_per_node(per_op: dict[str, dict]) -> list[dict]:
    """One row per node the fallback can keep: the worst op charged to it (with the node's own module and
    weight SQNR for display), after adding each row's ``layer_sqnr_db``."""
    rows: dict[str, dict] = {}
    for r in per_op.values():
        r["layer_sqnr_db"] = layer_sqnr(r["input_sqnr_db"], r["sqnr_db"])
        best = rows.get(r["node"])
        if best is None or rank_key(r) < rank_key(best):
            if best is not None and r["op"] != r["node"]:  # keep the node's own op type/module for display
                r = {**r, "module": best["module"] or r["module"], "weight_sqnr_db": best["weight_sqnr_db"]}
            rows[r["node"]] = r
    return list(rows.values())


def _capped_dbs(rows: list[dict]) -> list[dict]:
    """Every dB value within +-EXACT_DB and NaN as None (JSON- and table-friendly), in place."""
    for r in rows:
        for key in ("sqnr_db", "input_sqnr_db", "error_added_db", "weight_sqnr_db", "layer_sqnr_db"):
            v = r[key]
            r[key] = None if v is None or math.isnan(v) else min(max(float(v), -EXACT_DB), EXACT_DB)
    return rows


def layer_errors(float_path: Path | str, quantized_path: Path | str, samples: np.ndarray,
                 model: torch.nn.Module | None = None, max_samples: int = MAX_COREML_SAMPLES) -> list[dict]:
    """Per-op error of the compressed ``.mlpackage`` at ``quantized_path`` against the float one, worst first.

    ``samples``: real float32 model inputs (N, ...) (at most ``max_samples``, the numpy evaluator is slow),
    normalized (a program that takes raw pixels gets the pixel values they came from).
    Rows as in ``compress.export.onnx.debug.layer_errors``: ``node`` (MIL op name, what ``float_layers`` takes),
    ``module`` (torch module name when ``model`` is given and its weights match, else None), ``op_type``,
    ``tensor``, ``sqnr_db``, ``input_sqnr_db``, ``error_added_db``, ``weight_sqnr_db``, ``layer_sqnr_db``
    (the sort key, lowest = worst).
    """
    float_path, quantized_path = Path(float_path), Path(quantized_path)
    fprog, qprog = _load_programs(float_path, quantized_path)
    samples = np.asarray(samples)[: min(MAX_SAMPLES, max_samples)]
    if len(samples) == 0:
        raise InputError("samples: need at least one real model input")
    samples = qprog.model_input(samples)  # raw pixel values for a program that takes them
    (in_name,) = qprog.inputs
    qops, fops = _compute_ops(qprog), _compute_ops(fprog)
    producer = {name: op for op in qops for name, _ in op.outputs}
    pairs = _matched_variables(qops, fops, producer, in_name)
    graph = _CompressedGraph(
        producer=producer, in_name=in_name, sqnr=_variable_sqnr(fprog, qprog, in_name, pairs, samples),
        qconsts=qprog._constants(), fconsts=fprog._constants(),
        fop_by_out={_norm(op.outputs[0][0]): op for op in fops if op.outputs}, modules=_weight_modules(model))
    return _capped_dbs(sorted(_worst_op_per_node(graph.rows_per_op()), key=rank_key))


def float_reference(model: torch.nn.Module, example: torch.Tensor, path: Path, info, options: dict) -> Path:
    """The uncompressed fp16 package the int8 drop is measured against (int8 activations build on fp16)."""
    from compress.export.coreml.convert import export

    return export(model, example, path, info, precision="fp16",
                  minimum_deployment_target=options.get("deployment_target") or "iOS17",
                  input_type=options.get("input_type") or "image")


def int8_keeping_float(model: torch.nn.Module, example: torch.Tensor, reference: Path, path: Path, info,
                       calibration: np.ndarray, float_layers: list[str], options: dict) -> dict:
    """The int8 package of ``model`` with the MIL ops ``float_layers`` left in float (no
    quantize/dequantize pairs, uncompressed weights)."""
    from compress.export.coreml.convert import export

    export(model, example, path, info, precision="fp16", compression="int8", calibration=calibration,
           minimum_deployment_target=options.get("deployment_target") or "iOS17", float_layers=float_layers,
           input_type=options.get("input_type") or "image")
    return {"path": Path(path), "float_layers": list(float_layers)}
