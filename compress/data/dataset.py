"""The one record every loader produces (``Dataset``) and the one way raw arrays become it (``finalize``:
checks, a channel axis for 2-D images, normalization with the training split's statistics, recorded so an
app can reproduce it), plus the stratified split a loader without a test split uses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from compress.core.errors import InputError


@dataclass
class Dataset:
    """A normalized train/test split: ``x_*`` float32 (n, *input_shape); ``y_*`` int64 class indices."""

    name: str
    source: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    normalization: dict = field(default_factory=dict)
    input_kind: str = ""  # "image", "features" or "audio" (raw PCM); derived from the shape when empty
    label_source: str = ""  # where the labels came from, for error messages ("the class folder names", ...)
    raw_dtype: str = ""  # "uint8" when the source held 8-bit pixels (the app can feed them to the model as is)

    def __post_init__(self) -> None:
        if not self.input_kind:
            self.input_kind = "image" if self.x_train.ndim == 4 else "features"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def preprocessing(self) -> dict:
        """What an exported model computes itself so the app feeds raw 8-bit pixels (``ModelInfo``'s
        ``preprocessing``): images from 8-bit sources only; ``{}`` (normalized float input) otherwise."""
        if self.input_kind != "image" or self.raw_dtype != "uint8" or self.x_train.ndim != 4:
            return {}
        n = self.normalization
        channels = {1: "L", 3: "RGB"}.get(self.x_train.shape[1], "any")
        return {"input": "uint8", "layout": "NCHW", "channels": channels, "scale": float(n["scale"]),
                "mean": [float(v) for v in np.atleast_1d(n["mean"])], "std": [float(v) for v in np.atleast_1d(n["std"])]}

    def fingerprint(self) -> str:
        """Content hash of the data and labels: cache keys change when the data changes."""
        h = hashlib.sha256()
        for arr in (self.x_train, self.y_train, self.x_test, self.y_test):
            if arr is not None:
                h.update(str(arr.shape).encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        h.update("\n".join(self.labels).encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "train": int(len(self.x_train)),
            "test": int(len(self.x_test)),
            "input_shape": list(self.input_shape),
            "labels": self.labels,
            "normalization": self.normalization,
            "input_kind": self.input_kind,
            "raw_dtype": self.raw_dtype or None,
            "labelled_transfer_set": self.y_train is not None,
        }


def _check_labels(y: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"{where}: labels must be a 1-D array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError(f"{where}: labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise InputError(
            f"{where}: label {int(y[bad][0])} is outside the class list ({int(bad.sum())} such label(s)); "
            f"expected class indices 0..{num_classes - 1}, one per entry of the labels"
        )
    return y


def _ranges(values) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0..2, 5, 7..8"`` (at most 8 runs shown)."""
    runs: list[list[int]] = []
    for v in sorted(int(v) for v in values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    text = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs[:8])
    return text + (", ..." if len(runs) > 8 else "")


def _check_contiguous(y_train: np.ndarray, y_test: np.ndarray, train_where: str, test_where: str, hint: str) -> None:
    """Labels without a label list: every class index 0..K-1 (K = largest label + 1) in the training labels."""
    present = np.unique(y_train)
    k = int(max(y_test.max(), y_train.max())) + 1
    missing = np.setdiff1d(np.arange(k), present)
    if not len(missing):
        return
    in_train, in_test = np.unique(y_train[y_train >= missing[0]]), np.unique(y_test[y_test >= missing[0]])
    where, offending = (train_where, in_train) if len(in_train) else (test_where, in_test)
    raise InputError(
        f"{where}: label value(s) {_ranges(offending)} leave class index(es) {_ranges(missing)} with no training "
        f"sample (a {k}-output model for {len(present)} classes); expected integer labels contiguous from 0 "
        f"(every class 0..{k - 1} present in the training labels){hint}"
    )


def _check_finite(x: np.ndarray, where: str, scale: float) -> None:
    """Raw samples must stay finite as float32 (the dtype every model and runtime sees)."""
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{where}: samples of dtype {x.dtype}; expected real numbers (integers or floats)")
    if not np.issubdtype(x.dtype, np.floating) and np.isfinite(scale):
        return  # integers (at most ~9.2e18) always fit in float32
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is reported below, not warned about
        x32 = x.astype(np.float32) * np.float32(scale) if x.dtype != np.float32 or scale != 1.0 else x
        bad = ~np.isfinite(x32)
    if not bad.any():
        return
    raw = x[bad].astype(np.float64) if np.issubdtype(x.dtype, np.number) else np.zeros(0)
    nan = int(np.isnan(raw).sum())
    overflow = raw[np.isfinite(raw)]
    detail = [f"{nan} NaN"] if nan else []
    if len(raw) - nan - len(overflow):
        detail.append(f"{len(raw) - nan - len(overflow)} inf")
    if len(overflow):
        detail.append(f"{len(overflow)} overflowing, e.g. {overflow[np.argmax(np.abs(overflow))]:g}")
    raise InputError(
        f"{where}: {int(bad.sum())} value(s) not finite after conversion to float32 ({', '.join(detail)}); "
        f"expected finite numbers within float32 range (|x| <= {float(np.finfo(np.float32).max):.3g})"
    )


