"""A teacher member given as its outputs, computed elsewhere (a machine big enough to run it).

``compress soft-targets --teacher SPEC --data D -o big.npz`` runs any member (a built-in name, an .onnx, a
TorchScript file, ...) on the data's transfer set and test split and writes its outputs; ``--teacher big.npz``
then stands in for the live member: same soft targets, the same student bit for bit. For a model this tool
cannot run at all, ``compress soft-targets --inputs-only`` writes just the inputs and their hashes; run the
model on ``x_train`` / ``x_test`` wherever it lives and add ``train`` / ``test`` / ``output`` to that file.

File format (``.npz`` of plain arrays; nothing is unpickled):

  output         0-d string: "logits", "probs" or "label" (a black-box member that only names a class:
                 its outputs become one-hot hard pseudo-labels in the soft targets, whatever T)
  train          (N, K) float outputs for the transfer set, rows in the data's order (N = transfer-set size,
                 K = the data's classes, in ``labels`` order); for "label" also (N,) integer class indices
  train_sha256   0-d string: sha256 of the transfer set's inputs the rows were computed from: the float32,
                 C-contiguous bytes of ``x_train`` exactly as ``compress.data.load_data`` returns it
                 (normalized, after --limit-train, in order)
  test, test_sha256   optional: the same for the test split. Without them the member has no test outputs:
                 the report lists it as not measured and the ensemble row averages the other members
  test_row_sha256     optional (M, 32) uint8: the sha256 digest of each test row's float32 bytes, so a
                 subset of the test split (another --limit-test) still finds its rows
  labels         optional 1-d strings: the class names in output order (checked against the data's)
  format, teacher, teacher_sha256, x_train, x_test   optional, informational (ignored when loading)

Every check is made at load, each an ``InputError`` of one line naming the file: the arrays' dtype and
shape, the row count against the data's transfer set, the input hash against the data, the class count,
label indices inside the data's classes, finite values, and the row order: the hashes cover the inputs,
not the order of the output rows, so where both splits are labelled and one split's top classes gain at
least 20 points over chance, the other split must gain at least half as much (rows reversed or shuffled
after computing agree at chance level). The member's ``logits(x)`` looks rows up by
content (sha256 of each row's float32 bytes), so any rows of the transfer set or test split answer, in any
order or batch; a row it was not computed for is an ``InputError``.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.core.atomic import atomic_path
from compress.core.cache import file_sha256
from compress.core.errors import InputError
from compress.core.npz import check_npz_sizes
from compress.teachers.ensemble import output_logits
from compress.teachers.member import Teacher

FORMAT = "compress.teachers.precomputed/1"
OUTPUTS = ("logits", "probs", "label")


class MissingOutputs(InputError):
    """The member's file holds no outputs for these rows' split (no ``test`` arrays)."""


@dataclass
class PrecomputedTeacher(Teacher):
    has_test_outputs: bool = True


def lacks_test_outputs(member: Teacher) -> bool:
    """True for a member computed elsewhere whose file has no test-split outputs."""
    return isinstance(member, PrecomputedTeacher) and not member.has_test_outputs


def split_sha256(x: np.ndarray) -> str:
    """sha256 of a split's inputs: their float32, C-contiguous bytes."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def row_digests(x: np.ndarray) -> list[bytes]:
    """The sha256 digest of each row's float32 bytes (the lookup key of a row)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows = x.reshape(len(x), int(np.prod(x.shape[1:], dtype=np.int64)))
    return [hashlib.sha256(r.tobytes()).digest() for r in rows]


def _read(spec: str, path: Path) -> dict[str, np.ndarray]:
    """The file's arrays (the inputs ``x_train``/``x_test`` are not read)."""
    if not path.is_file():
        raise InputError(f"teacher {spec!r}: file not found; expected an .npz of outputs (compress soft-targets)")
    check_npz_sizes(path, f"teacher {spec!r}")  # before np.load allocates what the headers declare
    try:
        loaded = np.load(str(path), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"teacher {spec!r}: not a readable .npz ({_first_line(exc)}); expected a file written by "
                         "compress soft-targets") from None
    if isinstance(loaded, np.ndarray):
        raise InputError(f"teacher {spec!r}: holds one bare array, without the hash of the inputs it was computed "
                         "from; expected an .npz with output, train and train_sha256 (see compress soft-targets)")
    with loaded:
        try:
            return {k: loaded[k] for k in loaded.files if k not in ("x_train", "x_test")}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"teacher {spec!r}: an array does not load ({_first_line(exc)}); expected plain "
                             "numeric and string arrays (no pickled objects)") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def _text(spec: str, arrays: dict, key: str, required: bool = True) -> str | None:
    value = arrays.get(key)
    if value is None:
        if required:
            raise InputError(f"teacher {spec!r}: no {key!r} array; expected {_EXPECTED[key]}")
        return None
    if value.dtype.kind not in "US" or value.size != 1:
        raise InputError(f"teacher {spec!r}: {key!r} is {value.dtype} {tuple(value.shape)}; expected a 0-d string")
    text = value.reshape(()).item()
    return text.decode() if isinstance(text, bytes) else str(text)


