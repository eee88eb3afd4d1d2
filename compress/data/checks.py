"""What every data set must be, checked in one place whatever its loader: usable labels, at least two
classes with samples, finite samples, and files that stay inside the data root the user named."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.data.dataset import Dataset


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
