"""Generalist + specialists -> one distribution over all classes (Hinton, Vinyals & Dean 2015, §5.3).

For each row, the generalist's ``top_n`` most probable classes pick the *active* specialists (those whose
subset meets them). The full distribution ``q`` minimizes

    KL(p_g || q) + sum over active m of KL(p_m || fold_m(q)),

where ``p_m`` is specialist m's distribution over its classes plus the dustbin and ``fold_m(q)`` is ``q``
over the same |S_m| + 1 outcomes (``q`` on each class of ``S_m``; the dustbin is the sum of ``q`` over every
other class). Each term is a cross-entropy ``-sum_j p_j log(A_j q)`` with ``A_j`` a 0/1 selector of classes
(a class, or the dustbin's classes), so the objective is convex on the simplex and its minimizer is the
fixed point of the EM update for a mixture with known components (Csiszár & Tusnády 1984):

    q_c <- (1 / W) * sum over terms t of  p_t[j_t(c)] * q_c / (A_{j_t(c)} q),

``W`` the number of terms (1 + active specialists), ``j_t(c)`` the outcome of term t that class c falls in.
Every step lowers the objective; there is no step size to tune, no randomness, and the rows are solved
together as arrays (``combine``). The paper used gradient descent on the logits; the optimum is the same
(checked against a general-purpose optimizer in ``tests/test_specialists.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-6  # a row stops when none of its probabilities moved more than this in one step
MAX_STEPS = 1000


@dataclass(frozen=True)
class Fold:
    """One specialist's view of the classes: ``outcome[c]`` is the column of the specialist's output that
    class c falls in (its position in ``classes``, or the dustbin ``len(classes)``)."""

    classes: tuple[int, ...]
    num_classes: int

    @property
    def outcome(self) -> np.ndarray:
        out = np.full(self.num_classes, len(self.classes), dtype=np.int64)
        out[list(self.classes)] = np.arange(len(self.classes))
        return out

    @property
    def matrix(self) -> np.ndarray:
        """(classes x outcomes) 0/1: which outcome each class falls in (``fold`` is ``q @ matrix``)."""
        return np.eye(len(self.classes) + 1)[self.outcome]

    def fold(self, q: np.ndarray) -> np.ndarray:
        """``q`` (rows x classes) over the specialist's outcomes: its classes, then the dustbin (the rest)."""
        return q @ self.matrix


def active(generalist: np.ndarray, folds: list[Fold], top_n: int) -> np.ndarray:
    """(rows x specialists) bool: the specialists whose classes meet the row's ``top_n`` generalist classes."""
    top = np.argsort(-generalist, axis=1, kind="stable")[:, :top_n]
    member = np.zeros((len(folds), generalist.shape[1]), dtype=bool)
    for m, fold in enumerate(folds):
        member[m, list(fold.classes)] = True
    return member[:, top].any(axis=2).T


def objective(q: np.ndarray, generalist: np.ndarray, specialists: list[np.ndarray], folds: list[Fold],
              on: np.ndarray) -> np.ndarray:
    """Per row: KL(p_g || q) + sum of KL(p_m || fold_m(q)) over the active specialists."""
    def kl(p, r):
        return np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(r, 1e-300))), 0.0).sum(1)

    total = kl(generalist, q)
    for m, fold in enumerate(folds):
        total = total + np.where(on[:, m], kl(specialists[m], fold.fold(q)), 0.0)
    return total


def combine(generalist: np.ndarray, specialists: list[np.ndarray], folds: list[Fold], top_n: int = 1,
            tolerance: float = TOLERANCE, max_steps: int = MAX_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """(q: rows x classes float64, active: rows x specialists bool). ``generalist`` rows x classes,
    ``specialists[m]`` rows x (|S_m| + 1) (the dustbin last), all distributions (rows summing to 1).
    A row with no active specialist keeps the generalist's distribution."""
    p_g = np.asarray(generalist, dtype=np.float64)
    p_m = [np.asarray(p, dtype=np.float64) for p in specialists]
    on = active(p_g, folds, top_n)
    weights = 1.0 + on.sum(1, keepdims=True)
    matrices = [fold.matrix for fold in folds]
    q = p_g.copy()
    rows = np.flatnonzero(on.any(1))  # the rows still moving
    for _ in range(max_steps):
        if not len(rows):
            break
        qr = q[rows]
        update = p_g[rows].copy()  # the generalist's term: each class its own outcome, so p_g[c] * q_c / q_c
        for m, matrix in enumerate(matrices):
            mass = np.maximum(qr @ matrix, 1e-300)  # A_j q for each outcome j
            share = (p_m[m][rows] / mass) @ matrix.T  # p_j / (A_j q), back on the classes of each outcome
            update += np.where(on[rows, m][:, None], share * qr, 0.0)
        new = update / weights[rows]
        moved = np.abs(new - qr).max(1)
        q[rows] = new
        rows = rows[moved > tolerance]
    return q, on
