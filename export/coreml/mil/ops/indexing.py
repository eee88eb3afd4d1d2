"""MIL ops that index, sort and scatter: gather/scatter families, topk, argsort, cumsum, one_hot, band_part,
reverse, reverse_sequence, sliding_windows, non_zero, fill_like.

Index conventions (coremltools' op definitions): iOS15/16 index ops accept negative indices in ``[-D, D)``;
iOS17 made negative indices out of bounds, which is undefined unless ``validate_indices=True`` (then a runtime
error). This evaluator raises ``InputError`` for every out-of-bounds index instead of guessing.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compress.export.coreml.mil.ops.registry import F, op, op_error


def _indices(a, idx, size: int, name: str = "indices") -> np.ndarray:
    """``idx`` as int64 in ``[0, size)``. Before iOS17 negative indices count from the end; iOS17+ index ops
    (recognizable by their ``validate_indices`` input) treat them as out of bounds, which Core ML leaves
    undefined: those raise, as do all indices beyond the dimension."""
    idx = np.asarray(idx).astype(np.int64)
    low = 0 if "validate_indices" in a else -size
    bad = (idx < low) | (idx >= size)
    if bad.any():
        raise op_error(a, f"{name} value {int(idx[bad].ravel()[0])} is out of range [{low}, {size})")
    return np.where(idx < 0, idx + size, idx)


# ---- gather ------------------------------------------------------------------------------------


@op("gather")
def _gather(a):
    """``K = D[:axis] + N[batch_dims:] + D[axis+1:]``: with batch_dims (iOS16+), each of the leading
    ``batch_dims`` dimensions pairs ``x[b]`` with ``indices[b]`` (tf.gather semantics)."""
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", 0)) % x.ndim
    batch_dims = int(a.scalar("batch_dims", 0))
    if batch_dims < 0 or batch_dims > axis:
        raise op_error(a, f"batch_dims {batch_dims} must be in [0, axis={axis}]")
    idx = _indices(a, a["indices"], x.shape[axis])
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    batch = x.shape[:batch_dims]
    if tuple(idx.shape[:batch_dims]) != tuple(batch):
        raise op_error(a, f"batch dimensions of x {batch} and indices {idx.shape[:batch_dims]} differ")
    parts = [np.take(x[b], idx[b], axis=axis - batch_dims) for b in np.ndindex(*batch)]
    return np.stack(parts).reshape(batch + parts[0].shape)


@op("gather_along_axis")
def _gather_along_axis(a):
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", 0)) % x.ndim
    return np.take_along_axis(x, _indices(a, a["indices"], x.shape[axis]), axis=axis)


@op("gather_nd")
def _gather_nd(a):
    """``V = K[:-1] + D[batch_dims + K[-1]:]``: the last axis of ``indices`` addresses the dimensions after the
    ``batch_dims`` (iOS16+) leading ones, which ``x`` and ``indices`` share."""
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    batch_dims = int(a.scalar("batch_dims", 0))
    depth = idx.shape[-1]
    if depth + batch_dims > x.ndim:
        raise op_error(a, f"indices.shape[-1] {depth} + batch_dims {batch_dims} exceeds the rank {x.ndim} of x")
    coords = [_indices(a, idx[..., i], x.shape[batch_dims + i]) for i in range(depth)]
    batch = x.shape[:batch_dims]
    if tuple(idx.shape[:batch_dims]) != tuple(batch):
        raise op_error(a, f"batch dimensions of x {batch} and indices {idx.shape[:batch_dims]} differ")
    # index the batch dimensions with aranges broadcast against the gathered coordinates
    grids = [np.arange(n).reshape((n,) + (1,) * (idx.ndim - 2 - i)) for i, n in enumerate(batch)]
    return x[tuple(grids) + tuple(coords)]


# ---- scatter -----------------------------------------------------------------------------------

_SCATTER_UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
                   "max": np.maximum, "min": np.minimum}


def _scatter_into(a, data: np.ndarray, where: tuple, updates: np.ndarray, default_mode: str) -> np.ndarray:
    """``data`` with ``updates`` combined at ``where`` by the op's ``mode``; repeated positions accumulate
    in order (``ufunc.at``); for ``update`` the last write wins."""
    mode = a.get("mode", default_mode)
    out = data.copy()
    if mode == "update":
        out[where] = updates
        return out
    if mode not in _SCATTER_UFUNCS:
        raise op_error(a, f"mode '{mode}' is not supported")
    _SCATTER_UFUNCS[mode].at(out, where, updates)
    return out


@op("scatter")
def _scatter(a):
    """``updates`` has shape ``data.shape[:axis] + indices.shape + data.shape[axis+1:]``. A missing ``mode`` is
    ``add`` for all three scatter ops: coremltools' default input (scatter's docstring says ``update``, but
    coremltools always writes the mode into the program)."""
    data, updates = F(a["data"]), F(a["updates"])
    axis = int(a.scalar("axis", 0)) % data.ndim
    idx = _indices(a, a["indices"], data.shape[axis])
    moved = np.moveaxis(data, axis, 0)
    upd = np.moveaxis(updates, list(range(axis, axis + idx.ndim)), list(range(idx.ndim)))
    return np.moveaxis(_scatter_into(a, moved, (idx,), upd, "add"), 0, axis)


@op("scatter_along_axis")
def _scatter_along_axis(a):
    """``output[..., indices[i, j, ...], ...] (mode)= updates[i, j, ...]`` with the index replacing position
    ``axis``; ``indices`` and ``updates`` have the rank of ``data``."""
    data, updates = F(a["data"]), F(a["updates"])
    axis = int(a.scalar("axis", 0)) % data.ndim
    idx = _indices(a, a["indices"], data.shape[axis])
    where = list(np.indices(idx.shape, sparse=True))
    where[axis] = idx
    return _scatter_into(a, data, tuple(where), updates, "add")


@op("scatter_nd")
def _scatter_nd(a):
    """``updates`` has shape ``indices.shape[:-1] + data.shape[indices.shape[-1]:]``."""
    data, updates = F(a["data"]), F(a["updates"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    where = tuple(_indices(a, idx[..., i], data.shape[i]) for i in range(idx.shape[-1]))
    return _scatter_into(a, data, where, updates, "add")


# ---- sorting -----------------------------------------------------------------------------------


def _sort_order(a, x: np.ndarray, axis: int) -> np.ndarray:
    """Indices that sort ``x`` along ``axis``, descending unless ``ascending``; equal values keep their
    original order (Core ML does not specify an order for ties)."""
    key = F(x).astype(np.float64)
    return np.argsort(key if a.scalar("ascending", False) else -key, axis=axis, kind="stable")


@op("argsort")
def _argsort(a):
    x = np.asarray(a["x"])
    return _sort_order(a, x, int(a.scalar("axis", -1)) % x.ndim).astype(np.int32)


@op("topk")
def _topk(a):
    """Values and indices of the k largest (smallest if ``ascending``) along ``axis``; ``k=-1`` (iOS17)
    takes all. ``sort=False`` (iOS16) allows any order: the sorted one is returned. Only the values
    come back when ``return_indices`` is False (iOS16)."""
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", -1)) % x.ndim
    k = int(a.scalar("k", 1))
    k = x.shape[axis] if k == -1 else k
    if not 0 <= k <= x.shape[axis]:
        raise op_error(a, f"k {k} is outside [0, {x.shape[axis]}] for axis {axis}")
    order = np.take(_sort_order(a, x, axis), np.arange(k), axis=axis)
    values = np.take_along_axis(x, order, axis=axis)
    if not a.scalar("return_indices", True):
        return values
    return values, order.astype(np.int32)


@op("cumsum")
def _cumsum(a):
    x = F(a["x"])
    axis = int(a.scalar("axis", 0)) % x.ndim
    reverse, exclusive = bool(a.scalar("reverse", False)), bool(a.scalar("exclusive", False))
    y = np.flip(x, axis) if reverse else x
    total = np.cumsum(y, axis=axis)
    if exclusive:  # shift by one along axis (zeros first), not ``total - y``, which would round differently
        total = np.concatenate([np.zeros_like(np.take(total, [0], axis=axis)),
                                np.take(total, np.arange(total.shape[axis] - 1), axis=axis)], axis=axis)
    return np.flip(total, axis) if reverse else total


# ---- construction and masking ------------------------------------------------------------------


@op("one_hot")
def _one_hot(a):
    """A new axis of size ``one_hot_vector_size`` at ``axis`` (of the output) holding ``on_value`` at each index."""
    idx = np.asarray(a["indices"]).astype(np.int64)
    depth = int(a.scalar("one_hot_vector_size"))
    axis = int(a.scalar("axis", -1)) % (idx.ndim + 1)
    bad = (idx < 0) | (idx >= depth)
    if bad.any():
        raise op_error(a, f"index {int(idx[bad].ravel()[0])} is outside [0, {depth})")
    on, off = np.asarray(a.get("on_value", 1)), np.asarray(a.get("off_value", 0))
    hot = np.expand_dims(idx, axis) == np.arange(depth).reshape((depth,) + (1,) * (idx.ndim - axis))
    return np.where(hot, on, off)


@op("fill_like")
def _fill_like(a):
    """iOS16: ``value`` (default 0.0) in the shape of ``ref_tensor``; the dtype is ``value``'s."""
    value = np.asarray(a.get("value", 0.0))
    return np.full(np.shape(a["ref_tensor"]), value, dtype=value.dtype)


