"""Labelled audio folders -> ``Dataset`` of fixed-length raw PCM clips (``input_kind="audio"``).

``load_audio_folder(path, **options)`` (registered as the ``audio-folder`` loader in ``compress.data``).

Where labels come from (``label_pattern``):

* ``None`` (auto): class-per-subfolder (``root/<class>/*.wav``, or ``root/train/<class>/*`` +
  ``root/test/<class>/*``) when the audio files sit in subfolders; otherwise, when the files sit flat in
  ``root`` or ``root/recordings/`` and every name matches ``<label>_<speaker>_<index>``, that pattern.
* ``"folder"``: class-per-subfolder.
* a pattern of ``{field}`` placeholders and literal separators matched against the file stem, e.g.
  ``"{label}_{speaker}_{index}"``. ``{label}`` is required; other fields can drive the split. ``{label}``
  may appear more than once: the label is the file name's text from the first to the last of them
  (``"{label}_{label}_{index}"`` labels ``3_george_12.wav`` as ``3_george``: digit and speaker as one class).

How the split is made (``split``):

* ``None`` (auto): the ``train/``/``test/`` folders when present; else ``"index<5"`` when the names carry
  an integer ``{index}`` field and that rule leaves clips on both sides (the usual split of recording collections such as the Free Spoken Digit
  Dataset, where takes 0-4 of every speaker and label are the test set); else a stratified random
  ``test_fraction``.
* ``"<field><op><int>"`` (op one of ``< <= > >= == !=``): a rule on an integer name field; matching files
  are the test set (``"index<5"``).
* ``"speaker=alice,bob"``: hold out those values of a field (speaker-aware: no test speaker in training).
* ``"random"``: stratified random ``test_fraction``, seeded with ``seed``.

Audio: read with ``soundfile`` (WAV, FLAC, OGG, AIFF), mixed to mono (channel mean), resampled to
``sample_rate`` with ``scipy.signal.resample_poly`` (polyphase, Kaiser window), then brought to exactly
``num_samples = round(duration_s * sample_rate)``: a shorter clip is zero-padded **at the end** (left
aligned), a longer one is **centre-cropped**. Samples are float32 PCM in [-1, 1] (16-bit PCM / 32768, the
``soundfile`` float convention). No other normalization: the app feeds the raw PCM window; the model's own
front-end (``compress.models.frontend.LogMel``) computes the features.

Unreadable or empty files are an ``InputError`` naming the file, unless ``allow_unreadable=True``: then
they are skipped, listed in ``normalization["skipped_files"]`` and reported in one warning.

Classes: every class subfolder (``"folder"`` labels; in ``train/`` when pre-split) must hold at least one
audio file, and every label must keep at least one readable clip; a class folder or audio file that is a
symbolic link resolving outside the data root is refused (``compress.data.check_inside``); links inside
the root are followed. Labels (folder names or the ``{label}`` field) are checked like every loader's by
``compress.data.check_dataset``: printable, no tabs or line breaks, no surrounding whitespace.
"""

from __future__ import annotations

import operator
import re
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.data.checks import check_distinct_classes, check_inside
from compress.data.dataset import Dataset

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff", ".aif"}

AUTO_PATTERN = "{label}_{speaker}_{index}"
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt}


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                  and not p.name.startswith("."))


def _pattern_regex(pattern: str) -> tuple[re.Pattern, list[str]]:
    fields = re.findall(r"\{(\w+)\}", pattern)
    if "label" not in fields:
        raise InputError(f"label_pattern {pattern!r}: expected a {{label}} field, e.g. '{AUTO_PATTERN}'")
    others = [f for f in fields if f != "label"]
    if len(set(others)) != len(others) or any(re.fullmatch(r"label_\d+", f) for f in others):
        raise InputError(f"label_pattern {pattern!r}: a field other than {{label}} appears twice")
    parts, labels = [], 0
    for part in re.split(r"(\{\w+\})", pattern):
        if re.fullmatch(r"\{\w+\}", part):
            name = part[1:-1]
            if name == "label":  # the second and later {label} become label_1, label_2, ...
                name, labels = ("label" if not labels else f"label_{labels}"), labels + 1
            parts.append(f"(?P<{name}>.+?)")
        elif part:
            parts.append(re.escape(part))
    return re.compile(f"^{''.join(parts)}$", re.DOTALL), fields  # DOTALL: a label with a line break is caught, named


