"""Look inside a ``torch.export`` ``.pt2`` archive before ``torch.export.load`` touches it.

``torch.export.load`` is not a data-only loader: a weight or constant whose config entry says
``"use_pickle": true`` is read with torch's full (code-running) unpickler, constants named ``opaque_obj_*`` go
through ``pickle.loads`` and ``custom_obj_*`` through TorchScript's object unpickler, sample inputs and the
older archive layouts fall back to a full unpickler when the safe one refuses them, and an
``data/aotinductor/`` folder holds a compiled shared library that is loaded and run. Any of these runs code
the file's author chose, while a teacher is merely being *loaded* (possibly on a shared GPU machine).

So an archive is accepted only in the plain form ``torch.export.save`` writes for ordinary models: every
weight and constant a raw tensor payload, sample inputs that load with ``weights_only=True``, no compiled
code. Anything else is an ``InputError`` of one line naming the file and the entry, before any of it is read
by torch.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from compress.core.cache import one_line
from compress.core.errors import InputError

WEIGHTS_DIR, CONSTANTS_DIR = "data/weights/", "data/constants/"
SAMPLE_INPUTS_DIR = "data/sample_inputs/"
CODE_DIRS = ("data/aotinductor/",)  # compiled (AOTInductor) shared libraries: native code, loaded on sight
TENSOR_CONSTANT_PREFIX = "tensor_"  # constants of any other prefix are unpickled objects
_RESAVE = "re-save the model with torch.export.save from plain tensors (no pickled objects)"


def _refuse(spec: str, why: str) -> InputError:
    return InputError(f"teacher {spec!r}: {why}; refused without loading it (a .pt2 must hold plain tensors: {_RESAVE})")


def _entries(spec: str, path: Path) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """The archive and its member names without the archive's root folder (``<root>/data/...``)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"teacher {spec!r}: not a loadable torch.export archive ({exc}); expected a file written by "
                         "torch.export.save") from None
    names = {}
    for name in archive.namelist():
        root, sep, rest = name.partition("/")
        names[rest if sep else name] = name
    return archive, names


def _config(spec: str, archive: zipfile.ZipFile, name: str, entry: str) -> dict:
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, UnicodeDecodeError, AttributeError, zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"teacher {spec!r}: {entry} is not readable JSON ({exc}); expected a file written by "
                         "torch.export.save") from None
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise InputError(f"teacher {spec!r}: {entry} has no table of payloads; expected a file written by "
                         "torch.export.save")
    return config


def _check_payloads(spec: str, archive: zipfile.ZipFile, names: dict[str, str]) -> None:
    """Every weight and constant a raw tensor payload (no ``use_pickle``, no object constants)."""
    for entry, name in names.items():
        is_weights = entry.startswith(WEIGHTS_DIR) and entry.endswith("_weights_config.json")
        is_constants = entry.startswith(CONSTANTS_DIR) and entry.endswith("_constants_config.json")
        if not (is_weights or is_constants):
            continue
        for fqn, meta in _config(spec, archive, name, entry).items():
            if meta.get("use_pickle"):
                kind = "weight" if is_weights else "constant"
                raise _refuse(spec, f"{kind} {fqn!r} is stored pickled ({entry}: \"use_pickle\": true), and "
                                    "unpickling it would run code from the file")
            if is_constants and not str(meta.get("path_name", "")).startswith(TENSOR_CONSTANT_PREFIX):
                raise _refuse(spec, f"constant {fqn!r} is a pickled object ({meta.get('path_name')!r} in {entry}), "
                                    "and unpickling it would run code from the file")


def _check_sample_inputs(spec: str, archive: zipfile.ZipFile, names: dict[str, str]) -> None:
    """torch tries ``weights_only=True`` on the sample inputs and falls back to a full unpickler: make sure
    the safe load succeeds, so the fallback never happens."""
    import torch

    for entry, name in names.items():
        if entry.startswith(SAMPLE_INPUTS_DIR) and entry.endswith(".pt"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True, map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - any refusal by the safe unpickler means "not plain data"
                raise _refuse(spec, f"its sample inputs ({entry}) are not plain tensors ({one_line(exc)})") from None


def check_pt2_archive(spec: str, path: Path) -> None:
    """Raise ``InputError`` unless ``path`` is a plain ``.pt2`` that ``torch.export.load`` reads without
    unpickling code or loading compiled libraries (see the module docstring)."""
    archive, names = _entries(spec, path)
    with archive:
        code = sorted(e for e in names if e.startswith(CODE_DIRS))
        if code:
            raise _refuse(spec, f"holds compiled code ({code[0]}), which loading would run")
        if "archive_format" not in names:
            raise _refuse(spec, "is in the pre-2.8 torch.export layout, whose weights load with a full unpickler")
        legacy = sorted(e for e in names if e.startswith((WEIGHTS_DIR, CONSTANTS_DIR)) and e.endswith(".pt"))
        if legacy:
            raise _refuse(spec, f"stores its weights in the legacy pickled file {legacy[0]}")
        _check_payloads(spec, archive, names)
        _check_sample_inputs(spec, archive, names)
