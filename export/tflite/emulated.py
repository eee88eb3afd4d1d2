"""The TFLite runner for the ARM64 emulator: ai-edge-litert's aarch64 wheel on one batch.

It runs inside the ARM64 emulator's Python (``compress.devices.arm64_emu_child`` loads this file by path),
which has only numpy and the runtimes' aarch64 wheels, so it imports nothing from this project: the input
handling mirrors ``compress.export.tflite.runner`` line for line (the emulator tests compare both on real inputs).
``run(path, x, threads) -> (scores, engine)``; ``InputProblem`` means a bad model file or input batch.
"""

from __future__ import annotations

import numpy as np


class InputProblem(Exception):
    """A problem with the model file or the input batch (the child exits 2)."""


def run(path: str, x: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:  # BUILTIN applies the default delegate (XNNPACK), as the host runner does
        interpreter = Interpreter(
            model_path=path, num_threads=threads, experimental_op_resolver_type=OpResolverType.BUILTIN
        )
        interpreter.allocate_tensors()
    except Exception as exc:
        raise InputProblem(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0]})") from None
    try:
        delegated = any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    except Exception:  # private API: trust the resolver we asked for
        delegated = True
    kernels = "XNNPACK" if delegated else "XNNPACK requested, not applied: builtin kernels"
    engine = f"LiteRT {ai_edge_litert.__version__} ({kernels}, {threads} thread{'s' if threads != 1 else ''})"
    if x.size == 0 and x.ndim == 1:
        return np.zeros((0,), np.float32), engine

    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    batch = int(inp["shape"][0])
    dynamic_batch = len(inp["shape_signature"]) > 0 and int(inp["shape_signature"][0]) == -1

    def to_input(v: np.ndarray) -> np.ndarray:
        dtype = inp["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = inp["quantization"]
            info = np.iinfo(dtype)
            s = v / scale
            q = np.sign(s) * np.floor(np.abs(s) + 0.5) + zero  # TFLite rounds half away from zero
            return np.clip(q, info.min, info.max).astype(dtype)
        return v.astype(dtype)

    def from_output(y: np.ndarray) -> np.ndarray:
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = out["quantization"]
            return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
        return y.astype(np.float32)

    def run(v: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], to_input(v))
        interpreter.invoke()
        return from_output(interpreter.get_tensor(out["index"])).copy()

    x = np.ascontiguousarray(x, dtype=np.float32)
    name = path.rsplit("/", 1)[-1]
    if tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        raise InputProblem(
            f"input: expected shape (N, {', '.join(map(str, inp['shape'][1:]))}) for {name}, got {x.shape}"
        )
    n = len(x)
    if n == 0:
        return np.zeros((0, *out["shape"][1:]), dtype=np.float32), engine
    if n == batch:
        return run(x), engine
    if dynamic_batch:
        interpreter.resize_tensor_input(inp["index"], [n, *inp["shape"][1:]])
        interpreter.allocate_tensors()
        return run(x), engine
    if batch == 1:
        return np.concatenate([run(x[i : i + 1]) for i in range(n)], axis=0), engine
    raise InputProblem(f"input: {name} has a fixed batch of {batch}, got a batch of {n}")
