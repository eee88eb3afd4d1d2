"""Evaluate a saved Core ML ML Program (``.mlpackage``) with numpy, on any OS.

Core ML's runtime only exists on macOS (coremltools cannot run ``MLModel.predict`` on Linux, see
coremltools issue #2658), so on Linux the exported package is checked with this reference evaluator:
it reads the package's ``Model.proto`` spec and its weight blobs (with coremltools' own blob reader) and
interprets the ``main`` function op by op with the numpy op table in ``compress.export.coreml.mil.ops``.

What it reproduces and what it does not:

- Every op output is stored in the dtype the program declares for it, so an fp16 program keeps all its
  intermediate tensors in float16 (rounding after every op, as Core ML's fp16 kernels store them) while
  arithmetic inside one op (conv/matmul/reductions) accumulates in float32. Core ML's GPU/Neural Engine
  kernels may differ from this in the last fp16 bit per op; the tolerances in
  ``compress.export.coreml.runner.TOLERANCES`` allow for that.
- Weight decompression (``constexpr_*`` ops: affine/blockwise dequantization, palettization, sparsity)
  is done once at load time exactly as specified by the MIL op definitions.
- ``classify`` (Core ML's classifier head) does **not** apply a softmax: its probability dictionary
  holds the scores fed into it, i.e. the model's logits. The evaluator returns that dictionary as a
  float array ``(n, num_classes)`` in label order and the predicted label as an object array ``(n,)``.
- Nothing here measures speed: timings of this evaluator say nothing about device latency.
- An image input (``ct.ImageType``) runs as the float32 (1, C, H, W) tensor of pixel values Core ML makes
  from the pixel buffer: coremltools puts the image's scale and bias into the program as ops
  (``image_input_of``). ``scores`` takes normalized inputs (or uint8 pixels) and, for a package that records
  raw-pixel preprocessing, feeds the pixel values (``MILProgram.model_input``).

Public API: ``evaluate(path, inputs) -> {output name: array}``, ``load_program(path) -> MILProgram``,
``UnsupportedOpError``.
"""

from __future__ import annotations

from collections import ChainMap
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import InputError
from compress.export.common.preprocess import from_metadata, runner_input
from compress.export.coreml.mil import ops as _ops
from compress.export.coreml.mil.blocks import Block, Op, Parser, check_declared, walk
from compress.export.coreml.mil.control_flow import CONTROL_FLOW
from compress.export.coreml.mil.values import BlobFiles, StateBuffer, is_state, tensor_type_of


class UnsupportedOpError(InputError):
    """The program contains an op type the reference evaluator does not implement."""


def runs(op_type: str) -> bool:
    """Whether the evaluator can run ``op_type``: a table op, control flow, or a constant."""
    return op_type == "const" or op_type in _ops.OPS or op_type in CONTROL_FLOW


def supported_op_types() -> list[str]:
    """Every op type the evaluator runs (the table's, control flow and ``const``), sorted."""
    return sorted(set(_ops.OPS) | set(CONTROL_FLOW) | {"const"})


def _model_spec_path(path: Path) -> tuple[Path, Path]:
    """(Model.proto file, weights folder) of a ``.mlpackage`` folder or a bare ``.mlmodel`` file."""
    if path.is_dir():
        manifest_root = path / "Data" / "com.apple.CoreML"
        proto = manifest_root / "model.mlmodel"
        if not proto.is_file():
            found = list(path.rglob("*.mlmodel"))
            if not found:
                raise InputError(f"{path}: not a Core ML package (no Data/com.apple.CoreML/model.mlmodel)")
            proto = found[0]
        return proto, proto.parent / "weights"
    if path.is_file():
        return path, path.parent / "weights"
    raise InputError(f"{path}: Core ML model not found (expected a .mlpackage folder)")


def _load_spec(path: Path):
    from coremltools.proto import Model_pb2

    proto, weights = _model_spec_path(path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(proto.read_bytes())
    except Exception as exc:  # protobuf DecodeError
        raise InputError(f"{proto}: not a readable Core ML model spec ({exc})") from None
    return spec, weights


def image_input_of(description) -> dict | None:
    """The first input's image description (``colorSpace``, width, height) when it is an image, else None.

    An image input needs nothing else from the evaluator: coremltools puts its scale and bias into the
    program as ``mul``/``add`` ops (named ``<input>__scaled__``/``<input>__biased__``) reading a float32
    (1, C, H, W) tensor that Core ML fills from the pixel buffer (0..255 per channel; RGB in R, G, B order)."""
    from coremltools.proto import FeatureTypes_pb2

    first = description.input[0] if len(description.input) else None
    if first is None or first.type.WhichOneof("Type") != "imageType":
        return None
    image = first.type.imageType
    return {"name": first.name, "color_space": FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace),
            "width": int(image.width), "height": int(image.height)}


