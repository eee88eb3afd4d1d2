"""TFLite target: PyTorch -> ``.tflite`` with Google's litert-torch converter.

Variants (``export(..., variant=...)``):

* ``fp32``          plain conversion.
* ``fp16``          fp16 weights (float compute): litert-torch's ``full_fp16_recipe`` (ai-edge-quantizer
                    float casting, weights stored fp16 + DEQUANTIZE ops).
* ``int8-dynamic``  dynamic-range quantization: int8 per-channel weights, float activations quantized on
                    the fly inside the kernels (PT2E with litert-torch's ``PT2EQuantizer``, ``is_dynamic``).
* ``int8``          full integer: PT2E static quantization with litert-torch's ``PT2EQuantizer``
                    (per-channel int8 weights, per-tensor int8 activations calibrated with HistogramObserver
                    on ``calibration`` samples). The converter folds the boundary quantize/dequantize, so the
                    model's input and output tensors are int8 (scale/zero-point in the tensor's quantization
                    parameters; ``compress.export.tflite.runner`` applies them).

The model is exported with a fixed batch of 1 (``example[:1]``), the way an app runs it on the device.

``ModelInfo`` is recorded in the flatbuffer's ``metadata`` list (name -> buffer): ``labels`` (JSON list)
and ``compress_info`` (JSON of ``info.metadata()``), beside the converter's own ``min_runtime_version``.
``read_metadata(path)`` reads them back.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.mode import converting, converts_model
# The metadata entry names and ``read_metadata`` live in ``io`` (runners read them there without torch).
from compress.core.noise import native_stderr_filtered
from compress.export.tflite import STDERR_NOISE, VARIANTS as SCHEME_VARIANTS
from compress.export.tflite.io import INFO_KEY, LABELS_KEY, metadata_name, read_metadata  # noqa: F401

VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8")
TARGET = "tflite"


@converts_model
def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path | str,
    info: ModelInfo,
    *,
    variant: str = "fp32",
    calibration: np.ndarray | None = None,
    float_layers: Sequence[str] | None = None,
) -> Path:
    """Convert ``model`` to a ``.tflite`` at ``path`` (atomically) and return ``path``.

    ``float_layers``: for ``int8``/``int8-dynamic``, torch module names (as in ``model.named_modules()``,
    e.g. ``"fc2"``, ``"blocks.3"``) whose ops stay in float (the PT2E quantizer does not annotate them; the
    converter puts DEQUANTIZE/QUANTIZE around them). A name also covers its submodules. For ``int8`` the
    model's own ``float_under_int8`` (e.g. an audio model's log-mel front-end) joins them.

    ``example``: an input batch in the model's normalized input space (only ``example[:1]`` is used: the
    TFLite model has a fixed batch of 1). ``calibration``: float samples shaped like ``example`` rows
    (``(N, *example.shape[1:])``), required for ``variant="int8"`` (e.g. a few hundred transfer-set samples).
    With ``info.preprocessing`` the file takes raw uint8 pixels (CAST and the normalization inside, in
    float even for ``int8``); ``example`` and ``calibration`` stay normalized and are converted here.
    """
    path = Path(path)
    if variant not in VARIANTS:
        raise InputError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)} for target {TARGET!r}")
    if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] < 1:
        raise InputError("example: expected a torch.Tensor batch with at least one sample")
    sample = example[:1].detach().to(torch.float32)
    float_layers = [str(n) for n in (float_layers or [])]
    if variant == "int8":
        float_layers = list(dict.fromkeys([*float_layers, *getattr(model, "float_under_int8", ())]))
    if float_layers:
        if variant not in ("int8", "int8-dynamic"):
            raise InputError(f"float_layers: only variants 'int8' and 'int8-dynamic' quantize layers, not {variant!r}")
        known = {name for name, _ in model.named_modules() if name}
        unknown = [n for n in float_layers if n not in known]
        if unknown:
            raise InputError(f"float_layers: {', '.join(unknown)} not a module of the model "
                             f"(modules: {', '.join(sorted(known)[:20])}{', ...' if len(known) > 20 else ''})")
    calib = None
    if variant == "int8":
        if calibration is None:
            raise InputError("calibration: variant 'int8' needs calibration samples (e.g. from the transfer set)")
        calib = np.asarray(calibration, dtype=np.float32)
        if calib.ndim != sample.ndim or tuple(calib.shape[1:]) != tuple(sample.shape[1:]) or len(calib) == 0:
            raise InputError(
                f"calibration: expected an array of shape (N, {', '.join(map(str, sample.shape[1:]))}), "
                f"got {calib.shape}"
            )

    if info.preprocessing:
        model, sample, calib, float_layers = _raw_pixel_inputs(model, sample, calib, float_layers, variant,
                                                               info.preprocessing)
    with converting(model), quiet_progress(), native_stderr_filtered(STDERR_NOISE):  # modes and device restored
        data = _convert(model, sample, variant, calib, float_layers)

    data = add_metadata(data, {LABELS_KEY: json.dumps(list(info.labels)), INFO_KEY: json.dumps(info.metadata())})
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _raw_pixel_inputs(model: torch.nn.Module, sample: torch.Tensor, calib: np.ndarray | None,
                      float_layers: list[str], variant: str, preprocessing: dict):
    """The student behind its preprocessing (``RawPixels``: uint8 input, CAST and the normalization inside),
    with the sample and calibration as raw pixels and ``float_layers`` renamed into the wrapper. For
    ``int8`` the preprocessing itself stays float: int8 steps on the scaled pixels would only add error
    before the first layer (the first layer's input is quantized as without preprocessing)."""
    from compress.export.common.preprocess import wrapped_name
    from compress.export.common.raw_pixels import raw_export_inputs

    wrapped, sample, calib = raw_export_inputs(model, sample, calib, preprocessing)
    float_layers = [wrapped_name(n) for n in float_layers] + (["preprocess"] if variant == "int8" else [])
    return wrapped, sample, calib, float_layers


def _convert(model: torch.nn.Module, sample: torch.Tensor, variant: str, calib: np.ndarray | None,
             float_layers: Sequence[str] = ()) -> bytes:
    import litert_torch

    args = (sample,)
    try:
        if variant == "fp32":
            return bytes(litert_torch.convert(model, args).model_content())
        if variant == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            data = bytes(litert_torch.convert(model, args, quant_config=quant_recipes.full_fp16_recipe()).model_content())
            # ai-edge-quantizer rewrites the flatbuffer but keeps the float op versions (DEQUANTIZE of fp16
            # is version 3, it leaves 1): let the converter's exporter restamp versions and min runtime.
            try:
                return _restamp_op_versions(data)
            except Exception as exc:  # the model is still valid; only its op versions are stale
                warnings.warn(f"tflite fp16: could not restamp op versions ({exc}); the compatibility report "
                              "may understate the runtime this model needs", stacklevel=2)
                return data
        return _convert_pt2e(model, args, dynamic=(variant == "int8-dynamic"), calib=calib, float_layers=float_layers)
    except InputError:
        raise
    except Exception as exc:  # the converter raises RuntimeError / MLIR errors with the op inside
        op = _unconvertible_op(exc)
        if op is None:
            raise
        raise InputError(f"model: op {op} cannot be converted to target {TARGET!r} (litert-torch cannot lower it); "
                         "expected only ops litert-torch lowers: rewrite that layer or pick another target") from exc


def _convert_pt2e(model: torch.nn.Module, args: tuple, *, dynamic: bool, calib: np.ndarray | None,
                  float_layers: Sequence[str] = ()) -> bytes:
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    graph, quantizer = _pt2e_quantize(model, args, dynamic=dynamic, calib=calib, float_layers=float_layers)
    edge = litert_torch.convert(graph, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def dynamic_int8_keywords(model: torch.nn.Module, kwargs: dict) -> bytes:
    """``model`` called with keyword tensors (the names become the file's signature) as a dynamic-range int8
    flatbuffer: int8 per-channel weights, float inputs and outputs (``int8-dynamic``)."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    graph, quantizer = _pt2e_quantize(model, (), dynamic=True, calib=None, kwargs=kwargs)
    edge = litert_torch.convert(graph, sample_args=(), sample_kwargs=kwargs,
                                quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def module_path(node) -> str | None:
    """The torch module name (``named_modules()`` form, e.g. ``"blocks.0.conv"``) an exported fx node came
    from, or None for ops of the root module itself."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    fqn = str(list(stack.values())[-1][0])
    fqn = re.sub(r"^L\['self'\]\.?", "", fqn)
    fqn = re.sub(r"\[(\d+)\]", r".\1", fqn).strip(".")
    return fqn or None


def _in_layers(node, layers: Sequence[str]) -> bool:
    path = module_path(node)
    return path is not None and any(path == m or path.startswith(m + ".") for m in layers)


def _quantizer_class():
    """litert-torch's PT2EQuantizer, with layers kept in float by module name.

    Its own ``set_module_name(name, None)`` cannot be used with torch 2.13: its filter strips a
    ``"L__self___"`` prefix from the ``nn_module_stack`` keys, which torch.export now spells ``"L__self__"``
    (and it turns every ``_`` of a module name into ``.``), so no node matches. This filter reads the
    module's qualified name from the stack's values instead.
    """
    from litert_torch.quantize import pt2e_quantizer

    class FloatLayersQuantizer(pt2e_quantizer.PT2EQuantizer):
        def __init__(self, float_layers: Sequence[str] = ()):
            super().__init__()
            self.float_layers = tuple(float_layers)

        def _keep(self, node) -> bool:
            return not _in_layers(node, self.float_layers)

        def _annotate_for_static_quantization_config(self, model):
            if not self.float_layers:
                return super()._annotate_for_static_quantization_config(model)
            return self._annotate_all_static_patterns(model, self.global_config, self._keep)

        def _annotate_for_dynamic_quantization_config(self, model):
            if not self.float_layers:
                return super()._annotate_for_dynamic_quantization_config(model)
            return self._annotate_all_dynamic_patterns(model, self.global_config, self._keep)

    return FloatLayersQuantizer


def _pt2e_quantize(model: torch.nn.Module, args: tuple, *, dynamic: bool, calib: np.ndarray | None,
                   float_layers: Sequence[str] = (), kwargs: dict | None = None):
    """PT2E quantization with litert-torch's quantizer: (quantized torch graph, quantizer).

    ``float_layers``: module names whose ops are not annotated (stay float). ``kwargs``: keyword inputs of
    a model called by name (a streaming step; dynamic only: no per-row calibration to feed them)."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _quantizer_class()(float_layers).set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    )
    graph = torch.export.export(model, args, kwargs=kwargs).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        if dynamic:
            graph(*args, **(kwargs or {}))  # weight observers only (activations are quantized at run time)
        else:
            # The exported graph has the fixed batch of the example (1): calibrate sample by sample.
            for row in calib:
                graph(torch.from_numpy(np.ascontiguousarray(row[None])))
    graph = convert_pt2e(graph, fold_quantize=False)
    move_exported_model_to_eval(graph)
    for module in graph.modules():  # exported graphs keep training=True; litert-torch warns on it
        module.training = False
    return graph, quantizer


def int8_reference(model: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray) -> torch.nn.Module:
    """The full-int8 model as PyTorch simulates it (PT2E quantize/dequantize graph, batch of 1).

    What ``export(..., variant="int8")`` converts: comparing the ``.tflite`` with it separates conversion
    error (should be a few output quantization steps) from quantization error.
    """
    with converting(model):
        graph, _ = _pt2e_quantize(
            model, (example[:1].detach().to(torch.float32),), dynamic=False,
            calib=np.asarray(calibration, dtype=np.float32),
        )
    return graph


_OP_PATTERNS = (
    re.compile(r"Lowering not found: (\S+)"),
    re.compile(r"failed to legalize operation '([^']+)'"),
    re.compile(r"'([\w.]+)' op is neither a custom op nor a flex op"),
)


def _unconvertible_op(exc: BaseException) -> str | None:
    text = str(exc)
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _restamp_op_versions(data: bytes) -> bytes:
    """Re-export the flatbuffer through litert-converter so op versions and min_runtime_version match the ops."""
    from litert_converter.mlir import ir
    from litert_converter.mlir._mlir_libs import converter_api_ext, model_utils_ext

    ctx = ir.Context()
    converter_api_ext.prepare_mlir_context(ctx)
    module = model_utils_ext.flatbuffer_to_mlir(data, ctx)
    with ctx:
        return bytes(converter_api_ext.export_flatbuffer_to_bytes(module.operation))


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """litert-torch prints a progress tree per conversion unless LITERT_TORCH_SHOW_PROGRESS is off."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    old = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def add_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    """Return the flatbuffer ``data`` with ``entries`` (name -> UTF-8 text) in its ``metadata`` list.

    An existing entry of the same name is replaced.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [m for m in (model.metadata or []) if metadata_name(m.name) not in entries]
    for name, text in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_scheme(model, example, path, info, *, scheme: str = "none", calibration=None, float_layers=(),
                  min_runtime=None) -> Path:
    """``export`` with the registry's vocabulary (``scheme``; the target's ``Backend.export``); ``min_runtime``
    is a check option (``compat.check_artifact``), not a conversion setting."""
    return export(model, example, path, info, variant=SCHEME_VARIANTS[scheme], calibration=calibration,
                  float_layers=list(float_layers or []))
