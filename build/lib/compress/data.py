"""Datasets: general loaders for the formats users bring, all producing one ``Dataset``.

Loaders (the ``DATASETS`` registry, name -> callable(path, **options)):
  digits        scikit-learn's bundled handwritten digits (the embedded default; no download)
  idx           MNIST-style IDX files, gzipped or raw (``*train*images*``, ``*t10k*``/``*test*`` ...)
  image-folder  class-per-folder image trees (``root/train/<class>/*``, ``root/test/<class>/*``,
                or ``root/<class>/*`` split by a seeded stratified fraction)
  npz           NumPy arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optional ``labels``)

Each loader returns raw arrays; ``finalize`` applies one normalization, ``x = (raw * scale - mean) / std``
with mean/std measured on the training split, and records it so an app can reproduce it exactly.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.core.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


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

    def __post_init__(self) -> None:
        if not self.input_kind:
            self.input_kind = "image" if self.x_train.ndim == 4 else "features"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

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


def finalize(
    name: str,
    source: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray,
    y_test: np.ndarray,
    labels: list[str] | None,
    scale: float,
) -> Dataset:
    """Validate, add a channel axis to 2-D images, normalize with train statistics, record the recipe."""
    x_train = np.asarray(x_train)
    x_test = np.asarray(x_test)
    if len(x_train) == 0 or len(x_test) == 0:
        raise InputError(f"{source}: empty split (train {len(x_train)}, test {len(x_test)} samples); expected both non-empty")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InputError(f"{source}: train samples have shape {x_train.shape[1:]} but test samples {x_test.shape[1:]}")
    if x_train.ndim == 3:  # (n, H, W) grayscale images -> (n, 1, H, W)
        x_train, x_test = x_train[:, None], x_test[:, None]
    if labels is None:
        n = int(max(np.max(y_test), np.max(y_train) if y_train is not None else 0)) + 1
        labels = [str(i) for i in range(n)]
    if y_train is not None:
        y_train = _check_labels(y_train, len(labels), f"{source} (train labels)")
        if len(y_train) != len(x_train):
            raise InputError(f"{source}: {len(x_train)} train samples but {len(y_train)} train labels")
    y_test = _check_labels(y_test, len(labels), f"{source} (test labels)")
    if len(y_test) != len(x_test):
        raise InputError(f"{source}: {len(x_test)} test samples but {len(y_test)} test labels")
    xt = x_train.astype(np.float64) * scale
    if not np.isfinite(xt).all() or not np.isfinite(x_test.astype(np.float64)).all():
        raise InputError(f"{source}: samples contain NaN or infinity; expected finite numbers")
    mean, std = float(xt.mean()), float(xt.std()) or 1.0
    norm = {"formula": "x = (raw * scale - mean) / std", "scale": float(scale), "mean": mean, "std": std}

    def apply(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)).astype(np.float32)

    return Dataset(name, source, apply(x_train), y_train, apply(x_test), y_test, list(labels), norm)


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)


def load_digits(path: str | None = None, *, test_fraction: float = 0.2, seed: int = 0, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 real samples, values 0..16), stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32)
    x_tr, x_te, y_tr, y_te = _split(x, d.target, test_fraction, seed)
    return finalize("digits", "sklearn.datasets.load_digits", x_tr, y_tr, x_te, y_te,
                    [str(int(c)) for c in d.target_names], scale=1.0 / 16.0)


# --- IDX ---------------------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format: magic, dims, big-endian data), gzipped or raw."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InputError(f"{path}: not an IDX file (expected magic 0x0000 + dtype code + ndim)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    offset = 4 + 4 * ndim
    if len(data) - offset != expected:
        raise InputError(f"{path}: IDX header says {tuple(dims)} ({expected} bytes) but the file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(tuple(dims))


def _find_one(folder: Path, words: tuple[str, ...], kind: str) -> Path:
    hits = sorted(
        p for p in folder.iterdir()
        if p.is_file() and kind in p.name and any(w in p.name for w in words) and "idx" in p.name
    )
    if len(hits) != 1:
        raise InputError(
            f"{folder}: expected exactly one IDX {kind} file named like '*{words[0]}*{kind}*idx*' (found {len(hits)})"
        )
    return hits[0]


def load_idx(path: str | Path, **_) -> Dataset:
    """A folder of IDX files: train/test images and labels (MNIST naming: train-*, t10k-* or test-*)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder of IDX files")
    x_tr = read_idx(_find_one(folder, ("train",), "images"))
    y_tr = read_idx(_find_one(folder, ("train",), "labels"))
    x_te = read_idx(_find_one(folder, ("t10k", "test"), "images"))
    y_te = read_idx(_find_one(folder, ("t10k", "test"), "labels"))
    scale = 1.0 / 255.0 if x_tr.dtype == np.uint8 else 1.0
    return finalize(folder.name or "idx", str(folder), x_tr, y_tr, x_te, y_te, None, scale)


# --- class-per-folder images ---------------------------------------------------------------------------

