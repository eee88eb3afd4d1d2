"""Datasets: general loaders for the formats users bring, all producing one ``Dataset``.

Loaders (the ``DATASETS`` registry, name -> callable(path, **options)):
  digits        scikit-learn's bundled handwritten digits (the embedded default; no download)
  idx           MNIST-style IDX files, gzipped or raw (``*train*images*``, ``*t10k*``/``*test*`` ...)
  image-folder  class-per-folder image trees (``root/train/<class>/*``, ``root/test/<class>/*``,
                or ``root/<class>/*`` split by a seeded stratified fraction)
  npz           NumPy arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optional ``labels``)

Each loader returns raw arrays; ``finalize`` applies one normalization, ``x = (raw * scale - mean) / std``
with mean/std measured on the training split, and records it so an app can reproduce it exactly.

What every data set must be (an ``InputError`` naming the input otherwise; the CLI exits 2):

* labels: printable text with no line breaks, tabs or other separators, no leading/trailing whitespace,
  and distinct; each becomes one line of ``labels.txt`` (``check_dataset``, run by ``load_data`` on every
  loader's ``Dataset``, names the label and where it came from: folder names, a label list, file names);
* at least 2 classes (``check_dataset``); every class folder (images, audio) holds at least one sample;
* integer labels without a label list (IDX, NPZ without ``labels``): contiguous from 0, every class
  ``0..K-1`` present in the training labels, so one stray value cannot add unseen outputs; an NPZ
  ``labels`` array may name classes absent from training (the "omitted class" experiment), and an NPZ
  without ``y_train`` (unlabelled transfer set) is not held to it;
* samples finite after conversion to float32 (``1e308`` overflows to inf) and after normalization;
* symbolic links: followed while they stay inside the data root; a class folder or sample file (or a
  folder on the way to it) that resolves outside the root is refused, naming the link, so a data set is
  exactly what its folder holds (``check_inside``);
* ``limit_train`` / ``limit_test`` (``--limit-train`` / ``--limit-test``): integers >= 1 when given; that many
  rows of the split, stratified by class and seeded (``limited_rows``), in the data's order.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.npz import check_npz_sizes
from compress.core.registry import Registry

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


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int, where: str = "data"):
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


def load_digits(path: str | None = None, *, test_fraction: float = 0.2, seed: int = 0, **_) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 real samples, values 0..16), stratified split."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.astype(np.float32)
    x_tr, x_te, y_tr, y_te = _split(x, d.target, test_fraction, seed)
    return finalize("digits", "sklearn.datasets.load_digits", x_tr, y_tr, x_te, y_te,
                    [str(int(c)) for c in d.target_names], scale=1.0 / 16.0,
                    label_source="scikit-learn's digit names")


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


def load_idx(path: str | Path, *, image_size=None, **_) -> Dataset:
    """A folder of IDX files: train/test images and labels (MNIST naming: train-*, t10k-* or test-*)."""
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder of IDX files")
    files = {"x_train": _find_one(folder, ("train",), "images"), "y_train": _find_one(folder, ("train",), "labels"),
             "x_test": _find_one(folder, ("t10k", "test"), "images"), "y_test": _find_one(folder, ("t10k", "test"), "labels")}
    arrays = {k: read_idx(f) for k, f in files.items()}
    size = parse_image_size(image_size)
    arrays["x_train"], arrays["x_test"] = resize_array(arrays["x_train"], size), resize_array(arrays["x_test"], size)
    scale = 1.0 / 255.0 if arrays["x_train"].dtype == np.uint8 else 1.0
    return finalize(folder.name or "idx", str(folder), arrays["x_train"], arrays["y_train"], arrays["x_test"],
                    arrays["y_test"], None, scale, where={k: str(f) for k, f in files.items()},
                    label_source="the IDX label files' class indices",
                    hint="; IDX files carry no label list: relabel the classes 0..K-1, or use an .npz with a 'labels' array")


# --- class-per-folder images ---------------------------------------------------------------------------

def check_inside(root: Path, path: Path) -> None:
    """Refuse ``path`` (under ``root``) when a symbolic link on the way to it resolves outside ``root``.

    Links that stay inside the data root are followed; one that leaves it (or loops) is an ``InputError``
    naming the link: a class folder or sample file must be part of the data root the user named.
    """
    real_root = Path(os.path.realpath(root))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = ()
    cur = root
    for part in parts:
        cur = cur / part
        if cur.is_symlink():
            target = Path(os.path.realpath(cur))
            if not target.is_relative_to(real_root):
                raise InputError(f"{cur}: symbolic link resolves outside the data root {root} (to {target}); "
                                 "expected class folders and sample files inside the data root (copy them in, "
                                 "or link only within it)")


def check_distinct_classes(base: Path, classes: list[str]) -> None:
    """Two class folders that are one folder (a symbolic link to a sibling) would make the same samples two
    classes: an ``InputError`` naming the link."""
    seen: dict[str, str] = {}
    for name in classes:
        real = os.path.realpath(base / name)
        if real in seen:
            link, other = (name, seen[real]) if (base / name).is_symlink() else (seen[real], name)
            raise InputError(f"{base / link}: links to the class folder {other!r}; the same samples would be two "
                             "classes; expected one folder per class (copy the samples if both classes are meant)")
        seen[real] = name


def parse_image_size(value) -> tuple[int, int] | None:
    """``--image-size``: ``32``, ``"32"``, ``"48x64"`` (height x width) or ``[48, 64]`` -> (height, width)."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            parts = [int(v) for v in value.lower().replace("×", "x").split("x")]
        elif isinstance(value, (list, tuple)):
            parts = [int(v) for v in value]
        else:
            parts = [int(value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > 4096:
        raise InputError(f"--image-size {value!r}: expected one size or HEIGHTxWIDTH in pixels (1..4096), e.g. 32 or 48x64")
    return parts[0], parts[1]


def fit_image(im, size: tuple[int, int]):
    """Resize a PIL image so it covers ``size`` (height, width) keeping its aspect ratio, then crop the
    centre: the usual "resize + centre crop" of image classifiers, so no sample is distorted."""
    from PIL import Image

    height, width = size
    factor = max(height / im.height, width / im.width)
    new = (max(width, round(im.width * factor)), max(height, round(im.height * factor)))
    if new != im.size:
        im = im.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (im.width - width) // 2, (im.height - height) // 2
    return im.crop((left, top, left + width, top + height))


def resize_array(x: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """8-bit images (n, H, W) or (n, C, H, W) from IDX/NPZ to ``size`` with the same resize + centre crop."""
    if size is None or x.ndim not in (3, 4) or tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype != np.uint8:
        raise InputError(f"--image-size {size[0]}x{size[1]}: resizing needs 8-bit images, but the samples are {x.dtype}")
    from PIL import Image

    planes = x.reshape(-1, *x.shape[-2:])
    out = np.stack([np.asarray(fit_image(Image.fromarray(p), size)) for p in planes])
    return out.reshape(*x.shape[:-2], *size)


def _list_tree(root: Path, classes: list[str], data_root: Path) -> list[tuple[Path, int]]:
    """(image file, class index) for every image under ``root/<class>/``, links checked."""
    files = []
    for idx, cls in enumerate(classes):
        folder = root / cls
        if not folder.is_dir():
            continue
        check_inside(data_root, folder)
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                check_inside(data_root, f)
                files.append((f, idx))
    return files


def _open(f: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(f)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{f}: unreadable image ({exc.__class__.__name__}); expected a PNG/JPEG/BMP file") from None


def _common_size(files: list[tuple[Path, int]]) -> tuple[tuple[int, int], str]:
    """The most common (height, width) among the images (headers only) and the image mode to read them
    in: grayscale when every image is, else RGB."""
    from collections import Counter

    sizes, gray = Counter(), True
    for f, _ in files:
        with _open(f) as im:
            sizes[(im.height, im.width)] += 1
            gray = gray and im.mode in ("1", "L", "I;16", "I", "LA")
    return sizes.most_common(1)[0][0], "L" if gray else "RGB"


def _read_images(files: list[tuple[Path, int]], size: tuple[int, int], mode: str, resize: bool):
    """Every image as 8-bit (C, H, W) in ``mode``; other sizes are resized + centre-cropped when
    ``resize``, else an error naming the file."""
    xs = np.empty((len(files), 1 if mode == "L" else 3, *size), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        try:
            with _open(f) as im:
                im = im.convert(mode)
                if (im.height, im.width) != size:
                    if not resize:
                        raise InputError(f"{f}: image is {im.height}x{im.width} (HxW) but the others are "
                                         f"{size[0]}x{size[1]}; pass --image-size to resize and centre-crop them")
                    im = fit_image(im, size)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise InputError(f"{f}: unreadable image ({exc.__class__.__name__}); expected a PNG/JPEG/BMP file") from None
        xs[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return xs, np.asarray([idx for _, idx in files], dtype=np.int64)


def load_image_folder(path: str | Path, *, test_fraction: float = 0.2, seed: int = 0,
                      image_size=None, **_) -> Dataset:
    """Class-per-folder images (grayscale or colour, any size); ``train/`` and ``test/`` subfolders when
    both exist. Images of another size than ``image_size`` (default: the most common size; colour when any
    image is colour) are resized to cover it and centre-cropped."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder with one subfolder of images per class")
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if has_split else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{base}: no class subfolders found; expected {base}/<class>/<image files>")
    check_distinct_classes(base, classes)
    files = _list_tree(base, classes, root)
    if not files:
        raise InputError(f"{base}: no image files in the class folders; expected {base}/<class>/<image> files "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    counts = np.bincount([idx for _, idx in files], minlength=len(classes))
    if (counts == 0).any():
        empty = base / classes[int(np.argmin(counts))]
        raise InputError(f"{empty}: class folder has no image files ({int((counts == 0).sum())} such folder(s)); "
                         f"expected at least one sample per class ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                         "or remove the folder")
    test_files = []
    if has_split:
        extra = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise InputError(f"{root / 'test'}: class folder '{extra[0]}' is not among the train classes {classes}")
        test_files = _list_tree(root / "test", classes, root)
        if not test_files:
            raise InputError(f"{root / 'test'}: no image files in the class folders; expected {root / 'test'}/<class>/<image> files")
    size, mode = _common_size(files + test_files)
    requested = parse_image_size(image_size)
    x, y = _read_images(files, requested or size, mode, True)
    if has_split:
        x_te, y_te = _read_images(test_files, requested or size, mode, True)
        x_tr, y_tr = x, y
    else:
        x_tr, x_te, y_tr, y_te = _split(x, y, test_fraction, seed, str(root))
    return finalize(root.name, str(root), x_tr, y_tr, x_te, y_te, classes, scale=1.0 / 255.0,
                    label_source="the class folder names")


# --- NPZ ----------------------------------------------------------------------------------------------

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


def load_audio_folder(path: str | Path, **options) -> Dataset:
    """Labelled audio folders (see ``compress.audio``); imported lazily so images need no audio stack."""
    from compress.audio import load_audio_folder as load

    return load(path, **options)


DATASETS = Registry("data format", "--data-format")  # name -> loader(path, *, seed, **options) -> Dataset
DATASETS.register("digits", load_digits)
DATASETS.register("idx", load_idx)
DATASETS.register("image-folder", load_image_folder)
DATASETS.register("npz", load_npz)
DATASETS.register("audio-folder", load_audio_folder)

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


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


def _label_problem(label: str) -> str | None:
    if not label:
        return "is empty"
    if any(c in _LINE_BREAKS for c in label):
        return "contains a line break"
    if "\t" in label:
        return "contains a tab"
    bad = next((c for c in label if not c.isprintable()), None)
    if bad is not None:
        return f"contains the non-printable character {bad!r}"
    if label != label.strip():
        return "has leading or trailing whitespace"
    return None


def check_dataset(ds: Dataset) -> Dataset:
    """What every loader's ``Dataset`` must be, checked in one place (``load_data`` calls it on each):
    usable labels (printable, no separators or surrounding whitespace, distinct), at least 2 classes with
    samples, and finite float32 samples. Raises ``InputError`` naming the data and what was expected."""
    source = ds.label_source or "the data set's labels"
    seen: set[str] = set()
    for label in ds.labels:
        problem = _label_problem(label) if isinstance(label, str) else f"is a {type(label).__name__}, not text"
        if problem is None and label in seen:
            problem = "appears more than once"
        if problem:
            raise InputError(f"{ds.source}: label {label!r} from {source} {problem}; expected printable labels "
                             "without line breaks, tabs or other separators, without leading or trailing "
                             "whitespace, each distinct (one line of labels.txt per class)")
        seen.add(label)
    present = np.unique(np.concatenate([y for y in (ds.y_train, ds.y_test) if y is not None]))
    if len(ds.labels) < 2 or len(present) < 2:
        what = (f"{len(ds.labels)} class ({', '.join(map(repr, ds.labels))}) from {source}" if len(ds.labels) < 2
                else f"samples of one class only ({ds.labels[int(present[0])]!r} of the {len(ds.labels)} from {source})")
        raise InputError(f"{ds.source}: {what}; expected at least 2 classes with samples (a one-class model is "
                         "always right and learns nothing)")
    for key in ("x_train", "x_test"):
        bad = ~np.isfinite(getattr(ds, key))
        if bad.any():
            raise InputError(f"{ds.source} ({key}): {int(bad.sum())} value(s) NaN or infinite after loading; "
                             "expected finite numbers within float32 range")
    return ds


def _check_limit(flag: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{flag} {value}: expected an integer >= 1 (a number of samples), or none for all")


def limited_rows(y: np.ndarray | None, n_rows: int, limit: int, seed: int) -> np.ndarray:
    """``limit`` rows of a split, stratified by class and seeded, in the data's order. Loaders often return
    samples sorted by class (a folder per class, FSDD's file names): the first N rows would keep one or two
    classes and every model would then predict one class and pass every check. Each class keeps its share
    (largest remainders), and at least one sample while ``limit`` allows; an unlabelled split gets a seeded
    random subset."""
    if limit >= n_rows:
        return np.arange(n_rows)
    rng = np.random.default_rng(seed)
    if y is None:
        return np.sort(rng.permutation(n_rows)[:limit])
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * limit / n_rows
    take = np.floor(quota).astype(np.int64)
    if limit >= len(classes):
        take = np.maximum(take, 1)
    while take.sum() > limit:  # the minimum of one took rows from the largest classes
        take[np.argmax(take - quota)] -= 1
    order = np.argsort(-(quota - take), kind="stable")  # largest remainders first
    for i in order[: limit - int(take.sum())]:
        take[i] += 1
    # each class's rows in one seeded order, whatever the limit: a smaller limit keeps a subset of a larger one's
    # rows (a file of outputs for one --limit-test still answers a shorter one)
    orders = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    return np.sort(np.concatenate([order[:int(k)] for order, k in zip(orders, take)]))


def class_coverage_warnings(ds: Dataset) -> list[str]:
    """What a split lacks that the other has: a class never trained on is never predicted, and a class never
    tested is never measured (both silent in an accuracy). One sentence each, for the console and the report."""
    if ds.y_train is None:
        return []
    train, test = set(np.unique(ds.y_train).tolist()), set(np.unique(ds.y_test).tolist())
    out = []
    for missing, split, other in ((test - train, "training", "test"), (train - test, "test", "training")):
        if missing:
            names = ", ".join(repr(ds.labels[i]) for i in sorted(missing)[:5]) + (" ..." if len(missing) > 5 else "")
            out.append(f"data {ds.name}: the {split} split has no sample of {len(missing)} class(es) the {other} split "
                       f"has ({names}); accuracy is not measured for them as it is for the others "
                       f"(raise --limit-train/--limit-test, or check the data's split)")
    return out


def load_data(spec: str | None = None, fmt: str | None = None, *, limit_train: int | None = None,
              limit_test: int | None = None, unlabelled: bool = False, seed: int = 0, **options) -> Dataset:
    """Load ``spec`` ("digits" / None for the default, or a path) with ``fmt`` or an auto-detected loader,
    check it (``check_dataset``), then keep ``limit_train`` / ``limit_test`` samples (>= 1), stratified by class."""
    _check_limit("--limit-train", limit_train)
    _check_limit("--limit-test", limit_test)
    if spec in (None, "", "digits") and fmt in (None, "digits"):
        _check_options(load_digits, "digits", options)
        ds = load_digits(seed=seed, **options)
    else:
        if fmt is not None:
            DATASETS.lookup(fmt)  # an unknown format: one line naming the known ones
        path = Path(spec)
        if not path.exists():
            raise InputError(f"{path}: data path does not exist")
        loader = DATASETS[fmt or detect_format(path)]
        _check_options(loader, fmt or detect_format(path), options)
        ds = loader(path, seed=seed, **options)
    check_dataset(ds)
    if limit_train:
        rows = limited_rows(ds.y_train, len(ds.x_train), limit_train, seed)
        ds.x_train = ds.x_train[rows]
        ds.y_train = None if ds.y_train is None else ds.y_train[rows]
    if limit_test:
        rows = limited_rows(ds.y_test, len(ds.x_test), limit_test, seed)
        ds.x_test, ds.y_test = ds.x_test[rows], ds.y_test[rows]
    if unlabelled:
        ds.y_train = None
    return ds
