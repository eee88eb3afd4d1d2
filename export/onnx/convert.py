"""ONNX target: torch.onnx (the dynamo exporter) with a dynamic batch axis, metadata, full checker pass."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.mode import converts_model

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _failed_op(exc: BaseException) -> str | None:
    """The operator the exporter could not translate, from the exception chain ("torch.ops.prims.prod")."""
    while exc is not None:
        found = re.search(r"target=(torch\.ops\.[A-Za-z0-9_.]+)", str(exc))
        if found:
            return found.group(1).removesuffix(".default")
        exc = exc.__cause__ or exc.__context__
    return None


@converts_model
def export(model: nn.Module, example: torch.Tensor, path: Path | str, info: ModelInfo, *, opset: int | None = None,
           scheme: str = "none", calibration=None, float_layers=()) -> Path:
    """Export ``model`` to ``path`` (atomically); input ``input`` [batch, ...], output ``logits`` [batch, classes].

    ``scheme`` ("fp16", "int8-weights", "int8") exports fp32 first, then applies ONNX Runtime's
    quantization tools (``compress.export.onnx.quantize``); "int8" needs ``calibration`` samples;
    ``float_layers`` (node names) stay in float. ``example`` and ``calibration`` are normalized inputs;
    with ``info.preprocessing`` the file takes raw uint8 pixels instead (``RawPixels``: Cast, Mul, Sub and
    Div in front of the student) and both are converted to raw pixels here.
    """
    if info.preprocessing:
        from compress.export.common.raw_pixels import raw_export_inputs

        model, example, calibration = raw_export_inputs(model, example, calibration, info.preprocessing)
    if scheme not in (None, "none", "fp32"):
        from compress.export.onnx.quantize import export_quantized

        return export_quantized(model, example, path, info, scheme=scheme, calibration=calibration, opset=opset,
                                float_layers=list(float_layers or []))
    return export_fp32(model, example, path, info, opset=opset)


@converts_model
def export_fp32(model: nn.Module, example: torch.Tensor, path: Path | str, info: ModelInfo, *,
                opset: int | None = None) -> Path:
    """The fp32 export of ``model`` exactly as given (already wrapped when the file takes raw pixels)."""
    import onnx

    example = example.detach().cpu().contiguous()  # a strided example loses the dynamic batch axis
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=65536)
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), opset_version=opset, external_data=False, verbose=False,
            )
        except Exception as exc:
            op = _failed_op(exc)
            reason = f"op {op} has no ONNX translation" if op else _first_line(exc)
            raise InputError(f"model {info.name!r}: cannot be converted to target 'onnx' ({reason}); expected only ops "
                             "the torch.onnx (dynamo) exporter translates: rewrite that layer or pick another target") from None
        proto = program.model_proto
        del proto.metadata_props[:]  # the exporter's internal bookkeeping; ours follows
        for key, value in info.metadata().items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        entry = proto.metadata_props.add()
        from compress import __version__

        entry.key, entry.value = "producer", f"compress {__version__} (torch {torch.__version__}, onnx {onnx.__version__})"
        proto.doc_string = info.description or f"{info.name}: classifier over {len(info.labels)} classes"
        onnx.save_model(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise InputError(f"model {info.name!r}: exported ONNX fails onnx.checker ({_first_line(exc)})") from None
    return path


def read_metadata(path: Path | str) -> dict[str, str]:
    """The model's metadata_props as a dict (what an app reads back)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_preprocessing(path: Path | str) -> dict:
    """The raw-pixel preprocessing the file at ``path`` records ({}: it takes normalized float32)."""
    from compress.export.common.preprocess import from_metadata

    return from_metadata(read_metadata(path))
