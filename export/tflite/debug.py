"""Per-layer int8 error of a TFLite model, and float fallback for the worst layers (TFLite target).

``layer_errors(fp32_path, int8_path, x)`` runs both ``.tflite`` files in LiteRT's interpreter with
``experimental_preserve_all_tensors=True`` (builtin kernels, no XNNPACK: a delegate would keep its
intermediates to itself) on the same real samples, reads every op's output tensor with ``get_tensor``,
dequantizes int8/int16 tensors with their scale/zero-point and compares each with the tensor of the same
name in the fp32 model (litert-torch names activations after the torch module stack they come from, e.g.
``...Sequential/torch.nn.modules.linear.Linear_fc2``, identically in both files).

SQNR in dB (10 log10 of signal power over error power, summed over all samples; higher is better; capped
at +-150 dB, float32 round-off), with the attribution of ``compress.export.onnx.debug``: ``error_added_db`` is
the SQNR of a layer's activation input minus that of its output. Rows are sorted by ``layer_sqnr_db``, the
noise the layer adds by itself expressed as an SQNR (output noise-to-signal minus input noise-to-signal;
lowest first): unlike the dB difference it does not rank a first layer behind an exact float input
(150 dB) that brings its output to a healthy 50 dB above a layer that destroys its output. Ops that only
move data (RESHAPE, TRANSPOSE, MAX_POOL_2D, QUANTIZE, DEQUANTIZE, ...) are attributed to the compute op
before them.

Each row's ``node`` is the torch module name (``model.named_modules()`` form: ``"3"``, ``"fc2"``,
``"blocks.0.conv"``) recovered from the tensor name; that is what ``compress.export.tflite.convert.export(...,
float_layers=[...])`` takes to keep the layer in float (PT2E leaves the module's ops unannotated).
``int8_keeping_float`` is this target's hook for the one budgeted loop (``compress.export.common.fallback``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common.preprocess import PREFIX, runner_input, unwrapped_name, wrapped_name
from compress.export.tflite.io import read_preprocessing
from compress.export.common.sqnr import EXACT_DB, MAX_SAMPLES, layer_sqnr, rank_key, source_layer, sqnr_db, upstream_sqnr

PASSTHROUGH = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D", "QUANTIZE", "DEQUANTIZE",
               "RELU", "RELU6", "RELU_N1_TO_1", "PAD", "PADV2", "CAST", "GATHER", "SLICE", "STRIDED_SLICE"}


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.integer):
        return value.astype(np.float64)
    q = detail.get("quantization_parameters") or {}
    scales, zeros = np.asarray(q.get("scales", [])), np.asarray(q.get("zero_points", []))
    if scales.size == 0:
        scale, zero = detail["quantization"]
        if not scale:
            return value.astype(np.float64)
        scales, zeros = np.array([scale]), np.array([zero])
    v = value.astype(np.float64)
    if scales.size == 1:
        return (v - zeros.reshape(-1)[0]) * scales[0]
    shape = [1] * v.ndim
    shape[int(q.get("quantized_dimension", 0))] = -1
    return (v - zeros.reshape(shape)) * scales.reshape(shape)


COMPUTE_CLASSES = re.compile(r"(Conv|Linear|Embedding|GRU|LSTM|RNN|Attention|Bilinear)")


def _segment_module(segment: str) -> tuple[str | None, str]:
    """(module name, module class) of one ``;``-separated part of a litert-torch tensor name."""
    parts = segment.split("/")
    if len(parts) < 2:
        return None, ""
    names, cls = [], ""
    for part in parts[1:]:
        leaf = part.rsplit(".", 1)[-1]
        if "_" not in leaf:
            return None, ""
        cls, attr = leaf.split("_", 1)
        names.append(attr)
    return ".".join(names) or None, cls


def module_name(tensor_name: str, modules: dict[str, torch.nn.Module] | None = None) -> str | None:
    """The torch module a litert-torch tensor name comes from (None: the root module itself).

    ``"M/torch.nn.modules.container.Sequential_blocks/torch.nn.modules.conv.Conv2d_0;..."`` -> ``"blocks.0"``:
    each ``;``-separated part is a ``/`` path without the root, each step ``<module class>_<attribute>``.
    A fused op (conv + batch norm + ReLU) names several modules; the one that holds the weights (a conv or
    linear layer; with ``modules``: a module with a weight matrix of its own) is the layer.
    """
    found = [_segment_module(seg) for seg in tensor_name.split(";") if seg]
    found = [(name, cls) for name, cls in found if name]
    if not found:
        return None
    if modules is not None:
        known = [(n, c) for n, c in found if n in modules]
        for name, _ in known:
            w = getattr(modules[name], "weight", None)
            if isinstance(w, torch.Tensor) and w.ndim >= 2:
                return name
        if known:
            return known[0][0]
    for name, cls in found:
        if COMPUTE_CLASSES.search(cls):
            return name
    return found[0][0]


def _resolve_module(name: str | None, tensor: str, modules: dict | None) -> str | None:
    """``name``, checked against (and where a class name held ``_`` corrected by) the model's modules."""
    if name is None or modules is None or name in modules:
        return name
    first = tensor.split(";")[0].split("/")[1:]
    leaves = [p.rsplit(".", 1)[-1] for p in first]
    candidates = [""]
    for leaf in leaves:  # try every split point of each part's "Class_attr"
        cuts = [m.start() for m in re.finditer("_", leaf)]
        candidates = [f"{c}.{leaf[i + 1:]}" if c else leaf[i + 1:] for c in candidates for i in cuts]
    found = [c for c in candidates if c in modules]
    return found[0] if found else None


