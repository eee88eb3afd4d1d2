"""Which loader reads a teacher spec (``TEACHER_FORMATS``: name -> loader(spec, **kwargs) -> Teacher): a
built-in registry name (trained here and cached, ``compress.teachers.training``), a run folder, a factory,
else the file's suffix (``SUFFIX_FORMATS``). A new format is one loader module plus one ``register`` line."""

from __future__ import annotations

from pathlib import Path

from compress import models
from compress.core.errors import InputError
from compress.core.registry import Registry
from compress.teachers.precomputed import load_precomputed
from compress.teachers.runtime_formats import load_folder, load_onnx
from compress.teachers.torch_formats import load_factory, load_pt2, load_torchscript

TEACHER_FORMATS = Registry("teacher format", "--teacher")  # name -> loader(spec, **kwargs) -> Teacher
TEACHER_FORMATS.register("torchscript", load_torchscript)
TEACHER_FORMATS.register("pt2", load_pt2)
TEACHER_FORMATS.register("onnx", load_onnx)
TEACHER_FORMATS.register("factory", load_factory)
TEACHER_FORMATS.register("precomputed", load_precomputed)
TEACHER_FORMATS.register("folder", load_folder)
# file suffix -> the format that reads it (a built-in name, a run folder and module:function=weights come first)
SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".npz": "precomputed", ".npy": "precomputed",
                  **dict.fromkeys((".ts", ".torchscript", ".pt", ".pth", ".jit"), "torchscript")}


def teacher_format(spec: str) -> str:
    """Which loader a teacher spec needs: a registry name, a file by suffix, or a factory."""
    if models.is_known(spec):
        return "builtin"
    if Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file():
        return "folder"
    if ":" in spec and "=" in spec:
        return "factory"
    fmt = SUFFIX_FORMATS.get(Path(spec).suffix.lower())
    if fmt is not None:
        return fmt
    raise InputError(
        f"teacher {spec!r}: not a built-in model ({models.why_unknown(spec)}), nor a .ts/.pt/.pt2/.onnx file, "
        "nor outputs computed elsewhere (.npz from compress soft-targets), nor 'module:function=weights.pt'"
    )
