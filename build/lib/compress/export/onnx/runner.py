"""ONNX Runtime on the host CPU: the runtime the ONNX artifact runs in on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.runner import Runner


def open_onnx(path: Path | str, threads: int = 1) -> Runner:
    """Load ``path`` in an ONNX Runtime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise InputError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return Runner(engine=f"ONNX Runtime {ort.__version__}", predict=predict, threads=int(threads))
