"""One ``--quantize`` option, mapped to what each target's converter calls it.

  scheme         onnx (ORT tools)         tflite (litert-torch)     coreml (coremltools)
  none           fp32                     fp32                      --precision (fp16 default, or fp32)
  fp16           fp16, float32 I/O        fp16 weights              fp16 compute precision
  int8-weights   dynamic int8             dynamic-range int8        linear int8 weights, per channel
  int8           static QDQ, per-channel  full int8 (PT2E static)   int8 weights + activations (iOS 17+)
  palettize-N    -                        -                         k-means N-bit palettes, N in 4, 6, 8

Calibration samples for static int8 always come from the transfer set, never from random data.
"""

from __future__ import annotations

from compress.core.errors import InputError

SCHEMES: dict[str, dict[str, dict]] = {
    "onnx": {
        "none": {},
        "fp16": {"quantize": "fp16"},
        "int8-weights": {"quantize": "int8-weights"},
        "int8": {"quantize": "int8"},
    },
    "tflite": {
        "none": {"variant": "fp32"},
        "fp16": {"variant": "fp16"},
        "int8-weights": {"variant": "int8-dynamic"},
        "int8": {"variant": "int8"},
    },
    "coreml": {
        "none": {"compression": None},
        "fp16": {"precision": "fp16", "compression": None},
        "int8-weights": {"compression": "int8-weights"},
        "int8": {"compression": "int8"},
        "palettize-4": {"compression": "palettize-4"},
        "palettize-6": {"compression": "palettize-6"},
        "palettize-8": {"compression": "palettize-8"},
    },
}

NEEDS_CALIBRATION = {("onnx", "int8"), ("tflite", "int8"), ("coreml", "int8")}


def export_options(target: str, scheme: str, precision: str | None = None, deployment_target: str | None = None) -> dict:
    """Keyword options for ``export.<target>.export``; unsupported combinations name what is supported."""
    supported = SCHEMES.get(target, {})
    if scheme not in supported:
        raise InputError(
            f"--quantize {scheme!r}: not supported for target {target!r}; expected one of {sorted(supported)}"
        )
    options = dict(supported[scheme])
    if target == "coreml":
        options.setdefault("precision", precision or "fp16")
        options["minimum_deployment_target"] = deployment_target or "iOS16"
    elif precision not in (None, "fp32"):
        raise InputError(f"--precision {precision!r}: only the coreml target takes a compute precision")
    elif deployment_target is not None:
        raise InputError(f"--deployment-target {deployment_target!r}: only the coreml target takes a deployment target")
    return options


def variant_name(target: str, options: dict) -> str:
    """The tolerance key of the exported variant ("fp32", "fp16", "int8", "palettize-4", ...)."""
    if target == "tflite":
        return options["variant"]
    if target == "coreml":
        return options.get("compression") or options["precision"]
    return options.get("quantize") or "fp32"
