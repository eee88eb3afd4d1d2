"""MIL ops that move data without arithmetic: reshape, transpose, slicing, concat, pad, resampling."""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, norm_axes, op


# ---- shape manipulation ------------------------------------------------------------------------


@op("reshape")
def _reshape(a):
    x = np.asarray(a["x"])
    shape = a.ints("shape")
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("transpose")
def _transpose(a):
    return np.transpose(a["x"], a.ints("perm"))


@op("squeeze")
def _squeeze(a):
    x = np.asarray(a["x"])
    axes = a.ints("axes")
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=norm_axes(axes, x.ndim))


@op("expand_dims")
def _expand_dims(a):
    x = np.asarray(a["x"])
    axes = sorted(int(i) % (x.ndim + len(a.ints("axes"))) for i in a.ints("axes"))
    for ax in axes:
        x = np.expand_dims(x, ax)
    return x


@op("flatten2d")
def _flatten2d(a):
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis", 1)) % max(x.ndim, 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@op("shape")
def _shape(a):
    return np.array(np.asarray(a["x"]).shape, dtype=np.int32)


@op("concat")
def _concat(a):
    values = [F(v) if np.asarray(v).dtype == np.float16 else np.asarray(v) for v in a.list("values")]
    axis = int(a.scalar("axis"))
    if a.scalar("interleave", False):
        stacked = np.stack(values, axis=axis + 1 if axis >= 0 else axis)
        shape = list(values[0].shape)
        shape[axis] *= len(values)
        return stacked.reshape(shape)
    return np.concatenate(values, axis=axis)


@op("split")
def _split(a):
    x = np.asarray(a["x"])
    axis = int(a.scalar("axis"))
    sizes = a.ints("split_sizes")
    if sizes is None:
        return tuple(np.split(x, int(a.scalar("num_splits")), axis=axis))
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@op("stack")
def _stack(a):
    return np.stack([np.asarray(v) for v in a.list("values")], axis=int(a.scalar("axis")))


@op("tile")
def _tile(a):
    return np.tile(a["x"], a.ints("reps"))


@op("fill")
def _fill(a):
    return np.full(a.ints("shape"), a.scalar("value", 0.0))


@op("range_1d")
def _range_1d(a):
    return np.arange(a.scalar("start"), a.scalar("end"), a.scalar("step"))


def _index(a, r: int) -> tuple:
    """The numpy index of ``slice_by_index``'s begin/end/stride and masks (shared with ``slice_update``)."""
    begin = a.ints("begin")
    end = a.ints("end")
    stride = a.ints("stride") or [1] * r
    bmask = [bool(b) for b in np.asarray(a.get("begin_mask", [False] * r)).ravel()]
    emask = [bool(b) for b in np.asarray(a.get("end_mask", [False] * r)).ravel()]
    smask = [bool(b) for b in np.asarray(a.get("squeeze_mask", [False] * r)).ravel()]
    sl = []
    for i in range(r):
        if smask[i]:
            sl.append(begin[i])
            continue
        b = None if bmask[i] else begin[i]
        e = None if emask[i] else end[i]
        sl.append(slice(b, e, stride[i]))
    return tuple(sl)


@op("slice_by_index")
def _slice_by_index(a):
    x = np.asarray(a["x"])
    return x[_index(a, x.ndim)]


@op("slice_update")
def _slice_update(a):
    """iOS18: ``x`` with ``x[slice] = update`` (the slice as in ``slice_by_index``); ``x`` itself is unchanged."""
    x = np.array(a["x"])
    x[_index(a, x.ndim)] = np.asarray(a["update"]).astype(x.dtype)
    return x


@op("reshape_like")
def _reshape_like(a):
    """iOS16: reshape ``x`` to the concatenation of ``ref.shape[begin:end]`` over the reference tensors."""
    shape: list[int] = []
    refs = a.list("ref_tensors")
    begins, ends = ([int(np.asarray(v).reshape(-1)[0]) for v in a.list(k)] for k in ("begins", "ends"))
    masks = [bool(np.asarray(v).reshape(-1)[0]) for v in a.list("end_masks")] or [False] * len(refs)
    for ref, begin, end, to_end in zip(refs, begins, ends, masks):
        dims = np.shape(ref)
        shape += list(dims[begin:] if to_end else dims[begin:end])
    return np.asarray(a["x"]).reshape(shape)


@op("slice_by_size")
def _slice_by_size(a):
    x = np.asarray(a["x"])
    begin, size = a.ints("begin"), a.ints("size")
    return x[tuple(slice(b, x.shape[i] if s == -1 else b + s) for i, (b, s) in enumerate(zip(begin, size)))]


@op("pad")
def _pad(a):
    x = F(a["x"])
    pad = a.ints("pad")
    n = len(pad) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(pad[2 * i], pad[2 * i + 1]) for i in range(n)]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, widths, constant_values=a.scalar("constant_val", 0.0))
    if mode == "reflect":
        return np.pad(x, widths, mode="reflect")
    if mode == "replicate":
        return np.pad(x, widths, mode="edge")
    raise InputError(f"MIL op 'pad' ({a.where}): mode '{mode}' is not supported")
