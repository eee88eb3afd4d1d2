"""ONNX quantization with ONNX Runtime's own tools (nothing here re-implements what they already do).

Schemes (``quantize(fp32_path, out_path, scheme, ...)``):

* ``fp16``          float16 weights and compute: ``onnxruntime.transformers.float16.convert_float_to_float16``
                    with ``keep_io_types=True`` (the input and the logits stay float32, so an app feeds the
                    same tensor as for the fp32 model; Cast nodes sit at the boundary).
* ``int8-weights``  ``onnxruntime.quantization.quantize_dynamic``: int8 per-channel weights, activations
                    quantized at run time per batch (MatMulInteger / ConvInteger + DynamicQuantizeLinear).
* ``int8``          ``onnxruntime.quantization.quantize_static`` in QDQ format: int8 per-channel symmetric
                    weights, int8 per-tensor activations whose ranges come from a ``CalibrationDataReader``
                    over real transfer-set samples (MinMax). The model is first run through
                    ``quant_pre_process`` (symbolic shape inference + ORT graph optimization), which the ORT
                    docs recommend before static quantization.

Every output is written atomically and keeps the fp32 model's ``metadata_props`` (labels, normalization,
producer) and doc string, with a ``quantization`` entry naming the scheme.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.onnx.fp32 import export_fp32
from compress.export.onnx.tolerances import TOLERANCES  # noqa: F401  (re-exported)

SCHEMES = ("fp16", "int8-weights", "int8")
FP16_CONVERTER = "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types=True)"


class SampleReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over real samples, in batches."""

    def __init__(self, input_name: str, samples: np.ndarray, batch_size: int = 32):
        self.input_name = input_name
        samples = np.asarray(samples)  # raw uint8 pixels for a model that takes them, float32 otherwise
        self.samples = np.ascontiguousarray(samples, dtype=np.uint8 if samples.dtype == np.uint8 else np.float32)
        self.batch_size = int(batch_size)
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.samples):
            return None
        batch = self.samples[self._next:self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)


def _reader_class():
    """``SampleReader`` registered as a ``CalibrationDataReader`` subclass (ORT checks isinstance)."""
    from onnxruntime.quantization import CalibrationDataReader

    return type("CalibrationSamples", (SampleReader, CalibrationDataReader), {})


class FeedReader:
    """A ``CalibrationDataReader`` over whole input feeds (``{input name: array}``): a model with several
    inputs, such as a streaming file's hop and states."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self._next = list(feeds), 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.feeds)


def calibration_reader(model_path: Path | str, samples, batch_size: int = 32):
    """A calibration data reader feeding ``samples`` to the model's first input (``samples`` a list of feed
    dicts: each feed as given, for a model with several inputs)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    if isinstance(samples, list):
        return type("CalibrationFeeds", (FeedReader, CalibrationDataReader), {})(samples)

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    batch_dim = inputs[0].type.tensor_type.shape.dim[0] if inputs[0].type.tensor_type.shape.dim else None
    if batch_dim is not None and batch_dim.HasField("dim_value") and batch_dim.dim_value > 0:
        batch_size = batch_dim.dim_value  # fixed batch: feed exactly that many per call
    return _reader_class()(inputs[0].name, samples, batch_size)


def check_calibration(calibration: np.ndarray | None, scheme: str = "int8") -> np.ndarray:
    if calibration is None:
        raise InputError(f"calibration: scheme {scheme!r} needs calibration samples (e.g. from the transfer set)")
    calib = np.asarray(calibration)
    calib = calib if calib.dtype == np.uint8 else calib.astype(np.float32)  # uint8: raw pixels, kept as they are
    if calib.ndim < 2 or len(calib) == 0:
        raise InputError(f"calibration: expected an array of model inputs (N, ...), got shape {calib.shape}")
    return calib