@op("band_part")
def _band_part(a):
    """Keep ``x[..., m, n]`` where ``(lower < 0 or m - n <= lower) and (upper < 0 or n - m <= upper)``."""
    x = np.asarray(a["x"])
    lower, upper = int(a.scalar("lower", -1)), int(a.scalar("upper", -1))
    m = np.arange(x.shape[-2])[:, None]
    n = np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


@op("non_zero")
def _non_zero(a):
    """(N, rank) int32: the coordinates of the non-zero elements in row-major order."""
    return np.argwhere(np.asarray(a["x"])).astype(np.int32)


# ---- reordering --------------------------------------------------------------------------------


@op("reverse")
def _reverse(a):
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    return np.flip(x, axis=None if axes is None else tuple(int(i) % x.ndim for i in axes))


@op("reverse_sequence")
def _reverse_sequence(a):
    """For each slice ``b`` along ``batch_axis``, reverse its first ``lengths[b]`` elements along ``seq_axis``."""
    x = np.asarray(a["x"])
    seq_axis, batch_axis = int(a.scalar("seq_axis", 0)) % x.ndim, int(a.scalar("batch_axis", 0)) % x.ndim
    lengths = [int(v) for v in np.asarray(a["lengths"]).ravel()]
    if len(lengths) != x.shape[batch_axis] or any(not 0 <= n <= x.shape[seq_axis] for n in lengths):
        raise op_error(a, f"lengths {lengths} do not fit batch size {x.shape[batch_axis]} "
                       f"and sequence length {x.shape[seq_axis]}")
    out = x.copy()
    for b, n in enumerate(lengths):
        rows = [slice(None)] * x.ndim
        rows[batch_axis] = b
        rows[seq_axis] = slice(0, n)
        # the slice drops batch_axis, so seq_axis shifts down by one when it came after it
        out[tuple(rows)] = np.flip(x[tuple(rows)], axis=seq_axis - (seq_axis > batch_axis))
    return out


@op("sliding_windows")
def _sliding_windows(a):
    """Shape ``[*d0, (d_axis - size) // stride + 1, size, *dn]``: window index at ``axis``, window after it."""
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis")) % x.ndim
    size, stride = int(a.scalar("size")), int(a.scalar("stride", 1))
    windows = sliding_window_view(x, size, axis=axis)  # window elements on a new last axis
    step = [slice(None)] * x.ndim
    step[axis] = slice(None, None, stride)
    return np.moveaxis(windows[tuple(step)], -1, axis + 1)
