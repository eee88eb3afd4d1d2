"""Quantization-aware distillation: fine-tune the distilled student through the target's int8 fake
quantization on the teacher's soft targets, with the same Hinton loss (``compress.distill.losses.hinton_loss``).

The target supplies the graph surgery (``Backend.qat``: prepare, convert, export); this module is only the
training: calibrate the observers on transfer-set samples, then ``compress.distill.train.fit``.
"""

from __future__ import annotations

import numpy as np
import torch

from compress.core.errors import InputError
from compress.export.backend import Qat
from compress.distill.losses import hinton_loss
from compress.distill.train import fit, seed_everything


def qat_distill(student: torch.nn.Module, x_train: np.ndarray, soft_targets: np.ndarray, labels: np.ndarray | None,
                *, temperature: float, alpha: float, epochs: int, lr: float, seed: int,
                calibration: np.ndarray, qat: Qat, batch_size: int = 64) -> torch.nn.Module:
    """Quantization-aware distillation of an (already distilled) fp32 ``student``; returns the int8 graph.

    ``soft_targets``: the teacher ensemble's probabilities at ``temperature`` for ``x_train`` (as cached by
    ``compress.teachers.soft_targets``); ``labels`` may be None (unlabelled transfer set). ``calibration``:
    transfer-set samples that initialize the activation ranges. ``lr``: fine-tuning rate (typically 1/10 of
    the distillation rate). The result is a ``convert_pt2e`` graph in eval mode: call it like the student
    (any batch size) to get the int8-simulated logits, or pass it to ``qat.export``. ``qat``: the target's
    hooks (``Backend.qat``).
    """
    x_train = np.asarray(x_train, dtype=np.float32)
    if len(soft_targets) != len(x_train) or (labels is not None and len(labels) != len(x_train)):
        raise InputError("qat_distill: x_train, soft_targets and labels must have the same number of rows")
    if calibration is None or len(calibration) == 0:
        raise InputError("calibration: quantization-aware training needs calibration samples (from the transfer set)")
    seed_everything(seed)
    prepared = qat.prepare(student, torch.as_tensor(x_train[:2]))
    prepared.train()
    with torch.no_grad():
        calib = torch.as_tensor(np.asarray(calibration, dtype=np.float32))
        for i in range(0, len(calib), batch_size):
            prepared(calib[i:i + batch_size])
    y = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def batch_loss(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        soft = torch.as_tensor(np.asarray(soft_targets[idx]), dtype=torch.float32)
        return hinton_loss(logits, soft, None if y is None else y[idx], temperature, alpha)

    fit(prepared, x_train, batch_loss, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
        device=torch.device("cpu"))
    return qat.convert(prepared)
