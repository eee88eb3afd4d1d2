"""numpy implementations of MIL ops: ``OPS[op_type](args) -> value`` (a tuple for multi-output ops).

Precision model (documented in ``compress.export.coreml.mil.evaluator``): float16 inputs are widened to float32 for the
arithmetic inside one op (conv/matmul/reduction accumulate in float32, as Core ML's CPU/GPU kernels do);
the interpreter then rounds every op's result to the dtype the program declares for that output, so an
fp16 program stores every intermediate tensor in float16 and its rounding shows up exactly once per op.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compress.core.errors import InputError
from compress.export.coreml.mil.values import CAST_DTYPES, unpack_bits


class Args:
    """The bound inputs (and, for iOS16 constexpr ops, attributes) of one op, by parameter name."""

    def __init__(self, values: dict[str, list[Any]], op_type: str, where: str):
        self._values = values
        self.op_type = op_type
        self.where = where

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            raise InputError(f"MIL op '{self.op_type}' ({self.where}): required input '{name}' is missing")
        return self._values[name][0]

    def get(self, name: str, default: Any = None) -> Any:
        return self._values[name][0] if name in self._values else default

    def list(self, name: str) -> list[Any]:
        return list(self._values.get(name, []))

    def scalar(self, name: str, default: Any = None) -> Any:
        v = self.get(name, default)
        if isinstance(v, np.ndarray):
            return v.item() if v.size == 1 else v
        return v

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        v = self.get(name, default)
        if v is None:
            return None
        return [int(i) for i in np.asarray(v).ravel()]


def F(x: Any) -> np.ndarray:
    """Compute dtype for arithmetic: float16 is widened to float32; other dtypes are kept."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


OPS: dict[str, Callable[[Args], Any]] = {}


def op(*names: str):
    def register(fn):
        for n in names:
            OPS[n] = fn
        return fn

    return register


def _axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(int(a) % rank for a in axes)


# ---- elementwise -------------------------------------------------------------------------------


def _unary(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    OPS[name] = lambda a: fn(F(a["x"]))


def _sigmoid(x):
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x)))).astype(x.dtype)


def _erf(x):
    from scipy.special import erf

    return erf(x).astype(x.dtype)


_unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype))
_unary("relu6", lambda x: np.clip(x, 0, 6).astype(x.dtype))
_unary("sigmoid", _sigmoid)
_unary("tanh", np.tanh)
_unary("silu", lambda x: x * _sigmoid(x))
_unary("exp", np.exp)
_unary("exp2", np.exp2)
_unary("sqrt", np.sqrt)
_unary("abs", np.abs)
_unary("floor", np.floor)
_unary("ceil", np.ceil)
_unary("round", np.rint)
_unary("sign", np.sign)
_unary("square", np.square)
_unary("sin", np.sin)
_unary("cos", np.cos)
_unary("erf", _erf)
_unary("softsign", lambda x: x / (1 + np.abs(x)))
_unary("softplus", lambda x: np.logaddexp(0, x).astype(x.dtype))
_unary("identity", lambda x: x)
_unary("logical_not", np.logical_not)


@op("rsqrt")
def _rsqrt(a):
    return 1.0 / np.sqrt(F(a["x"]) + a.scalar("epsilon", 1e-12))


@op("inverse")
def _inverse(a):
    return 1.0 / (F(a["x"]) + a.scalar("epsilon", 1e-4))


@op("log")
def _log(a):
    return np.log(F(a["x"]) + a.scalar("epsilon", 0.0))


@op("clip")
def _clip(a):
    return np.clip(F(a["x"]), a.scalar("alpha"), a.scalar("beta"))


@op("leaky_relu")
def _leaky_relu(a):
    x = F(a["x"])
    return np.where(x >= 0, x, x * a.scalar("alpha", 0.01))


@op("elu")
def _elu(a):
    x = F(a["x"])
    return np.where(x > 0, x, a.scalar("alpha", 1.0) * np.expm1(np.minimum(x, 0)))


@op("prelu")
def _prelu(a):
    x = F(a["x"])
    alpha = F(a["alpha"]).reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x >= 0, x, x * alpha)