class _Graph:
    """One .tflite file: ops (type, input/output tensor indices), tensors by name, constant tensors."""

    def __init__(self, path: Path):
        self.path = path
        self.it = _interpreter(path)
        self.details = {d["index"]: d for d in self.it.get_tensor_details()}
        self.ops = [op for op in self.it._get_ops_details() if op["op_name"] != "DELEGATE"]
        self.produced = {int(o): op for op in self.ops for o in op["outputs"]}
        self.input = self.it.get_input_details()[0]
        self.graph_inputs = {int(d["index"]) for d in self.it.get_input_details()}
        self.by_name = {d["name"]: i for i, d in self.details.items()}

    def name(self, index: int) -> str:
        return self.details[index]["name"]

    def is_activation(self, index: int) -> bool:
        return index >= 0 and (index in self.produced or index in self.graph_inputs)

    def run(self, x: np.ndarray) -> None:
        inp = self.input
        x = np.asarray(x, dtype=np.float32).reshape(inp["shape"])
        scale, zero = inp["quantization"]
        if np.issubdtype(inp["dtype"], np.integer) and scale:  # an unquantized integer input (raw pixels) is cast
            info = np.iinfo(inp["dtype"])
            v = x / scale
            x = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5) + zero, info.min, info.max)
        self.it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        self.it.invoke()

    def value(self, index: int) -> np.ndarray:
        return _dequantize(np.asarray(self.it.get_tensor(index)), self.details[index])


def _open_graphs(fp32_path: Path, quantized_path: Path) -> tuple[_Graph, _Graph]:
    """Both interpreters, refusing a model that is not full int8 or whose input differs from the fp32 one
    (there would be nothing per layer to compare)."""
    f, q = _Graph(fp32_path), _Graph(quantized_path)
    if not any(np.issubdtype(d["dtype"], np.integer) and d["quantization"][0]
               for i, d in q.details.items() if q.is_activation(i)):
        raise InputError(f"{quantized_path}: no int8 activations; per-layer errors need a full-int8 model "
                         "(export variant 'int8')")
    if tuple(f.input["shape"]) != tuple(q.input["shape"]):
        raise InputError(f"{quantized_path}: input shape {tuple(q.input['shape'])} differs from the fp32 model's "
                         f"{tuple(f.input['shape'])}")
    return f, q


def _align_renamed_ops(f: _Graph, q: _Graph, pairs: dict[int, int]) -> None:
    """Pair the outputs of ops whose names differ (the converter renames fused/wrapped ops) by aligning the
    two op sequences, QUANTIZE/DEQUANTIZE left out; only same-size, still unpaired outputs (in place)."""
    from difflib import SequenceMatcher

    skip = ("QUANTIZE", "DEQUANTIZE")
    fseq = [op for op in f.ops if op["op_name"] not in skip]
    qseq = [op for op in q.ops if op["op_name"] not in skip]
    matcher = SequenceMatcher(None, [op["op_name"] for op in fseq], [op["op_name"] for op in qseq], autojunk=False)
    matched_f = set(pairs.values())
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            fo, qo_ = int(fseq[block.a + k]["outputs"][0]), int(qseq[block.b + k]["outputs"][0])
            if qo_ not in pairs and fo not in matched_f and \
                    np.prod(f.details[fo]["shape"]) == np.prod(q.details[qo_]["shape"]):
                pairs[qo_] = fo
                matched_f.add(fo)


