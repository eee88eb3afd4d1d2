"""A specialist given as its outputs, computed elsewhere (``compress soft-targets --specialist a+b``).

A specialist too big for the machine that distills the student (or trained on another) is run where it
fits; its file then stands in for it (``--specialist-outputs FILE.npz ...``): the combination reads its rows
by content, exactly as a member computed elsewhere is read (``compress.teachers.precomputed``, whose format
and checks this extends). Besides that format's arrays, a specialist's file holds

  specialist_classes  1-d strings: the data's class names the specialist tells apart, in column order
  labels              1-d strings: those names, then ``DUSTBIN`` (its columns: the classes, the dustbin last)
  output              "logits" (written here: the dustbin logit already corrected for the over-sampling) or
                      "probs"; a specialist that only names a class ("label") has no distribution to combine
  train, test         (N, |S| + 1) outputs on the transfer set and on the test split (both required: the
                      combination is the student's soft targets and is measured on the test split)
  dustbin_correction, specialist_arch   informational

Its cost (MACs, latency) cannot be measured here: the report says so instead of a number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core.cache import file_sha256
from compress.core.errors import InputError
from compress.specialists.train import Specialist
from compress.teachers import precomputed
from compress.teachers.ensemble import output_logits

FORMAT = "compress.specialists.outputs/1"
DUSTBIN = "(dustbin)"


def specialist_arrays(specialist: Specialist, data) -> dict[str, np.ndarray]:
    """``specialist`` run on the data's transfer set and test split, as the arrays of its file."""
    names = [str(data.labels[c]) for c in specialist.classes]
    return {**precomputed.input_arrays(data), "format": np.array(FORMAT), "output": np.array("logits"),
            "labels": np.array([*names, DUSTBIN]), "specialist_classes": np.array(names),
            "train": specialist.logits(data.x_train).astype(np.float32),
            "test": specialist.logits(data.x_test).astype(np.float32),
            "dustbin_correction": np.array(specialist.correction), "specialist_arch": np.array(specialist.arch)}


def _classes(spec: str, arrays: dict, labels: list[str]) -> tuple[int, ...]:
    """The data's class indices of the file's ``specialist_classes``, in column order."""
    names = arrays.get("specialist_classes")
    if names is None or names.dtype.kind not in "US" or names.ndim != 1:
        raise InputError(f"specialist {spec!r}: no 1-d string array 'specialist_classes'; expected the class names "
                         "the specialist tells apart (a file written by compress soft-targets --specialist)")
    names = [str(n) for n in names.tolist()]
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise InputError(f"specialist {spec!r}: class {unknown[0]!r} is not a label of the data; expected classes "
                         f"among {', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''}")
    if not names or len(set(names)) != len(names) or len(names) >= len(labels):
        raise InputError(f"specialist {spec!r}: 'specialist_classes' names {len(names)} classes ({len(set(names))} "
                         f"distinct); expected 1 to {len(labels) - 1} distinct classes of the data's {len(labels)}")
    return tuple(labels.index(n) for n in names)


def load_specialist(spec: str, data) -> Specialist:
    """The specialist whose outputs the file ``spec`` holds, checked against ``data`` (every failure one
    ``InputError`` line naming the file)."""
    arrays = precomputed.read_arrays(spec)
    labels = [str(v) for v in data.labels]
    classes = _classes(spec, arrays, labels)
    column = np.full(len(labels), len(classes), dtype=np.int64)  # each class's column: its own, or the dustbin
    column[list(classes)] = np.arange(len(classes))
    as_columns = (lambda y: None if y is None else column[np.asarray(y, dtype=np.int64)])
    stored = precomputed.checked_outputs(spec, arrays, data, [labels[c] for c in classes] + [DUSTBIN],
                                         "class of the specialist (its dustbin last)",
                                         as_columns(data.y_train), as_columns(data.y_test))
    if stored.output == "label":
        raise InputError(f"specialist {spec!r}: holds class indices only; expected 'logits' or 'probs' (the "
                         "combination needs the specialist's distribution)")
    if not stored.has_test:
        raise InputError(f"specialist {spec!r}: no 'test' outputs; expected the test split's too (the combination "
                         "is measured on it)")
    read = lambda x: output_logits(stored.output, stored.lookup(x).astype(np.float64))  # noqa: E731
    correction = arrays.get("dustbin_correction")
    readable = correction is not None and correction.dtype.kind == "f" and correction.size == 1
    correction = float(correction.reshape(())) if readable and np.isfinite(correction).all() else 0.0  # the report's
    return Specialist(classes, None, correction, "computed elsewhere", {"file": Path(spec).name}, True,
                      file_sha256(Path(spec)), stored=read)
