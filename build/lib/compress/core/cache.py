"""Where cached stages live, and the content hashes that key them.

The cache is under the user cache dir (``platformdirs``), or ``$COMPRESS_CACHE_DIR`` when set (tests
and CI point it at a temporary folder). Keys are sha256 of everything that determines the result, so a
changed teacher, data set or setting never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("COMPRESS_CACHE_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = user_cache_dir("compress")
    root = Path(root)
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
