"""The parsed form of an ML Program function: blocks of ops, each op with its bindings, nested blocks and the
type (dtype and shape) the program declares for every output.

The declared types are kept because a reference evaluator is only worth trusting if it notices when it
disagrees with the program: ``check_declared`` compares every value an op produces with the declared shape
and dtype kind, so an op implemented with the wrong output size fails at that op, naming it, instead of
surfacing ops later as a confusing reshape error (or never, behind a global pooling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.values import BlobFiles, decode_value, tensor_type_of


@dataclass
class Block:
    """A list of ops with named inputs (loop variables of a ``while_loop`` body) and named outputs."""

    inputs: list[tuple[str, Any, tuple | None]]  # (var name, numpy dtype, declared shape)
    ops: list["Op"]
    outputs: list[str]


@dataclass
class Op:
    index: int
    type: str
    # parameter name -> list of ("name", var name) or ("value", decoded value)
    bindings: dict[str, list[tuple[str, Any]]]
    outputs: list[tuple[str, Any]]  # (var name, numpy dtype or None for non-tensor outputs)
    name: str | None = None  # the op's ``name`` attribute (what coremltools' ``op_name_configs`` keys on)
    shapes: list[tuple | None] = field(default_factory=list)  # declared shape per output (None: not a tensor)
    blocks: list[Block] = field(default_factory=list)  # nested blocks (while_loop: cond, body; cond: true, false)
    scope: str = ""  # "" at top level, else e.g. "in while_loop #3 body"

    @property
    def where(self) -> str:
        first = self.outputs[0][0] if self.outputs else "?"
        return f"op #{self.index}, output '{first}'" + (f", {self.scope}" if self.scope else "")


def declared_type(value_type) -> tuple[Any, tuple | None]:
    """(numpy dtype, shape with None for symbolic dims) of a declared tensor type; (None, None) otherwise."""
    if value_type.WhichOneof("type") != "tensorType":
        return None, None
    dtype = tensor_type_of(value_type)[0]
    dims = value_type.tensorType.dimensions
    shape = tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None for d in dims)
    return dtype, shape


def _kind(dtype) -> str:
    kind = np.dtype(dtype).kind
    return {"f": "float", "i": "int", "u": "int", "b": "bool"}.get(kind, kind)


def check_declared(where: str, op_type: str, output: str, value: Any, dtype: Any, shape: tuple | None) -> None:
    """InputError unless ``value`` has the declared ``shape`` (None dims match anything) and dtype kind."""
    if dtype is None or not isinstance(value, (np.ndarray, np.generic)) or value.dtype == object:
        return
    got = tuple(np.shape(value))
    if shape is not None and (len(got) != len(shape) or any(d is not None and d != g for d, g in zip(shape, got))):
        want = tuple("?" if d is None else d for d in shape)
        raise InputError(f"MIL op '{op_type}' ({where}): output '{output}' has shape {got} in the reference evaluator, "
                         f"but the program declares {want}")
    if _kind(value.dtype) != _kind(dtype):
        raise InputError(f"MIL op '{op_type}' ({where}): output '{output}' is {value.dtype} in the reference evaluator, "
                         f"but the program declares {np.dtype(dtype)}")


class Parser:
    """Turns protobuf blocks into ``Block``/``Op``; ops are numbered in program order across nesting levels.
    ``known(op_type)`` says whether the evaluator can run an op type; an unknown one is reported by ``unknown``
    (raises) as soon as it is met, so a program that cannot run fails at load time, naming the op."""

    def __init__(self, blobs: BlobFiles, known: Callable[[str], bool], unknown: Callable[[Op], None]):
        self.blobs = blobs
        self.known = known
        self.unknown = unknown
        self.count = 0

    def block(self, proto, scope: str = "") -> Block:
        inputs = [(i.name, *declared_type(i.type)) for i in proto.inputs]
        ops = [self.op(p, scope) for p in proto.operations]
        return Block(inputs, ops, list(proto.outputs))

    def op(self, proto, scope: str) -> Op:
        outs, shapes = [], []
        for o in proto.outputs:
            dtype, shape = declared_type(o.type)
            outs.append((o.name, dtype))
            shapes.append(shape)
        parsed = Op(self.count, proto.type, {}, outs, shapes=shapes, scope=scope)
        self.count += 1
        if not self.known(proto.type):
            self.unknown(parsed)
        if "name" in proto.attributes:
            try:
                parsed.name = str(np.asarray(decode_value(proto.attributes["name"], self.blobs)).reshape(-1)[0])
            except Exception:  # a name that does not decode is only a label
                parsed.name = None
        for key, value in proto.attributes.items():
            if key != "name":
                parsed.bindings[key] = [("value", decode_value(value, self.blobs))]
        for key, arg in proto.inputs.items():
            parsed.bindings[key] = [
                ("name", b.name) if b.WhichOneof("binding") == "name" else ("value", decode_value(b.value, self.blobs))
                for b in arg.arguments
            ]
        roles = {"while_loop": ("cond", "body"), "cond": ("true branch", "false branch")}.get(proto.type, ())
        for i, nested in enumerate(proto.blocks):
            role = roles[i] if i < len(roles) else f"block {i}"
            parsed.blocks.append(self.block(nested, f"in {proto.type} #{parsed.index} {role}"))
        return parsed


def walk(ops: list[Op]):
    """Every op of ``ops`` and of their nested blocks, in program order."""
    for o in ops:
        yield o
        for b in o.blocks:
            yield from walk(b.ops)
