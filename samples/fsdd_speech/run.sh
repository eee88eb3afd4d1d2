#!/usr/bin/env bash
# FSDD speech sample: distill a 3-teacher CNN ensemble into a DS-CNN that takes raw 8 kHz PCM, export it to
# ONNX, TFLite and Core ML, and validate each file in its runtime. Run from the repository root:
#     bash samples/fsdd_speech/run.sh [path/to/fsdd]
# Teachers and soft targets are trained/computed by the first run and reused from the cache by the others.
set -euo pipefail
DATA="${1:-../shared/datasets/fsdd}"
COMMON=(--data "$DATA"
        --teacher speech-cnn --teacher speech-resnet --teacher speech-wide-cnn
        --student ds-cnn --teacher-epochs 15 --epochs 40 --lr 1e-2 -T 4)
status=0
compress distill-and-export "${COMMON[@]}" --target onnx || status=$?
compress distill-and-export "${COMMON[@]}" --target tflite || status=$?
compress distill-and-export "${COMMON[@]}" --target coreml --precision fp32 || status=$?
exit $status