def _parse_names(files: list[Path], pattern: str, where: Path) -> list[dict[str, str]]:
    rx, fields = _pattern_regex(pattern)
    last = f"label_{fields.count('label') - 1}" if fields.count("label") > 1 else "label"
    out = []
    for f in files:
        m = rx.match(f.stem)
        if not m:
            raise InputError(f"{f}: file name does not match label_pattern {pattern!r}")
        found = {k: v for k, v in m.groupdict().items() if not re.fullmatch(r"label_\d+", k)}
        found["label"] = f.stem[m.start("label"):m.end(last)]
        out.append(found)
    return out


def _label_sort_key(label: str):
    return (0, int(label), "") if re.fullmatch(r"-?\d+", label) else (1, 0, label)


def read_clip(path: Path, sample_rate: int) -> np.ndarray:
    """One file -> mono float32 PCM in [-1, 1] at ``sample_rate`` (any length). Raises ``InputError``."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError per failure
        raise InputError(f"{path}: unreadable audio file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "expected WAV/FLAC/OGG/AIFF") from None
    if data.size == 0:
        raise InputError(f"{path}: empty audio file (0 samples)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        from scipy.signal import resample_poly

        ratio = Fraction(int(sample_rate), int(rate))
        mono = resample_poly(mono.astype(np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
    if not np.isfinite(mono).all():
        raise InputError(f"{path}: audio contains NaN or infinity")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


def fit_length(clip: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end (shorter clips) or centre-crop (longer clips) to exactly ``num_samples``."""
    n = len(clip)
    if n >= num_samples:
        start = (n - num_samples) // 2
        return clip[start:start + num_samples]
    return np.pad(clip, (0, num_samples - n))


def _rule_mask(split: str, meta: list[dict[str, str]]) -> np.ndarray | None:
    m = re.fullmatch(r"\s*(\w+)\s*(<=|>=|==|!=|<|>)\s*(-?\d+)\s*", split)
    if m:
        field, op, value = m.group(1), _OPS[m.group(2)], int(m.group(3))
        vals = []
        for d in meta:
            if field not in d:
                raise InputError(f"split {split!r}: file names have no {{{field}}} field (fields: {sorted(d)})")
            if not re.fullmatch(r"-?\d+", d[field]):
                raise InputError(f"split {split!r}: field {field!r} is {d[field]!r}, expected an integer")
            vals.append(op(int(d[field]), value))
        return np.asarray(vals, dtype=bool)
    m = re.fullmatch(r"\s*(\w+)\s*=\s*(.+)", split)
    if m:
        field, held = m.group(1), {v.strip() for v in m.group(2).split(",") if v.strip()}
        if any(field not in d for d in meta):
            raise InputError(f"split {split!r}: file names have no {{{field}}} field")
        present = {d[field] for d in meta}
        missing = sorted(held - present)
        if missing:
            raise InputError(f"split {split!r}: {field} value(s) {missing} not found (present: {sorted(present)})")
        return np.asarray([d[field] in held for d in meta], dtype=bool)
    return None


def _label_pattern(root: Path, base: Path, flat: list[Path], subdirs: list[Path], presplit: bool) -> str:
    """Where labels come from when the user did not say: class subfolders, or the file-name pattern."""
    if presplit or (subdirs and not flat):
        return "folder"
    if flat:
        rx, _ = _pattern_regex(AUTO_PATTERN)
        if not all(rx.match(f.stem) for f in flat):
            bad = next(f for f in flat if not rx.match(f.stem))
            raise InputError(f"{bad}: cannot tell the label; expected class subfolders ({root}/<class>/*.wav) or "
                             f"file names like '{AUTO_PATTERN}' (pass label_pattern to describe yours)")
        return AUTO_PATTERN
    raise InputError(f"{root}: no audio files found; expected {root}/<class>/*.wav or flat files named '{AUTO_PATTERN}'")