@op("sigmoid_hard")
def _sigmoid_hard(a):
    return np.clip(a.scalar("alpha", 0.2) * F(a["x"]) + a.scalar("beta", 0.5), 0, 1)


@op("linear_activation")
def _linear_activation(a):
    return a.scalar("alpha", 1.0) * F(a["x"]) + a.scalar("beta", 0.0)


@op("thresholded_relu")
def _thresholded_relu(a):
    x = F(a["x"])
    return np.where(x > a.scalar("alpha", 1.0), x, 0).astype(x.dtype)


@op("gelu")
def _gelu(a):
    x = F(a["x"])
    mode = a.get("mode", "EXACT")
    if mode not in ("EXACT", "TANH_APPROXIMATION", "SIGMOID_APPROXIMATION"):
        raise InputError(f"MIL op 'gelu' ({a.where}): mode '{mode}' is not supported")
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid((1.702 * x).astype(x.dtype))
    return 0.5 * x * (1 + _erf((x / math.sqrt(2)).astype(x.dtype)))


def _binary(name: str, fn) -> None:
    OPS[name] = lambda a: fn(F(a["x"]), F(a["y"]))


_binary("add", np.add)
_binary("sub", np.subtract)
_binary("mul", np.multiply)
_binary("real_div", np.divide)
_binary("floor_div", np.floor_divide)
_binary("mod", np.mod)
_binary("pow", np.power)
_binary("maximum", np.maximum)
_binary("minimum", np.minimum)
_binary("equal", np.equal)
_binary("not_equal", np.not_equal)
_binary("greater", np.greater)
_binary("greater_equal", np.greater_equal)
_binary("less", np.less)
_binary("less_equal", np.less_equal)
_binary("logical_and", np.logical_and)
_binary("logical_or", np.logical_or)
_binary("logical_xor", np.logical_xor)


@op("select")
def _select(a):
    return np.where(np.asarray(a["cond"]).astype(bool), F(a["a"]), F(a["b"]))


