"""Which TFLite runtimes can load a ``.tflite``: its builtin operators, their versions, the oldest runtime.

Every builtin op in a flatbuffer carries a version; a runtime older than the one that introduced that
version refuses the model ("Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'"). The table
``devices/data/tflite_op_versions.json`` is transcribed from TensorFlow/LiteRT's op-version registry
(``tflite/tools/versioning/runtime_version.cc``): {op: {version: oldest runtime}}. As in that registry, an
(op, version) pair the table does not know is left out of the minimum (and listed by ``unknown_ops``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from compress.core.errors import InputError, ValidationFailed

TABLE_PATH = Path(__file__).with_name("op_versions.json")


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, dict[int, str]]:
    raw = json.loads(TABLE_PATH.read_text(encoding="utf-8"))["ops"]
    return {op: {int(v): rt for v, rt in versions.items()} for op, versions in raw.items()}


def _key(version: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(part) for part in str(version).strip().split("."))
    except ValueError:
        raise InputError(f"runtime {version!r}: expected a TFLite version like '2.14.0'") from None
    return parts + (0,) * (3 - len(parts))  # "2.14" == "2.14.0"


def runtime_for(op: str, version: int) -> str | None:
    """Oldest TFLite runtime that has ``op`` at ``version`` (None when the registry does not know the pair)."""
    return _table().get(op, {}).get(int(version))


def operator_versions(path: Path | str) -> list[tuple[str, int]]:
    """(builtin op name, version) of each operator code the model uses, in the model's order.

    Custom ops are listed as ``CUSTOM:<name>``.
    """
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such TFLite model") from None
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise InputError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = schema.Model.GetRootAs(data, 0)
    ops: list[tuple[str, int]] = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Builtin codes above 127 live in builtin_code; older ones in deprecated_builtin_code (schema v3a).
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'').decode('utf-8', errors='replace')}"
        ops.append((name, int(code.Version())))
    return ops


def unknown_ops(path: Path | str) -> list[tuple[str, int]]:
    """Ops whose (name, version) the registry table does not list (custom ops included)."""
    return [(op, v) for op, v in operator_versions(path) if runtime_for(op, v) is None]


def report(path: Path | str) -> list[dict]:
    """One row per operator: ``{"op", "version", "min_runtime"}`` (min_runtime None when unknown)."""
    return [{"op": op, "version": v, "min_runtime": runtime_for(op, v)} for op, v in operator_versions(path)]


def min_runtime(path: Path | str) -> str:
    """The oldest TFLite runtime that supports every (known) op version in the model ("" if none is known)."""
    versions = [rt for rt in (row["min_runtime"] for row in report(path)) if rt]
    return max(versions, key=_key) if versions else ""


def check_min_runtime(path: Path | str, runtime: str) -> None:
    """Raise ValidationFailed naming each op/version the TFLite ``runtime`` (e.g. "2.14.0") cannot load."""
    target = _key(runtime)
    too_new = [row for row in report(path) if row["min_runtime"] and _key(row["min_runtime"]) > target]
    if too_new:
        detail = ", ".join(f"{r['op']} v{r['version']} (needs {r['min_runtime']})" for r in too_new)
        raise ValidationFailed(f"{Path(path).name}: not loadable by TFLite {runtime}: {detail}")


def compatibility_report(artifact: Path, required: str | None, checks: list) -> dict:
    """Operators with versions, the oldest runtime that loads them, and the user's --min-runtime check
    (appended to ``checks``); the report's ``compatibility`` section, with the one line a report prints
    (``summary``: reports read no target's own fields)."""
    needed = min_runtime(artifact)
    if required is not None:
        try:
            check_min_runtime(artifact, required)
            checks.append({"name": f"loads in TFLite {required}", "passed": True,
                           "detail": f"every operator version is supported since {needed} or earlier"})
        except ValidationFailed as exc:
            checks.append({"name": f"loads in TFLite {required}", "passed": False, "detail": str(exc)})
    operators = report(artifact)
    listed = ", ".join(f"{o['op']} v{o['version']}" for o in operators)
    return {"runtime": "tflite", "operators": operators, "min_runtime": needed,
            "unknown_operators": [list(u) for u in unknown_ops(artifact)], "required_by_user": required,
            "summary": f"TFLite operators: {listed}; oldest runtime that loads the model: {needed}"}


def check_artifact(path: Path, options: dict, checks: list) -> dict:
    """Operator versions and the oldest runtime that loads them; ``--min-runtime`` as a check
    (the target's ``Backend.check_artifact``)."""
    return compatibility_report(path, options.get("min_runtime"), checks)
