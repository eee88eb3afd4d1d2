"""The TFLite runner for the ARM64 emulator: ai-edge-litert's aarch64 wheel on one batch.

It runs inside the ARM64 emulator's Python (``compress.devices.arm64_emu_child`` loads this file by path),
which has only numpy and the runtimes' aarch64 wheels, so it imports nothing from this project: the input
handling mirrors ``compress.export.tflite.runner`` line for line (the emulator tests compare both on real inputs).
``run(path, x, threads) -> (scores, engine)``; ``InputProblem`` means a bad model file or input batch. A
streaming file (signature inputs ``audio`` and states) takes ``x`` as consecutive hops and returns each hop's
``probs``.
A file that records raw-pixel preprocessing gets uint8 pixels: ``x`` as given when it is uint8, else the
pixels the normalized ``x`` came from (``to_raw``); the preprocessing is read from the file's metadata with
``struct`` (the emulated Python has no ``flatbuffers``): copies of ``compress.export.common.preprocess.to_raw``
and ``compress.export.tflite.io.metadata_entries``.
"""

from __future__ import annotations

import json
import struct

import numpy as np


STREAM_AUDIO, STREAM_PROBS = "audio", "probs"  # compress.export.common.streaming's contract (copied)


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

    signatures = interpreter.get_signature_list()  # names only: a runner is made for a streaming file alone
    names = next(iter(signatures.values()), {}).get("inputs", []) if signatures else []
    if STREAM_AUDIO in names and len(names) > 1:  # a streaming file: x holds consecutive hops
        return _stream(interpreter.get_signature_runner(), np.asarray(x, dtype=np.float32)), engine

    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    batch = int(inp["shape"][0])
    dynamic_batch = len(inp["shape_signature"]) > 0 and int(inp["shape_signature"][0]) == -1

    def to_input(v: np.ndarray) -> np.ndarray:
        dtype = inp["dtype"]
        scale, zero = inp["quantization"]
        if np.issubdtype(dtype, np.integer) and scale:  # an unquantized integer input (raw pixels) is cast
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

    x = _model_input(path, x)
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


def _stream(signature, hops: np.ndarray) -> np.ndarray:
    """A streaming file fed ``hops`` ``(n, hop_samples)`` one by one from zero states: ``(n, classes)`` probs."""
    details = signature.get_input_details()
    states = {n: np.zeros(d["shape"], np.float32) for n, d in details.items() if n != STREAM_AUDIO}
    rows = []
    for hop in hops:
        out = signature(**{STREAM_AUDIO: np.ascontiguousarray(hop[None])}, **states)
        states = {n: out[f"{n}_out"] for n in states}
        rows.append(np.asarray(out[STREAM_PROBS])[0])
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def _model_input(path: str, x: np.ndarray) -> np.ndarray:
    """float32 ``x``, or uint8 pixels for a file that records raw-pixel preprocessing."""
    with open(path, "rb") as fh:
        info = json.loads(metadata_entries(fh.read()).get("compress_info", b"{}").rstrip(b"\0") or b"{}")
    preprocessing = json.loads(info.get("preprocessing") or "{}")
    if not preprocessing:
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x) if x.dtype == np.uint8 else to_raw(x, preprocessing)


def to_raw(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Normalized (N, C, H, W) -> the uint8 pixels it came from: round((x * std + mean) / scale), clipped."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(preprocessing["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    if x.ndim != 4 or x.shape[1] != mean.shape[1]:
        raise InputProblem(f"input: shape {x.shape}; expected (N, {mean.shape[1]}, H, W) for raw-pixel preprocessing")
    return np.clip(np.rint((x * std + mean) / float(preprocessing["scale"])), 0, 255).astype(np.uint8)


def metadata_entries(data: bytes) -> dict[str, bytes]:
    """name -> bytes of the flatbuffer's ``Model.metadata`` entries (schema: Model 4 = buffers, 6 = metadata;
    Metadata 0 = name, 1 = buffer; Buffer 0 = data, or 1 = offset and 2 = size into the file)."""
    def u32(at: int) -> int:
        return struct.unpack_from("<I", data, at)[0]

    def field(table: int, i: int) -> int | None:
        vtable = table - struct.unpack_from("<i", data, table)[0]
        if 4 + 2 * i >= struct.unpack_from("<H", data, vtable)[0]:
            return None
        offset = struct.unpack_from("<H", data, vtable + 4 + 2 * i)[0]
        return table + offset if offset else None

    def vector(at: int) -> tuple[int, int]:
        start = at + u32(at)
        return start + 4, u32(start)

    root, out = u32(0), {}
    metadata, buffers = field(root, 6), field(root, 4)
    if metadata is None or buffers is None:
        return out
    (first, count), (buffer0, _) = vector(metadata), vector(buffers)
    for k in range(count):
        entry = first + 4 * k + u32(first + 4 * k)
        name_at, index_at = field(entry, 0), field(entry, 1)
        start, length = vector(name_at) if name_at is not None else (0, 0)
        buffer = buffer0 + 4 * (u32(index_at) if index_at is not None else 0)
        buffer += u32(buffer)
        data_at, offset_at, size_at = field(buffer, 0), field(buffer, 1), field(buffer, 2)
        if data_at is not None:
            begin, size = vector(data_at)
        elif offset_at is not None and size_at is not None:
            begin, size = struct.unpack_from("<Q", data, offset_at)[0], struct.unpack_from("<Q", data, size_at)[0]
        else:
            begin, size = 0, 0
        out[data[start:start + length].decode("utf-8", errors="replace")] = bytes(data[begin:begin + size])
    return out
