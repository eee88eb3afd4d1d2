"""What every ``compress`` command prints on failure: one ``error:`` line (exit 2) or one line per failed
check and breached budget (exit 1). Shared so that all commands look the same to a CI log reader.

Exit codes: 0 passed; 1 artifacts written but a check or budget failed (or training diverged: nothing
written); 2 bad input; 3 internal error (one line naming the stage, the traceback saved to a file);
130 interrupted (Ctrl-C); 143 terminated (SIGTERM, e.g. a CI job cancelled).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from compress.core.errors import InputError, InternalError, Terminated, ValidationFailed

err = Console(stderr=True)

WIDE_HELP_COLUMNS = 100


def help_markup_mode() -> str | None:
    """How ``--help`` is drawn: rich panels on a terminal at least ``WIDE_HELP_COLUMNS`` wide, else click's
    plain text. Rich's option table crops a word longer than its help column with an ellipsis (the
    ``--teacher`` contract syntax, ``module:function=weights.pt``), which in a CI log (80 columns, no terminal)
    or a narrow terminal loses the very text the help is for; plain help wraps at spaces and never crops."""
    import shutil
    import sys

    return "rich" if sys.stdout.isatty() and shutil.get_terminal_size().columns >= WIDE_HELP_COLUMNS else None


def fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_failures(reports: list[dict]) -> int:
    """One stderr line per breached budget ("budget breached: ...") and failed check; returns how many."""
    count = 0
    for report in reports:
        for b in report.get("budgets") or []:
            if not b["passed"]:
                err.print(f"budget breached: {b['detail']}", highlight=False, soft_wrap=True, markup=False)
                count += 1
        for c in report["checks"]:
            if not c["passed"]:
                err.print(f"check failed: {c['name']}: {c['detail']}", highlight=False, soft_wrap=True, markup=False)
                count += 1
    return count


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def guarded(interrupted: str, command: str) -> Iterator[None]:
    """Run a command's work with every way it can end mapped to its documented exit code and one line.

    SIGTERM is handled like Ctrl-C while the work runs (cleanup runs, exit 143), then the previous
    handler is restored. ``interrupted``: what to tell the user after Ctrl-C (e.g. how to resume).
    """
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except typer.Exit:
        raise
    except InputError as exc:
        fail(str(exc), 2)
    except ValidationFailed as exc:
        fail(str(exc), 1)
    except InternalError as exc:
        fail(str(exc), 3)
    except KeyboardInterrupt:
        fail(f"interrupted; {interrupted}", 130)
    except Terminated:
        fail(f"terminated (SIGTERM); {interrupted}", 143)
    except Exception as exc:  # outside any stage: still one line and a saved traceback, never exit 1
        from compress.pipeline import save_traceback

        where = save_traceback(command)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        fail(f"internal error in {command}: {type(exc).__name__}: {first}"
             + (f" (traceback saved to {where})" if where else ""), 3)
    finally:
        signal.signal(signal.SIGTERM, previous)
