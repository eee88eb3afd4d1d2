"""Which classes each specialist covers (Hinton, Vinyals & Dean 2015, §5.2).

The paper clusters the columns of the covariance matrix of the generalist's predicted distributions with
K-means: classes that the generalist often predicts together (gives probability to on the same rows) have
similar columns and end up in one subset. Here: scikit-learn's ``KMeans`` (seeded, 10 starts) on those
columns; a cluster under ``min_classes`` is dropped (a one-class specialist has nothing to tell apart), one
over ``max_classes`` is cut into near-equal parts along its columns' first principal axis. A user may give
the subsets by hand instead (``check_given``). Each subset is reported with the share of the generalist's
confusion it covers: the probability the generalist puts on a wrong class of the subset, on rows whose class
is in the subset, over all the probability it puts on wrong classes.
"""

from __future__ import annotations

import numpy as np

from compress.core.errors import InputError


def covariance_columns(probs: np.ndarray) -> np.ndarray:
    """(classes x classes): column c is how class c's predicted probability co-varies with every class's."""
    return np.cov(np.asarray(probs, dtype=np.float64), rowvar=False)


def _kmeans(columns: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    k = min(k, len(columns))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit(columns).labels_


def _split_to_fit(classes: np.ndarray, columns: np.ndarray, max_classes: int) -> list[np.ndarray]:
    """A cluster over ``max_classes`` cut into the fewest near-equal parts that fit, along the first principal
    axis of its columns (neighbours on it co-vary alike), so no cut leaves a class alone (2-means did)."""
    parts = -(-len(classes) // max_classes)
    if parts == 1:
        return [classes]
    own = columns[classes] - columns[classes].mean(0)
    axis = np.linalg.svd(own, full_matrices=False)[2][0]
    order = classes[np.argsort(own @ axis, kind="stable")]
    return [np.sort(part) for part in np.array_split(order, parts)]


def cluster_classes(probs: np.ndarray, count: int, min_classes: int = 2, max_classes: int | None = None,
                    seed: int = 0) -> list[tuple[int, ...]]:
    """Up to ``count`` class subsets from the generalist's distributions ``probs`` (rows x classes): K-means
    on the covariance columns, clusters under ``min_classes`` dropped, clusters over ``max_classes`` split.
    Deterministic for a seed; subsets sorted, in order of their first class."""
    num_classes = probs.shape[1]
    if count < 1:
        raise InputError(f"specialists count {count}: expected at least 1")
    if not 2 <= min_classes <= num_classes:
        raise InputError(f"specialists min_classes {min_classes}: expected 2 to {num_classes} (the number of classes)")
    max_classes = num_classes - 1 if max_classes is None else max_classes
    if max_classes < min_classes:
        raise InputError(f"specialists max_classes {max_classes}: expected at least min_classes ({min_classes})")
    columns = covariance_columns(probs)
    labels = _kmeans(columns, count, seed)
    subsets = []
    for cluster in range(labels.max() + 1):
        classes = np.flatnonzero(labels == cluster)
        subsets += [tuple(int(c) for c in part) for part in _split_to_fit(classes, columns, max_classes)
                    if len(part) >= min_classes]
    return sorted(subsets)


def check_given(subsets: list[list], labels: list[str]) -> list[tuple[int, ...]]:
    """Subsets given by hand (class names or indices) as sorted index tuples; a clear error otherwise."""
    index = {name: i for i, name in enumerate(labels)}
    out = []
    for subset in subsets:
        classes = set()
        for item in subset:
            if isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(labels):
                classes.add(item)
            elif str(item) in index:
                classes.add(index[str(item)])
            else:
                raise InputError(f"specialists subset {subset!r}: class {item!r} unknown; expected class names from "
                                 f"the data ({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''}) or indices 0-{len(labels) - 1}")
        if not 2 <= len(classes) < len(labels):
            raise InputError(f"specialists subset {subset!r}: {len(classes)} distinct classes; expected 2 to "
                             f"{len(labels) - 1} (a specialist tells its classes apart from each other and the rest)")
        out.append(tuple(sorted(classes)))
    return out


def confusion_share(probs: np.ndarray, labels: np.ndarray, classes: tuple[int, ...]) -> float:
    """The share of the generalist's confusion the subset covers: probability on a wrong class of the subset,
    on rows whose class is in it, over all probability on wrong classes (0 when there is no confusion)."""
    probs = np.asarray(probs, dtype=np.float64)
    wrong = probs.copy()
    wrong[np.arange(len(labels)), labels] = 0.0
    total = wrong.sum()
    inside = np.isin(labels, classes)
    covered = wrong[np.ix_(inside, list(classes))].sum()
    return float(covered / total) if total > 0 else 0.0
