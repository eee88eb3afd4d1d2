"""Runs one exported model on one batch inside the ARM64 emulator (started by ``devices.arm64_emu``).

Usage: ``python3.11 arm64_emu_child.py MODEL IN.npy OUT.npy THREADS`` under ``qemu-aarch64-static``.

It runs in the emulated aarch64 Python, which has only numpy and the runtimes' aarch64 wheels, so it cannot
import this project: the input handling below mirrors ``devices.onnx_runner`` and ``devices.tflite_runner``
line for line (the tests compare it with the host runners, so a drift shows up there). Output: OUT.npy
(float32 scores) and one JSON line on stdout (engine). Exit code 2 with a one-line message on stderr means
a problem with the input (missing or unloadable model, wrong input shape); anything else is a crash.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


class InputProblem(Exception):
    """A problem with the model file or the input batch (exit code 2)."""


def run_onnx(path: str, x: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputProblem(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    engine = f"ONNX Runtime {ort.__version__}"
    if x.size == 0 and x.ndim == 1:  # probe: the model loads, nothing to run
        return np.zeros((0,), np.float32), engine
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    y = session.run([output_name], {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
    return y, engine


def run_tflite(path: str, x: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
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


def main(argv: list[str]) -> int:
    model, in_path, out_path, threads = argv[1], argv[2], argv[3], int(argv[4])
    x = np.load(in_path)
    start = time.perf_counter()
    try:
        if model.endswith(".onnx"):
            y, engine = run_onnx(model, x, threads)
        elif model.endswith(".tflite"):
            y, engine = run_tflite(model, x, threads)
        else:
            raise InputProblem(f"{model}: expected a .onnx or .tflite file")
    except InputProblem as exc:
        print(exc, file=sys.stderr)
        return 2
    np.save(out_path, np.asarray(y, dtype=np.float32))
    print(json.dumps({"engine": engine, "seconds": time.perf_counter() - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
