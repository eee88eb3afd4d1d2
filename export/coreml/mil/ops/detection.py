"""MIL detection ops: ``non_maximum_suppression`` (iOS15 and iOS17 layouts)."""

from __future__ import annotations

import numpy as np

from compress.export.coreml.mil.ops.registry import F, op, op_error


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
        raise op_error(a, f"{scores.shape[-1]} score classes are not supported (only 1)")
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
