"""scikit-learn's bundled handwritten digits: the embedded default data set (no download)."""

from __future__ import annotations

import numpy as np

from compress.data.dataset import Dataset, finalize, split_stratified


def load_digits(path: str | None = None, *, test_fraction: float = 0.2, seed: int = 0, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 real samples, values 0..16), stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32)
    x_tr, x_te, y_tr, y_te = split_stratified(x, d.target, test_fraction, seed)
    return finalize("digits", "sklearn.datasets.load_digits", x_tr, y_tr, x_te, y_te,
                    [str(int(c)) for c in d.target_names], scale=1.0 / 16.0,
                    label_source="scikit-learn's digit names")
