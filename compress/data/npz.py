"""NumPy ``.npz`` arrays: ``x_train``, ``x_test``, ``y_test``, optionally ``y_train`` (absent: an unlabelled
transfer set) and ``labels``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.npz import check_npz_sizes
from compress.data.dataset import Dataset, finalize
from compress.data.images import parse_image_size, resize_array


def load_npz(path: str | Path, *, image_size=None, **_) -> Dataset:
    """An ``.npz`` with ``x_train``, ``x_test``, ``y_test`` and optionally ``y_train`` and ``labels``.

    Without ``y_train`` the transfer set is unlabelled and distillation uses soft targets only.
    """
    path = Path(path)
    try:
        check_npz_sizes(path, str(path))  # before np.load allocates what the headers declare
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("x_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing array(s) {missing}; expected x_train, y_train, x_test, y_test")
    labels = [str(v) for v in np.ravel(arrays["labels"]).tolist()] if "labels" in arrays else None
    size = parse_image_size(image_size)
    arrays["x_train"], arrays["x_test"] = resize_array(arrays["x_train"], size), resize_array(arrays["x_test"], size)
    scale = 1.0 / 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    return finalize(path.stem, str(path), arrays["x_train"], arrays.get("y_train"), arrays["x_test"],
                    arrays["y_test"], labels, scale, label_source="the 'labels' array" if labels is not None else "",
                    hint=" or a 'labels' array naming every class (it may name classes absent from training)")