def _read_tree(root: Path, classes: list[str], size: tuple[int, int] | None, mode: str | None):
    from PIL import Image, UnidentifiedImageError

    xs, ys = [], []
    for idx, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    mode = mode or ("L" if im.mode in ("1", "L", "I;16", "I", "LA") else "RGB")
                    im = im.convert(mode)
                    if size is None:
                        size = im.size
                    elif im.size != size:
                        raise InputError(f"{f}: image is {im.size[0]}x{im.size[1]} but the others are {size[0]}x{size[1]}; pass an image size to resize")
                    arr = np.asarray(im, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise InputError(f"{f}: unreadable image ({exc.__class__.__name__}); expected a PNG/JPEG/BMP file") from None
            xs.append(arr if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(idx)
    return xs, ys, size, mode


def load_image_folder(path: str | Path, *, test_fraction: float = 0.2, seed: int = 0,
                      image_size: tuple[int, int] | None = None, **_) -> Dataset:
    """Class-per-folder images; uses ``train/`` and ``test/`` subfolders when both exist."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder with one subfolder of images per class")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if has_split else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{base}: no class subfolders found; expected {base}/<class>/<image files>")
    xs, ys, size, mode = _read_tree(base, classes, image_size, None)
    if not xs:
        raise InputError(f"{base}: no image files in the class folders; expected {base}/<class>/<image> files "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    x, y = np.stack(xs), np.asarray(ys)
    if has_split:
        extra = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise InputError(f"{root / 'test'}: class folder '{extra[0]}' is not among the train classes {classes}")
        txs, tys, _, _ = _read_tree(root / "test", classes, size, mode)
        if not txs:
            raise InputError(f"{root / 'test'}: no image files in the class folders; expected {root / 'test'}/<class>/<image> files")
        x_tr, y_tr, x_te, y_te = x, y, np.stack(txs), np.asarray(tys)
    else:
        x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed)
    return finalize(root.name, str(root), x_tr, y_tr, x_te, y_te, classes, scale=1.0 / 255.0)


# --- NPZ ----------------------------------------------------------------------------------------------

def load_npz(path: str | Path, **_) -> Dataset:
    """An ``.npz`` with ``x_train``, ``x_test``, ``y_test`` and optionally ``y_train`` and ``labels``.

    Without ``y_train`` the transfer set is unlabelled and distillation uses soft targets only.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("x_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise InputError(f"{path}: missing array(s) {missing}; expected x_train, y_train, x_test, y_test")
    labels = [str(v) for v in arrays["labels"].tolist()] if "labels" in arrays else None
    scale = 1.0 / 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    return finalize(path.stem, str(path), arrays["x_train"], arrays.get("y_train"), arrays["x_test"],
                    arrays["y_test"], labels, scale)


def load_audio_folder(path: str | Path, **options) -> Dataset:
    """Labelled audio folders (see ``compress.audio``); imported lazily so images need no audio stack."""
    from compress.audio import load_audio_folder as load

    return load(path, **options)


DATASETS = {
    "digits": load_digits,
    "idx": load_idx,
    "image-folder": load_image_folder,
    "npz": load_npz,
    "audio-folder": load_audio_folder,
}

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


def detect_format(path: Path) -> str:
    """Guess the loader for a path: ``.npz`` file, folder of IDX files, or class-per-folder images."""
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if path.is_dir():
        if any("idx" in p.name for p in path.iterdir() if p.is_file()):
            return "idx"
        if any(p.suffix.lower() in AUDIO_SUFFIXES for p in path.rglob("*") if p.is_file()):
            return "audio-folder"
        return "image-folder"
    raise InputError(f"{path}: not found or not a known data format; expected an .npz file, a folder of IDX files or a class-per-folder image tree")


def _check_options(loader, fmt: str, options: dict) -> None:
    """Loader options (a recipe's ``[data] options``) must be ones the loader takes: a typo is an error."""
    import difflib
    import inspect

    target = loader
    if fmt == "audio-folder":  # DATASETS holds a lazy wrapper; the options are the real loader's
        from compress.audio import load_audio_folder as target
    accepted = [n for n, p in inspect.signature(target).parameters.items()
                if p.kind is p.KEYWORD_ONLY and n != "seed"]
    for key in options:
        if key not in accepted:
            near = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
            hint = (f"did you mean {near[0]!r}?" if near else f"expected one of {accepted}" if accepted
                    else "expected no options (this loader takes none)")
            raise InputError(f"data option {key!r}: not an option of the {fmt} loader; {hint}")


def load_data(spec: str | None = None, fmt: str | None = None, *, limit_train: int | None = None,
              limit_test: int | None = None, unlabelled: bool = False, seed: int = 0, **options) -> Dataset:
    """Load ``spec`` ("digits" / None for the default, or a path) with ``fmt`` or an auto-detected loader."""
    if spec in (None, "", "digits") and fmt in (None, "digits"):
        _check_options(load_digits, "digits", options)
        ds = load_digits(seed=seed, **options)
    else:
        if fmt is not None and fmt not in DATASETS:
            raise InputError(f"--data-format {fmt!r}: unknown format; expected one of {sorted(DATASETS)}")
        path = Path(spec)
        if not path.exists():
            raise InputError(f"{path}: data path does not exist")
        loader = DATASETS[fmt or detect_format(path)]
        _check_options(loader, fmt or detect_format(path), options)
        ds = loader(path, seed=seed, **options)
    if limit_train:
        ds.x_train = ds.x_train[:limit_train]
        ds.y_train = None if ds.y_train is None else ds.y_train[:limit_train]
    if limit_test:
        ds.x_test, ds.y_test = ds.x_test[:limit_test], ds.y_test[:limit_test]
    if unlabelled:
        ds.y_train = None
    return ds
