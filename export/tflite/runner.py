"""LiteRT (TFLite) interpreter on the host CPU: the runtime the ``.tflite`` artifact runs in on the device.

``predict`` always takes float32 inputs in the model's normalized input space and returns float32 scores:
for a full-int8 model the input is quantized with the input tensor's scale/zero-point and the int8 output is
dequantized with the output tensor's, so the result is comparable with the torch logits. A file that
records raw-pixel preprocessing (uint8 input, normalization inside) gets the pixels the normalized input
came from (``compress.export.common.preprocess.to_raw``); uint8 pixels are passed through as an app passes them.

Batches: models exported by ``compress.export.tflite.convert`` have a fixed batch of 1. A batch of another size is run by
resizing the input when the model's batch dimension is dynamic, otherwise sample by sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.noise import native_stderr_filtered
from compress.core.runner import Runner
from compress.export.tflite import STDERR_NOISE
from compress.export.common.preprocess import runner_input
from compress.export.tflite.io import read_preprocessing

from compress.export.tflite.tolerances import TOLERANCES  # noqa: E402,F401  (re-exported)


def load_interpreter(path: Path | str, threads: int = 1, xnnpack: bool = True):
    """``path`` in ai-edge-litert's Interpreter with ``threads`` threads (XNNPACK delegate unless off), tensors
    allocated; a missing or unloadable file is an InputError naming it."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such TFLite model")
    # BUILTIN applies the default delegate (XNNPACK) to the graph; BUILTIN_WITHOUT_DEFAULT_DELEGATES does not.
    resolver = OpResolverType.BUILTIN if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with native_stderr_filtered(STDERR_NOISE):  # the delegate announces itself on every load
            interpreter = Interpreter(
                model_path=str(path), num_threads=int(threads), experimental_op_resolver_type=resolver
            )
            interpreter.allocate_tensors()
    except Exception as exc:  # the wrapper raises ValueError/RuntimeError with the runtime's message
        raise InputError(f"{path}: not a loadable TFLite model ({str(exc).splitlines()[0]})") from None
    return interpreter


def engine_name(interpreter, threads: int, xnnpack: bool) -> str:
    """What a report says ran the model: the runtime, whether XNNPACK took the graph, the threads."""
    import ai_edge_litert

    kernels = "builtin kernels"
    if xnnpack:
        kernels = "XNNPACK" if _delegated(interpreter) else "XNNPACK requested, not applied: builtin kernels"
    return f"LiteRT {ai_edge_litert.__version__} ({kernels}, {threads} thread{'s' if threads != 1 else ''})"


def open_tflite(path: Path | str, threads: int = 1, xnnpack: bool = True) -> Runner:
    """Load ``path`` in ai-edge-litert's Interpreter with ``threads`` threads (XNNPACK delegate unless off)."""
    path = Path(path)
    interpreter = load_interpreter(path, threads, xnnpack)
    preprocessing = read_preprocessing(path)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    model_batch = int(inp["shape"][0])
    dynamic_batch = len(inp["shape_signature"]) > 0 and int(inp["shape_signature"][0]) == -1
    state = {"batch": model_batch}

    def to_input(x: np.ndarray) -> np.ndarray:
        dtype = inp["dtype"]
        scale, zero = inp["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:  # an unquantized integer input (raw pixels) is cast
            info = np.iinfo(dtype)
            v = x / scale
            q = np.sign(v) * np.floor(np.abs(v) + 0.5) + zero  # TFLite rounds half away from zero
            return np.clip(q, info.min, info.max).astype(dtype)
        return x.astype(dtype)

    def from_output(y: np.ndarray) -> np.ndarray:
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = out["quantization"]
            return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
        return y.astype(np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], to_input(x))
        interpreter.invoke()
        return from_output(interpreter.get_tensor(out["index"]))

    def predict(x: np.ndarray) -> np.ndarray:
        x = runner_input(x, preprocessing)
        if tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
            raise InputError(
                f"input: expected shape (N, {', '.join(map(str, inp['shape'][1:]))}) for {path.name}, got {x.shape}"
            )
        n = len(x)
        if n == 0:
            return np.zeros((0, *out["shape"][1:]), dtype=np.float32)
        if n == state["batch"]:
            return run(x).copy()
        if dynamic_batch:
            interpreter.resize_tensor_input(inp["index"], [n, *inp["shape"][1:]])
            interpreter.allocate_tensors()
            state["batch"] = n
            return run(x).copy()
        if state["batch"] == 1:
            return np.concatenate([run(x[i : i + 1]).copy() for i in range(n)], axis=0)
        raise InputError(f"input: {path.name} has a fixed batch of {state['batch']}, got a batch of {n}")

    return Runner(engine=engine_name(interpreter, threads, xnnpack), predict=predict, threads=int(threads))


def _delegated(interpreter) -> bool:
    """Whether a delegate (XNNPACK, the only default one) took any node of the graph."""
    try:
        return any(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    except Exception:  # private API: if it goes away, trust the resolver we asked for
        return True
