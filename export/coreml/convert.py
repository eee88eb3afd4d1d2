"""Core ML target: a torch module -> an ML Program ``.mlpackage`` (optionally weight/activation compressed).

``export(model, example, path, info, precision=..., compression=..., calibration=...,
minimum_deployment_target=...)`` traces the model with ``torch.jit.trace`` (coremltools 9 converts
TorchScript reliably with torch 2.13; its ``torch.export`` path fails on ops whose ATen signatures
changed, e.g. ``max_pool2d``), converts it with ``coremltools.convert`` to an ML Program, compresses it
with ``coremltools.optimize.coreml`` and saves it atomically.

Classifier models (``info.labels`` non-empty) get ``ct.ClassifierConfig(info.labels)``: Xcode and
``MLModel.predict`` show ``classLabel`` and ``classLabel_probs``. Core ML's classifier head adds no
softmax: ``classLabel_probs`` maps each label to the model's own output for it, i.e. the logits, so the
runner (``compress.export.coreml.runner``) reads that dictionary in label order and compares it with torch's
logits directly. Models without labels get one float output named ``logits``.

The input is named ``input``, float32, with the example's fixed shape (batch 1 is the usual export;
the runners loop over a batch), or, for models without labels, a flexible batch ``1..max_batch``. With
``info.preprocessing`` (raw 8-bit pixels) it is an image (``ct.ImageType``, GRAYSCALE or RGB, the
normalization in its scale/bias and the model's first op) or, with ``input_type="tensor"``, float32 pixel
values 0..255 (``_raw_pixel_input``). ``compression``:

- ``None``: weights in the compute precision (fp16 or fp32).
- ``"int8-weights"``: per-channel symmetric int8 weights (``constexpr_affine_dequantize`` on iOS16/17,
  ``constexpr_blockwise_shift_scale`` on iOS18+).
- ``"palettize-4" | "palettize-6" | "palettize-8"``: k-means lookup tables with 2^n entries
  (``constexpr_lut_to_dense``).
- ``"int4-block"``: symmetric int4 weights with one scale per block of ``INT4_BLOCK`` input channels
  (``constexpr_blockwise_shift_scale``); needs ``minimum_deployment_target`` iOS18 or newer.
- ``"int8"``: int8 activations (``quantize``/``dequantize`` pairs calibrated on ``calibration``) plus
  int8 weights; needs ``minimum_deployment_target`` iOS17 or newer. Off macOS, Core ML cannot run the
  model to calibrate it, so the activation ranges are measured with the MIL reference evaluator
  (``compress.export.coreml.mil.evaluator``) and handed to coremltools' own quantize/dequantize insertion passes.
"""

from __future__ import annotations

import contextlib
import platform
import re
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.mode import converting, converts_model
from compress.export.coreml import COMPRESSIONS, MIN_IOS

PRECISIONS = ("fp16", "fp32")
INT4_BLOCK = 32  # input channels per int4 scale: the block size coremltools' int4 examples use
TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15", "watchOS9", "watchOS10", "tvOS16", "tvOS17")
INPUT_NAME = "input"
INPUT_TYPES = ("image", "tensor")  # a raw-pixel model's input: an image (CVPixelBuffer) or float32 raw values
# Weight tensors with at most this many elements are left in fp16/fp32 when compressing (coremltools'
# ``weight_threshold``; its default of 2048 would skip every layer of the small students this toolkit
# makes). Tiny tensors (biases, a first 3x3 conv over one channel) cost nothing to keep and are the
# ones where a 16-entry palette hurts accuracy most.
WEIGHT_THRESHOLD = 256


def _target(name: str):
    import coremltools as ct

    target = getattr(ct.target, str(name), None)
    if target is None:
        raise InputError(
            f"minimum_deployment_target: unknown Core ML target '{name}'; expected one of {', '.join(TARGETS)}"
        )
    return target


def _ios_version(target) -> int:
    """Core ML spec/iOS generation of a ``ct.target`` (iOS15=6 ... iOS18=9), for comparisons."""
    return int(target.value)


