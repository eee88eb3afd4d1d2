"""MIL's fused attention op (iOS18 ``scaled_dot_product_attention``)."""

from __future__ import annotations

import numpy as np

from compress.export.coreml.mil.ops.registry import F, op


@op("scaled_dot_product_attention")
def _scaled_dot_product_attention(a):
    """``softmax(Q K^T / sqrt(E) + mask) V`` over the last axis; a boolean ``attn_mask`` keeps the scores
    where it is True (the others become -inf), a float mask is added. The mask broadcasts to
    ``[B, *, L, S]``. A query row with every key masked is NaN, as in torch."""
    q, k, v = F(a["query"]), F(a["key"]), F(a["value"])
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) / np.float32(np.sqrt(q.shape[-1]))
    mask = a.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == np.bool_ else scores + F(mask)
    peak = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - np.where(np.isfinite(peak), peak, 0))
    return np.matmul(weights / weights.sum(axis=-1, keepdims=True), v)
