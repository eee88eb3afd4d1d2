"""The ensemble teacher (Hinton et al.): the mean of the members' softmax(z / T) distributions, and each
member's outputs (logits, probabilities or labels) as a distribution at temperature T."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from compress.core.errors import InputError

if TYPE_CHECKING:
    from compress.teachers.member import Teacher


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) per row, in float64 and shifted by the row maximum so large logits cannot overflow."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def member_probs(member: Teacher, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """One member's distribution over the classes at temperature T, by what the member outputs:
    logits -> softmax(z / T); probabilities -> renormalized p^(1/T); a label (a black-box member that only
    answers with a class) -> a one-hot hard pseudo-label, whatever T. Non-finite outputs are an InputError
    naming the member (``check_members`` only probes a few samples)."""
    out = member.logits(x)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise InputError(f"teacher {member.name!r}: outputs NaN or infinity for {int((~finite).sum())} of {len(x)} "
                         f"real samples (first: sample {int(np.flatnonzero(~finite)[0])}); expected finite logits")
    return output_probs(member.output, out, temperature)


def output_logits(kind: str, out: np.ndarray) -> np.ndarray:
    """A model's outputs of ``kind`` "logits" (as they are) or "probs" (their logs, zeros clipped to 1e-12)
    as logits: what softmax turns back into the same distribution."""
    if kind == "probs":
        return np.log(np.clip(out.astype(np.float64), 1e-12, None))
    return out


def output_probs(kind: str, out: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """A model's outputs of ``kind`` ("logits", "probs" or "label") as a distribution at temperature T."""
    if kind == "label":
        return np.eye(out.shape[1], dtype=np.float64)[np.argmax(out, axis=1)]
    return softmax(output_logits(kind, out), temperature)


def scores_from_probs(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities to rank classes by, with zeros clipped to the smallest positive float64 instead of
    ``log(0) = -inf``: a label-only member's other classes and an underflowed softmax are zeros, and a row
    holding -inf would count as wrong in every accuracy and agreement (``compress.core.metrics``)."""
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny))


def ensemble_probs(members: list[Teacher], x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The ensemble teacher: the mean of the members' softmax(z / T) distributions (Hinton et al.).

    A member whose logits hold NaN or infinity on any sample is an ``InputError`` naming it (``check_members``
    only probes a few samples).
    """
    total = None
    for m in members:
        p = member_probs(m, x, temperature)
        total = p if total is None else total + p
    return (total / len(members)).astype(np.float32)
