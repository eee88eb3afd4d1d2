"""What an app must feed the TFLite artifact and what it gets back (with the int8 scale/zero-point an app
must apply, or, for a raw-pixel input, the preprocessing the file applies itself), read from the file itself:
the manifest's ``inputs``/``outputs`` describe the file as shipped, not what we meant to export. Also the
file's metadata entries (``read_metadata``), read without torch or the generated flatbuffer schema."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

from compress.core.errors import InputError

# Metadata entry names written into the flatbuffer by ``compress.export.tflite.convert``.
LABELS_KEY = "labels"
INFO_KEY = "compress_info"


def describe_io(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))

    def entry(d):
        scale, zero_point = d["quantization"]
        e = {"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": d["dtype"].__name__}
        if scale:
            e["quantization"] = {"scale": float(scale), "zero_point": int(zero_point),
                                 "real_value": "scale * (q - zero_point)"}
        return e

    inputs = [entry(d) for d in interp.get_input_details()]
    preprocessing = read_preprocessing(path)
    if preprocessing:  # raw 8-bit pixels in: what the file computes from them before the first layer
        inputs[0]["preprocessing"] = preprocessing
    return {"inputs": inputs, "outputs": [entry(d) for d in interp.get_output_details()]}


def metadata_name(raw: bytes | str | None) -> str:
    """A flatbuffer string as text."""
    return raw.decode("utf-8") if isinstance(raw, bytes) else (raw or "")


def metadata_entries(data) -> dict[str, bytes]:
    """name -> bytes of a ``.tflite`` flatbuffer's ``Model.metadata`` entries, read with ``struct`` alone
    (``data``: bytes or a memory map of the file).

    Why not the generated schema module: a runner reads this on every open, and the peak memory measured
    around that open (``compress.devices.peak_memory``) should not include importing a large generated
    module; the ARM64 emulator's Python has no ``flatbuffers`` package at all (``emulated.py`` repeats this).
    TFLite schema: Model field 4 = buffers, 6 = metadata; Metadata 0 = name, 1 = buffer index; Buffer
    0 = data, or 1 = offset and 2 = size into the file (large models).
    """
    def u32(at: int) -> int:
        return struct.unpack_from("<I", data, at)[0]

    def field(table: int, i: int) -> int | None:  # where field i of the table at ``table`` is, None: absent
        vtable = table - struct.unpack_from("<i", data, table)[0]
        if 4 + 2 * i >= struct.unpack_from("<H", data, vtable)[0]:
            return None
        offset = struct.unpack_from("<H", data, vtable + 4 + 2 * i)[0]
        return table + offset if offset else None

    def vector(at: int) -> tuple[int, int]:  # (first element, length) of the vector referenced at ``at``
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


def read_metadata(path: Path | str) -> dict:
    """The model's metadata entries: ``labels`` (list), ``compress_info`` (dict), other entries as text.

    Includes the converter's ``min_runtime_version`` (NUL padding stripped).
    """
    path = Path(path)
    try:  # mapped, not read: a runner calls this on open, inside the peak memory measured around the open
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            entries = metadata_entries(data)
    except FileNotFoundError:
        raise InputError(f"{path}: no such TFLite model") from None
    except Exception as exc:  # struct.error / IndexError on a file that is not a flatbuffer
        raise InputError(f"{path}: not a readable TFLite flatbuffer ({exc})") from None
    out: dict = {name: raw.rstrip(b"\0").decode("utf-8", errors="replace") for name, raw in entries.items()}
    if LABELS_KEY in out:
        out[LABELS_KEY] = json.loads(out[LABELS_KEY])
    if INFO_KEY in out:
        out[INFO_KEY] = json.loads(out[INFO_KEY])
    return out


def read_preprocessing(path: Path | str) -> dict:
    """The raw-pixel preprocessing the file at ``path`` records ({}: it takes normalized float32)."""
    from compress.export.common.preprocess import from_metadata

    return from_metadata(read_metadata(path).get(INFO_KEY) or {})
