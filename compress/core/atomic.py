"""Atomic file and folder writes, so an interrupted or failed run never leaves a half-written artifact.

Outputs are written to a temporary sibling (same filesystem, so ``os.replace`` is atomic) and moved into
place only when complete. On any exception the temporary is removed and the old output stays untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from compress.core.errors import InputError

# Temporary siblings carry the writer's pid (".<name>.<pid>.<random>.tmp"), so a later run can tell the
# leftovers of a killed process (SIGKILL leaves no chance to clean up) from a live writer's work.
STALE = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of ``name`` written by this process."""
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(folder: Path | str) -> list[Path]:
    """Remove temporary siblings (and ``.old-<pid>`` folders) left in ``folder`` by processes that no
    longer run; returns what was removed. Live writers' temporaries are left alone."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = STALE.match(entry.name) or re.match(r"^\..+\.old-(\d+)$", entry.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mkdtemp(prefix: str, dir: Path) -> Path:
    """A temporary folder beside an output, with the mode an ordinary ``mkdir`` gives (``0o777 & ~umask``):
    ``mkdtemp`` makes it 0700, and a run folder moved into place from it would stay unreadable to the
    other users of a build machine (an app build running as another user)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dir))
    folder.chmod(0o777 & ~_umask())
    return folder


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success move it over ``final`` (file or folder).

    The caller writes a file *or* a folder (e.g. a ``.mlpackage``) at the yielded path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = public_mkdtemp(temp_prefix(final.name), final.parent)
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp}")
        replace_path(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def locked(final: Path) -> Iterator[None]:
    """An exclusive lock across processes on the folder that holds ``final`` (``flock`` on the folder
    itself, so no lock file is left behind): two writers replacing the same output take turns instead of
    racing on the rename of the old folder."""
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def require_file_output(final: Path | str, what: str) -> Path:
    """A path a *file* is about to be written to: an existing folder there is an ``InputError`` (writing the
    file would replace the folder and everything in it). Called before any work, and again on the move."""
    final = Path(final)
    if final.is_dir():
        raise InputError(f"{what} {str(final)!r}: is a folder; expected a file path (a file never replaces a folder)")
    return final


def replace_path(src: Path, final: Path) -> None:
    """Move ``src`` over ``final``; a folder replaces a folder via a rename of the old one aside. Safe
    when several processes replace the same ``final``: the last one wins, nothing is left behind.
    A file never replaces a folder: only a run's own output folder is replaced as a folder."""
    final = Path(final)
    with locked(final):
        if not src.is_dir():
            require_file_output(final, "output")
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            _remove(old)
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
