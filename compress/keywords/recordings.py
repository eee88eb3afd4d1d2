"""The user's own long recordings: background audio for training and silence, and labelled test streams.

Background (``--background``): a folder of audio files (searched recursively) or one file, any length, any
rate, resampled to the model's rate and joined into one array; ambient sound a phone hears (kitchens, cars,
television) is what false accepts come from. Test streams (``--test-streams``): a folder of long recordings
and ``labels.csv`` with the header ``file,start_s,end_s,label`` (one row per spoken word, ``file`` relative
to the folder; a recording without rows is all non-keyword audio: list it with a row whose label is empty).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from compress.core.errors import InputError
from compress.data.audio import AUDIO_SUFFIXES, read_clip
from compress.data.checks import check_inside
from compress.keywords.scoring import Span
from compress.keywords.streams import Stream

LABELS_FILE = "labels.csv"
LABEL_COLUMNS = ("file", "start_s", "end_s", "label")


def load_background(path: str | Path, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """(every recording under ``path`` at ``sample_rate``, joined; the files' names). Raises InputError."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    else:
        raise InputError(f"--background {str(root)!r}: not found; expected a folder of audio recordings or one file")
    if not files:
        raise InputError(f"--background {str(root)!r}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in it")
    if root.is_dir():
        for f in files:
            check_inside(root, f)
    audio = np.concatenate([read_clip(f, sample_rate) for f in files])
    if len(audio) < sample_rate:
        raise InputError(f"--background {str(root)!r}: {len(audio) / sample_rate:.2f} s of audio; expected at least "
                         "one second (long recordings of ambient sound)")
    return audio, [str(f.relative_to(root)) if root.is_dir() else f.name for f in files]


def _rows(table: Path) -> list[dict]:
    try:
        with table.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
                raise InputError(f"{table}: header {reader.fieldnames}; expected {','.join(LABEL_COLUMNS)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{table}: cannot read ({exc}); expected a CSV {','.join(LABEL_COLUMNS)}") from None


def load_labelled_streams(folder: str | Path, sample_rate: int) -> list[Stream]:
    """The recordings named in ``folder/labels.csv``, each a ``Stream`` with its words' spans (see module)."""
    root = Path(folder)
    table = root / LABELS_FILE
    if not table.is_file():
        raise InputError(f"--test-streams {str(root)!r}: no {LABELS_FILE}; expected a folder of recordings and "
                         f"{LABELS_FILE} with the header {','.join(LABEL_COLUMNS)}")
    spans: dict[str, list[Span]] = {}
    for line, row in enumerate(_rows(table), start=2):
        where = f"{table}:{line}"
        name = (row["file"] or "").strip()
        if not name:
            raise InputError(f"{where}: empty file name; expected a recording in {root}")
        spans.setdefault(name, [])
        if not (row["label"] or "").strip():
            continue  # a recording listed without words
        try:
            start, end = float(row["start_s"]), float(row["end_s"])
        except ValueError:
            raise InputError(f"{where}: start_s {row['start_s']!r}, end_s {row['end_s']!r}; expected seconds") from None
        if not (0 <= start < end):
            raise InputError(f"{where}: span {start}..{end} s; expected 0 <= start_s < end_s")
        spans[name].append(Span(start, end, row["label"].strip()))
    if not spans:
        raise InputError(f"{table}: no rows; expected one row per spoken word")
    streams = []
    for name, words in spans.items():
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"{table}: file {name!r}; expected a path inside {root} (no '..', not absolute)")
        path = root / name
        check_inside(root, path)
        if not path.is_file():
            raise InputError(f"{table}: file {name!r} not found in {root}")
        audio = read_clip(path, sample_rate)
        late = [s for s in words if s.end_s > len(audio) / sample_rate + 1e-3]
        if late:
            raise InputError(f"{table}: {name} span {late[0].start_s}..{late[0].end_s} s ends after the recording "
                             f"({len(audio) / sample_rate:.2f} s)")
        streams.append(Stream(audio, sorted(words, key=lambda s: s.start_s), sample_rate, None, None, f"recorded ({name})"))
    return streams