def _op_from_error(exc: BaseException) -> str | None:
    text = str(exc)
    for pattern in (r"op '([^']+)'", r"converting '([^']+)' op", r"node (\S+) \(", r"op named (\S+)", r"'([a-z_0-9.:]+)' not implemented"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _exported(model: torch.nn.Module, example: torch.Tensor):
    """``torch.export`` with core-ATen decompositions, or None where the model does not export."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.export.export(model, (example,)).run_decompositions({})
        except Exception:
            return None


def _trace(model: torch.nn.Module, example: torch.Tensor):
    """TorchScript trace (preferred); falls back to ``torch.export`` with core-ATen decompositions."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # torch 2.13 marks torch.jit.trace deprecated; coremltools 9 still converts TorchScript best.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.trace(model, example, check_trace=False)
        except Exception as trace_exc:
            exported = _exported(model, example)
            if exported is None:
                raise InputError(
                    f"model: cannot be traced for target 'coreml' ({type(trace_exc).__name__}: "
                    f"{str(trace_exc).splitlines()[0] if str(trace_exc) else ''})"
                ) from trace_exc
            return exported


def _convert(model, example, info: ModelInfo, precision: str, target, max_batch: int | None = None, ct_input=None):
    """``ct.convert`` of the traced model; ``ct_input``: the input (an image) instead of a float32 tensor."""
    import coremltools as ct

    traced = _trace(model, example)
    shape: tuple = tuple(example.shape)
    if max_batch is not None:
        shape = (ct.RangeDim(lower_bound=1, upper_bound=int(max_batch), default=int(example.shape[0])),) + shape[1:]
    kwargs = dict(
        inputs=[ct_input or ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        skip_model_load=True,
    )
    if info.labels:
        kwargs["classifier_config"] = ct.ClassifierConfig([str(label) for label in info.labels])
    else:
        kwargs["outputs"] = [ct.TensorType(name="logits", dtype=np.float32)]
    def convert(source):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ct.convert(source, **kwargs)

    try:
        return convert(traced)
    except Exception as exc:
        # coremltools 9 fails on some TorchScript graphs of torch 2.13 (a traced shape used in view/expand:
        # "only 0-dimensional arrays can be converted to Python scalars") that it converts from torch.export
        exported = _exported(model, example) if isinstance(traced, torch.jit.ScriptModule) else None
        if exported is not None:
            with contextlib.suppress(Exception):  # if this fails too, the TorchScript error is the one to report
                return convert(exported)
        op = _op_from_error(exc)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = f"op '{op}'" if op else "the model"
        raise InputError(f"model: {what} cannot be converted to target 'coreml' ({first}); expected only ops "
                         "coremltools converts: rewrite that layer or pick another target") from exc


def weight_config(compression: str, float_layers: Sequence[str] = ()):
    import coremltools.optimize.coreml as cto

    # op_name_configs {op: None}: the op's weights (consts feeding it) stay uncompressed
    skip = {str(name): None for name in float_layers}
    if compression in ("int8-weights", "int8"):
        return cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", granularity="per_channel", weight_threshold=WEIGHT_THRESHOLD
            ),
            op_name_configs=skip,
        )
    if compression == "int4-block":
        return cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4", granularity="per_block",
                                                      block_size=INT4_BLOCK, weight_threshold=WEIGHT_THRESHOLD),
            op_name_configs=skip,
        )
    nbits = int(compression.split("-")[1])
    return cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=WEIGHT_THRESHOLD),
        op_name_configs=skip,
    )


def activation_ranges(mlmodel, samples: np.ndarray) -> dict[str, dict[str, float]]:
    """min/max of every non-constant tensor of ``mlmodel`` over ``samples`` (n, *input shape[1:]),
    measured with the MIL reference evaluator, in the format coremltools' activation passes read."""
    from compress.export.coreml.mil.evaluator import load_program

    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "calibrate.mlpackage"
        mlmodel.save(str(pkg))
        program = load_program(pkg)
        shape = program.inputs[INPUT_NAME][1]
        skip = set(program.outputs)
        stats: dict[str, dict[str, float]] = {}
        const_names = set(program._constants())
        for i in range(len(samples)):
            x = np.asarray(samples[i : i + 1], dtype=np.float32)
            if shape is not None:
                x = x.reshape(shape)
            env = program.run_single({INPUT_NAME: x}, keep_all=True)
            for name, value in env.items():
                if name in skip or name in const_names:
                    continue
                v = np.asarray(value)
                if v.dtype.kind != "f" or v.size == 0:
                    continue
                lo, hi = float(v.min()), float(v.max())
                s = stats.setdefault(name, {"rmin": lo, "rmax": hi})
                s["rmin"], s["rmax"] = min(s["rmin"], lo), max(s["rmax"], hi)
        # concat inputs and output share one range (as coremltools' own calibration does)
        for op in program._ops:
            if op.type == "concat":
                names = [v for kind, v in op.bindings.get("values", []) if kind == "name"] + [op.outputs[0][0]]
                names = [n for n in names if n in stats]
                if names:
                    lo = min(stats[n]["rmin"] for n in names)
                    hi = max(stats[n]["rmax"] for n in names)
                    for n in names:
                        stats[n] = {"rmin": lo, "rmax": hi}
    return stats


