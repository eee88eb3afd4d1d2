"""MIL linear algebra, convolution, pooling, normalization and reductions."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, norm_axes, op


# ---- linear algebra ----------------------------------------------------------------------------


@op("linear")
def _linear(a):
    x, w = F(a["x"]), F(a["weight"])
    y = np.matmul(x, w.T)
    if "bias" in a:
        y = y + F(a["bias"])
    return y


@op("matmul")
def _matmul(a):
    x, y = F(a["x"]), F(a["y"])
    if a.scalar("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a.scalar("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


@op("einsum")
def _einsum(a):
    values = [F(v) for v in a.list("values")]
    return np.einsum(a["equation"], *values)


def _same_pads(size: list[int], kernel: list[int], strides: list[int], dilations: list[int], lower: bool):
    pads = []
    for s, k, st, d in zip(size, kernel, strides, dilations):
        out = -(-s // st)
        total = max((out - 1) * st + (k - 1) * d + 1 - s, 0)
        small, big = total // 2, total - total // 2
        pads += [big, small] if lower else [small, big]
    return pads


def _spatial_pads(a, size, kernel, strides, dilations) -> list[int]:
    """[begin0, end0, begin1, end1, ...] for the op's pad_type (valid, same, same_lower, custom)."""
    pad_type = a.get("pad_type", "valid")
    n = len(size)
    if pad_type == "valid":
        return [0] * (2 * n)
    if pad_type in ("same", "same_lower"):
        return _same_pads(size, kernel, strides, dilations, lower=pad_type == "same_lower")
    if pad_type == "custom":
        pads = a.ints("pad") or [0] * (2 * n)
        return pads
    raise InputError(f"MIL op '{a.op_type}' ({a.where}): pad_type '{pad_type}' is not supported")


def conv_geometry(a, x: np.ndarray, w: np.ndarray) -> tuple[int, list[int], list[int], list[int], int]:
    """(spatial rank, kernel, strides, dilations, groups) of a ``conv``/``conv_transpose`` op (defaults: 1s)."""
    n_sp = x.ndim - 2
    ones = [1] * n_sp
    return n_sp, list(w.shape[2:]), a.ints("strides") or ones, a.ints("dilations") or ones, int(a.scalar("groups", 1))


@op("conv")
def _conv(a):
    x, w = F(a["x"]), F(a["weight"])
    n_sp, kernel, strides, dilations, groups = conv_geometry(a, x, w)
    pads = _spatial_pads(a, list(x.shape[2:]), kernel, strides, dilations)
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(n_sp)])
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    spatial = tuple(range(2, 2 + n_sp))
    win = sliding_window_view(x, eff, axis=spatial)  # (N, C, *O_full, *eff)
    sl = (slice(None), slice(None))
    sl += tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    win = win[sl]  # (N, C, *O, *K)
    n, c = x.shape[:2]
    out_sp = win.shape[2 : 2 + n_sp]
    L, KK = int(np.prod(out_sp)), int(np.prod(kernel))
    cin_g, cout = c // groups, w.shape[0]
    win = win.reshape(n, groups, cin_g, L, KK).transpose(0, 1, 3, 2, 4).reshape(n, groups, L, cin_g * KK)
    wg = w.reshape(groups, cout // groups, cin_g * KK)
    y = np.matmul(win, np.swapaxes(wg, -1, -2))  # (N, g, L, Cout_g)
    y = y.transpose(0, 1, 3, 2).reshape((n, cout) + tuple(out_sp))
    if "bias" in a and a.get("bias") is not None:
        y = y + F(a["bias"]).reshape((1, cout) + (1,) * n_sp)
    return y


def _pool(a, kind: str):
    x = F(a["x"])
    n_sp = x.ndim - 2
    kernel = a.ints("kernel_sizes")
    strides = a.ints("strides") or [1] * n_sp
    size = list(x.shape[2:])
    pads = _spatial_pads(a, size, kernel, strides, [1] * n_sp)
    ceil_mode = bool(a.scalar("ceil_mode", False))
    extra = []
    for i in range(n_sp):
        padded = size[i] + pads[2 * i] + pads[2 * i + 1]
        if ceil_mode:
            out = -(-(padded - kernel[i]) // strides[i]) + 1
            # a window must start inside the input or the begin padding (PyTorch/Core ML rule)
            if (out - 1) * strides[i] >= size[i] + pads[2 * i]:
                out -= 1
        else:
            out = (padded - kernel[i]) // strides[i] + 1
        extra.append(max((out - 1) * strides[i] + kernel[i] - padded, 0))
    widths = [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1] + extra[i]) for i in range(n_sp)]
    spatial = tuple(range(2, 2 + n_sp))
    red = tuple(range(-n_sp, 0))
    step = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
    if kind == "max":
        xp = np.pad(x, widths, constant_values=-np.inf)
        return sliding_window_view(xp, kernel, axis=spatial)[step].max(axis=red)
    if kind == "l2":
        xp = np.pad(x, widths)
        return np.sqrt((sliding_window_view(xp**2, kernel, axis=spatial)[step]).sum(axis=red))
    xp = np.pad(x, widths)
    total = sliding_window_view(xp, kernel, axis=spatial)[step].sum(axis=red)
    exclude = bool(a.scalar("exclude_padding_from_average", False))
    ones = np.ones((1, 1) + tuple(size), dtype=np.float32)
    if exclude:
        mask = np.pad(ones, widths)
    else:
        mask = np.pad(ones, [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1]) for i in range(n_sp)], constant_values=1)
        mask = np.pad(mask, [(0, 0), (0, 0)] + [(0, e) for e in extra])
    count = sliding_window_view(mask, kernel, axis=spatial)[step].sum(axis=red)
    return total / count