def _paired_tensors(f: _Graph, q: _Graph) -> dict[int, int]:
    """Quantized activation tensor -> fp32 tensor it is compared with: by name, then by op alignment; the
    graph input and output always (the output is renamed after the signature)."""
    pairs: dict[int, int] = {}
    for qi in list(q.produced) + list(q.graph_inputs):
        fi = f.by_name.get(q.name(qi))
        if fi is not None and f.is_activation(fi):
            pairs[qi] = fi
    _align_renamed_ops(f, q, pairs)
    pairs[int(q.input["index"])] = int(f.input["index"])
    qo, fo = q.it.get_output_details()[0]["index"], f.it.get_output_details()[0]["index"]
    pairs[int(qo)] = int(fo)
    return pairs


def _tensor_sqnr(f: _Graph, q: _Graph, pairs: dict[int, int], samples: np.ndarray) -> dict[int, float]:
    """SQNR of every paired quantized tensor, signal and noise power summed over all samples (one SQNR per
    tensor, not an average of per-sample dBs)."""
    signal = dict.fromkeys(pairs, 0.0)
    noise = dict.fromkeys(pairs, 0.0)
    for x in samples:
        f.run(x[None])
        q.run(x[None])
        for qi, fi in pairs.items():
            a, b = f.value(fi), q.value(qi)
            if a.size != b.size:
                continue
            a = a.reshape(-1)
            signal[qi] += float(np.dot(a, a))
            d = a - b.reshape(-1)
            noise[qi] += float(np.dot(d, d))
    return {qi: sqnr_db(signal[qi], noise[qi]) for qi in pairs}


def _weight_sqnr(op, f: _Graph, q: _Graph, pairs: dict[int, int], f_producer: dict) -> float | None:
    """The worst SQNR of the op's int8 constant inputs (its weights) against the same inputs of its fp32
    twin, the op writing the paired output (None: no such twin or no int8 constants)."""
    fop = f_producer.get(pairs.get(int(op["outputs"][0]), -1))
    if fop is None:
        return None
    values = []
    for pos, qi in enumerate(op["inputs"]):
        qi = int(qi)
        if qi < 0 or q.is_activation(qi) or q.details[qi]["dtype"] != np.int8 or pos >= len(fop["inputs"]):
            continue
        fi = int(fop["inputs"][pos])
        if fi < 0 or f.is_activation(fi):
            continue
        a, b = f.value(fi), q.value(qi)
        if a.size != b.size:
            continue
        a = a.reshape(-1)
        d = a - b.reshape(-1)
        values.append(sqnr_db(float(np.dot(a, a)), float(np.dot(d, d))))
    return min(values) if values else None


def _module_of_op(op, f: _Graph, q: _Graph, pairs: dict[int, int], modules: dict | None) -> str | None:
    """The torch module an op comes from: from its output's name, else the fp32 twin's output name (the
    converter renamed it), else a constant input's name (the graph output is renamed after the signature;
    its bias/weights keep the module)."""
    out_name = q.name(int(op["outputs"][0]))
    module = _resolve_module(module_name(out_name, modules), out_name, modules)
    if module is None and int(op["outputs"][0]) in pairs:
        f_name = f.name(pairs[int(op["outputs"][0])])
        module = _resolve_module(module_name(f_name, modules), f_name, modules)
    if module is None:
        for i in op["inputs"]:
            if int(i) >= 0 and not q.is_activation(int(i)):
                const = q.name(int(i))
                module = _resolve_module(module_name(const, modules), const, modules)
                if module is not None:
                    break
    return module


def _rows_per_node(f: _Graph, q: _Graph, pairs: dict[int, int], sqnr: dict[int, float],
                   modules: dict | None) -> dict[str, dict]:
    """One row per node (torch module, or ``"<OP>:<tensor>"`` for the root module's ops): of the compute ops
    charged to it (pass-through ops count as the op before them), the one adding the most error."""
    def activation_inputs(op) -> list[int]:
        return [int(i) for i in op["inputs"] if q.is_activation(int(i))]

    f_producer = {int(o): op for op in f.ops for o in op["outputs"]}
    rows: dict[str, dict] = {}
    for tensor, value in sqnr.items():
        op = source_layer(tensor, q.produced, activation_inputs, lambda o: o["op_name"] in PASSTHROUGH)
        if op is None:  # the graph input itself
            continue
        module = _module_of_op(op, f, q, pairs, modules)
        node = module or f"{op['op_name']}:{q.name(int(op['outputs'][0])).split(';')[0]}"
        ins = [upstream_sqnr(i, sqnr, q.produced, activation_inputs) for i in activation_inputs(op)]
        ins = [v for v in ins if v is not None]
        input_sqnr = min(ins) if ins else None
        added = (input_sqnr if input_sqnr is not None else EXACT_DB) - value
        row = rows.get(node)
        if row is not None and row["error_added_db"] >= added:
            continue
        rows[node] = {
            "node": node,
            "module": module,
            "keepable": module is not None,  # only ops of a torch module can be kept in float
            "op_type": op["op_name"],
            "position": int(op["index"]),
            "tensor": q.name(tensor),
            "sqnr_db": value,
            "input_sqnr_db": input_sqnr,
            "error_added_db": added,
            "weight_sqnr_db": _weight_sqnr(op, f, q, pairs, f_producer),
        }
    return rows


