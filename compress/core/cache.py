"""Where cached stages live, and the content hashes that key them.

The cache is under the user cache dir (``platformdirs``), or ``$COMPRESS_CACHE_DIR`` when set (tests
and CI point it at a temporary folder). Keys are sha256 of everything that determines the result, so a
changed teacher, data set or setting never reuses a stale entry.

Every entry this project writes (soft targets, built-in teacher weights, student checkpoints) goes
through ``write_entry``, which stores its sha256 beside it (``<entry>.sha256``), and is read back through
``read_verified``: a missing or mismatching checksum or an entry that does not load is discarded with one
warning line (logger ``compress.cache``) and recomputed. Nothing from the cache is unpickled as code:
torch files are read with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, TypeVar

import torch

from compress.core.errors import InputError

log = logging.getLogger("compress.cache")
T = TypeVar("T")


class CacheUnusable(InputError, OSError):
    """The cache folder cannot be created or written (exit code 2). Also an ``OSError``, so code that
    falls back from an unwritable cache (``except OSError``) keeps doing so."""


def cache_dir(*parts: str) -> Path:
    """The cache folder ``<root>/<parts...>``, created when missing.

    ``<root>`` is ``$COMPRESS_CACHE_DIR`` when set, else the user cache dir. When the folder cannot be
    created or is not writable (a read-only folder, ``COMPRESS_CACHE_DIR`` naming a regular file) this
    raises ``CacheUnusable`` (an ``InputError``: the CLI prints one line naming COMPRESS_CACHE_DIR and
    exits 2). The pipeline asks for the cache before any training, so this happens before any work is
    done; the run never continues without its cache (resuming relies on it).
    """
    return _usable_folder("COMPRESS_CACHE_DIR", (), parts)


def machine_dir() -> Path:
    """This machine's own measurements (the training-rate calibration, ``compress.estimate``):
    ``$COMPRESS_MACHINE_DIR`` when set, else ``machine/`` in the user cache dir. Not under
    ``$COMPRESS_CACHE_DIR``: runs on one machine with separate caches (a CI job's fresh cache every time)
    share it, so they choose the same epochs and train the same models. Unusable: ``CacheUnusable``."""
    return _usable_folder("COMPRESS_MACHINE_DIR", ("machine",), ())


def _usable_folder(variable: str, default_parts: tuple[str, ...], parts: tuple[str, ...]) -> Path:
    """``<root>/<parts...>`` created and writable, where ``<root>`` is ``$variable`` or the user cache dir
    joined with ``default_parts``; else ``CacheUnusable`` naming the variable and the folder."""
    env = os.environ.get(variable)
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("compress")).joinpath(*default_parts)
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(path, os.W_OK | os.X_OK) else "not writable by this user"
    except OSError as exc:
        problem = exc.strerror or str(exc)
        for folder in [path, *path.parents]:
            if folder.exists() and not folder.is_dir():
                problem = f"{str(folder)!r} is a file, not a folder" if folder != root else "a file, not a folder"
                break
    if problem:
        where = (f"{variable} {str(root)!r}" if env else
                 f"cache folder {str(root)!r} (the user cache dir; {variable} is not set)")
        inside = "" if path == root else f" ({str(path)!r})"
        raise CacheUnusable(f"{where}: cannot keep the cache there{inside}: {problem}; expected a folder this user "
                            f"can create and write in (set {variable} to one)")
    return path


# --- verified entries ---------------------------------------------------------------------------------------

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def checksum_path(entry: Path | str) -> Path:
    """Where the sha256 of a cache entry is kept: ``<entry>.sha256`` beside it."""
    entry = Path(entry)
    return entry.with_name(entry.name + ".sha256")


def _recorded(entry: Path) -> list[str]:
    """The digests the checksum file accepts for ``entry`` (one; two while an entry is being replaced)."""
    try:
        lines = checksum_path(entry).read_text().split()
    except (OSError, UnicodeDecodeError):
        return []
    return [d for d in lines if _DIGEST.match(d)]


def one_line(exc: BaseException) -> str:
    """An exception as one short line (for warnings and errors that must not span lines)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 120 else text[:117] + "..."


def discard(entry: Path | str, reason: str) -> None:
    """Remove a damaged cache entry and its checksum, with one warning line naming it."""
    entry = Path(entry)
    log.warning("cache: discarding %s (%s); recomputing it", entry, reason)
    for path in (entry, checksum_path(entry)):
        try:
            path.unlink()
        except OSError:
            pass


def write_entry(entry: Path | str, write: Callable[[Path], None]) -> bool:
    """Write a cache entry and its sha256 (``<entry>.sha256``); ``write(tmp)`` writes the entry's file.

    Every step is atomic (``atomic_path``) and the checksum file always accepts whatever entry is on disk:
    while an entry is replaced it lists the new digest and the old one, then the new one only, so an
    interruption at any point leaves either the old or the new entry, verified. A failed write (disk full,
    a folder turned read-only) is one warning line and returns False: the caller keeps its result in
    memory and the run goes on.
    """
    from compress.core.atomic import atomic_path, write_text

    entry = Path(entry)
    try:
        old = file_sha256(entry) if entry.is_file() else None
        old = old if old in _recorded(entry) else None
        with atomic_path(entry) as tmp:
            write(tmp)
            new = file_sha256(tmp)
            write_text(checksum_path(entry), "\n".join([new] + ([old] if old and old != new else [])) + "\n")
        write_text(checksum_path(entry), new + "\n")
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not is_write_failure(exc):
            raise
        log.warning("cache: cannot write %s (%s); continuing without caching it", entry, one_line(exc))
        return False
    return True


# torch.save reports a failed write (a full disk, a file size limit) as a RuntimeError from its zip writer
_TORCH_WRITE_FAILURE = ("inline_container.cc", "PytorchStreamWriter", "file write failed", "iostream error")


def is_write_failure(exc: BaseException) -> bool:
    """True when ``exc`` says a file could not be written: an ``OSError``, or torch's writer failing."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError)
                                         and any(s in str(exc) for s in _TORCH_WRITE_FAILURE))


def read_verified(entry: Path | str, load: Callable[[Path], T]) -> T | None:
    """``load(entry)`` when the entry exists and matches its checksum; None when it is missing.

    A missing or mismatching checksum, an unreadable file or any error from ``load`` discards the entry
    (one warning line naming it, no traceback) and returns None, so the caller recomputes it. ``load``
    must not run code from the file: torch files are read with ``weights_only=True``.
    """
    entry = Path(entry)
    if not entry.is_file():
        return None
    recorded = _recorded(entry)
    if not recorded:
        discard(entry, "no checksum beside it")
        return None
    try:
        actual = file_sha256(entry)
    except OSError as exc:
        discard(entry, f"unreadable: {one_line(exc)}")
        return None
    if actual not in recorded:
        discard(entry, "checksum mismatch: damaged or changed since it was written")
        return None
    try:
        return load(entry)
    except Exception as exc:
        discard(entry, f"does not load: {one_line(exc)}")
        return None


def torch_load(path: Path | str):
    """``torch.load`` of a cache file on the CPU that never unpickles code (``weights_only=True``)."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def content_key(*items) -> str:
    """sha256 of a JSON rendering of ``items`` (strings, numbers, lists, dicts)."""
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of every file in a folder (e.g. an .mlpackage) in sorted order."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def path_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file in a folder (an .mlpackage is a folder)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def state_dict_sha256(state_dict: dict) -> str:
    """Content hash of a model's weights (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
