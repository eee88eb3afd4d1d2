"""Library versions recorded in every report and manifest (what produced and checked an artifact)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import platform

PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "coremltools", "ai-edge-litert", "litert-torch")


def versions() -> dict:
    from compress import __version__

    out = {"python": platform.python_version(), "compress": __version__}
    for pkg in PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
