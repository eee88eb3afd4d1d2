"""MNIST-style IDX files (gzipped or raw): a folder with train/test images and labels."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.data.dataset import Dataset, finalize
from compress.data.images import parse_image_size, resize_array


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
