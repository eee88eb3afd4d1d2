"""The machine-readable list of MIL ops the reference evaluator runs, with the opsets coremltools defines them
for: ``supported_ops.json`` beside this file (shipped in the package; ``compress devices coreml-ops`` prints it).

The file is generated from the evaluator's op table and coremltools' op registry
(``python -m compress.export.coreml.mil.op_list --write``) and a test checks it is current, so the list a
user reads is the list the evaluator runs. ``definitions`` are the opsets whose op definition the
evaluator follows (an op redefined in iOS17 lists both "iOS15" and "iOS17"); ``not_supported`` lists the
ML Program ops of coremltools' registry the evaluator does not run, so a user can check a model's ops
before converting it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LIST_PATH = Path(__file__).with_name("supported_ops.json")
ML_PROGRAM_OPSETS = ("iOS15", "iOS16", "iOS17", "iOS18")  # ML Programs start at iOS15


def _registry() -> dict[str, dict[str, str]]:
    """op type -> {opset: the opset folder of the definition coremltools uses there}, ML Program opsets only."""
    import coremltools.converters.mil.mil.ops.defs  # noqa: F401  (fills the registry)
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    table: dict[str, dict[str, str]] = {}
    for op_type, by_target in SSAOpRegistry.core_ops.items():
        for target, cls in by_target.items():
            if target.name in ML_PROGRAM_OPSETS:
                folder = next((p for p in cls.__module__.split(".") if p.startswith("iOS")), target.name)
                table.setdefault(op_type, {})[target.name] = folder
    return table


def _family(op_type: str) -> str:
    from compress.export.coreml.mil import ops
    from compress.export.coreml.mil.control_flow import CONTROL_FLOW

    if op_type in CONTROL_FLOW:
        return "control_flow"
    if op_type == "const":
        return "constant"
    return ops.OPS[op_type].__module__.rsplit(".", 1)[-1]


def build() -> dict:
    """The list as computed now from the evaluator's table and the installed coremltools' registry."""
    import coremltools

    from compress.export.coreml.mil.evaluator import supported_op_types

    registry = _registry()
    ops = []
    for op_type in supported_op_types():
        defined = registry.get(op_type, {})
        ops.append({"op": op_type, "family": _family(op_type),
                    "opsets": [t for t in ML_PROGRAM_OPSETS if t in defined],
                    "definitions": sorted(set(defined.values()))})
    ours = set(supported_op_types())
    return {"coremltools": coremltools.__version__, "opsets": list(ML_PROGRAM_OPSETS), "ops": ops,
            "not_supported": sorted(op for op in registry if op not in ours)}


def load() -> dict:
    """The shipped list (``supported_ops.json``)."""
    return json.loads(LIST_PATH.read_text())


def write() -> Path:
    LIST_PATH.write_text(json.dumps(build(), indent=1) + "\n")
    return LIST_PATH


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m compress.export.coreml.mil.op_list --write")
    print(write())