op("max_pool")(lambda a: _pool(a, "max"))
op("avg_pool")(lambda a: _pool(a, "avg"))
op("l2_pool")(lambda a: _pool(a, "l2"))


def _scale_shift(a, y: np.ndarray, shape: tuple) -> np.ndarray:
    """``y * gamma + beta`` with the optional per-channel ``gamma``/``beta`` reshaped to ``shape``."""
    if "gamma" in a:
        y = y * F(a["gamma"]).reshape(shape)
    if "beta" in a:
        y = y + F(a["beta"]).reshape(shape)
    return y


@op("batch_norm")
def _batch_norm(a):
    x = F(a["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = F(a["mean"]).reshape(shape), F(a["variance"]).reshape(shape)
    return _scale_shift(a, (x - mean) / np.sqrt(var + a.scalar("epsilon", 1e-5)), shape)


@op("instance_norm")
def _instance_norm(a):
    x = F(a["x"])
    axes = tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + a.scalar("epsilon", 1e-5))
    return _scale_shift(a, y, shape)


@op("layer_norm")
def _layer_norm(a):
    x = F(a["x"])
    axes = norm_axes(a.ints("axes") or list(range(x.ndim)), x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + a.scalar("epsilon", 1e-5))
    if "gamma" in a:
        y = y * F(a["gamma"])
    if "beta" in a:
        y = y + F(a["beta"])
    return y


@op("softmax")
def _softmax(a):
    x = F(a["x"])
    axis = int(a.scalar("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- reductions --------------------------------------------------------------------------------


def _reduce(fn):
    def run(a):
        x = F(a["x"])
        axes = a.ints("axes")
        axes = None if axes is None else norm_axes(axes, x.ndim)
        return fn(x, axes, bool(a.scalar("keep_dims", False)))

    return run


op("reduce_mean")(_reduce(lambda x, ax, k: x.mean(axis=ax, keepdims=k)))
op("reduce_sum")(_reduce(lambda x, ax, k: x.sum(axis=ax, keepdims=k)))
op("reduce_max")(_reduce(lambda x, ax, k: x.max(axis=ax, keepdims=k)))
op("reduce_min")(_reduce(lambda x, ax, k: x.min(axis=ax, keepdims=k)))
op("reduce_prod")(_reduce(lambda x, ax, k: x.prod(axis=ax, keepdims=k)))
op("reduce_sum_square")(_reduce(lambda x, ax, k: (x * x).sum(axis=ax, keepdims=k)))
op("reduce_l1_norm")(_reduce(lambda x, ax, k: np.abs(x).sum(axis=ax, keepdims=k)))
op("reduce_l2_norm")(_reduce(lambda x, ax, k: np.sqrt((x * x).sum(axis=ax, keepdims=k))))
op("reduce_log_sum")(_reduce(lambda x, ax, k: np.log(x.sum(axis=ax, keepdims=k))))


def _log_sum_exp(x, axes, keep_dims):
    m = x.max(axis=axes, keepdims=True)
    y = np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m
    return y if keep_dims else np.squeeze(y, axis=axes if axes is not None else tuple(range(x.ndim)))


op("reduce_log_sum_exp")(_reduce(_log_sum_exp))


@op("reduce_argmax", "reduce_argmin")
def _reduce_arg(a):
    x = F(a["x"])
    axis = int(a.scalar("axis", -1))
    fn = np.argmax if a.op_type == "reduce_argmax" else np.argmin
    y = fn(x, axis=axis)
    if a.scalar("keep_dims", False):
        y = np.expand_dims(y, axis)
    return y.astype(np.int32)
