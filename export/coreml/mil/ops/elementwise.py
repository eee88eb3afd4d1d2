"""Elementwise MIL ops: activations, unary math, binary arithmetic and comparisons, select, cast."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, op
from compress.export.coreml.mil.values import CAST_DTYPES


# ---- elementwise -------------------------------------------------------------------------------


def _unary(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    op(name)(lambda a: fn(F(a["x"])))


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
    op(name)(lambda a: fn(F(a["x"]), F(a["y"])))


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


# ---- more unary math and parametric activations (iOS15 definitions; iOS17 only widens dtypes) ------

_unary("acos", np.arccos)
_unary("asin", np.arcsin)
_unary("atan", np.arctan)
_unary("atanh", np.arctanh)
_unary("cosh", np.cosh)
_unary("sinh", np.sinh)
_unary("tan", np.tan)


@op("threshold")
def _threshold(a):
    """Elementwise ``max(x, alpha)`` (a lower bound, not torch's Threshold)."""
    return np.maximum(F(a["x"]), a.scalar("alpha"))


@op("clamped_relu")
def _clamped_relu(a):
    """``min(beta, x)`` for ``x >= 0``, else ``min(beta, alpha * x)``."""
    x = F(a["x"])
    return np.minimum(np.where(x >= 0, x, a.scalar("alpha") * x), a.scalar("beta"))


@op("scaled_tanh")
def _scaled_tanh(a):
    return a.scalar("alpha") * np.tanh(a.scalar("beta") * F(a["x"]))


@op("softplus_parametric")
def _softplus_parametric(a):
    """``alpha_c * log(1 + exp(beta_c * x))`` with per-channel (axis 1) ``alpha`` and ``beta``."""
    x = F(a["x"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    alpha, beta = F(a["alpha"]).reshape(shape), F(a["beta"]).reshape(shape)
    return alpha * np.logaddexp(0, beta * x)