def _student_names(rows: dict[str, dict]) -> dict[str, dict]:
    """Rows of a raw-pixel file (``RawPixels``) named as the student's own modules, what ``float_layers``
    takes; the preprocessing's ops (in float already) and the wrapper's own ops cannot be kept in float."""
    out = {}
    for row in rows.values():
        inside = row["module"] is not None and row["module"].startswith(PREFIX)
        module = unwrapped_name(row["module"]) if inside else None
        node = module if inside else row["node"]
        out[node] = {**row, "node": node, "module": module, "keepable": inside}
    return out


def _capped_dbs(rows: list[dict]) -> list[dict]:
    """Every dB value within +-EXACT_DB and NaN as None (JSON- and table-friendly), in place."""
    for r in rows:
        for key in ("sqnr_db", "input_sqnr_db", "error_added_db", "weight_sqnr_db", "layer_sqnr_db"):
            v = r[key]
            r[key] = None if v is None else (min(max(float(v), -EXACT_DB), EXACT_DB) if not math.isnan(v) else None)
    return rows


def layer_errors(fp32_path: Path | str, quantized_path: Path | str, samples: np.ndarray,
                 model: torch.nn.Module | None = None) -> list[dict]:
    """Per-layer error of the int8 ``.tflite`` at ``quantized_path`` against the fp32 one, worst first.

    ``samples``: real float32 model inputs (N, ...) (at most ``MAX_SAMPLES`` are used). ``model``: the torch
    model both were converted from (optional: checks/corrects the module names). Rows as in
    ``compress.export.onnx.debug.layer_errors``: ``node`` (torch module name, what ``float_layers`` takes; for an op
    of the root module, ``"<OP>:<tensor>"``), ``module`` (the module name or None), ``op_type`` (TFLite op),
    ``tensor``, ``sqnr_db``, ``input_sqnr_db``, ``error_added_db``, ``weight_sqnr_db``.
    """
    fp32_path, quantized_path = Path(fp32_path), Path(quantized_path)
    for p in (fp32_path, quantized_path):
        if not p.is_file():
            raise InputError(f"{p}: no such TFLite model")
    samples = np.asarray(samples)[:MAX_SAMPLES]
    if len(samples) == 0:
        raise InputError("samples: need at least one real model input")
    preprocessing = read_preprocessing(quantized_path)
    samples = runner_input(samples, preprocessing)  # raw pixels for a file that takes them
    f, q = _open_graphs(fp32_path, quantized_path)
    pairs = _paired_tensors(f, q)
    sqnr = _tensor_sqnr(f, q, pairs, samples)
    modules = {n: m for n, m in model.named_modules() if n} if model is not None else None
    if preprocessing:  # the file's tensors are named inside ``RawPixels``
        modules = None if modules is None else {wrapped_name(n): m for n, m in modules.items()}
        # the preprocessing (float in both files, but transposed at another point) counts as the graph input
        sqnr = {t: v for t, v in sqnr.items() if module_name(q.name(t)) != "preprocess"}
    rows = _rows_per_node(f, q, pairs, sqnr, modules)
    if preprocessing:
        rows = _student_names(rows)
    for r in rows.values():
        r["layer_sqnr_db"] = layer_sqnr(r["input_sqnr_db"], r["sqnr_db"])
    return _capped_dbs(sorted(rows.values(), key=rank_key))


