"""Class-per-folder image trees (grayscale or colour, any size): ``root/<class>/*`` or ``root/train|test/<class>/*``,
and the resize + centre-crop every image loader uses for ``image_size``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.data.checks import check_distinct_classes, check_inside
from compress.data.dataset import Dataset, finalize, split_stratified

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


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
        x_tr, x_te, y_tr, y_te = split_stratified(x, y, test_fraction, seed, str(root))
    return finalize(root.name, str(root), x_tr, y_tr, x_te, y_te, classes, scale=1.0 / 255.0,
                    label_source="the class folder names")
