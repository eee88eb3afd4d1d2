"""Progress that reads well on a terminal and in a CI log.

On a terminal: rich's live bars. Anywhere else (a CI job, ``2> log.txt``) live bars are either disabled or a
mess of cursor codes, and a log that says nothing for ten minutes looks hung. There the same calls print
plain lines on stderr: one when a task starts, one when it ends, and in between at most one every
``COMPRESS_PROGRESS_INTERVAL`` seconds (default 15) plus one at every 10% of the task, each with the step,
the elapsed time and an estimate of the time left::

    [  12s] distilling mlp-small (T=2): epoch 30/100, elapsed 0:10, ETA 0:23

``make_progress`` returns either kind; both have the part of rich's ``Progress`` API the pipeline uses
(context manager, ``add_task``, ``update``, ``advance``, ``.console``) plus ``note(text)`` for one-off lines.
The line printer takes its clock as an argument, so its tests need no sleeps and no timing.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from compress.core.errors import InputError

INTERVAL_ENV = "COMPRESS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 15.0


def interval_from_env(environ: dict | None = None) -> float:
    """Seconds between periodic lines: ``COMPRESS_PROGRESS_INTERVAL`` when set, else the default."""
    text = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{INTERVAL_ENV}={text!r}: expected a number of seconds > 0")
    return value


def is_interactive(console: Console) -> bool:
    """Live bars only on a real terminal (not FORCE_COLOR in a CI log, not TERM=dumb)."""
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
    except (ValueError, OSError):  # a closed stream
        return False


def make_progress(console: Console, *, quiet: bool, interactive: bool, clock: Callable[[], float] = time.monotonic,
                  interval: float | None = None):
    """Bars (``interactive``), lines (otherwise), or nothing but warnings and notes' absence (``quiet``)."""
    if quiet or interactive:
        return BarProgress(console, disable=quiet)
    return LineProgress(console, clock=clock, interval=interval_from_env() if interval is None else interval)


@contextlib.contextmanager
def one_step(progress, description: str) -> Iterator[None]:
    """A task without steps around a block: a start line and a ``done in 0:03`` line (a stopped line when
    the block raises), or a bar on a terminal."""
    task = progress.add_task(description, total=1)
    yield
    progress.update(task, completed=1)


class BarProgress(Progress):
    """rich's bars with the pipeline's columns; ``note`` prints a line above them (nothing when quiet)."""

    def __init__(self, console: Console, disable: bool = False):
        super().__init__(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         console=console, disable=disable, transient=False)

    def note(self, text: str) -> None:
        if not self.disable:
            self.console.print(text, highlight=False, soft_wrap=True, markup=False)


def clock_text(seconds: float) -> str:
    """``0:12``, ``6:28``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float
    unit: str
    started: float
    start_completed: float  # where it started (a resumed run starts at epoch k): the rate counts from here
    last_line: float
    decile: int
    finished: bool = False

    def count(self) -> str:
        if self.total == 1 and not self.unit:  # a task of one step: "done in 0:03", not "1/1"
            return ""
        of = "" if self.total is None else f"/{_num(self.total)}"
        return f"{self.unit} {_num(self.completed)}{of}".strip()

    def eta(self, now: float) -> str:
        done = self.completed - self.start_completed
        if self.total is None or done <= 0:
            return ""
        return f", ETA {clock_text((self.total - self.completed) * (now - self.started) / done)}"


class LineProgress:
    """The ``Progress`` calls the pipeline makes, printed as plain lines (see the module docstring)."""

    def __init__(self, console: Console, *, clock: Callable[[], float] = time.monotonic,
                 interval: float = DEFAULT_INTERVAL_S):
        self.console, self._clock, self.interval = console, clock, interval
        self._origin = clock()
        self._tasks: dict[int, _Task] = {}

    def __enter__(self) -> "LineProgress":
        self._origin = self._clock()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            now = self._clock()
            for task in self._tasks.values():
                if not task.finished:
                    at = f" at {task.count()}" if task.count() else ""
                    self._line(f"{task.description}: stopped{at} after {clock_text(now - task.started)} "
                               f"({exc_type.__name__})")
                    task.finished = True
        return False

    def _line(self, text: str) -> None:
        self.console.print(f"[{int(self._clock() - self._origin):>4}s] {text}", highlight=False, soft_wrap=True,
                           markup=False)

    def note(self, text: str) -> None:
        self._line(text)

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0, start: bool = True,
                 visible: bool = True, unit: str = "", **fields) -> int:
        now = self._clock()
        task_id = len(self._tasks)
        task = _Task(description, total, completed, unit, now, completed, now, self._decile(total, completed))
        self._tasks[task_id] = task
        if total is not None and completed >= total:
            task.finished = True
            self._line(f"{description}: already done" + (f" ({task.count()})" if task.count() else ""))
        elif completed:
            self._line(f"{description}: started at {task.count()}")
        else:
            of = "" if total in (None, 1) else f" ({_num(total)} {unit}s)" if unit else f", 0/{_num(total)}"
            self._line(f"{description}: started{of}")
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields) -> None:
        task = self._tasks[task_id]
        before = task.completed
        renamed = description is not None and description != task.description
        task.description = description if description is not None else task.description
        task.total = total if total is not None else task.total
        task.unit = fields.get("unit", task.unit)
        task.completed = completed if completed is not None else task.completed
        task.completed += advance or 0
        if task.finished:
            return
        now = self._clock()
        if task.total is not None and task.completed >= task.total:
            task.finished = True
            count = task.count()
            self._line(f"{task.description}: done{', ' + count if count else ''} in {clock_text(now - task.started)}")
            return
        decile = self._decile(task.total, task.completed)
        progressed = task.completed != before
        due = progressed and now - task.last_line >= self.interval
        if (renamed and not progressed) or decile > task.decile or due:
            status = ", ".join(filter(None, [task.count(), f"elapsed {clock_text(now - task.started)}"]))
            self._line(f"{task.description}: {status}{task.eta(now)}")
            task.last_line = now
        task.decile = max(task.decile, decile)

    @staticmethod
    def _decile(total: float | None, completed: float) -> int:
        return -1 if not total else int(10 * completed / total)
