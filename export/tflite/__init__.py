"""TFLite target: litert-torch conversion (PT2E quantization), LiteRT's interpreter as the runner.

Everything about the format lives in this folder: conversion (``convert``), quantization-aware training
hooks (``qat``), the runner (``runner``), the per-variant tolerances (``tolerances``), the per-layer int8
error finder and the int8 float-fallback hook (``debug``), operator-version checks (``compat``, with its
table ``op_versions.json``), what the file declares (``io``) and the emulator's runner (``emulated``).
"""

from __future__ import annotations

from pathlib import Path

from compress.export.backend import Backend, Int8Fallback, Qat, TargetOption, lazy
from compress.export.tflite.tolerances import TOLERANCES

# what the converter's and interpreter's native code (absl, TensorFlow's oneDNN notice, the XNNPACK delegate)
# and litert-torch's pytree use write to stderr on every run: said nothing the user can act on
STDERR_NOISE = (r"All log messages before absl::InitializeLog\(\) is called", r"port\.cc:\d+\] oneDNN custom operations",
                r"Created TensorFlow Lite XNNPACK delegate for CPU", r"isinstance\(treespec, LeafSpec\)` is deprecated",
                r"^\s*return cls\.__new__\(cls, \*args\)\s*$",
                r"warning: Missing quantization parameter on the output might introduce quantization error")

# --quantize scheme -> the converter's variant (the numeric form written, and the tolerance key)
VARIANTS = {"none": "fp32", "fp16": "fp16", "int8-weights": "int8-dynamic", "int8": "int8"}

# what a streaming .tflite is written as: static int8 would turn the contract's float32 inputs, outputs and
# states into int8 tensors at the file's boundary (the converter folds the boundary quantize/dequantize)
STREAMING_SCHEMES = ("none", "int8-weights")


def runner_options(profile: dict | None) -> dict:
    """A profile's ``delegate = "none"`` runs LiteRT's builtin kernels instead of XNNPACK."""
    delegate = (profile or {}).get("delegate")
    return {} if delegate is None else {"xnnpack": delegate == "xnnpack"}


BACKEND = Backend(
    name="tflite",
    suffix=".tflite",
    runtime="LiteRT",
    export=lazy("compress.export.tflite.convert", "export_scheme"),
    open=lazy("compress.export.tflite.runner", "open_tflite"),
    describe_io=lazy("compress.export.tflite.io", "describe_io"),
    schemes={"none": "fp32", "fp16": "fp16 weights", "int8-weights": "dynamic-range int8",
             "int8": "full int8 (PT2E static)"},
    variant=lambda scheme, options: VARIANTS[scheme],
    tolerances=TOLERANCES,
    fixed_options={"precision": "fp32"},
    options=(TargetOption("min_runtime", "fail unless every operator version loads in this LiteRT/TFLite runtime "
                          "version", example="2.14", checks_artifact=True),),
    int8_fallback=Int8Fallback(reference=lazy("compress.export.tflite.debug", "float_reference"),
                               convert=lazy("compress.export.tflite.debug", "int8_keeping_float")),
    layer_errors=lazy("compress.export.tflite.debug", "layer_errors"),
    qat=Qat(prepare=lazy("compress.export.tflite.qat", "prepare_qat"),
            convert=lazy("compress.export.tflite.qat", "convert_qat"),
            export=lazy("compress.export.tflite.qat", "export_tflite"),
            predict=lazy("compress.export.tflite.qat", "predict")),
    check_artifact=lazy("compress.export.tflite.compat", "check_artifact"),
    runner_options=runner_options,
    profile_keys={"delegate": ("xnnpack", "none")},
    runtime_module="ai_edge_litert.interpreter",
    emulated_runner=Path(__file__).with_name("emulated.py"),
    emulator_wheel="ai-edge-litert",
    export_streaming=lazy("compress.export.tflite.streaming", "export_streaming"),
    open_streaming=lazy("compress.export.tflite.streaming", "open_streaming"),
    streaming_schemes=STREAMING_SCHEMES,
    stderr_noise=STDERR_NOISE,
)
