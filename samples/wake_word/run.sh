#!/usr/bin/env bash
# The wake-word sample end to end: distill, export the three streaming files, validate the TFLite one again
# (as CI would, on emulated ARM64 too when `compress devices setup arm64-emu` was run).
set -euo pipefail
cd "$(dirname "$0")/../.."
compress distill-and-export --recipe samples/wake_word/compress.toml
compress validate dist/wake-word-tflite --max-false-accepts-per-hour 1.0
