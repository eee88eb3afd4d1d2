"""The ONNX runner for the ARM64 emulator: ONNX Runtime's aarch64 wheel on one batch.

It runs inside the ARM64 emulator's Python (``compress.devices.arm64_emu_child`` loads this file by path),
which has only numpy and the runtimes' aarch64 wheels, so it imports nothing from this project: the input
handling mirrors ``compress.export.onnx.runner`` line for line (the emulator tests compare both on real inputs).
``run(path, x, threads) -> (scores, engine)``; ``InputProblem`` means a bad model file or input batch.
"""

from __future__ import annotations

import numpy as np


class InputProblem(Exception):
    """A problem with the model file or the input batch (the child exits 2)."""


def run(path: str, x: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
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
