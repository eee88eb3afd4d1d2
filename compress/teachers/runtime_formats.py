"""Members given as files a registered target's runtime runs: a model file that describes itself (an
``.onnx`` from any producer; what it declares comes from its target's ``Backend.model_facts``), or a folder
this tool wrote (``dist/<name>/``: its model in its own runtime, its manifest's normalization as the
member's recorded input contract)."""

from __future__ import annotations

import json
from pathlib import Path

from compress.core.cache import file_sha256
from compress.core.errors import InputError
from compress.core.metrics import batched
from compress.export.registry import by_suffix
from compress.teachers.member import Teacher, first_reason, require_file


def load_onnx(spec: str, **_) -> Teacher:
    """A model file that its target's runtime runs and whose format can describe itself (an ``.onnx`` from
    any producer): run in that runtime, with what the file declares (``Backend.model_facts``)."""
    path = require_file(Path(spec), "an ONNX model")
    backend = by_suffix(path)
    try:
        runner = backend.open(path, threads=0)
    except InputError as exc:
        reason = str(exc).partition(": not a loadable ONNX model ")[2] or f"({exc})"
        raise InputError(f"teacher {spec!r}: not a loadable ONNX model {reason}; expected an .onnx file "
                         "(e.g. from torch.onnx.export)") from None
    facts = backend.model_facts(path) if backend.model_facts is not None else {}
    if facts.get("nonfinite"):
        name, bad = facts["nonfinite"]
        raise InputError(f"teacher {spec!r}: weight {name!r} holds {bad} NaN or infinite value(s); "
                         "expected finite weights (a diverged or corrupted checkpoint?)")

    return Teacher(path.name, backend.name, lambda x: batched(runner.predict, x), file_sha256(path), artifact=path,
                   input_shape=facts.get("input_shape"), recorded=_recorded_contract(facts.get("metadata") or {}),
                   file_params=facts.get("params"))


def _recorded_contract(props: dict) -> dict | None:
    """What a model file says about its own inputs: an ``input_contract`` JSON table in its metadata (any
    producer can write it), or the ``normalization`` this tool writes into its exports."""
    for key in ("input_contract", "normalization"):
        try:
            table = json.loads(props[key]) if key in props else None
        except ValueError:
            continue
        if isinstance(table, dict):
            return table if key == "input_contract" else {k: table[k] for k in ("scale", "mean", "std") if k in table}
    return None


def load_folder(spec: str, **_) -> Teacher:
    """A folder this tool wrote (``dist/<name>/``): its model in its own runtime, and its manifest's
    normalization as the member's recorded input contract."""
    folder = Path(spec)
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        artifact = folder / manifest["artifact"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"teacher {spec!r}: not a folder written by compress ({first_reason(exc)}); expected its "
                         "manifest.json and model") from None
    backend = by_suffix(artifact)
    if backend is None or not artifact.exists():
        raise InputError(f"teacher {spec!r}: the manifest's model {artifact.name!r} is missing or of no known target")
    runner = backend.open(artifact, threads=0)

    norm = manifest.get("normalization") or {}
    return Teacher(folder.name, "folder", lambda x: batched(runner.predict, x), file_sha256(artifact), artifact=artifact,
                   recorded={k: norm[k] for k in ("scale", "mean", "std") if k in norm} or None)
