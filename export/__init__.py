"""Exporters, one module per target behind one signature: ``export(model, example, path, info, **options)``.

``TARGETS`` maps a target name to (exporter, artifact file name). Importing a target module is lazy so
a missing optional converter only matters when that target is asked for.
"""

from __future__ import annotations

import importlib
from typing import Callable


def _lazy(module: str) -> Callable:
    def call(*args, **kwargs):
        return importlib.import_module(module).export(*args, **kwargs)

    call.__doc__ = f"{module}.export"
    return call


TARGETS = {
    "onnx": (_lazy("export.onnx"), "model.onnx"),
    "tflite": (_lazy("export.tflite"), "model.tflite"),
    "coreml": (_lazy("export.coreml"), "model.mlpackage"),
}
