"""Read the headers of an ``.npz``'s arrays before loading them.

An ``.npy`` header declares a shape and dtype; ``np.load`` allocates what the header declares before it
reads the data, so a small file whose header says ``(10**6, 10**6)`` asks for terabytes (or fails deep in
NumPy with ``MemoryError``). Each array's declared size is checked against the bytes the file actually
holds for it, and a file that promises more than it holds is an ``InputError`` naming the array.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from compress.core.errors import InputError


def _header(fh) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fh)
    return tuple(shape), dtype


def check_npz_sizes(path: Path | str, what: str) -> None:
    """Raise ``InputError`` when an array of the ``.npz`` at ``path`` declares more bytes than it holds.
    A file that is not a zip is left to ``np.load`` (which names the problem itself)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as fh:
                    shape, dtype = _header(fh)
                    header_bytes = fh.tell()
            except (ValueError, OSError, zipfile.BadZipFile, EOFError):
                continue  # not a plain .npy header: np.load reports it
            if dtype.hasobject:
                continue  # np.load(allow_pickle=False) refuses it with its own message
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            held = info.file_size - header_bytes
            if declared > held:
                name = info.filename[:-4]
                raise InputError(f"{what}: array {name!r} declares shape {shape} {dtype} ({declared:,} bytes) but "
                                 f"holds {max(held, 0):,} bytes; expected a complete array (a damaged or crafted file?)")
