"""Quantization-aware training hooks of the TFLite target (the loop itself is ``compress.distill.qat.qat_distill``):
fine-tune the student through int8 fake quantization, then export the quantized graph to TFLite int8.

The recipe is PyTorch's PT2E flow with the quantizer litert-torch ships (the one ``compress.export.tflite.convert`` uses for
PTQ), so QAT and PTQ produce the same kind of graph and the same converter turns both into a ``.tflite``:

  1. ``torch.export`` the fp32 student with a dynamic batch axis (training runs batches of any size);
  2. ``prepare_qat_pt2e`` with ``PT2EQuantizer`` + ``get_symmetric_quantization_config(is_per_channel=True,
     is_qat=True)``: per-channel int8 weights and per-tensor int8 activations as fake-quant modules (moving
     average min/max observers);
  3. run the calibration samples once (observers start from real transfer-set ranges, not from the first
     training batch);
  4. (``compress.distill.qat``) fine-tune with ``compress.distill.train.fit`` and ``compress.distill.losses.hinton_loss`` on the cached soft targets
     (``allow_exported_model_train_eval`` lets ``fit`` call ``.train()`` / ``.eval()`` on the exported graph);
  5. ``convert_qat`` (``convert_pt2e``): the quantize/dequantize graph that ``export_tflite`` hands to litert-torch.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch



def _quantizer(is_qat: bool):
    from litert_torch.quantize import pt2e_quantizer

    return pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
    )


class _PatternModule(torch.nn.Module):
    """A pattern function as a module (torch.export, which torchao's pattern helper calls, wants a module)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@contextlib.contextmanager
def _litert_qat_patterns_as_modules():
    """Work around litert-torch 0.10 + torchao 0.18 in QAT mode.

    litert-torch's conv+BN annotator (only used when ``is_qat=True``) passes a plain function to torchao's
    ``_get_aten_graph_module_for_pattern``, which now hands it to ``torch.export.export`` and fails with
    "Expected `mod` to be an instance of `torch.nn.Module`". Wrap such functions in a module for the
    duration of ``prepare_qat_pt2e`` (restored afterwards; nothing else changes).
    """
    from litert_torch.quantize import pt2e_quantizer_utils as utils

    original = utils._get_aten_graph_module_for_pattern

    def patched(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, torch.nn.Module):
            pattern = _PatternModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    utils._get_aten_graph_module_for_pattern = patched
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def prepare_qat(student: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The student as a PT2E QAT graph (fake-quantized, trainable, dynamic batch)."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    student = student.cpu().eval()  # export in eval mode: BatchNorm/dropout are traced for inference shapes
    example = example.detach().to(torch.float32)
    if example.shape[0] < 2:  # a batch of 1 would be specialized by torch.export despite the dynamic Dim
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=65536)
    graph = torch.export.export(student, (example,), dynamic_shapes=({0: batch},)).module()
    with _litert_qat_patterns_as_modules():
        prepared = prepare_qat_pt2e(graph, _quantizer(is_qat=True))
    allow_exported_model_train_eval(prepared)
    return prepared


def convert_qat(prepared: torch.fx.GraphModule) -> torch.nn.Module:
    """The fine-tuned QAT graph as the int8 graph ``export_tflite`` converts (frozen, in eval mode)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared, fold_quantize=False)
    move_exported_model_to_eval(converted)
    for module in converted.modules():  # exported graphs keep training=True; litert-torch warns on it
        module.training = False
    return converted


def ptq_reference(student: torch.nn.Module, example: torch.Tensor, calibration: np.ndarray) -> torch.nn.Module:
    """Post-training static int8 of ``student`` as PyTorch simulates it (what ``compress.export.tflite.convert`` int8 converts)."""
    from compress.export.tflite.convert import int8_reference

    return int8_reference(student, example, calibration)


@torch.no_grad()
def predict(module: torch.nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a converted PT2E graph (frozen: no ``.eval()`` call), numpy in and out."""
    out = [module(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32)).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def export_tflite(converted: torch.nn.Module, example: torch.Tensor, path: Path | str, info) -> Path:
    """Write the QAT-converted graph as a full-int8 ``.tflite`` (int8 input/output, like ``variant="int8"``).

    The same converter call ``compress.export.tflite.convert`` makes for PTQ int8 (``litert_torch.convert`` with
    ``QuantConfig(pt2e_quantizer=...)``), on the already-converted QAT graph instead of a freshly calibrated
    one; metadata as in ``compress.export.tflite.convert``. Written atomically. ``example`` is normalized;
    with ``info.preprocessing`` the file takes raw uint8 pixels (``RawPixels`` around the int8 graph: CAST and
    the normalization in float, then the graph's own input quantization), as ``convert`` does for PTQ.
    """
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    from compress.core.atomic import atomic_path
    from compress.export.tflite.convert import INFO_KEY, LABELS_KEY, quiet_progress, add_metadata

    sample = example[:1].detach().to(torch.float32)
    if info.preprocessing:  # raw uint8 pixels in: the float preprocessing in front of the int8 graph
        from compress.export.common.raw_pixels import raw_export_inputs

        converted, sample, _ = raw_export_inputs(converted, sample, None, info.preprocessing)
        for module in (converted, converted.preprocess):  # not .eval(): the exported child refuses it
            module.training = False
    with quiet_progress():
        edge = litert_torch.convert(converted, (sample,), quant_config=QuantConfig(pt2e_quantizer=_quantizer(is_qat=True)))
    data = add_metadata(bytes(edge.model_content()),
                        {LABELS_KEY: json.dumps(list(info.labels)), INFO_KEY: json.dumps(info.metadata())})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
