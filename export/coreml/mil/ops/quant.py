"""MIL quantization ops and the ``constexpr_*`` weight decompression ops (run once at load time)."""

from __future__ import annotations

import math

import numpy as np

from compress.export.coreml.mil.ops.registry import F, op
from compress.export.coreml.mil.values import CAST_DTYPES, unpack_bits


# ---- quantization ------------------------------------------------------------------------------


def _along(v: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    """Broadcast a per-channel vector ``v`` along ``axis`` of a rank-``rank`` tensor."""
    v = np.asarray(v)
    if v.ndim == 0 or axis is None or v.ndim == rank:
        return v
    shape = [1] * rank
    shape[int(axis) % rank] = -1
    return v.reshape(shape)


@op("quantize")
def _quantize(a):
    x = F(a["input"])
    axis = a.scalar("axis", None)
    scale = _along(F(a["scale"]), axis, x.ndim)
    zp = _along(a.get("zero_point", np.int8(0)), axis, x.ndim)
    out = np.dtype(CAST_DTYPES[a["output_dtype"]])
    info = np.iinfo(out)
    q = np.rint(x / scale) + zp.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(out)


@op("dequantize")
def _dequantize(a):
    q = np.asarray(a["input"])
    axis = a.scalar("axis", None)
    scale = _along(F(a["scale"]), axis, q.ndim)
    zp = _along(a.get("zero_point", np.int8(0)), axis, q.ndim).astype(np.float32)
    return ((q.astype(np.float32) - zp) * scale).astype(np.asarray(a["scale"]).dtype)


@op("constexpr_affine_dequantize")
def _constexpr_affine_dequantize(a):
    q = np.asarray(a["quantized_data"])
    axis = int(a.scalar("axis", 0))
    scale = np.asarray(a["scale"])
    zp = _along(np.asarray(a["zero_point"]).astype(np.float32), axis, q.ndim)
    out = (q.astype(np.float32) - zp) * _along(scale.astype(np.float32), axis, q.ndim)
    return out.astype(scale.dtype)


def _shift_scale(data: np.ndarray, scale: np.ndarray, offset) -> np.ndarray:
    """(data - offset) * scale with ``scale``/``offset`` blocks repeated over ``data``'s shape (iOS18)."""
    data = np.asarray(data).astype(np.float32)
    s = scale.astype(np.float32)
    off = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (d, k) in enumerate(zip(data.shape, s.shape)):
        if d // k > 1:
            s = np.repeat(s, d // k, axis)
            if off is not None:
                off = np.repeat(off, d // k, axis)
    if off is not None:
        data = data - off
    return (data * s).astype(scale.dtype)


@op("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a):
    return _shift_scale(a["data"], np.asarray(a["scale"]), a.get("offset"))


def _dense(mask: np.ndarray, nonzero: np.ndarray) -> np.ndarray:
    """The dense tensor of a sparse (mask, nonzero values) pair; zeros elsewhere."""
    out = np.zeros(np.shape(mask), dtype=np.asarray(nonzero).dtype)
    out[np.asarray(mask) != 0] = nonzero
    return out


@op("constexpr_sparse_blockwise_shift_scale")
def _constexpr_sparse_blockwise_shift_scale(a):
    """iOS18 joint sparsity + quantization: dequantize only the kept values; outputs (mask, values)."""
    mask = np.asarray(a["data_mask"])
    dense = _shift_scale(_dense(mask, a["nonzero_data"]), np.asarray(a["scale"]), a.get("offset"))
    return mask, dense[mask != 0]


@op("constexpr_lut_to_sparse")
def _constexpr_lut_to_sparse(a):
    """iOS18 joint sparsity + palettization: look up only the kept indices; outputs (mask, values), the mask
    repeated along ``vector_axis`` for vector palettes."""
    mask = np.asarray(a["indices_mask"])
    lut = np.asarray(a["lut"])
    vector_axis = a.scalar("vector_axis", None)
    dense = _lut_to_dense_blockwise(_dense(mask, a["indices_nonzero_data"]), lut, vector_axis)
    if lut.shape[-1] > 1:
        mask = np.repeat(mask, lut.shape[-1], axis=int(vector_axis))
    return mask, dense[mask != 0]


def _lut_to_dense_blockwise(indices: np.ndarray, lut: np.ndarray, vector_axis) -> np.ndarray:
    """iOS18 form: ``lut`` has rank ``indices.ndim + 2`` ([*blocks, palettes, vector_size])."""
    vector_size = lut.shape[-1]
    rank = indices.ndim
    if vector_size > 1:
        vector_axis = int(vector_axis) % rank
        indices = np.swapaxes(indices, -1, vector_axis)
        lut = np.swapaxes(lut, -3, vector_axis)
    block = [i // l for i, l in zip(indices.shape, lut.shape[:rank])]
    grid = np.indices(indices.shape, sparse=True)
    sel = tuple(g // b for g, b in zip(grid, block)) + (indices.astype(np.int64),)
    out = lut[sel]  # (*indices.shape, vector_size)
    out = out.reshape(indices.shape[:-1] + (indices.shape[-1] * vector_size,))
    if vector_size > 1:
        out = np.swapaxes(out, -1, vector_axis)
    return out


@op("constexpr_lut_to_dense")
def _constexpr_lut_to_dense(a):
    lut = np.asarray(a["lut"])
    if lut.ndim == 1 and "shape" in a:  # iOS16: packed uint8 indices, flat LUT, explicit shape
        shape = a.ints("shape")
        nbits = int(round(math.log2(lut.shape[0])))
        idx = unpack_bits(np.asarray(a["indices"]), nbits, int(np.prod(shape)), signed=False)
        return lut[idx.astype(np.int64)].reshape(shape)
    return _lut_to_dense_blockwise(np.asarray(a["indices"]), lut, a.scalar("vector_axis", None))


@op("constexpr_sparse_to_dense")
def _constexpr_sparse_to_dense(a):
    data = np.asarray(a["nonzero_data"])
    mask = np.asarray(a["mask"])
    if "shape" in a:  # iOS16: packed bit mask
        shape = a.ints("shape")
        mask = unpack_bits(mask, 1, int(np.prod(shape)), signed=False).reshape(shape)
    return _dense(mask, data)


@op("constexpr_cast")
def _constexpr_cast(a):
    return np.asarray(a["source_val"]).astype(CAST_DTYPES[a["output_dtype"]])