@op("cast")
def _cast(a):
    dtype = a["dtype"]
    if dtype not in CAST_DTYPES:
        raise InputError(f"MIL op 'cast' ({a.where}): dtype '{dtype}' is not supported")
    x = np.asarray(a["x"])
    if np.issubdtype(np.dtype(CAST_DTYPES[dtype]), np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return x.astype(CAST_DTYPES[dtype])


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


@op("conv")
def _conv(a):
    x, w = F(a["x"]), F(a["weight"])
    n_sp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = a.ints("strides") or [1] * n_sp
    dilations = a.ints("dilations") or [1] * n_sp
    groups = int(a.scalar("groups", 1))
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


OPS["max_pool"] = lambda a: _pool(a, "max")
OPS["avg_pool"] = lambda a: _pool(a, "avg")
OPS["l2_pool"] = lambda a: _pool(a, "l2")


@op("batch_norm")
def _batch_norm(a):
    x = F(a["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = F(a["mean"]).reshape(shape), F(a["variance"]).reshape(shape)
    y = (x - mean) / np.sqrt(var + a.scalar("epsilon", 1e-5))
    if "gamma" in a:
        y = y * F(a["gamma"]).reshape(shape)
    if "beta" in a:
        y = y + F(a["beta"]).reshape(shape)
    return y


@op("instance_norm")
def _instance_norm(a):
    x = F(a["x"])
    axes = tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + a.scalar("epsilon", 1e-5))
    if "gamma" in a:
        y = y * F(a["gamma"]).reshape(shape)
    if "beta" in a:
        y = y + F(a["beta"]).reshape(shape)
    return y


@op("layer_norm")
def _layer_norm(a):
    x = F(a["x"])
    axes = _axes(a.ints("axes") or list(range(x.ndim)), x.ndim)
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
        axes = None if axes is None else _axes(axes, x.ndim)
        return fn(x, axes, bool(a.scalar("keep_dims", False)))

    return run


OPS["reduce_mean"] = _reduce(lambda x, ax, k: x.mean(axis=ax, keepdims=k))
OPS["reduce_sum"] = _reduce(lambda x, ax, k: x.sum(axis=ax, keepdims=k))
OPS["reduce_max"] = _reduce(lambda x, ax, k: x.max(axis=ax, keepdims=k))
OPS["reduce_min"] = _reduce(lambda x, ax, k: x.min(axis=ax, keepdims=k))
OPS["reduce_prod"] = _reduce(lambda x, ax, k: x.prod(axis=ax, keepdims=k))
OPS["reduce_sum_square"] = _reduce(lambda x, ax, k: (x * x).sum(axis=ax, keepdims=k))
OPS["reduce_l1_norm"] = _reduce(lambda x, ax, k: np.abs(x).sum(axis=ax, keepdims=k))
OPS["reduce_l2_norm"] = _reduce(lambda x, ax, k: np.sqrt((x * x).sum(axis=ax, keepdims=k)))
OPS["reduce_log_sum"] = _reduce(lambda x, ax, k: np.log(x.sum(axis=ax, keepdims=k)))


def _log_sum_exp(x, axes, keep_dims):
    m = x.max(axis=axes, keepdims=True)
    y = np.log(np.exp(x - m).sum(axis=axes, keepdims=True)) + m
    return y if keep_dims else np.squeeze(y, axis=axes if axes is not None else tuple(range(x.ndim)))


OPS["reduce_log_sum_exp"] = _reduce(_log_sum_exp)


@op("reduce_argmax", "reduce_argmin")
def _reduce_arg(a):
    x = F(a["x"])
    axis = int(a.scalar("axis", -1))
    fn = np.argmax if a.op_type == "reduce_argmax" else np.argmin
    y = fn(x, axis=axis)
    if a.scalar("keep_dims", False):
        y = np.expand_dims(y, axis)
    return y.astype(np.int32)


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
    return np.squeeze(x, axis=_axes(axes, x.ndim))


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


@op("gather")
def _gather(a):
    x = np.asarray(a["x"])
    idx = np.asarray(a["indices"]).astype(np.int64)
    axis = int(a.scalar("axis", 0)) % x.ndim
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    if int(a.scalar("batch_dims", 0)) != 0:
        raise InputError(f"MIL op 'gather' ({a.where}): batch_dims != 0 is not supported")
    return np.take(x, idx, axis=axis)


@op("slice_by_index")
def _slice_by_index(a):
    x = np.asarray(a["x"])
    r = x.ndim
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
    return x[tuple(sl)]


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


@op("upsample_nearest_neighbor")
def _upsample_nn(a):
    x = np.asarray(a["x"])
    sh, sw = int(a.scalar("scale_factor_height", 1)), int(a.scalar("scale_factor_width", 1))
    return x.repeat(sh, axis=-2).repeat(sw, axis=-1)


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


@op("constexpr_blockwise_shift_scale")
def _constexpr_blockwise_shift_scale(a):
    data = np.asarray(a["data"]).astype(np.float32)
    scale = np.asarray(a["scale"])
    s = scale.astype(np.float32)
    off = a.get("offset")
    off = None if off is None else np.asarray(off).astype(np.float32)
    for axis, (d, k) in enumerate(zip(data.shape, s.shape)):
        if d // k > 1:
            s = np.repeat(s, d // k, axis)
            if off is not None:
                off = np.repeat(off, d // k, axis)
    if off is not None:
        data = data - off
    return (data * s).astype(scale.dtype)


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
    out = np.zeros(mask.shape, dtype=data.dtype)
    out[mask != 0] = data
    return out


@op("constexpr_cast")
def _constexpr_cast(a):
    return np.asarray(a["source_val"]).astype(CAST_DTYPES[a["output_dtype"]])


# ---- classifier --------------------------------------------------------------------------------


@op("classify")
def _classify(a):
    """Core ML's classifier head: no softmax is applied; the dict holds the input scores per class."""
    probs = np.asarray(a["probabilities"]).reshape(-1)
    classes = a["classes"]
    classes = [c.item() if isinstance(c, np.ndarray) else c for c in classes]
    if len(classes) != probs.size:
        raise InputError(f"MIL op 'classify' ({a.where}): {len(classes)} classes but {probs.size} scores")
    return np.array([classes[int(np.argmax(probs))]], dtype=object), probs[None, :]


SUPPORTED = frozenset(OPS) | {"const"}
