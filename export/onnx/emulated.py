"""The ONNX runner for the ARM64 emulator: ONNX Runtime's aarch64 wheel on one batch.

It runs inside the ARM64 emulator's Python (``compress.devices.arm64_emu_child`` loads this file by path),
which has only numpy and the runtimes' aarch64 wheels, so it imports nothing from this project: the input
handling mirrors ``compress.export.onnx.runner`` line for line (the emulator tests compare both on real inputs).
``run(path, x, threads) -> (scores, engine)``; ``InputProblem`` means a bad model file or input batch. A
streaming file (inputs ``audio`` and states) takes ``x`` as consecutive hops and returns each hop's ``probs``.
A file that records raw-pixel preprocessing gets uint8 pixels: ``x`` as given when it is uint8, else the
pixels the normalized ``x`` came from (``to_raw``, a copy of ``compress.export.common.preprocess.to_raw``).
"""

from __future__ import annotations

import json

import numpy as np


STREAM_AUDIO, STREAM_PROBS = "audio", "probs"  # compress.export.common.streaming's contract (copied)


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
    names = [i.name for i in session.get_inputs()]
    if STREAM_AUDIO in names and len(names) > 1:  # a streaming file: x holds consecutive hops
        return _stream(session, np.asarray(x, dtype=np.float32)), engine
    input_name = session.get_inputs()[0].name
    output_name = session.get_outputs()[0].name
    preprocessing = json.loads(session.get_modelmeta().custom_metadata_map.get("preprocessing") or "{}")
    if not preprocessing:
        x = np.ascontiguousarray(x, dtype=np.float32)
    elif x.dtype != np.uint8:  # normalized floats: the pixels they came from
        x = to_raw(x, preprocessing)
    y = session.run([output_name], {input_name: np.ascontiguousarray(x)})[0]
    return y, engine


def _stream(session, hops: np.ndarray) -> np.ndarray:
    """A streaming file fed ``hops`` ``(n, hop_samples)`` one by one from zero states: ``(n, classes)`` probs."""
    states = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != STREAM_AUDIO}
    outputs = [STREAM_PROBS, *(f"{name}_out" for name in states)]
    rows = []
    for hop in hops:
        probs, *new = session.run(outputs, {STREAM_AUDIO: np.ascontiguousarray(hop[None]), **states})
        states = dict(zip(states, new))
        rows.append(probs[0])
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def to_raw(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Normalized (N, C, H, W) -> the uint8 pixels it came from: round((x * std + mean) / scale), clipped."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(preprocessing["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    if x.ndim != 4 or x.shape[1] != mean.shape[1]:
        raise InputProblem(f"input: shape {x.shape}; expected (N, {mean.shape[1]}, H, W) for raw-pixel preprocessing")
    return np.clip(np.rint((x * std + mean) / float(preprocessing["scale"])), 0, 255).astype(np.uint8)
