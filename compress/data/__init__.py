"""Datasets: general loaders for the formats users bring, all producing one ``Dataset``.

Loaders (the ``DATASETS`` registry, name -> callable(path, **options)):
  digits        scikit-learn's bundled handwritten digits (the embedded default; no download)
  idx           MNIST-style IDX files, gzipped or raw (``*train*images*``, ``*t10k*``/``*test*`` ...)
  image-folder  class-per-folder image trees (``root/train/<class>/*``, ``root/test/<class>/*``,
                or ``root/<class>/*`` split by a seeded stratified fraction)
  npz           NumPy arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (optional ``labels``)
  audio-folder  labelled audio files (a folder per label, or labels in the file names), resampled
One module per loader (``digits``, ``idx``, ``images``, ``npz``, ``audio``); ``dataset`` holds the record and
``finalize``, ``checks`` what every data set must be; this module is the registry and ``load_data``.

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

import inspect
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.core.registry import Registry, nearest
from compress.data.audio import AUDIO_SUFFIXES, load_audio_folder
from compress.data.checks import check_dataset, check_distinct_classes, check_inside
from compress.data.dataset import Dataset, finalize
from compress.data.digits import load_digits
from compress.data.idx import load_idx, read_idx
from compress.data.images import IMAGE_SUFFIXES, fit_image, load_image_folder, parse_image_size, resize_array
from compress.data.npz import load_npz

__all__ = ["AUDIO_SUFFIXES", "DATASETS", "Dataset", "IMAGE_SUFFIXES", "check_dataset", "check_distinct_classes",
           "check_inside", "class_coverage_warnings", "detect_format", "finalize", "fit_image", "limited_rows",
           "load_audio_folder", "load_data", "load_digits", "load_idx", "load_image_folder", "load_npz",
           "parse_image_size", "read_idx", "resize_array"]

DATASETS = Registry("data format", "--data-format")  # name -> loader(path, *, seed, **options) -> Dataset
DATASETS.register("digits", load_digits)
DATASETS.register("idx", load_idx)
DATASETS.register("image-folder", load_image_folder)
DATASETS.register("npz", load_npz)
DATASETS.register("audio-folder", load_audio_folder)


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
    accepted = [n for n, p in inspect.signature(loader).parameters.items()
                if p.kind is p.KEYWORD_ONLY and n != "seed"]
    for key in options:
        if key not in accepted:
            hint = nearest(key, accepted) if accepted else "; expected no options (this loader takes none)"
            raise InputError(f"data option {key!r}: not an option of the {fmt} loader{hint}")


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
