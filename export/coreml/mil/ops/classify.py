"""Core ML's classifier head."""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import op


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