class MILProgram:
    """The ``main`` function of a saved ML Program, ready to run with numpy.

    Attributes: ``inputs`` ({name: (numpy dtype, shape or None)}), ``outputs`` (output var names),
    ``labels`` (classifier labels or None), ``probabilities_name``/``label_name`` (classifier outputs),
    ``precision`` ("fp16" if any op computes in float16, else "fp32"), ``op_types`` (in program order),
    ``preprocessing`` (the raw-pixel preprocessing the package records, {} for none) and ``image_input``
    (``image_input_of``: the image the app passes, None for a tensor input).
    """

    def __init__(self, path: Path | str, function: str = "main"):
        self.path = Path(path)
        spec, weights = _load_spec(self.path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise InputError(f"{self.path}: not an ML Program (model type {spec.WhichOneof('Type')}); expected mlprogram")
        self.spec = spec
        functions = spec.mlProgram.functions
        if function not in functions:
            raise InputError(f"{self.path}: ML Program has no function '{function}' (has {sorted(functions)})")
        fn = functions[function]
        block = fn.block_specializations[fn.opset]
        self.opset = fn.opset
        self.inputs: dict[str, tuple[Any, tuple[int, ...] | None]] = {}
        self.states: set[str] = set()  # inputs that are Core ML states: fed a StateBuffer kept across calls
        for inp in fn.inputs:
            np_dtype, _, shape = tensor_type_of(inp.type)
            self.inputs[inp.name] = (np_dtype, shape)
            if is_state(inp.type):
                self.states.add(inp.name)
        self.outputs = list(block.outputs)
        desc = spec.description
        self.preprocessing = from_metadata(dict(desc.metadata.userDefined))
        self.image_input = image_input_of(desc)
        self.label_name = desc.predictedFeatureName or None
        self.probabilities_name = desc.predictedProbabilitiesName or None
        self.labels: list[str] | None = None
        self._blobs = BlobFiles(weights)
        parser = Parser(self._blobs, runs, self._unsupported)
        self._block = parser.block(block)
        self._ops: list[Op] = self._block.ops
        for parsed in walk(self._ops):
            if parsed.type == "classify":
                classes = parsed.bindings.get("classes", [])
                if classes and classes[0][0] == "value":
                    self.labels = [str(c.item() if isinstance(c, np.ndarray) else c) for c in classes[0][1]]
        self.op_types = [o.type for o in self._ops]
        self.precision = "fp16" if any(
            dt == np.float16 for o in walk(self._ops) if o.type != "const" for _, dt in o.outputs
        ) else "fp32"
        self._consts: dict[str, Any] | None = None

    # ---- execution ---------------------------------------------------------------------------

    def _unsupported(self, op: Op) -> None:
        raise UnsupportedOpError(
            f"{self.path}: MIL op '{op.type}' ({op.where}) is not supported by the MIL reference evaluator "
            f"(compress/export/coreml/mil/ops/; list: compress devices coreml-ops)"
        )

    def _inputs_of(self, op: Op, env) -> dict[str, list[Any]]:
        values: dict[str, list[Any]] = {}
        for key, binds in op.bindings.items():
            vals = []
            for kind, v in binds:
                if kind == "name":
                    if v not in env:
                        raise InputError(f"{self.path}: MIL op '{op.type}' ({op.where}) reads undefined variable '{v}'")
                    vals.append(env[v])
                else:
                    vals.append(v)
            values[key] = vals
        return values

    def _run_op(self, op: Op, env) -> None:
        """Run one op on ``env`` (name -> value) and store its outputs there, checked against the declared
        types and rounded to the declared dtypes."""
        if op.type == "const":
            env[op.outputs[0][0]] = op.bindings["val"][0][1]
            return
        values = self._inputs_of(op, env)
        if op.type in CONTROL_FLOW:
            result = CONTROL_FLOW[op.type](op, values, lambda block, inputs: self._run_block(block, inputs, env))
        else:
            fn = _ops.OPS.get(op.type)
            if fn is None:
                self._unsupported(op)
            try:
                result = fn(_ops.Args(values, op.type, op.where))
            except InputError:
                raise
            except Exception as exc:
                raise InputError(
                    f"{self.path}: MIL op '{op.type}' ({op.where}) failed in the reference evaluator: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        self._store(op, result if isinstance(result, tuple) else (result,), env)

    def _store(self, op: Op, results: tuple, env) -> None:
        """Check each result against its declared type, round it to the declared dtype, bind its name."""
        if len(results) != len(op.outputs):
            raise InputError(
                f"{self.path}: MIL op '{op.type}' ({op.where}) produced {len(results)} outputs, "
                f"program declares {len(op.outputs)}"
            )
        for (name, dtype), shape, value in zip(op.outputs, op.shapes, results):
            if isinstance(value, (int, float, bool)):
                value = np.asarray(value)
            try:
                check_declared(op.where, op.type, name, value, dtype, shape)
            except InputError as exc:
                raise InputError(f"{self.path}: {exc}") from None
            if dtype is not None and isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
                value = np.asarray(value).astype(dtype, copy=False)
            env[name] = value

    def _run_block(self, block: Block, inputs: list[Any], outer) -> list[Any]:
        """Run a nested block in its own scope (it sees ``outer``; its variables stay inside); return its outputs."""
        if len(inputs) != len(block.inputs):
            raise InputError(f"{self.path}: a nested block takes {len(block.inputs)} inputs, got {len(inputs)}")
        env = ChainMap({}, outer)
        for (name, _dtype, _shape), value in zip(block.inputs, inputs):
            env[name] = value
        for op in block.ops:
            if op.type == "const" or op.type.startswith("constexpr_"):
                continue
            self._run_op(op, env)
        missing = [n for n in block.outputs if n not in env]
        if missing:
            raise InputError(f"{self.path}: a nested block's output '{missing[0]}' is never computed")
        return [env[n] for n in block.outputs]

    def _constants(self) -> dict[str, Any]:
        """const and constexpr_* results (weights), computed once per program, nested blocks included."""
        if self._consts is None:
            env: dict[str, Any] = {}
            for op in walk(self._ops):
                if op.type == "const" or op.type.startswith("constexpr_"):
                    self._run_op(op, env)
            self._consts = env
        return self._consts

    def run_single(self, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, Any]:
        """Run once on ``feeds`` shaped exactly as the program's inputs; return outputs (or every var)."""
        env = dict(self._constants())
        for name, (dtype, shape) in self.inputs.items():
            if name not in feeds:
                raise InputError(f"{self.path}: input '{name}' is missing (model inputs: {sorted(self.inputs)})")
            if name in self.states:
                if not isinstance(feeds[name], StateBuffer):
                    raise InputError(f"{self.path}: input '{name}' is a Core ML state; expected a StateBuffer kept "
                                     "across calls (compress.export.coreml.mil.values)")
                env[name] = feeds[name]
                continue
            x = np.asarray(feeds[name])
            if shape is not None and tuple(x.shape) != tuple(shape):
                raise InputError(f"{self.path}: input '{name}' has shape {tuple(x.shape)}, expected {tuple(shape)}")
            env[name] = x.astype(dtype)
        for op in self._ops:
            if op.type == "const" or op.type.startswith("constexpr_"):
                continue
            self._run_op(op, env)
        if keep_all:
            return env
        return {name: env[name] for name in self.outputs}

    def evaluate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a batch; loops over samples where the program was exported with a fixed batch of 1."""
        loop = False
        n = None
        for name, (_, shape) in self.inputs.items():
            x = np.asarray(inputs.get(name)) if name in inputs else None
            if x is None:
                raise InputError(f"{self.path}: input '{name}' is missing (model inputs: {sorted(self.inputs)})")
            if shape is not None and len(shape) == x.ndim and shape[0] == 1 and x.shape[0] != 1 and tuple(x.shape[1:]) == tuple(shape[1:]):
                loop = True
                n = x.shape[0]
        if not loop:
            return {k: np.asarray(v) for k, v in self.run_single(inputs).items()}
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(n):
            one = {k: np.asarray(v)[i : i + 1] for k, v in inputs.items()}
            for k, v in self.run_single(one).items():
                parts.setdefault(k, []).append(np.asarray(v))
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """What the program's input receives for ``x``: float32 ``x``, or, for a package that records raw-pixel
        preprocessing, the pixel values (0..255, float32) of normalized ``x`` or of uint8 pixels as given."""
        return np.asarray(runner_input(x, self.preprocessing), dtype=np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """float32 (n, num_classes) scores for a single-input model: the classifier's probability
        dictionary in label order (= the logits; Core ML's classifier adds no softmax), or the first
        float output of a plain model. ``x`` as for ``model_input`` (normalized float32, or uint8 pixels)."""
        (name,) = self.inputs
        out = self.evaluate({name: self.model_input(x)})
        key = self.probabilities_name if self.probabilities_name in out else None
        if key is None:
            key = next(k for k, v in out.items() if np.asarray(v).dtype.kind == "f")
        y = np.asarray(out[key], dtype=np.float32)
        return y.reshape(y.shape[0], -1) if y.ndim != 2 else y


def load_program(path: Path | str) -> MILProgram:
    """Parse a saved ``.mlpackage``; raises ``UnsupportedOpError`` naming the first op it cannot run."""
    return MILProgram(path)


def evaluate(path: Path | str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate the package at ``path`` on ``inputs`` ({input name: array}); returns every named output.

    A classifier's ``<label>_probs`` output comes back as float (n, num_classes) in label order and its
    label output as an object array (n,).
    """
    return MILProgram(path).evaluate(inputs)