def preprocess(fp32_path: Path | str, out_path: Path | str) -> Path:
    """``quant_pre_process``: shape inference and ORT graph optimization, the input static int8 quantizes.

    Deterministic, so the fp32 reference that ``compress.export.onnx.debug`` compares against is the same graph
    (same node and tensor names) as the one that was quantized.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def preprocessing_nodes(graph) -> list[str]:
    """The nodes of the raw-pixel preprocessing (``RawPixels``: Cast, Mul, Sub, Div) that open ``graph``:
    the chain from the graph input while each node reads only the chain and constants. Quantization leaves
    them in float: rounding the scaled pixels to fp16 or int8 would only add error before the first layer."""
    initializers = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output} | initializers
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or graph.input[0].type.tensor_type.elem_type != 2:  # 2: uint8
        return []
    chain, found = {inputs[0]}, []
    for node in graph.node:
        reads = [i for i in node.input if i and i not in constants]
        if node.op_type in ("Cast", "Mul", "Sub", "Div") and reads and all(i in chain for i in reads):
            found.append(node.name)
            chain.update(node.output)
    return found


def _copy_metadata(source: Path, target_proto, scheme: str, extra: dict | None = None) -> None:
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    entries = {p.key: p.value for p in src.metadata_props}
    entries["quantization"] = json.dumps({"scheme": scheme, **(extra or {})}, sort_keys=True)
    del target_proto.metadata_props[:]
    for key, value in entries.items():
        entry = target_proto.metadata_props.add()
        entry.key, entry.value = key, value
    if src.doc_string:
        target_proto.doc_string = src.doc_string


def _float_inputs_for_excluded(proto, excluded: set[str]) -> None:
    """Let the nodes kept in float read the float tensor, not its QuantizeLinear -> DequantizeLinear copy.

    Needed because ONNX Runtime's ``WeightBiasQuantization`` graph optimizer (on by default, basic level)
    re-quantizes the float weights of a Conv/Gemm/MatMul whose input comes from a DequantizeLinear when the
    session is created: an excluded layer would silently run with int8 weights again
    (observed: a layer kept in float (``float_layers``) still collapsed accuracy to chance). Q/DQ pairs
    left without consumers are removed (with their scales); the producer of such a tensor then runs as
    DequantizeLinear + float op (int8 weights, float compute). ``quantize`` keeps Relu/Clip explicit in this case
    (``QDQKeepRemovableActivations``), so the tensor before each QuantizeLinear is the real activation.
    """
    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    while True:
        used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for node in graph.node for i in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def quantize(fp32_path: Path | str, out_path: Path | str, scheme: str, *, calibration: np.ndarray | None = None,
             float_layers: list[str] | None = None, per_channel: bool = True) -> Path:
    """Write the ``scheme`` variant of the fp32 ONNX model at ``fp32_path`` to ``out_path`` (atomically).

    ``calibration``: float32 model inputs (N, ...) from the transfer set, required for ``int8``.
    ``float_layers``: node names (of the pre-processed graph, as ``compress.export.onnx.debug.layer_errors``
    reports them) kept in float for ``int8`` / ``int8-weights``.
    """
    import onnx

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if scheme not in SCHEMES:
        raise InputError(f"scheme {scheme!r}: expected one of {', '.join(SCHEMES)} for target 'onnx'")
    if not fp32_path.is_file():
        raise InputError(f"{fp32_path}: no such ONNX model")
    if scheme == "int8" and not isinstance(calibration, list):  # a list: whole feeds of a multi-input model
        calibration = check_calibration(calibration, scheme)
    excluded = list(float_layers or [])

    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(prefix="onnx-quant-") as work:
        work = Path(work)
        if scheme == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            from onnxruntime.transformers.onnx_model import OnnxModel

            source = onnx.load(str(fp32_path))
            proto = convert_float_to_float16(source, keep_io_types=True,
                                             node_block_list=(excluded + preprocessing_nodes(source.graph)) or None)
            # the converter appends the boundary Casts at the end of the node list; ORT's own OnnxModel
            # restores the topological order onnx.checker requires
            wrapped = OnnxModel(proto)
            wrapped.topological_sort()
            proto = wrapped.model
            extra = {"converter": FP16_CONVERTER}
        elif scheme == "int8-weights":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            raw = work / "dynamic.onnx"
            quantize_dynamic(str(fp32_path), str(raw), per_channel=per_channel, weight_type=QuantType.QInt8,
                             nodes_to_exclude=excluded or None)
            proto = onnx.load(str(raw))
            extra = {"tool": "onnxruntime.quantization.quantize_dynamic", "per_channel": per_channel}
        else:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            prepared = preprocess(fp32_path, work / "prepared.onnx")
            in_float = preprocessing_nodes(onnx.load(str(prepared), load_external_data=False).graph)
            raw = work / "static.onnx"
            quantize_static(
                str(prepared), str(raw), calibration_reader(prepared, calibration),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=(excluded + in_float) or None,
                # with layers kept in float, keep Relu/Clip explicit so the float tensor before each
                # QuantizeLinear is the true activation an excluded layer reads (see below)
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                               "QDQKeepRemovableActivations": bool(excluded)},
            )
            proto = onnx.load(str(raw))
            if excluded:
                _float_inputs_for_excluded(proto, set(excluded))
            extra = {"tool": "onnxruntime.quantization.quantize_static (QDQ, MinMax)", "per_channel": per_channel,
                     "calibration_samples": int(len(calibration)), "nodes_excluded": excluded,
                     **({"preprocessing_in_float": in_float} if in_float else {})}
        _copy_metadata(fp32_path, proto, scheme, extra)
        onnx.save_model(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise InputError(f"{fp32_path}: the {scheme} model fails onnx.checker ({str(exc).splitlines()[0]})") from None
    return out_path


def module_nodes(fp32_path: Path | str, modules) -> list[str]:
    """The nodes of the file at ``fp32_path`` that came from the torch ``modules`` (``named_modules()`` names; a
    name covers its submodules), as the exporter recorded them in each node's ``pkg.torch.onnx.name_scopes``
    (``['', 'frontend', 'conv1d']``: the module path, then the op)."""
    import ast

    import onnx

    wanted = set(modules)
    if not wanted:
        return []
    found = []
    for node in onnx.load(str(fp32_path), load_external_data=False).graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        path = ast.literal_eval(scopes)[1:-1] if scopes else []
        if any(m in wanted or any(m.startswith(w + ".") for w in wanted) for m in path):
            found.append(node.name)
    return found


def _keeping_model_float(fp32_path: Path, model, float_layers: list[str] | None) -> list[str]:
    """``float_layers`` and the nodes of the model's own ``float_under_int8`` modules (an audio model's log-mel:
    its power spectrum spans ten decades; quantized, a DS-CNN fell to ~27% accuracy on FSDD)."""
    own = module_nodes(fp32_path, getattr(model, "float_under_int8", ()))
    return list(dict.fromkeys([*(float_layers or []), *own]))


def export_quantized(model, example, path: Path | str, info, *, scheme: str, calibration: np.ndarray | None = None,
                     float_layers: list[str] | None = None, opset: int | None = None) -> Path:
    """``compress.export.onnx.fp32.export_fp32`` to fp32, then ``quantize`` to ``scheme``: the exporter signature
    for ``--quantize``. ``model``, ``example`` and ``calibration`` as the file will take them (``convert.export``
    has already put a raw-pixel model behind its preprocessing and converted both to raw pixels).

    Fails before the (slower) export when ``scheme`` is unknown or int8 has no calibration samples.
    """
    if scheme not in SCHEMES:
        raise InputError(f"scheme {scheme!r}: expected one of {', '.join(SCHEMES)} for target 'onnx'")
    if scheme == "int8":
        check_calibration(calibration, scheme)
    with tempfile.TemporaryDirectory(prefix="onnx-fp32-") as work:
        fp32 = export_fp32(model, example, Path(work) / "model.onnx", info, opset=opset)
        if scheme == "int8":
            float_layers = _keeping_model_float(fp32, model, float_layers)
        return quantize(fp32, path, scheme, calibration=calibration, float_layers=float_layers)


def int8_keeping_float(model, example, reference: Path, path: Path, info, calibration: np.ndarray,
                       float_layers: list[str], options: dict) -> dict:
    """Static int8 of the fp32 ``reference`` with ``float_layers`` (node names) left in float.

    ``calibration`` is normalized (the fallback's space); a reference that takes raw pixels gets them."""
    from compress.export.common.preprocess import runner_input

    calibration = runner_input(calibration, getattr(info, "preprocessing", None) or {})  # info may be None: a bare file
    float_layers = _keeping_model_float(reference, model, float_layers)
    quantize(reference, path, "int8", calibration=calibration, float_layers=float_layers)
    return {"path": Path(path), "float_layers": list(float_layers)}
