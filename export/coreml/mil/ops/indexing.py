"""MIL ops that index, sort and scatter: gather/scatter families, topk, argsort, cumsum, one_hot, band_part,
reverse, reverse_sequence, sliding_windows, non_zero, fill_like, non_maximum_suppression, and
sampling at coordinates (resample, affine).

Index conventions (coremltools' op definitions): iOS15/16 index ops accept negative indices in ``[-D, D)``;
iOS17 made negative indices out of bounds, which is undefined unless ``validate_indices=True`` (then a runtime
error). This evaluator raises ``InputError`` for every out-of-bounds index instead of guessing.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, op


def _fail(a, message: str) -> InputError:
    return InputError(f"MIL op '{a.op_type}' ({a.where}): {message}")


def _indices(a, idx, size: int, name: str = "indices") -> np.ndarray:
    """``idx`` as int64 in ``[0, size)``. Before iOS17 negative indices count from the end; iOS17+ index ops
    (recognizable by their ``validate_indices`` input) treat them as out of bounds, which Core ML leaves
    undefined: those raise, as do all indices beyond the dimension."""
    idx = np.asarray(idx).astype(np.int64)
    low = 0 if "validate_indices" in a else -size
    bad = (idx < low) | (idx >= size)
    if bad.any():
        raise _fail(a, f"{name} value {int(idx[bad].ravel()[0])} is out of range [{low}, {size})")
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
        raise _fail(a, f"batch_dims {batch_dims} must be in [0, axis={axis}]")
    idx = _indices(a, a["indices"], x.shape[axis])
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    batch = x.shape[:batch_dims]
    if tuple(idx.shape[:batch_dims]) != tuple(batch):
        raise _fail(a, f"batch dimensions of x {batch} and indices {idx.shape[:batch_dims]} differ")
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
        raise _fail(a, f"indices.shape[-1] {depth} + batch_dims {batch_dims} exceeds the rank {x.ndim} of x")
    coords = [_indices(a, idx[..., i], x.shape[batch_dims + i]) for i in range(depth)]
    batch = x.shape[:batch_dims]
    if tuple(idx.shape[:batch_dims]) != tuple(batch):
        raise _fail(a, f"batch dimensions of x {batch} and indices {idx.shape[:batch_dims]} differ")
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
        raise _fail(a, f"mode '{mode}' is not supported")
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
        raise _fail(a, f"k {k} is outside [0, {x.shape[axis]}] for axis {axis}")
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
        raise _fail(a, f"index {int(idx[bad].ravel()[0])} is outside [0, {depth})")
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
        raise _fail(a, f"lengths {lengths} do not fit batch size {x.shape[batch_axis]} "
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


# ---- detection ---------------------------------------------------------------------------------


def _iou_with(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x, y, w, h) centre-size box with each row of ``others``."""
    lo = np.maximum(box[:2] - box[2:] / 2, others[:, :2] - others[:, 2:] / 2)
    hi = np.minimum(box[:2] + box[2:] / 2, others[:, :2] + others[:, 2:] / 2)
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    union = np.prod(box[2:]) + np.prod(others[:, 2:], axis=1) - inter
    return inter / np.where(union > 0, union, 1)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float,
                max_boxes: int) -> list[int]:
    """Indices kept by greedy NMS: highest score first (ties: lower index), scores below ``score_threshold``
    rejected, a box suppressed by any kept box with IoU > ``iou_threshold``."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if len(kept) == max_boxes or scores[i] < score_threshold:
            break
        if not kept or (_iou_with(boxes[i], boxes[kept]) <= iou_threshold).all():
            kept.append(int(i))
    return kept


@op("non_maximum_suppression")
def _non_maximum_suppression(a):
    """iOS15: boxes (n, B, 4), scores (n, B, K) -> boxes, scores, indices, count; iOS17 (no ``score_threshold``):
    boxes (n, 4, B), scores (n, K, B) -> boxes (n, 4, M), scores (n, K, M), indices. Unfilled slots of the
    ``max_boxes`` (M) outputs are zeros with index -1 (the padding coremltools' frontends strip). Only one
    score class is supported: the op definition does not say how boxes rank across several classes."""
    ios17 = "score_threshold" not in a
    boxes, scores = F(a["boxes"]), F(a["scores"])
    if ios17:
        boxes, scores = np.swapaxes(boxes, 1, 2), np.swapaxes(scores, 1, 2)
    if scores.shape[-1] != 1:
        raise _fail(a, f"{scores.shape[-1]} score classes are not supported (only 1)")
    n, max_boxes = boxes.shape[0], int(a.scalar("max_boxes"))
    iou, low = float(a.scalar("iou_threshold")), float(a.scalar("score_threshold", -np.inf))
    out_boxes, out_scores = np.zeros((n, max_boxes, 4), np.float32), np.zeros((n, max_boxes, 1), np.float32)
    out_indices, counts = np.full((n, max_boxes), -1, np.int32), np.zeros(n, np.int32)
    for b in range(n):
        kept = _greedy_nms(boxes[b], scores[b, :, 0], iou, low, max_boxes)
        counts[b] = len(kept)
        out_boxes[b, : len(kept)], out_scores[b, : len(kept)] = boxes[b, kept], scores[b, kept]
        out_indices[b, : len(kept)] = kept
    if ios17:
        return np.swapaxes(out_boxes, 1, 2), np.swapaxes(out_scores, 1, 2), out_indices
    return out_boxes, out_scores, out_indices, counts


# ---- sampling at coordinates (resample = torch grid_sample, affine = affine_grid + grid_sample) ------------

_RESAMPLE_PADDING = ("constant", "border", "reflection", "symmetric")


def _to_pixels(c: np.ndarray, size: int, coordinates_mode: str, align_corners: bool) -> np.ndarray:
    """Coordinates along one image axis as pixel positions (0 = centre of the first pixel)."""
    if coordinates_mode == "unnormalized":
        return c
    if coordinates_mode == "normalized_minus_one_to_one":
        return (c + 1) / 2 * (size - 1) if align_corners else ((c + 1) * size - 1) / 2
    if coordinates_mode == "normalized_zero_to_one":
        return c * (size - 1) if align_corners else c * size - 0.5
    raise ValueError(coordinates_mode)


def _fold(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """``p`` reflected back and forth into ``[low, high]`` (mirror images at both ends)."""
    span = high - low
    if span <= 0:
        return np.zeros_like(p)
    t = np.mod(p - low, 2 * span)
    return low + np.where(t > span, 2 * span - t, t)


def _pad_positions(p: np.ndarray, size: int, padding_mode: str) -> np.ndarray:
    """Pixel positions after the padding rule: border clamps, reflection mirrors about the edge pixels'
    centres (``|1 2 3| -> 2 3 2 1 2 3 2 1``), symmetric about their outer edges (``3 2 1 1 2 3 3 2 1``)."""
    if padding_mode == "border":
        return np.clip(p, 0, size - 1)
    if padding_mode == "reflection":
        return np.clip(_fold(p, 0, size - 1), 0, size - 1)
    if padding_mode == "symmetric":
        return np.clip(_fold(p, -0.5, size - 0.5), 0, size - 1)
    return p


def _sample(a, x: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """``x`` (B, C, H, W) sampled at (B, Ho, Wo) coordinates ``cx``/``cy`` per the op's modes -> (B, C, Ho, Wo)."""
    sampling, padding = str(a.get("sampling_mode", "bilinear")).lower(), str(a.get("padding_mode", "constant")).lower()
    coordinates_mode = str(a.get("coordinates_mode", "normalized_minus_one_to_one")).lower()
    if sampling not in ("bilinear", "nearest") or padding not in _RESAMPLE_PADDING or coordinates_mode not in (
            "unnormalized", "normalized_minus_one_to_one", "normalized_zero_to_one"):
        raise _fail(a, f"sampling_mode '{sampling}' / padding_mode '{padding}' / coordinates_mode "
                       f"'{coordinates_mode}' is not supported")
    align = bool(a.scalar("align_corners", False))
    height, width = x.shape[2:]
    px = _pad_positions(_to_pixels(cx, width, coordinates_mode, align), width, padding)
    py = _pad_positions(_to_pixels(cy, height, coordinates_mode, align), height, padding)
    pad_value = float(a.scalar("padding_value", 0.0))
    batch = np.arange(x.shape[0])[:, None, None]

    def tap(ix, iy):  # (B, Ho, Wo) integer positions -> (B, C, Ho, Wo), padding_value outside the image
        inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
        v = x[batch, :, np.clip(iy, 0, height - 1), np.clip(ix, 0, width - 1)]  # (B, Ho, Wo, C)
        return np.moveaxis(np.where(inside[..., None], v, pad_value), -1, 1)

    if sampling == "nearest":  # ties round half to even, as torch's grid_sample does
        return tap(np.rint(px).astype(np.int64), np.rint(py).astype(np.int64))
    x0, y0 = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    wx, wy = (px - x0)[:, None], (py - y0)[:, None]
    return ((1 - wy) * ((1 - wx) * tap(x0, y0) + wx * tap(x0 + 1, y0))
            + wy * ((1 - wx) * tap(x0, y0 + 1) + wx * tap(x0 + 1, y0 + 1)))


@op("resample")
def _resample(a):
    """``output[b, c, h, w] = x[b, c]`` sampled at ``coordinates[b, h, w] = (x, y)`` (iOS15; iOS16/17 only
    widen the coordinate dtypes)."""
    coordinates = F(a["coordinates"]).astype(np.float32)
    return _sample(a, F(a["x"]), coordinates[..., 0], coordinates[..., 1])


@op("affine")
def _affine(a):
    """Sample ``x`` at ``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` for each output pixel's normalized ``(x, y)``
    (the grid of torch's ``affine_grid``); one ``[a0, a1, a2, b0, b1, b2]`` row per batch item or one for all."""
    x, matrix = F(a["x"]), F(a["transform_matrix"]).reshape(-1, 6)
    out_h, out_w = int(a.scalar("output_height")), int(a.scalar("output_width"))
    if str(a.get("coordinates_mode", "normalized_minus_one_to_one")).lower() != "normalized_minus_one_to_one":
        raise _fail(a, f"coordinates_mode '{a.get('coordinates_mode')}' is not supported")
    align = bool(a.scalar("align_corners", False))

    def axis(n):  # normalized output pixel centres, as affine_grid makes them
        return np.linspace(-1, 1, n) if align else (2 * np.arange(n) + 1) / n - 1

    gy, gx = np.meshgrid(axis(out_h), axis(out_w), indexing="ij")
    m = np.broadcast_to(matrix, (x.shape[0], 6))[:, :, None, None]
    cx = m[:, 0] * gx + m[:, 1] * gy + m[:, 2]
    cy = m[:, 3] * gx + m[:, 4] * gy + m[:, 5]
    return _sample(a, x, cx.astype(np.float32), cy.astype(np.float32))
