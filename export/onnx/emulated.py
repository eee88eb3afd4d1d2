"""The ONNX runner for the ARM64 emulator: ONNX Runtime's aarch64 wheel on one batch.

It runs inside the ARM64 emulator's Python (``compress.devices.arm64_emu_child`` loads this file by path),
which has only numpy and the runtimes' aarch64 wheels, so it imports nothing from this project: the input
handling mirrors ``compress.export.onnx.runner`` line for line (the emulator tests compare both on real inputs).
``run(path, x, threads) -> (scores, engine)``; ``InputProblem`` means a bad model file or input batch.
A file that records raw-pixel preprocessing gets uint8 pixels: ``x`` as given when it is uint8, else the
pixels the normalized ``x`` came from (``to_raw``, a copy of ``compress.export.common.preprocess.to_raw``).
"""

from __future__ import annotations

import json

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
    preprocessing = json.loads(session.get_modelmeta().custom_metadata_map.get("preprocessing") or "{}")
    if not preprocessing:
        x = np.ascontiguousarray(x, dtype=np.float32)
    elif x.dtype != np.uint8:  # normalized floats: the pixels they came from
        x = to_raw(x, preprocessing)
    y = session.run([output_name], {input_name: np.ascontiguousarray(x)})[0]
    return y, engine


def to_raw(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Normalized (N, C, H, W) -> the uint8 pixels it came from: round((x * std + mean) / scale), clipped."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(preprocessing["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    if x.ndim != 4 or x.shape[1] != mean.shape[1]:
        raise InputProblem(f"input: shape {x.shape}; expected (N, {mean.shape[1]}, H, W) for raw-pixel preprocessing")
    return np.clip(np.rint((x * std + mean) / float(preprocessing["scale"])), 0, 255).astype(np.uint8)
