"""Atomic file and folder writes, so an interrupted or failed run never leaves a half-written artifact.

Outputs are written to a temporary sibling (same filesystem, so ``os.replace`` is atomic) and moved into
place only when complete. On any exception the temporary is removed and the old output stays untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success move it over ``final`` (file or folder).

    The caller writes a file *or* a folder (e.g. a ``.mlpackage``) at the yielded path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def replace_path(src: Path, final: Path) -> None:
    """Move ``src`` over ``final``; a folder replaces a folder via a rename of the old one aside."""
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        try:
            os.replace(src, final)
        except BaseException:
            os.replace(old, final)
            raise
        _remove(old)
    else:
        os.replace(src, final)


def write_bytes(final: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text(final: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    return write_bytes(final, text.encode("utf-8"))
