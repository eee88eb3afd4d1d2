"""Third-party lines that say nothing to the user, kept out of the command's stderr (a CI log shows the
tool's own lines), and let through when ``COMPRESS_VERBOSE`` is set (``compress --verbose ...``).

Two kinds: Python ``warnings`` and ``logging`` records (filtered by message, once per process, in
``quiet_python``), and lines native libraries write straight to file descriptor 2 (absl, oneDNN, the TFLite
interpreter), which Python cannot intercept: ``native_stderr_filtered`` points fd 2 at a temporary file for
the duration of the call that writes them, then passes on every line no pattern matches. Each target
declares its runtime's noise in its own folder (``Backend.stderr_noise``); core names no runtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import Iterable, Iterator

VERBOSE_ENV = "COMPRESS_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _Drop(logging.Filter):
    def __init__(self, patterns: list[re.Pattern]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def quiet_python(patterns: Iterable[str]) -> None:
    """Drop warnings and root-logger records whose message matches one of ``patterns`` (regular
    expressions), unless verbose. Root-logger records only: libraries that log through ``logging.warning``
    itself (not a logger of their own) reach the root logger's handlers directly."""
    if verbose():
        return
    compiled = [re.compile(p) for p in patterns]
    for pattern in compiled:
        warnings.filterwarnings("ignore", message=".*" + pattern.pattern)  # the filter matches at the start
    root = logging.getLogger()
    if not any(isinstance(f, _Drop) for f in root.filters):
        root.addFilter(_Drop(compiled))


@contextlib.contextmanager
def native_stderr_filtered(patterns: Iterable[str]) -> Iterator[None]:
    """Run the block with file descriptor 2 pointed at a temporary file, then write every line that none of
    ``patterns`` matches to the real stderr (in order). Nothing is lost: an exception still passes the
    captured lines on. Verbose, or without patterns, the block runs untouched."""
    compiled = [re.compile(p) for p in patterns]
    if verbose() or not compiled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(p.search(line) for p in compiled)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