_EXPECTED = {
    "output": "a 0-d string 'logits', 'probs' or 'label' saying what the rows hold",
    "train_sha256": "the sha256 of the transfer set's float32 inputs the outputs were computed from "
                    "(compress soft-targets writes it)",
    "test_sha256": "the sha256 of the test split's float32 inputs, beside the 'test' outputs",
    "train": "(N, K) outputs for the transfer set (an --inputs-only file needs them added)",
}


def _outputs(spec: str, key: str, arr: np.ndarray, output: str, rows: int, k: int, what: str,
             columns: str) -> np.ndarray:
    """Check one split's outputs (dtype, shape, rows, classes, range) and return them as (rows, K) float32."""
    shape = f"float ({rows}, {k})" + (f" or integer ({rows},) class indices" if output == "label" else "")
    if output == "label" and arr.ndim == 1 and arr.dtype.kind in "iu":
        if len(arr) != rows:
            raise _rows_error(spec, key, len(arr), rows, what)
        bad = (arr < 0) | (arr >= k)
        if bad.any():
            raise InputError(f"teacher {spec!r}: {key!r} holds label {int(arr[bad][0])} ({int(bad.sum())} such row(s)), "
                             f"outside the {k} columns ({columns}); expected class indices 0..{k - 1}")
        return np.eye(k, dtype=np.float32)[arr.astype(np.int64)]
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise InputError(f"teacher {spec!r}: {key!r} is {arr.dtype} {tuple(arr.shape)}; expected {shape} {output}")
    if len(arr) != rows:
        raise _rows_error(spec, key, len(arr), rows, what)
    if arr.shape[1] != k:
        raise InputError(f"teacher {spec!r}: {key!r} has {arr.shape[1]} outputs per row; expected {k}, one per "
                         f"{columns}")
    if not np.isfinite(arr).all():
        raise InputError(f"teacher {spec!r}: {key!r} holds {int((~np.isfinite(arr)).sum())} NaN or infinite value(s); "
                         "expected finite outputs")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _rows_error(spec: str, key: str, got: int, rows: int, what: str) -> InputError:
    return InputError(f"teacher {spec!r}: {key!r} has {got} rows but the data's {what} has {rows} samples; expected "
                      "one row per sample (the same data, seed and --limit-train/--limit-test as this run)")


def _hash_error(spec: str, key: str, theirs: str, ours: str, what: str) -> InputError:
    return InputError(f"teacher {spec!r}: {key} {theirs[:12]}... does not match the data's {what} ({ours[:12]}...); "
                      "expected outputs computed on the same inputs (same data, order, seed and "
                      "--limit-train/--limit-test)")


def _test_keys(spec: str, arrays: dict, data, rows: int) -> list[bytes]:
    """The lookup keys of the file's test rows: the data's own test rows when the hashes match, else the
    file's per-row digests, which must cover every test row of this data (a subset of the file's split)."""
    theirs, ours = _text(spec, arrays, "test_sha256"), split_sha256(data.x_test)
    if theirs == ours:
        if rows != len(data.x_test):
            raise _rows_error(spec, "test", rows, len(data.x_test), "test split")
        return row_digests(data.x_test)
    digests = arrays.get("test_row_sha256")
    if digests is None:
        raise _hash_error(spec, "test_sha256", theirs, ours, "test split")
    if digests.dtype != np.uint8 or digests.shape != (rows, 32):
        raise InputError(f"teacher {spec!r}: 'test_row_sha256' is {digests.dtype} {tuple(digests.shape)}; expected "
                         f"uint8 ({rows}, 32), one sha256 digest per test row")
    keys = [bytes(d) for d in digests]
    if not set(row_digests(data.x_test)) <= set(keys):
        raise _hash_error(spec, "test_sha256", theirs, ours, "test split")
    return keys


def _check_labels(spec: str, arrays: dict, columns: list[str], what: str) -> None:
    labels = arrays.get("labels")
    if labels is not None and [str(v) for v in labels.reshape(-1).tolist()] != list(columns):
        raise InputError(f"teacher {spec!r}: 'labels' {[str(v) for v in labels.reshape(-1)][:5]} differ from "
                         f"{list(columns)[:5]}; expected outputs in that order, one per {what}")


