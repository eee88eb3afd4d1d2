"""Registry of runtime runners: target name -> ``open(path, threads) -> Runner``.

Imports are lazy so that a runtime is loaded only when its target is used.
"""

from __future__ import annotations

from pathlib import Path

from devices.runner import Runner


def open_onnx(path: Path | str, threads: int = 1) -> Runner:
    from devices.onnx_runner import open_onnx as open_

    return open_(path, threads)


def open_tflite(path: Path | str, threads: int = 1) -> Runner:
    from devices.tflite_runner import open_tflite as open_

    return open_(path, threads)


def open_coreml(path: Path | str, threads: int = 1) -> Runner:
    from devices.coreml_runner import open_coreml as open_

    return open_(path, threads)


RUNNERS = {
    "onnx": open_onnx,
    "tflite": open_tflite,
    "coreml": open_coreml,
}
