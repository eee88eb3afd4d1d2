"""Decode MIL protobuf values (``coremltools.proto.MIL_pb2.Value``) into numpy arrays.

Weights stored in the package's ``weights/*.bin`` are read with coremltools' own blob reader
(``coremltools.libmilstoragepython._BlobStorageReader``), the reader Core ML's tooling uses, so a
corrupted blob reaches the evaluator exactly as it would reach the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError

# MIL DataType enum value -> (numpy dtype, MIL name). Sub-byte types are stored unpacked as (u)int8.
_DTYPES: dict[int, tuple[type, str]] = {}


def _init_dtypes() -> None:
    from coremltools.proto import MIL_pb2

    D = MIL_pb2.DataType
    table = {
        "BOOL": (np.bool_, "bool"),
        "STRING": (np.str_, "string"),
        "FLOAT16": (np.float16, "fp16"),
        "FLOAT32": (np.float32, "fp32"),
        "FLOAT64": (np.float64, "fp64"),
        "INT8": (np.int8, "int8"),
        "INT16": (np.int16, "int16"),
        "INT32": (np.int32, "int32"),
        "INT64": (np.int64, "int64"),
        "INT4": (np.int8, "int4"),
        "UINT8": (np.uint8, "uint8"),
        "UINT16": (np.uint16, "uint16"),
        "UINT32": (np.uint32, "uint32"),
        "UINT64": (np.uint64, "uint64"),
        "UINT4": (np.uint8, "uint4"),
        "UINT2": (np.uint8, "uint2"),
        "UINT1": (np.uint8, "uint1"),
        "UINT6": (np.uint8, "uint6"),
        "UINT3": (np.uint8, "uint3"),
    }
    for name, v in table.items():
        if hasattr(D, name):
            _DTYPES[D.Value(name)] = v


SUB_BYTE_BITS = {"int4": 4, "uint4": 4, "uint3": 3, "uint2": 2, "uint1": 1, "uint6": 6}

# MIL ``cast`` dtype strings -> numpy dtype.
CAST_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


def mil_dtype(code: int) -> tuple[type, str]:
    """numpy dtype and MIL name of a ``MIL_pb2.DataType`` value."""
    if not _DTYPES:
        _init_dtypes()
    try:
        return _DTYPES[code]
    except KeyError:
        raise InputError(f"MIL data type code {code}: not supported by the MIL reference evaluator") from None


class StateBuffer:
    """A Core ML state (iOS18 ``MLState``): a value that persists across predictions, read by ``read_state`` and
    replaced by ``coreml_update_state``. Make one per state input (zeros at the start of a stream) and pass the
    same objects to every call."""

    def __init__(self, value: np.ndarray):
        self.value = np.array(value)


def is_state(value_type) -> bool:
    return value_type.WhichOneof("type") == "stateType"


def tensor_type_of(value_type) -> tuple[type, str, tuple[int, ...] | None]:
    """(numpy dtype, MIL dtype name, static shape or None) of a ``ValueType`` holding a tensor (or a state
    wrapping one)."""
    tt = value_type.stateType.wrappedType.tensorType if is_state(value_type) else value_type.tensorType
    np_dtype, name = mil_dtype(tt.dataType)
    shape: list[int] | None = []
    for dim in tt.dimensions:
        if dim.WhichOneof("dimension") == "constant":
            shape.append(int(dim.constant.size))
        else:
            shape = None
            break
    return np_dtype, name, (tuple(shape) if shape is not None else None)


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool) -> np.ndarray:
    """Elements packed LSB-first, ``nbits`` each (the MIL sub-byte layout) -> int8/uint8 array."""
    bits = np.unpackbits(np.asarray(packed).view(np.uint8).ravel(), bitorder="little")
    need = count * nbits
    if bits.size < need:
        raise InputError(f"packed sub-byte data: {bits.size} bits, expected at least {need}")
    bits = bits[:need].reshape(count, nbits).astype(np.int32)
    values = (bits << np.arange(nbits, dtype=np.int32)).sum(axis=1)
    if signed:
        values = np.where(values >= (1 << (nbits - 1)), values - (1 << nbits), values)
        return values.astype(np.int8)
    return values.astype(np.uint8)


class BlobFiles:
    """Weight files of one package, opened once with coremltools' blob reader."""

    def __init__(self, weights_dir: Path):
        self.weights_dir = Path(weights_dir)
        self._readers: dict[str, object] = {}

    def read(self, file_name: str, offset: int, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
        from coremltools.libmilstoragepython import _BlobStorageReader

        path = self.weights_dir / file_name.split("/")[-1]
        key = str(path)
        if key not in self._readers:
            if not path.is_file():
                raise InputError(f"{path}: weight file referenced by the model is missing")
            self._readers[key] = _BlobStorageReader(key)
        reader = self._readers[key]
        method = {
            "fp16": "read_fp16_data",
            "fp32": "read_float_data",
            "int8": "read_int8_data",
            "uint8": "read_uint8_data",
            "int16": "read_int16_data",
            "uint16": "read_uint16_data",
            "int32": "read_int32_data",
            "uint32": "read_uint32_data",
            "int4": "read_int4_data",
            "uint4": "read_uint4_data",
            "uint3": "read_uint3_data",
            "uint2": "read_uint2_data",
            "uint1": "read_uint1_data",
            "uint6": "read_uint6_data",
        }.get(name)
        if method is None:
            raise InputError(f"{path}: weight blob of type {name} is not supported")
        try:
            data = np.asarray(getattr(reader, method)(int(offset)))
        except Exception as exc:  # the reader raises RuntimeError on a bad header/offset
            raise InputError(f"{path}: cannot read weight blob at offset {offset} ({exc})") from None
        if name == "fp16":
            data = data.view(np.float16)
        if name in SUB_BYTE_BITS:
            data = data.astype(np.int8 if name == "int4" else np.uint8)
        if shape is not None:
            data = data.ravel()[: int(np.prod(shape, dtype=np.int64))].reshape(shape)
        return data


def decode_value(value, blobs: BlobFiles):
    """A ``MIL_pb2.Value`` -> numpy array (tensors), Python list (lists) or str (scalar strings)."""
    kind = value.type.WhichOneof("type")
    if kind == "listType":
        return [decode_value(v, blobs) for v in value.immediateValue.list.values]
    if kind != "tensorType":
        raise InputError(f"MIL value of type {kind}: not supported by the MIL reference evaluator")
    np_dtype, name, shape = tensor_type_of(value.type)
    which = value.WhichOneof("value")
    if which == "blobFileValue":
        return blobs.read(value.blobFileValue.fileName, value.blobFileValue.offset, name, shape)
    tensor = value.immediateValue.tensor
    field = tensor.WhichOneof("value")
    shape = shape if shape is not None else None
    if field == "bytes":
        raw = tensor.bytes.values
        if name in SUB_BYTE_BITS:
            count = int(np.prod(shape, dtype=np.int64))
            arr = unpack_bits(np.frombuffer(raw, np.uint8), SUB_BYTE_BITS[name], count, name == "int4")
        else:
            arr = np.frombuffer(raw, np_dtype).copy()
    elif field == "strings":
        vals = list(tensor.strings.values)
        if not shape:
            return vals[0] if vals else ""
        return np.array(vals, dtype=object).reshape(shape)
    elif field is None:
        arr = np.zeros(0, np_dtype)
    else:
        arr = np.array(list(getattr(tensor, field).values)).astype(np_dtype)
    if shape is not None:
        arr = arr.reshape(shape)
    return arr