@dataclass(frozen=True)
class StoredOutputs:
    """A file's outputs, checked against the data: what the rows hold, the rows' lookup by content (the
    member's or specialist's ``logits(x)``) and whether the test split is there."""

    output: str
    lookup: "_Lookup"
    has_test: bool


def read_arrays(spec: str) -> dict[str, np.ndarray]:
    """The arrays of the .npz ``spec`` (not its inputs ``x_train``/``x_test``), every failure an ``InputError``."""
    return _read(spec, Path(spec))


def checked_outputs(spec: str, arrays: dict, data, columns: list[str], what: str, y_train, y_test) -> StoredOutputs:
    """The file's outputs, one per entry of ``columns`` (``what`` names one in errors), checked against the
    data's inputs (hashes), the row counts, and the row order (``y_train``/``y_test``: each row's column, or
    None where unlabelled). A member's columns are the data's labels; a specialist's, its classes + dustbin."""
    if "train" not in arrays:
        raise InputError(f"teacher {spec!r}: no 'train' array; expected {_EXPECTED['train']}")
    output = _text(spec, arrays, "output")
    if output not in OUTPUTS:
        raise InputError(f"teacher {spec!r}: 'output' is {output!r}; expected one of {', '.join(OUTPUTS)}")
    k, n = len(columns), len(data.x_train)
    train = _outputs(spec, "train", arrays["train"], output, n, k, "transfer set", what)
    theirs, ours = _text(spec, arrays, "train_sha256"), split_sha256(data.x_train)
    if theirs != ours:
        raise _hash_error(spec, "train_sha256", theirs, ours, "transfer set")
    _check_labels(spec, arrays, columns, what)
    tables, keys = [train], row_digests(data.x_train)
    hashes = {"train": (ours, 0, n)}
    has_test = "test" in arrays
    if has_test:
        test_rows = len(arrays["test"])
        tables.append(_outputs(spec, "test", arrays["test"], output, test_rows, k, "test split", what))
        keys += _test_keys(spec, arrays, data, test_rows)
        hashes["test"] = (_text(spec, arrays, "test_sha256"), n, n + test_rows)
    lookup = _Lookup(spec, np.concatenate(tables), keys, hashes,
                     missing=set() if has_test else set(row_digests(data.x_test)) - set(keys))
    _check_row_order(spec, train, lookup(data.x_test) if has_test else None, y_train, y_test)
    return StoredOutputs(output, lookup, has_test)


def load_precomputed(spec: str, *, data=None, **_) -> Teacher:
    """The member whose outputs ``spec`` (an .npz, see the module docstring) holds, checked against ``data``."""
    arrays = read_arrays(spec)
    if data is None:
        raise InputError(f"teacher {spec!r}: outputs computed elsewhere need the data they were computed on")
    stored = checked_outputs(spec, arrays, data, list(data.labels), "label of the data", data.y_train, data.y_test)
    return PrecomputedTeacher(Path(spec).name, "precomputed", stored.lookup, file_sha256(Path(spec)), module=None,
                              output=stored.output, input_shape=tuple(data.input_shape),
                              has_test_outputs=stored.has_test)