def _find_labelled_files(root: Path, label_pattern: str | None):
    """(files, per-file fields, labels, label pattern used, whether the folder is pre-split train/test)."""
    presplit = (root / "train").is_dir() and (root / "test").is_dir() and label_pattern in (None, "folder")
    base = root / "recordings" if (root / "recordings").is_dir() and not _audio_files(root) else root
    flat = _audio_files(base)
    subdirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and _audio_files(p))
    if label_pattern is None:
        label_pattern = _label_pattern(root, base, flat, subdirs, presplit)
    files: list[Path] = []
    meta: list[dict[str, str]] = []
    if label_pattern == "folder":
        groups = [("train", root / "train"), ("test", root / "test")] if presplit else [("", base)]
        empty: list[Path] = []
        for part, folder in groups:
            check_distinct_classes(folder, [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")])
            for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                check_inside(root, cls)
                found = _audio_files(cls)
                if not found and part != "test":
                    empty.append(cls)
                for f in found:
                    check_inside(root, f)
                    files.append(f)
                    meta.append({"label": cls.name, "part": part})
        if not files:
            raise InputError(f"{root}: no audio files in class subfolders; expected {root}/<class>/*.wav")
        if empty:
            raise InputError(f"{empty[0]}: class folder has no audio files ({len(empty)} such folder(s)); expected "
                             f"at least one sample per class ({', '.join(sorted(AUDIO_SUFFIXES))}), or remove the folder")
    else:
        if not flat:
            raise InputError(f"{base}: no audio files to match against label_pattern {label_pattern!r}")
        files = flat
        for f in files:
            check_inside(root, f)
        meta = _parse_names(files, label_pattern, base)
    labels = sorted({d["label"] for d in meta}, key=_label_sort_key)
    if presplit and label_pattern == "folder":
        train_labels = {d["label"] for d in meta if d["part"] == "train"}
        extra = sorted({d["label"] for d in meta if d["part"] == "test"} - train_labels)
        if extra:
            raise InputError(f"{root / 'test'}: class folder '{extra[0]}' is not among the train classes")
        labels = sorted(train_labels, key=_label_sort_key)
    return files, meta, labels, label_pattern, presplit


def _read_clips(root: Path, files: list[Path], meta: list[dict], sample_rate: int, num_samples: int,
                allow_unreadable: bool) -> tuple[np.ndarray, list[dict], list[tuple[str, str]]]:
    """Every clip read, resampled and fitted to ``num_samples``; unreadable ones skipped with a warning
    only when ``allow_unreadable``. Returns (x, the kept files' fields, skipped (file, reason))."""
    clips, keep, skipped = [], [], []
    for i, f in enumerate(files):
        try:
            clips.append(fit_length(read_clip(f, sample_rate), num_samples))
            keep.append(i)
        except InputError as exc:
            if not allow_unreadable:
                raise
            skipped.append((str(f), str(exc)))
    if skipped:
        names = ", ".join(Path(s).name for s, _ in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable or empty audio file(s): {names}", stacklevel=3)
    if not clips:
        raise InputError(f"{root}: none of the {len(files)} audio files could be read")
    return np.stack(clips).astype(np.float32), [meta[i] for i in keep], skipped


def _split_mask(root: Path, split: str | None, meta: list[dict], y: np.ndarray, num_classes: int,
                folder_split: bool, test_fraction: float, seed: int) -> tuple[str, np.ndarray]:
    """(split rule used, boolean test mask): the user's rule, else train/test folders, else index<5
    where file names carry an index, else a stratified random split."""
    if split is None:
        if folder_split:
            split = "folders"
        elif (all(re.fullmatch(r"-?\d+", d.get("index", "x")) for d in meta)
              and 0 < sum(int(d["index"]) < 5 for d in meta) < len(meta)):
            split = "index<5"
        else:
            split = "random"
    if split == "folders":
        if not folder_split:
            raise InputError(f"split 'folders': {root} has no train/ and test/ subfolders")
        test = np.asarray([d["part"] == "test" for d in meta])
    elif split == "random":
        if not 0 < test_fraction < 1:
            raise InputError(f"test_fraction={test_fraction}: expected a number in (0, 1)")
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y))
        counts = np.bincount(y, minlength=num_classes)
        strat = y if counts.min() >= 2 else None
        _, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
        test = np.zeros(len(y), dtype=bool)
        test[te] = True
    else:
        test = _rule_mask(split, meta)
        if test is None:
            raise InputError(f"split {split!r}: expected 'random', 'folders', '<field><op><int>' (e.g. 'index<5') "
                             "or '<field>=<v1>,<v2>' (e.g. 'speaker=theo')")
    if test.all() or not test.any():
        raise InputError(f"{root}: split {split!r} leaves {int((~test).sum())} train and {int(test.sum())} test clips; "
                         "expected both non-empty")
    return split, test


def load_audio_folder(path: str | Path, *, seed: int = 0, sample_rate: int = 8000, duration_s: float = 1.0,
                      label_pattern: str | None = None, split: str | None = None, test_fraction: float = 0.2,
                      allow_unreadable: bool = False, **_) -> Dataset:
    """A folder of labelled audio clips -> ``Dataset`` with x float32 ``(n, num_samples)`` raw PCM in [-1, 1].

    See the module docstring for label sources, split rules, resampling and the pad/crop rule.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: expected a folder of audio files ({sorted(AUDIO_SUFFIXES)})")
    if int(sample_rate) <= 0 or not duration_s > 0:
        raise InputError(f"sample_rate={sample_rate}, duration_s={duration_s}: expected positive numbers")
    num_samples = int(round(duration_s * sample_rate))
    files, meta, labels, label_pattern, presplit = _find_labelled_files(root, label_pattern)
    x, meta, skipped = _read_clips(root, files, meta, int(sample_rate), num_samples, allow_unreadable)
    lost = sorted(set(labels) - {d["label"] for d in meta}, key=_label_sort_key)
    if lost:
        raise InputError(f"{root}: every audio file of label(s) {lost} was unreadable and skipped; expected at "
                         "least one readable clip per class")
    y = np.asarray([labels.index(d["label"]) for d in meta], dtype=np.int64)
    split, test = _split_mask(root, split, meta, y, len(labels), presplit and label_pattern == "folder",
                              test_fraction, seed)
    normalization = {
        "formula": "x = pcm (no normalization: the model's LogMel front-end computes the features)",
        "input": "raw mono PCM, float32 in [-1, 1]",
        "pcm_scaling": "int16 / 32768 (float PCM used as is)",
        "sample_rate": int(sample_rate),
        "num_samples": num_samples,
        "duration_s": num_samples / int(sample_rate),
        "channels": "mono (multi-channel files are averaged)",
        "resampling": "scipy.signal.resample_poly (polyphase) when the file's rate differs",
        "padding": "shorter clips zero-padded at the end (left-aligned); longer clips centre-cropped",
        "scale": 1.0, "mean": 0.0, "std": 1.0,
        "label_source": "class subfolders" if label_pattern == "folder" else f"file names '{label_pattern}'",
        "split": split,
    }
    if skipped:
        normalization["skipped_files"] = [s for s, _ in skipped]
    name = root.name if root.name not in ("", "recordings") else root.parent.name
    return Dataset(name or "audio", str(root), x[~test], y[~test], x[test], y[test], labels, normalization,
                   input_kind="audio", label_source="the class folder names" if label_pattern == "folder"
                   else f"the file names (label_pattern {label_pattern!r})")
