"""Registry of runtime runners: target name -> ``open(path, threads) -> Runner``."""

from __future__ import annotations

from devices.onnx_runner import open_onnx

RUNNERS = {
    "onnx": open_onnx,
}
