"""ONNX Runtime on the host CPU: the runtime the ONNX artifact runs in on the device.

``predict`` takes float32 inputs in the model's normalized input space; a file that records raw-pixel
preprocessing (uint8 input, normalization inside) gets them as the pixels they came from
(``compress.export.common.preprocess.to_raw``), and uint8 pixels are passed through as an app passes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.runner import Runner
from compress.export.common.preprocess import from_metadata, runner_input


def cpu_session(path: Path | str, threads: int = 1):
    """``path`` in an ONNX Runtime CPU session with ``threads`` intra-op threads (sequential, quiet); a file
    that does not load is an InputError naming it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise InputError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None


def open_onnx(path: Path | str, threads: int = 1) -> Runner:
    """Load ``path`` in an ONNX Runtime CPU session with ``threads`` intra-op threads."""
    import onnxruntime as ort

    session = cpu_session(path, threads)
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    preprocessing = from_metadata(session.get_modelmeta().custom_metadata_map)

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run([output_name], {input_name: runner_input(x, preprocessing)})[0]

    return Runner(engine=f"ONNX Runtime {ort.__version__}", predict=predict, threads=int(threads))
