"""The MIL op table: ``OPS[op_type](args) -> value`` (a tuple for multi-output ops), filled by ``@op``.

Precision model (documented in ``compress.export.coreml.mil.evaluator``): float16 inputs are widened to float32
for the arithmetic inside one op (conv/matmul/reduction accumulate in float32, as Core ML's CPU/GPU kernels do);
the interpreter then rounds every op's result to the dtype the program declares for that output, so an
fp16 program stores every intermediate tensor in float16 and its rounding shows up exactly once per op.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from compress.core.errors import InputError

class Args:
    """The bound inputs (and, for iOS16 constexpr ops, attributes) of one op, by parameter name."""

    def __init__(self, values: dict[str, list[Any]], op_type: str, where: str):
        self._values = values
        self.op_type = op_type
        self.where = where

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise InputError(f"MIL op '{self.op_type}' ({self.where}): required input '{name}' is missing")
        return self._values[name][0]

    def get(self, name: str, default: Any = None) -> Any:
        return self._values[name][0] if name in self._values else default

    def list(self, name: str) -> list[Any]:
        return list(self._values.get(name, []))

    def scalar(self, name: str, default: Any = None) -> Any:
        v = self.get(name, default)
        if isinstance(v, np.ndarray):
            return v.item() if v.size == 1 else v
        return v

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        v = self.get(name, default)
        if v is None:
            return None
        return [int(i) for i in np.asarray(v).ravel()]


def F(x: Any) -> np.ndarray:
    """Compute dtype for arithmetic: float16 is widened to float32; other dtypes are kept."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


OPS: dict[str, Callable[[Args], Any]] = {}


def op(*names: str):
    """Register the decorated function as the implementation of the MIL op types ``names``. An op type
    registered twice is a programming error (two families would silently race), so it fails at import."""

    def register(fn):
        for n in names:
            if n in OPS:
                raise ValueError(f"MIL op '{n}' is registered twice ({OPS[n].__module__} and {fn.__module__})")
            OPS[n] = fn
        return fn

    return register


def norm_axes(axes, rank: int) -> tuple[int, ...]:
    """Axes as non-negative indices of a rank-``rank`` tensor."""
    return tuple(int(a) % rank for a in axes)


def op_error(a: Args, message: str) -> InputError:
    """The one-line error for an input or attribute value an op cannot run: names the op and where it is."""
    return InputError(f"MIL op '{a.op_type}' ({a.where}): {message}")
