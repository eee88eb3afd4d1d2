"""ONNX target's export entry point: the fp32 file (``fp32``), or that file quantized to a scheme
(``quantize``); a model that takes raw 8-bit pixels gets its preprocessing in front first."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.export.common import ModelInfo
from compress.export.common.mode import converts_model
from compress.export.common.raw_pixels import raw_export_inputs
from compress.export.onnx.fp32 import INPUT_NAME, OUTPUT_NAME, export_fp32, read_metadata, read_preprocessing
from compress.export.onnx.quantize import export_quantized

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export", "export_fp32", "float_reference", "read_metadata",
           "read_preprocessing"]


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
        model, example, calibration = raw_export_inputs(model, example, calibration, info.preprocessing)
    if scheme not in (None, "none", "fp32"):
        return export_quantized(model, example, path, info, scheme=scheme, calibration=calibration, opset=opset,
                                float_layers=list(float_layers or []))
    return export_fp32(model, example, path, info, opset=opset)



def float_reference(model, example, path: Path, info, options: dict) -> Path:
    """The fp32 export the int8 fallback measures its drop against (and quantizes from)."""
    return export(model, example, path, info)
