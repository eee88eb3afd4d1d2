"""MIL normalizations not in ``linalg``: ``l2_norm`` and ``local_response_norm`` (iOS15; iOS17 only lets the
parameters' dtype differ from ``x``)."""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, op


@op("l2_norm")
def _l2_norm(a):
    """``x / sqrt(sum(x^2) + epsilon)`` over the last three dimensions; leading dimensions are batch."""
    x = F(a["x"])
    if x.ndim < 3:
        raise InputError(f"MIL op 'l2_norm' ({a.where}): rank {x.ndim} < 3")
    square_sum = (x * x).sum(axis=(-3, -2, -1), keepdims=True)
    return x / np.sqrt(square_sum + a.scalar("epsilon", 1e-6))


@op("local_response_norm")
def _local_response_norm(a):
    """``x_c / (k + alpha / size * sum_j x_j^2) ** beta`` over the channel window ``j`` in
    ``[c - size // 2, c + (size - 1) // 2]`` (axis 1; the window is centred for odd sizes; for even sizes
    this is torch's ``local_response_norm`` placement)."""
    x = F(a["x"])
    size = int(a.scalar("size"))
    alpha, beta, k = a.scalar("alpha", 1e-4), a.scalar("beta", 0.75), a.scalar("k", 1.0)
    if size < 1 or x.ndim < 3:
        raise InputError(f"MIL op 'local_response_norm' ({a.where}): size {size} / rank {x.ndim} not supported")
    channels = x.shape[1]
    padded = np.pad(x * x, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2))
    window_sum = sum(padded[:, j : j + channels] for j in range(size))
    return x / (k + alpha / size * window_sum) ** beta
