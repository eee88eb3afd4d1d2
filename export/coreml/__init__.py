"""Core ML target: coremltools conversion and compression; Core ML on macOS, the MIL reference evaluator
(``mil/``, numpy) elsewhere as the runner.

Everything about the format lives in this folder: conversion and compression (``convert``), the runner
(``runner``), the per-variant tolerances (``tolerances``), the per-layer int8 error finder and the int8
float-fallback hook (``debug``), the MIL reference evaluator (``mil``) and what the file declares (``io``).
"""

from __future__ import annotations

import platform

from compress.core.errors import InputError
from compress.export.backend import Backend, Int8Fallback, TargetOption, lazy
from compress.export.coreml.tolerances import TOLERANCES

COMPRESSIONS = ("int8-weights", "palettize-4", "palettize-6", "palettize-8", "int4-block", "int8")


# what a streaming .mlpackage is written as; int8 activations (iOS17) are not offered yet: the evaluator's
# calibration (``convert.activation_ranges``) feeds one input, a streaming file has the audio and its states
STREAMING_SCHEMES = ("none", "int8-weights")


def variant(scheme: str, options: dict) -> str:
    return scheme if scheme in COMPRESSIONS else "fp16" if scheme == "fp16" else options.get("precision", "fp16")


# Schemes that need a newer Core ML than the default deployment target, as the iOS version that brought them:
# checked before training (check_options) and by the exporter itself (convert._check_args).
MIN_IOS = {"int8": (17, "activation quantization"), "int4-block": (18, "int4 weights with per-block scales")}
_IOS_EQUIVALENT = {"iOS": 0, "tvOS": 0, "macOS": 3, "watchOS": 7}  # macOS13 ships with iOS16, watchOS9 with iOS16


def _ios_of(target: str) -> int | None:
    """The iOS release a deployment target name ships with ("macOS14" -> 17); None for an unknown name."""
    for platform_name, offset in _IOS_EQUIVALENT.items():
        number = target[len(platform_name):]
        if target.startswith(platform_name) and number.isdigit():
            return int(number) + offset
    return None


OPTIONS = (
    TargetOption("precision", "compute precision", default="fp16", choices=("fp16", "fp32")),
    TargetOption("deployment_target", "minimum deployment target (int8 activations need iOS17+, "
                 "int4-block iOS18+)", default="iOS16", example="iOS17"),
    TargetOption("input_type", "how raw 8-bit images enter the model: image (a CVPixelBuffer) or tensor (pixel "
                 "values 0..255 as a float tensor)", default="image", choices=("image", "tensor")),
)


def check_options(scheme: str, options: dict) -> None:
    """The rule across options: a scheme that needs a newer iOS than ``deployment_target``."""
    target = str(options.get("deployment_target", "iOS16"))
    ios = _ios_of(target)
    if scheme in MIN_IOS and ios is not None and ios < MIN_IOS[scheme][0]:
        need, what = MIN_IOS[scheme]
        raise InputError(f"--quantize {scheme} needs iOS{need} or newer ({what}); --deployment-target {target} is "
                         f"older; expected --deployment-target iOS{need} or later")


BACKEND = Backend(
    name="coreml",
    suffix=".mlpackage",
    runtime="Core ML",
    export=lazy("compress.export.coreml.convert", "export_scheme"),
    open=lazy("compress.export.coreml.runner", "open_coreml"),
    describe_io=lazy("compress.export.coreml.io", "describe_io"),
    schemes={"none": "--precision (fp16 default, or fp32)", "fp16": "fp16 compute precision",
             "int8-weights": "linear int8 weights, per channel", "int8": "int8 weights + activations (iOS 17+)",
             "palettize-4": "k-means 4-bit palettes", "palettize-6": "k-means 6-bit palettes",
             "palettize-8": "k-means 8-bit palettes",
             "int4-block": "int4 weights, one scale per 32 input channels (iOS 18+: --deployment-target iOS18)"},
    variant=variant,
    tolerances=TOLERANCES,
    options=OPTIONS,
    check_options=check_options,
    int8_fallback=Int8Fallback(reference=lazy("compress.export.coreml.debug", "float_reference"),
                               convert=lazy("compress.export.coreml.debug", "int8_keeping_float"),
                               reference_variant="fp16"),
    layer_errors=lazy("compress.export.coreml.debug", "layer_errors"),
    runtime_module="compress.export.coreml.mil.evaluator",
    runs_here=platform.system() == "Darwin",
    export_streaming=lazy("compress.export.coreml.streaming", "export_streaming"),
    open_streaming=lazy("compress.export.coreml.streaming", "open_streaming"),
    streaming_schemes=STREAMING_SCHEMES,
    export_stateful_streaming=lazy("compress.export.coreml.streaming", "export_stateful"),
    op_list=lazy("compress.export.coreml.mil.op_list", "load"),
)
