"""numpy implementations of MIL ops, one module per family; ``OPS`` maps an op type to its function.

``registry`` holds the table and the ``Args`` wrapper; importing this package imports every family so the
table is complete. A new family is a module here plus one line in ``_FAMILIES``.
"""

from __future__ import annotations

import importlib

from compress.export.coreml.mil.ops.registry import OPS, Args, F, op

_FAMILIES = ("elementwise", "linalg", "shape", "quant", "classify")
for _family in _FAMILIES:
    importlib.import_module(f"compress.export.coreml.mil.ops.{_family}")

SUPPORTED = frozenset(OPS) | {"const"}

__all__ = ["OPS", "Args", "F", "op", "SUPPORTED"]
