"""Class-bias correction for a student distilled without some class (Hinton et al. 2015, §3).

A student that never saw a class in its transfer set still learns it from the soft targets, but its
output bias for that class is too low. Raising that class's bias in the last layer fixes most of the
errors ("omitted 3": +3.5 on the 3's bias took 133 errors on 3s down to 14). ``fit_class_bias`` picks the
shift on labelled held-out data instead of the test set.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.core.errors import InputError


def last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers or layers[-1].bias is None:
        raise InputError("--bias-correction: the student has no final linear layer with a bias to correct")
    return layers[-1]


@torch.no_grad()
def shift_class_bias(model: nn.Module, class_index: int, delta: float) -> nn.Module:
    """Add ``delta`` to the output bias of ``class_index`` (in place); returns the model."""
    layer = last_linear(model)
    if not 0 <= class_index < layer.out_features:
        raise InputError(f"--bias-correction: class index {class_index} is outside 0..{layer.out_features - 1}")
    layer.bias[class_index] += delta
    return model


def fit_class_bias(logits: np.ndarray, labels: np.ndarray, class_index: int,
                   grid: np.ndarray | None = None) -> float:
    """The bias shift for ``class_index`` that maximizes accuracy on (logits, labels) of held-out data."""
    grid = np.arange(0.0, 10.01, 0.25) if grid is None else grid
    best, best_acc = 0.0, -1.0
    for delta in grid:
        shifted = logits.copy()
        shifted[:, class_index] += delta
        acc = float(np.mean(shifted.argmax(1) == labels))
        if acc > best_acc + 1e-12:
            best, best_acc = float(delta), acc
    return best


def parse_correction(spec: str, labels: list[str]) -> tuple[int, float]:
    """``"3=+3.5"`` -> (index of label "3", 3.5)."""
    label, sep, value = spec.partition("=")
    if not sep:
        raise InputError(f"--bias-correction {spec!r}: expected LABEL=DELTA, e.g. 3=+3.5")
    if label not in labels:
        raise InputError(f"--bias-correction {spec!r}: label {label!r} is not in the class list {labels}")
    try:
        return labels.index(label), float(value)
    except ValueError:
        raise InputError(f"--bias-correction {spec!r}: {value!r} is not a number") from None
