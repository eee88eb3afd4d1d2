"""Specialists for confusable classes, and one distribution from generalist + specialists (Hinton, Vinyals &
Dean 2015, §5), as soft targets for a small student.

* ``assign.py``: which classes each specialist covers (K-means on the covariance columns of the
  generalist's predictions, or subsets given by hand), with the confusion each covers;
* ``train.py``: one specialist (its subset + a dustbin class; from the generalist's weights; half its rows
  from the subset; the dustbin logit corrected for that), cached like the members;
* ``combine.py``: the per-row distribution minimizing ``KL(p_g, q) + sum_m KL(p_m, q)`` over the active
  specialists, solved for all rows at once;
* this module: the steps a run or a bench strings together (``train_specialists``, ``combined``) and the
  paper's Table 4 view (``coverage_view``).
"""

from __future__ import annotations

import numpy as np

from compress.specialists.assign import check_given, cluster_classes, confusion_share, covariance_columns
from compress.specialists.combine import Fold, active, combine, objective
from compress.specialists.train import (Specialist, dustbin_correction, replace_head, specialist_seed,
                                        train_specialist, training_rows)

__all__ = ["Fold", "Specialist", "active", "check_given", "cluster_classes", "combine", "combined",
           "confusion_share", "covariance_columns", "coverage_view", "describe_subsets", "dustbin_correction",
           "objective", "replace_head", "specialist_seed", "train_specialist", "train_specialists", "training_rows"]


def describe_subsets(subsets: list[tuple[int, ...]], labels: list[str], probs: np.ndarray,
                     y: np.ndarray) -> list[dict]:
    """For the report: each subset's class names and the share of the generalist's confusion it covers."""
    return [{"classes": [labels[c] for c in subset], "indices": list(subset),
             "confusion_share": round(confusion_share(probs, y, subset), 4)} for subset in subsets]


def train_specialists(subsets: list[tuple[int, ...]], data, *, arch: str, generalist, generalist_key: str,
                      recipe, seed: int, device: str | None = None, rank: int = 0, world: int = 1,
                      on_specialist=None, view=None) -> list[Specialist]:
    """Every subset's specialist (trained, or from the cache), seeded ``specialist_seed(seed, subset)``. Under
    ``torchrun`` (``world`` > 1) process ``rank`` trains specialists ``rank, rank + world, ...`` and the
    caller reads the others from the cache after a barrier. ``on_specialist(i, subset)`` before each."""
    out = []
    for i, subset in enumerate(subsets):
        if i % world != rank:
            continue
        if on_specialist is not None:
            on_specialist(i, subset)
        out.append(train_specialist(subset, data, arch=arch, generalist=generalist, generalist_key=generalist_key,
                                    recipe=recipe, seed=specialist_seed(seed, subset), device=device,
                                    view=view, rank=rank))
    return out


def combined(generalist_probs: np.ndarray, specialists: list[Specialist], x: np.ndarray, temperature: float,
             top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """(q rows x classes, active rows x specialists): generalist + specialists on ``x`` at ``temperature``
    (``generalist_probs``: the generalist's distribution on ``x`` at the same temperature). Each specialist
    runs only on the rows where it is active (the paper's point: a row wakes one or two of them; on a
    100-class set, 22 specialists ran on ~5% of the rows each), the others get a placeholder the
    combination never reads."""
    num_classes = generalist_probs.shape[1]
    folds = [Fold(s.classes, num_classes) for s in specialists]
    on = active(np.asarray(generalist_probs), folds, top_n)
    outputs = []
    for m, specialist in enumerate(specialists):
        probs = np.full((len(x), len(specialist.classes) + 1), 1.0 / (len(specialist.classes) + 1))
        rows = np.flatnonzero(on[:, m])
        if len(rows):
            probs[rows] = specialist.probs(x[rows], temperature)
        outputs.append(probs)
    return combine(generalist_probs, outputs, folds, top_n)


def coverage_view(y: np.ndarray, subsets: list[tuple[int, ...]], generalist_pred: np.ndarray,
                  combined_pred: np.ndarray) -> list[dict]:
    """The paper's Table 4: test rows grouped by how many specialists cover their true class, with the
    count, both accuracies and the change in points (and relative to the generalist's errors)."""
    covering = np.zeros(len(y), dtype=np.int64)
    for subset in subsets:
        covering += np.isin(y, subset)
    rows = []
    for count in range(int(covering.max(initial=0)) + 1):
        mask = covering == count
        if not mask.any():
            continue
        before = float((generalist_pred[mask] == y[mask]).mean())
        after = float((combined_pred[mask] == y[mask]).mean())
        rows.append({"covering": count, "test_rows": int(mask.sum()), "generalist": round(100 * before, 2),
                     "combined": round(100 * after, 2), "change_points": round(100 * (after - before), 2),
                     "errors_fixed": int(((combined_pred == y) & (generalist_pred != y) & mask).sum()),
                     "errors_made": int(((combined_pred != y) & (generalist_pred == y) & mask).sum())})
    return rows
