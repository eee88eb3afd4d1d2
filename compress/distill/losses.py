"""Distillation losses, found by registered name (``LOSSES``, a ``compress.core.registry.Registry``).

``hinton`` is Hinton, Vinyals & Dean (2015), exactly:
  soft = CE(p_teacher(T), p_student(T)) * T^2      (always scaled, also when alpha = 0)
  hard = CE(labels, p_student(1))                   (only when labels exist)
  loss = (1 - alpha) * soft + alpha * hard
The T^2 factor keeps the soft gradients' magnitude independent of T (the gradient of the soft term
scales as 1/T^2), so changing T does not silently change the balance with the hard term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.core.registry import Registry


def soft_cross_entropy(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of -sum_i p_i log q_i with q = softmax(z / T), times T^2."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return -(teacher_probs * log_q).sum(dim=-1).mean() * temperature**2


def hinton_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor | None,
                temperature: float, alpha: float) -> torch.Tensor:
    """(1 - alpha) * T^2-scaled soft cross-entropy + alpha * hard cross-entropy (if labels given)."""
    soft = soft_cross_entropy(student_logits, teacher_probs, temperature)
    if labels is None or alpha == 0:
        return soft if labels is None else (1 - alpha) * soft
    hard = F.cross_entropy(student_logits, labels)
    return (1 - alpha) * soft + alpha * hard


def soft_only_loss(student_logits, teacher_probs, labels, temperature, alpha):
    """Soft targets only (the unlabelled-transfer-set case), still T^2-scaled."""
    return soft_cross_entropy(student_logits, teacher_probs, temperature)


LOSSES = Registry("distillation loss", "--loss")
LOSSES.register("hinton", hinton_loss)
LOSSES.register("soft-only", soft_only_loss)