@contextlib.contextmanager
def _scoped_pass_options(passes: Iterable) -> Iterator[None]:
    """Undo, on exit (normal or by an exception), every ``set_options``/attribute change made to ``passes``.

    Depending on the coremltools version (and for passes registered as instances, e.g. by
    ``register_generic_pass``), ``PASS_REGISTRY[name]`` returns one shared, process-wide pass object: options
    set on it (``config``, ``activation_stats``, the ``op_selector`` that ``config`` brings) would otherwise
    stay set for every later user of that pass in the process. ``set_options`` is a plain ``setattr``, so a
    snapshot of each pass's instance ``__dict__`` is its complete option state."""
    saved = [(p, dict(vars(p))) for p in passes]
    try:
        yield
    finally:
        for p, state in reversed(saved):
            attrs = vars(p)
            attrs.clear()
            attrs.update(state)


def _quantize_activations(mlmodel, samples: np.ndarray, float_layers: Sequence[str] = ()):
    """Insert calibrated int8 quantize/dequantize pairs around activations (coremltools' passes).

    ``float_layers``: MIL op names left without quantize/dequantize pairs (``op_name_configs`` {name: None})."""
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(global_config=cto.experimental.OpActivationLinearQuantizerConfig(mode="linear_symmetric"),
                                    op_name_configs={str(name): None for name in float_layers})
    if platform.system() == "Darwin":
        from compress.export.coreml.mil.evaluator import image_input_of
        from compress.export.coreml.runner import pil_image

        image = image_input_of(mlmodel.get_spec().description)  # an image input takes PIL images
        rows = [np.asarray(samples[i : i + 1], dtype=np.float32) for i in range(len(samples))]
        data = [{INPUT_NAME: pil_image(row, image) if image else row} for row in rows]
        return cto.experimental.linear_quantize_activations(mlmodel, config, data)

    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    stats = activation_ranges(mlmodel, samples)
    inserts = [PASS_REGISTRY[name] for name in ("compression::insert_prefix_quantize_dequantize_pair",
                                                "compression::insert_suffix_quantize_dequantize_pair")]
    graph_passes = inserts + [PASS_REGISTRY["common::dequantize_quantize_pair_elimination"]]
    # the options hold this model's ranges: scoped, so PASS_REGISTRY is exactly as before once this returns or raises
    with _scoped_pass_options(graph_passes):
        for p in inserts:
            p.set_options([PassOption("config", config)])
            p.set_options([PassOption("activation_stats", stats)])
        return model_utils._apply_graph_pass(
            mlmodel,
            graph_passes,
            spec_version=_SPECIFICATION_VERSION_IOS_17,
            pymil_load_func=milproto_load.load,
            skip_model_load=True,
        )


def op_names(mlmodel) -> list[str]:
    """Names of the non-constant ops of a converted model's ``main`` function (what ``float_layers`` takes)."""
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is None:
        return []
    return [op.name for op in prog.functions["main"].operations
            if op.op_type != "const" and not op.op_type.startswith("constexpr_")]


