"""ONNX target: torch.onnx (dynamo) export, ONNX Runtime's quantization tools, ONNX Runtime as the runner.

Everything about the format lives in this folder: conversion (``convert``: the fp32 file in ``fp32``), its quantization schemes and
the int8 float fallback (``quantize``), the runner (``runner``), the per-variant tolerances
(``tolerances``), the per-layer int8 error finder (``debug``), what the file declares (``io``) and the
runner for the ARM64 emulator (``emulated``). ``BACKEND`` is what the rest of the toolkit sees.
"""

from __future__ import annotations

from pathlib import Path

from compress.export.backend import Backend, Int8Fallback, lazy
from compress.export.onnx.tolerances import TOLERANCES

VARIANTS = {"none": "fp32", "fp16": "fp16", "int8-weights": "int8-weights", "int8": "int8"}

BACKEND = Backend(
    name="onnx",
    suffix=".onnx",
    runtime="ONNX Runtime",
    export=lazy("compress.export.onnx.convert", "export"),
    open=lazy("compress.export.onnx.runner", "open_onnx"),
    describe_io=lazy("compress.export.onnx.io", "describe_io"),
    model_facts=lazy("compress.export.onnx.io", "model_facts"),
    schemes={"none": "fp32", "fp16": "fp16 weights and activations, float32 I/O",
             "int8-weights": "dynamic int8", "int8": "static QDQ int8, per channel"},
    variant=lambda scheme, options: VARIANTS[scheme],
    tolerances=TOLERANCES,
    fixed_options={"precision": "fp32"},
    int8_fallback=Int8Fallback(reference=lazy("compress.export.onnx.convert", "float_reference"),
                               convert=lazy("compress.export.onnx.quantize", "int8_keeping_float")),
    layer_errors=lazy("compress.export.onnx.debug", "layer_errors"),
    runtime_module="onnxruntime",
    emulated_runner=Path(__file__).with_name("emulated.py"),
    emulator_wheel="onnxruntime",
    # onnxruntime.quantization logs this through logging.warning (the root logger) on every quantize call
    export_streaming=lazy("compress.export.onnx.streaming", "export_streaming"),
    open_streaming=lazy("compress.export.onnx.streaming", "open_streaming"),
    streaming_schemes=("none", "int8-weights", "int8"),
    batches=True,
    stderr_noise=(r"Please consider to run pre-processing before quantization",),
)
