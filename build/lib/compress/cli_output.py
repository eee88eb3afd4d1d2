"""What every ``compress`` command prints on failure: one ``error:`` line (exit 2) or one line per failed
check and breached budget (exit 1). Shared so that all commands look the same to a CI log reader."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


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