def _compress(mlmodel, compression: str, calibration, example_shape, float_layers: Sequence[str] = ()):
    import coremltools.optimize.coreml as cto

    if float_layers:
        known = op_names(mlmodel)
        unknown = [n for n in float_layers if known and n not in known]
        if unknown:
            raise InputError(f"float_layers: {', '.join(unknown)} not an op of the converted program "
                             f"(ops: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''})")

    if compression == "int8":  # deployment target and calibration were checked by _check_args
        samples = np.asarray(calibration, dtype=np.float32)
        if tuple(samples.shape[1:]) != tuple(example_shape[1:]):
            raise InputError(
                f"calibration: samples have shape {tuple(samples.shape)}, expected (n, {', '.join(map(str, example_shape[1:]))})"
            )
        mlmodel = _quantize_activations(mlmodel, samples, float_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compression in ("int8-weights", "int8", "int4-block"):
            return cto.linear_quantize_weights(mlmodel, weight_config(compression, float_layers))
        return cto.palettize_weights(mlmodel, weight_config(compression, float_layers))


def _set_metadata(mlmodel, info: ModelInfo) -> None:
    mlmodel.author = info.author or ""
    mlmodel.license = info.license or ""
    mlmodel.short_description = info.description or info.name
    mlmodel.version = info.version or ""
    mlmodel.user_defined_metadata.update(info.metadata())


def _check_args(path: Path, example: torch.Tensor, info: ModelInfo, precision: str, compression: str | None,
                calibration, minimum_deployment_target: str, max_batch: int | None, float_layers: list[str],
                input_type: str):
    """Every argument problem as one InputError, before the (slow) conversion; returns the ``ct.target``."""
    if max_batch is not None:
        if info.labels:
            raise InputError(
                "max_batch: a Core ML classifier (ModelInfo.labels set) predicts one example per call; "
                "export without labels for a flexible batch"
            )
        if int(max_batch) < max(1, int(example.shape[0])):
            raise InputError(f"max_batch: {max_batch} is smaller than the example's batch {int(example.shape[0])}")
    if precision not in PRECISIONS:
        raise InputError(f"precision: '{precision}' is not supported for target 'coreml'; expected one of {', '.join(PRECISIONS)}")
    if compression is not None and compression not in COMPRESSIONS:
        raise InputError(
            f"compression: '{compression}' is not supported for target 'coreml'; expected one of {', '.join(COMPRESSIONS)}"
        )
    if input_type not in INPUT_TYPES:
        raise InputError(f"input_type: {input_type!r}; expected one of {', '.join(INPUT_TYPES)} for target 'coreml'")
    target = _target(minimum_deployment_target)
    if compression in MIN_IOS and _ios_version(target) + 9 < MIN_IOS[compression][0]:  # spec 6 = iOS15
        need, what = MIN_IOS[compression]
        raise InputError(f"minimum_deployment_target: '{minimum_deployment_target}' is too old for compression "
                         f"'{compression}' ({what} needs iOS{need} or newer)")
    if compression == "int8":
        if calibration is None or len(calibration) == 0:
            raise InputError("calibration: compression 'int8' needs calibration samples (an array of model inputs)")
        if precision != "fp16":
            raise InputError(
                f"precision: '{precision}' cannot be combined with compression 'int8' (coremltools' activation "
                f"quantization inserts fp16 scales); use precision 'fp16'"
            )
    if float_layers and compression is None:
        raise InputError("float_layers: only a compression ('int8', 'int8-weights', 'int4-block', 'palettize-N') has ops "
                         "to keep in float")
    if path.suffix != ".mlpackage":
        raise InputError(f"{path}: Core ML ML Programs are saved as a .mlpackage folder; use a path ending in .mlpackage")
    return target


def _raw_pixel_input(model: torch.nn.Module, example: torch.Tensor, calibration, info: ModelInfo, input_type: str,
                     max_batch: int | None):
    """(model to trace, trace example, calibration, ``ct`` input or None, info) for ``info.preprocessing``.

    ``image`` (channels L or RGB): a ``ct.ImageType`` (GRAYSCALE or RGB) whose scale and bias Core ML applies
    to the pixel buffer: with one std for all channels the whole normalization is folded into them
    (scale/std, -mean[c]/std) and the student is converted as it is; otherwise the ImageType does
    ``raw * scale - mean[c]`` and a per-channel ``/ std[c]`` opens the model. ``tensor`` (or channels
    ``any``): a float32 tensor of raw pixel values 0..255 with the whole normalization inside
    (``RawPixels``). Calibration becomes raw pixel values (float32, what the program's input receives); the
    recorded preprocessing gains ``input_type`` (what the file's input is).
    """
    import dataclasses

    import coremltools as ct

    from compress.export.common.preprocess import check, to_raw
    from compress.export.common.raw_pixels import Normalize, RawPixels

    p = check(info.preprocessing, tuple(example.shape))
    image = input_type == "image" and p["channels"] != "any"
    calibration = None if calibration is None else to_raw(calibration, p).astype(np.float32)
    info = dataclasses.replace(info, preprocessing={**p, "input_type": "image" if image else "tensor"})
    if not image:
        return RawPixels(model, p), torch.from_numpy(to_raw(example, p).astype(np.float32)), calibration, None, info
    if max_batch is not None:
        raise InputError("max_batch: an image input takes one image per call; use input_type 'tensor' for a "
                         "flexible batch")
    uniform = max(p["std"]) == min(p["std"])
    std = p["std"][0] if uniform else 1.0
    bias = [-m / std for m in p["mean"]]
    gray = p["channels"] == "L"
    ct_input = ct.ImageType(name=INPUT_NAME, shape=tuple(example.shape), scale=p["scale"] / std,
                            bias=bias[0] if gray else bias,
                            color_layout=ct.colorlayout.GRAYSCALE if gray else ct.colorlayout.RGB)
    traced = model if uniform else RawPixels(model, p, normalize=Normalize(std=p["std"]))
    return traced, example, calibration, ct_input, info


@converts_model
def export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    info: ModelInfo,
    *,
    precision: str = "fp16",
    compression: str | None = None,
    calibration: np.ndarray | None = None,
    minimum_deployment_target: str = "iOS16",
    max_batch: int | None = None,
    float_layers: Sequence[str] | None = None,
    input_type: str = "image",
) -> Path:
    """Convert ``model`` (traced on ``example``) to a Core ML ML Program at ``path`` (a ``.mlpackage``).

    ``max_batch``: export a flexible batch dimension (``ct.RangeDim(1, max_batch)``) instead of the
    example's fixed batch. Only for models without labels: a Core ML classifier predicts one example per
    call (its ``classLabel``/``classLabel_probs`` outputs hold one row), so classifiers keep the example's
    batch (normally 1) and the runners loop over a batch.

    ``float_layers``: MIL op names (e.g. ``"linear_1_cast_fp16"``, the ``node`` of
    ``compress.export.coreml.debug.layer_errors``) that compression leaves in float: no activation
    quantize/dequantize pairs and uncompressed weights (coremltools ``op_name_configs`` {name: None}).

    ``input_type`` (only with ``info.preprocessing``): ``"image"`` (default: an image input an iOS app feeds
    a ``CVPixelBuffer``) or ``"tensor"`` (float32 raw pixel values 0..255); see ``_raw_pixel_input``.
    ``example`` and ``calibration`` are normalized either way. The image input's own scale/bias ops stay
    in float under compression.

    Returns ``path``. Raises ``InputError`` for an unknown precision/compression/target, a target too old
    for the compression, missing calibration data, or an op coremltools cannot convert.
    """
    path = Path(path)
    float_layers = [str(n) for n in (float_layers or [])]
    target = _check_args(path, example, info, precision, compression, calibration, minimum_deployment_target,
                         max_batch, float_layers, input_type)
    example = example.detach().to(torch.float32)
    ct_input = None
    if info.preprocessing:
        model, example, calibration, ct_input, info = _raw_pixel_input(model, example, calibration, info, input_type,
                                                                       max_batch)
    with converting(model):  # eval on the CPU, then each submodule's mode and the device as they were
        mlmodel = _convert(model, example, info, precision, target, max_batch, ct_input)
    if compression is not None:
        if ct_input is not None:  # the image input's scale/bias ops: int8 steps there only add error
            float_layers += [n for n in op_names(mlmodel) if n.startswith(INPUT_NAME + "__") and n not in float_layers]
        mlmodel = _compress(mlmodel, compression, calibration, tuple(example.shape), float_layers)
    _set_metadata(mlmodel, info)
    with atomic_path(path) as tmp:
        mlmodel.save(str(tmp))
    return path


def export_scheme(model, example, path, info, *, scheme: str = "none", calibration=None, float_layers=(),
                  precision: str = "fp16", deployment_target: str = "iOS16", input_type: str = "image") -> Path:
    """``export`` with the registry's vocabulary (the target's ``Backend.export``): ``scheme`` "fp16" is the
    fp16 compute precision, the compression schemes keep ``precision``; ``input_type`` is the raw-pixel
    input's form (image or tensor) when ``info.preprocessing`` is set."""
    return export(model, example, path, info, precision="fp16" if scheme == "fp16" else precision,
                  compression=scheme if scheme in COMPRESSIONS else None, calibration=calibration,
                  minimum_deployment_target=deployment_target, float_layers=list(float_layers or []),
                  input_type=input_type)