def quantized_modules(path: Path | str, modules: list[str]) -> list[str]:
    """Which of ``modules`` still run int8 ops in the ``.tflite`` at ``path``.

    PT2E leaves a kept module unannotated, but LiteRT's converter may still fuse ``DEQUANTIZE -> float conv
    -> QUANTIZE`` into an int8 conv (it quantizes the float weights itself) when the neighbours are int8.
    """
    g = _Graph(Path(path))
    hits = set()
    for op in g.ops:
        outs = [int(o) for o in op["outputs"]]
        if not outs or not np.issubdtype(g.details[outs[0]]["dtype"], np.integer) or op["op_name"] in PASSTHROUGH:
            continue
        names = [g.name(outs[0])] + [g.name(int(i)) for i in op["inputs"] if int(i) >= 0 and not g.is_activation(int(i))]
        for name in names:
            for seg in name.split(";"):
                m, _ = _segment_module(seg)
                for kept in modules:
                    if m is not None and (m == kept or m.startswith(kept + ".")):
                        hits.add(kept)
    return [m for m in modules if m in hits]


def module_regex(module: str) -> str:
    """A regex for the tensor names of ``module``'s ops (``"body.4"`` matches ``.../..._body/..._4;``)."""
    return r"(^|;)[^/;]*" + "".join(r"/[\w.]*?_" + re.escape(part) for part in module.split(".")) + r"(;|/|$)"


def aeq_quantize(fp32_path: Path | str, out_path: Path | str, calibration: np.ndarray, float_modules: list[str]) -> Path:
    """Full int8 of the fp32 ``.tflite`` with ai-edge-quantizer (``static_wi8_ai8``, min/max calibration),
    with ``float_modules``' ops left in float (``no_quantize`` for the tensor-name regex of each module).

    Used when LiteRT's converter re-quantizes a module PT2E left in float: ai-edge-quantizer works on the
    converted flatbuffer, so what it leaves in float stays float (DEQUANTIZE/QUANTIZE around it).
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    signatures = Interpreter(model_path=str(fp32_path)).get_signature_list()
    key = next(iter(signatures))
    (input_name,) = signatures[key]["inputs"]
    qt = quantizer.Quantizer(str(fp32_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    for module in float_modules:
        qt.update_quantization_recipe(regex=module_regex(module), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                      algorithm_key=AlgorithmName.NO_QUANTIZE)
    detail = Interpreter(model_path=str(fp32_path)).get_input_details()[0]
    calibration = runner_input(calibration, read_preprocessing(fp32_path))  # raw pixels for a file that takes them
    data = [{input_name: np.asarray(row, dtype=detail["dtype"]).reshape(detail["shape"])} for row in calibration]
    result = qt.quantize(qt.calibrate({key: data}, num_threads=1), enable_progress_report=False)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_bytes(bytes(result.quantized_model))
    return out_path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def float_reference(model: torch.nn.Module, example: torch.Tensor, path: Path, info, options: dict) -> Path:
    """The fp32 ``.tflite`` the int8 fallback measures its drop against."""
    from compress.export.tflite.convert import export

    return export(model, example, path, info)


def int8_keeping_float(model: torch.nn.Module, example: torch.Tensor, reference: Path, path: Path, info,
                       calibration: np.ndarray, float_layers: list[str], options: dict) -> dict:
    """Full-int8 ``.tflite`` of ``model`` with the torch modules ``float_layers`` left in float.

    PT2E leaves those modules unannotated. A converter error on this mix (e.g. a same-scale constraint
    LiteRT cannot meet) is ``ConversionFailed``. Where the converter re-quantized a kept module anyway
    (``quantized_modules``: LiteRT fuses DEQUANTIZE -> float conv -> QUANTIZE back into an int8 conv), the
    fp32 ``reference`` flatbuffer is quantized with ai-edge-quantizer instead (``aeq_quantize``); the
    facts returned say which quantizer made the file.
    """
    from compress.export.backend import ConversionFailed
    from compress.export.tflite.convert import export

    path = Path(path)
    try:
        export(model, example, path, info, variant="int8", calibration=calibration, float_layers=float_layers)
    except InputError:
        raise
    except Exception as exc:  # the converter rejects this mix of int8 and float
        raise ConversionFailed(_first_line(exc)) from exc
    facts = {"quantizer": "pt2e"}
    # a raw-pixel file names the student's modules inside ``RawPixels``
    names = [wrapped_name(n) for n in float_layers] if info.preprocessing else list(float_layers)
    named = dict(zip(names, float_layers))
    requantized = [named[n] for n in quantized_modules(path, names)] if float_layers else []
    if requantized:
        facts["requantized_by_converter"] = requantized
        try:
            path = aeq_quantize(reference, path.with_name(path.stem + "-aeq.tflite"), calibration, names)
            facts["quantizer"] = "ai-edge-quantizer"
            facts["still_int8"] = [named[n] for n in quantized_modules(path, names)]
        except Exception as exc:
            facts["ai_edge_quantizer_error"] = _first_line(exc)
    return {"path": path, "float_layers": list(float_layers), **facts}