def finalize(
    name: str,
    source: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    labels: list[str] | None,
    scale: float,
    *,
    label_source: str = "",
    where: dict[str, str] | None = None,
    hint: str = "",
) -> Dataset:
    """Validate, add a channel axis to 2-D images, normalize with train statistics, record the recipe.

    ``where`` names the input behind each array in messages (keys ``x_train``, ``y_train``, ``x_test``,
    ``y_test``; default ``"<source> (train labels)"`` and so on); ``hint`` ends the message about labels
    that skip class indices (how to declare classes missing from training, where the format can).
    """
    where = {"x_train": f"{source} (x_train)", "x_test": f"{source} (x_test)",
             "y_train": f"{source} (train labels)", "y_test": f"{source} (test labels)", **(where or {})}
    x_train = np.asarray(x_train)
    x_test = np.asarray(x_test)
    if len(x_train) == 0 or len(x_test) == 0:
        raise InputError(f"{source}: empty split (train {len(x_train)}, test {len(x_test)} samples); expected both non-empty")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InputError(f"{source}: train samples have shape {x_train.shape[1:]} but test samples {x_test.shape[1:]}")
    if x_train.ndim == 3:  # (n, H, W) grayscale images -> (n, 1, H, W)
        x_train, x_test = x_train[:, None], x_test[:, None]
    inferred = labels is None
    if inferred:
        n = int(max(np.max(y_test), np.max(y_train) if y_train is not None else 0)) + 1
        labels = [str(i) for i in range(n)]
        label_source = label_source or "the integer class indices (no label list)"
    if y_train is not None:
        y_train = _check_labels(y_train, len(labels), where["y_train"])
        if len(y_train) != len(x_train):
            raise InputError(f"{source}: {len(x_train)} train samples but {len(y_train)} train labels")
    y_test = _check_labels(y_test, len(labels), where["y_test"])
    if len(y_test) != len(x_test):
        raise InputError(f"{source}: {len(x_test)} test samples but {len(y_test)} test labels")
    if inferred and y_train is not None:  # an unlabelled transfer set: the teachers decide the class count
        _check_contiguous(y_train, y_test, where["y_train"], where["y_test"], hint)
    _check_finite(x_train, where["x_train"], scale)
    _check_finite(x_test, where["x_test"], scale)
    raw_dtype = "uint8" if x_train.dtype == np.uint8 and x_test.dtype == np.uint8 else ""
    mean, std = _train_statistics(x_train, scale, where["x_train"])
    norm = {"formula": "x = (raw * scale - mean) / std", "scale": float(scale), "mean": mean, "std": std}
    if x_train.ndim == 4:
        norm.update(layout="NCHW", channels={1: "L", 3: "RGB"}.get(x_train.shape[1], "any"),
                    per_channel="mean and std have one value per channel (axis 1)")
    m, d = (np.asarray(v, dtype=np.float32).reshape(-1, *([1] * (x_train.ndim - 2))) if isinstance(v, list)
            else np.float32(v) for v in (mean, std))

    def apply(x: np.ndarray, key: str) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            out = ((x.astype(np.float32) * np.float32(scale) - m) / d).astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(f"{where[key]}: {int((~np.isfinite(out)).sum())} value(s) not finite after "
                             f"conversion to float32 and normalization (mean {mean}, std {std}); "
                             "expected finite numbers within float32 range")
        return out

    return Dataset(name, source, apply(x_train, "x_train"), y_train, apply(x_test, "x_test"), y_test, list(labels),
                   norm, label_source=label_source, raw_dtype=raw_dtype)


def _train_statistics(x_train: np.ndarray, scale: float, where: str) -> tuple:
    """Mean and std of the scaled training samples: one value per channel for images (axis 1 of
    (n, C, H, W): colour channels differ), one value otherwise. Computed in float64 chunks so 60k colour
    images need no float64 copy of the whole split."""
    per_channel = x_train.ndim == 4
    axes = (0, 2, 3) if per_channel else None
    total = np.zeros(x_train.shape[1] if per_channel else 1)
    squares = np.zeros_like(total)
    count = 0
    for start in range(0, len(x_train), 4096):
        chunk = x_train[start:start + 4096].astype(np.float64) * scale
        total += chunk.sum(axis=axes)
        squares += np.square(chunk).sum(axis=axes)
        count += chunk.size // len(total)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 0.0))
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise InputError(f"{where}: the mean/std of the training samples overflow ({mean}, {std}); "
                         "expected values whose spread fits in float64")
    std = np.where(std > 0, std, 1.0)
    if per_channel:
        return [float(v) for v in mean], [float(v) for v in std]
    return float(mean[0]), float(std[0])


def split_stratified(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, where: str = "data"):
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction={test_fraction}: expected a number in (0, 1)")
    try:
        return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError as exc:  # a class with one sample, or fewer test samples than classes
        raise InputError(f"{where}: cannot make a stratified {test_fraction:g} test split of {len(y)} samples "
                         f"in {len(np.unique(y))} classes ({str(exc).split('. ')[0]}); expected at least 2 samples "
                         "per class and a test fraction that leaves one test sample per class (or train/ and "
                         "test/ folders)") from None
