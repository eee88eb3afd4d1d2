#!/usr/bin/env bash
# FSDD speech sample: distill a 3-teacher CNN ensemble into a DS-CNN that takes raw 8 kHz PCM, export it to
# ONNX, TFLite and Core ML, and validate each file in its runtime. Run from the repository root:
#     bash samples/fsdd_speech/run.sh [path/to/fsdd] [more distill-and-export flags]
# Every setting is in samples/fsdd_speech/compress.toml; flags given here override it. The recipe lists the
# three targets, so this is one command: the first target trains/caches the teachers and soft targets, the
# other two reuse them. Exit code: 0 all checks passed, 1 a check failed, 2 bad input.
set -euo pipefail
DATA="${1:-../shared/datasets/fsdd}"
exec compress distill-and-export --recipe samples/fsdd_speech/compress.toml --data "$DATA" "${@:2}"