def _gain_over_chance(outputs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """(agreement of the outputs' top class with the labels, the majority class's share, one standard error
    of that share over these rows): how far above guessing the rows are."""
    agreement = float(np.mean(np.argmax(outputs, axis=1) == labels))
    chance = float(np.bincount(labels).max() / len(labels))
    return agreement, chance, float(np.sqrt(chance * (1 - chance) / len(labels)))


def _check_row_order(spec: str, train: np.ndarray, test: np.ndarray | None, y_train, y_test) -> None:
    """Outputs in another row order than the data's pass every hash (the hashes cover the inputs, not the
    rows of outputs) and silently teach the student noise. Such rows agree with the labels at chance level
    while the same member is far above chance on the other split: where both splits are labelled and one
    gains at least 20 points over chance (and 3 standard errors), the other gaining less than half as much is
    an error naming the file. A member at chance on both splits is not an order problem (the teachers' own
    check warns about a member near chance); an unlabelled transfer set has nothing to compare with."""
    splits = {"train": (train, y_train)}
    if test is not None:
        splits["test"] = (test, y_test)
    gains = {}
    for key, (outputs, labels) in splits.items():
        if labels is None or len(labels) == 0:
            continue
        agreement, chance, error = _gain_over_chance(outputs, np.asarray(labels, dtype=np.int64))
        gains[key] = (agreement, agreement - chance, error)
    if len(gains) == 2:
        (low, (low_acc, low_gain, _)), (high, (high_acc, high_gain, high_error)) = sorted(
            gains.items(), key=lambda kv: kv[1][1])
        if high_gain >= max(0.2, 3 * high_error) and low_gain < high_gain / 2:
            raise InputError(f"teacher {spec!r}: {low!r} rows agree with the data's labels on {100 * low_acc:.1f}% but "
                             f"{high!r} rows on {100 * high_acc:.1f}%; expected each split's rows in the data's order "
                             "(rows reordered after they were computed?)")


class _Lookup:
    """``logits(x)``: the stored rows for ``x``'s rows, found by content."""

    def __init__(self, spec: str, table: np.ndarray, keys: list[bytes], hashes: dict, missing: set[bytes]):
        self.spec, self.table, self.hashes, self.missing = spec, table, hashes, missing
        self.index: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            self.index.setdefault(key, i)  # a sample present twice has the same outputs: the first answers

    def __call__(self, x: np.ndarray) -> np.ndarray:
        whole = split_sha256(x)
        for digest, start, stop in self.hashes.values():
            if whole == digest and len(x) == stop - start:  # a whole split, as computed: no per-row lookup
                return self.table[start:stop].copy()
        keys = row_digests(x)
        rows = [self.index.get(key) for key in keys]
        if None in rows:
            first = rows.index(None)
            if keys[first] in self.missing:
                raise MissingOutputs(f"teacher {self.spec!r}: holds no test-split outputs (no 'test' array); "
                                     "expected a file written with the test split to measure this member on it")
            raise InputError(f"teacher {self.spec!r}: sample {first} of {len(x)} (and {rows.count(None) - 1} more) is "
                             "not among the inputs the outputs were computed for; expected samples of the data's "
                             "transfer set or test split")
        return self.table[np.asarray(rows, dtype=np.int64)]


def _as_output(member: Teacher, out: np.ndarray, kind: str) -> np.ndarray:
    """The member's outputs as ``kind``: logits/probs as float32 (N, K), labels as int64 (N,) class indices."""
    if not np.isfinite(out).all():
        raise InputError(f"teacher {member.name!r}: outputs NaN or infinity on {int((~np.isfinite(out).all(axis=1)).sum())} "
                         "real samples; expected finite outputs")
    if kind == "label":
        return np.argmax(out, axis=1).astype(np.int64)
    if member.output == "label":
        raise InputError(f"teacher {member.name!r}: answers with a class only; expected --output label for it")
    if kind == member.output:
        return np.ascontiguousarray(out, dtype=np.float32)
    if kind == "probs":  # from logits
        z = out.astype(np.float64) - out.max(axis=1, keepdims=True)
        return (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
    return output_logits("probs", out).astype(np.float32)  # log-probabilities: logits of p


def input_arrays(data) -> dict[str, np.ndarray]:
    """What identifies the data's inputs: the split hashes, the test rows' digests and the class names."""
    return {"format": np.array(FORMAT), "train_sha256": np.array(split_sha256(data.x_train)),
            "test_sha256": np.array(split_sha256(data.x_test)),
            "test_row_sha256": np.frombuffer(b"".join(row_digests(data.x_test)), dtype=np.uint8).reshape(-1, 32),
            "labels": np.array([str(label) for label in data.labels])}


def output_arrays(member: Teacher, data, kind: str | None = None) -> dict[str, np.ndarray]:
    """``member`` run on the data's transfer set and test split, as the arrays of a precomputed file."""
    kind = kind or member.output
    if kind not in OUTPUTS:
        raise InputError(f"--output {kind!r}: unknown; expected one of {', '.join(OUTPUTS)}")
    return {**input_arrays(data), "output": np.array(kind), "train": _as_output(member, member.logits(data.x_train), kind),
            "test": _as_output(member, member.logits(data.x_test), kind), "teacher": np.array(member.name),
            "teacher_sha256": np.array(member.fingerprint)}


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays to ``path`` (an .npz), atomically: a failed write leaves the old file, or none."""

    if path.suffix.lower() != ".npz":
        raise InputError(f"-o {str(path)!r}: expected a path ending in .npz (--teacher recognizes the file by it)")
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:  # a file object: np.savez adds no suffix of its own
                np.savez(fh, **arrays)
    except OSError as exc:
        raise InputError(f"-o {str(path)!r}: cannot write there ({exc.strerror or exc}); expected a writable path") from None
