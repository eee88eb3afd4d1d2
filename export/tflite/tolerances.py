"""Parity bounds of each TFLite variant against its torch source, in the one schema of
``compress.export.backend.TOLERANCE_KEYS`` (pure data: importing it loads no runtime)."""

from compress.core.metrics import FP32_PARITY_TOLERANCE

# Parity of each TFLite variant with the torch fp32 model on real (normalized) inputs, per variant:
#   max_abs: bound on max |tflite logit - torch logit| (None: not bounded, see reason);
#   max_rel: bound on max |tflite logit - torch logit| / max(1, max |torch logit|) (fp32);
#   p99_abs: bound on the 99th percentile of |tflite logit - torch logit| over all logits;
#   top1:    minimum top-1 agreement with torch;
#   reference_steps (int8): max |tflite - torch PT2E int8 reference| in output quantization steps,
#            i.e. the conversion error alone, without the quantization error.
# Observed on the digits MLP/CNN students (logits of magnitude 20-100) in tests/test_tflite_export.py.
TOLERANCES: dict[str, dict] = {
    "fp32": {  # the one bound every target holds an fp32 artifact to, relative to the logits' size
        "max_rel": FP32_PARITY_TOLERANCE,
        "reason": "same float math; only op order and XNNPACK's fused kernels differ (observed <= 2.3e-5)",
    },
    "fp16": {
        "max_abs": 0.1,
        "p99_abs": 0.05,
        "top1": 0.98,
        "reason": "weights rounded to fp16 (relative error <= 4.9e-4 each), compute in fp32: error grows "
        "with logit magnitude (observed max 0.046)",
    },
    "int8-dynamic": {
        "max_abs": 2.0,
        "p99_abs": 1.0,
        "top1": 0.98,
        "reason": "int8 per-channel weights and activations quantized per sample at run time "
        "(observed max 1.2)",
    },
    "int8": {
        "max_abs": None,
        "p99_abs": 3.0,
        "top1": 0.98,
        "reference_steps": 3,
        "reason": "static int8 ranges come from the calibration samples: a logit outside the calibrated "
        "output range saturates (a -109 logit reads -48), so the max is unbounded and only the bulk (p99) "
        "and top-1 are bounded; against torch's own PT2E int8 graph the error is <= 2-3 output steps",
    },
}
