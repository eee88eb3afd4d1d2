"""numpy implementations of MIL ops, one module per op family; ``OPS`` maps an op type to its function.

``registry`` holds the table, the ``Args`` wrapper and the ``@op`` decorator; importing this package imports
every module beside it, so a new family is just a new module here (no list to edit).
"""

from __future__ import annotations

import importlib
import pkgutil

from compress.export.coreml.mil.ops.registry import OPS, Args, F, op

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OPS", "Args", "F", "op"]
