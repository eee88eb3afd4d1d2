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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.core.errors import InputError
from compress.export.common.preprocess import from_metadata, runner_input
from compress.export.coreml.mil import ops as _ops
from compress.export.coreml.mil.values import BlobFiles, decode_value, tensor_type_of


class UnsupportedOpError(InputError):
    """The program contains an op type the reference evaluator does not implement."""


@dataclass
class _Op:
    index: int
    type: str
    # parameter name -> list of ("name", var name) or ("value", decoded value)
    bindings: dict[str, list[tuple[str, Any]]]
    outputs: list[tuple[str, Any]]  # (var name, numpy dtype or None for non-tensor outputs)
    name: str | None = None  # the op's ``name`` attribute (what coremltools' ``op_name_configs`` keys on)

    @property
    def where(self) -> str:
        first = self.outputs[0][0] if self.outputs else "?"
        return f"op #{self.index}, output '{first}'"


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
        for inp in fn.inputs:
            np_dtype, _, shape = tensor_type_of(inp.type)
            self.inputs[inp.name] = (np_dtype, shape)
        self.outputs = list(block.outputs)
        desc = spec.description
        self.preprocessing = from_metadata(dict(desc.metadata.userDefined))
        self.image_input = image_input_of(desc)
        self.label_name = desc.predictedFeatureName or None
        self.probabilities_name = desc.predictedProbabilitiesName or None
        self.labels: list[str] | None = None
        self._blobs = BlobFiles(weights)
        self._ops: list[_Op] = []
        for index, op in enumerate(block.operations):
            outs = []
            for o in op.outputs:
                dtype = tensor_type_of(o.type)[0] if o.type.WhichOneof("type") == "tensorType" else None
                outs.append((o.name, dtype))
            parsed = _Op(index, op.type, {}, outs)
            if op.type != "const" and op.type not in _ops.OPS:
                raise UnsupportedOpError(
                    f"{self.path}: MIL op '{op.type}' ({parsed.where}) is not supported by the MIL reference "
                    f"evaluator (compress/export/coreml/mil/ops/)"
                )
            if len(op.blocks):
                raise UnsupportedOpError(
                    f"{self.path}: MIL op '{op.type}' ({parsed.where}) has nested blocks (control flow), "
                    f"which the MIL reference evaluator does not support"
                )
            if "name" in op.attributes:
                try:
                    parsed.name = str(np.asarray(decode_value(op.attributes["name"], self._blobs)).reshape(-1)[0])
                except Exception:  # a name that does not decode is only a label
                    parsed.name = None
            for key, value in op.attributes.items():
                if key != "name":
                    parsed.bindings[key] = [("value", decode_value(value, self._blobs))]
            for key, arg in op.inputs.items():
                parsed.bindings[key] = [
                    ("name", b.name) if b.WhichOneof("binding") == "name" else ("value", decode_value(b.value, self._blobs))
                    for b in arg.arguments
                ]
            if op.type == "classify":
                classes = parsed.bindings.get("classes", [])
                if classes and classes[0][0] == "value":
                    self.labels = [str(c.item() if isinstance(c, np.ndarray) else c) for c in classes[0][1]]
            self._ops.append(parsed)
        self.op_types = [o.type for o in self._ops]
        self.precision = "fp16" if any(
            dt == np.float16 for o in self._ops if o.type != "const" for _, dt in o.outputs
        ) else "fp32"
        self._consts: dict[str, Any] | None = None

    # ---- execution ---------------------------------------------------------------------------

    def _run_op(self, op: _Op, env: dict[str, Any]) -> None:
        if op.type == "const":
            env[op.outputs[0][0]] = op.bindings["val"][0][1]
            return
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
        fn = _ops.OPS.get(op.type)
        if fn is None:
            raise UnsupportedOpError(
                f"{self.path}: MIL op '{op.type}' ({op.where}) is not supported by the MIL reference evaluator"
            )
        try:
            result = fn(_ops.Args(values, op.type, op.where))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"{self.path}: MIL op '{op.type}' ({op.where}) failed in the reference evaluator: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(op.outputs):
            raise InputError(
                f"{self.path}: MIL op '{op.type}' ({op.where}) produced {len(results)} outputs, "
                f"program declares {len(op.outputs)}"
            )
        for (name, dtype), value in zip(op.outputs, results):
            if dtype is not None and isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
                value = np.asarray(value).astype(dtype, copy=False)
            env[name] = value

    def _constants(self) -> dict[str, Any]:
        """const and constexpr_* results (weights), computed once per program."""
        if self._consts is None:
            env: dict[str, Any] = {}
            for op in self._ops:
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
