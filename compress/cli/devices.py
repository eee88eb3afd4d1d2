"""``compress devices list|setup`` and ``compress validate``: device profiles and CI gates.

Registered in ``compress.cli`` with ``app.add_typer(devices_app, name="devices")`` and
``app.command("validate")(validate_command)``. Exit codes as everywhere: 0 all passed, 1 a check failed or a
budget was breached (one ``budget breached: ...`` line each on stderr), 2 bad input (one ``error: ...`` line).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from compress.cli.options import run_option, with_check_options
from compress.cli.output import err, fail, guarded, help_markup_mode, print_failures
from compress.core.errors import InputError
from compress.export.registry import TARGETS, suffixes

devices_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=help_markup_mode(),
                          help="Device profiles (runtime, threads, budgets) and device tooling setup.")

# name -> setup(progress) -> dict (with "seconds"); the modules are imported only when their setup runs.
SETUPS = {
    "arm64-emu": lambda progress: importlib.import_module("compress.devices.arm64_emu").setup(progress),
    "chromium": lambda progress: importlib.import_module("compress.devices.chromium").setup(progress),
}


def _budget_text(budgets: dict) -> str:
    units = {"latency_ms": "ms", "size_kb": "kB", "peak_memory_mb": "MB", "max_accuracy_drop": "pts drop"}
    names = {"latency_ms": "p50", "size_kb": "size", "peak_memory_mb": "mem", "max_accuracy_drop": "acc"}
    return ", ".join(f"{names.get(k, k)} ≤ {v:g} {units.get(k, '')}".strip() for k, v in budgets.items()) or "—"


@devices_app.command("list")
def list_devices(json_output: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")) -> None:
    """List the device profiles: shipped ones and the user's (COMPRESS_PROFILES_DIR or the user config dir)."""
    from compress.devices.profiles import available, user_dir

    profiles = []
    try:
        for name, loader in sorted(available().items()):
            profiles.append(loader())
    except InputError as exc:
        fail(str(exc), 2)
    if json_output:
        typer.echo(json.dumps({"profiles": profiles, "user_dir": str(user_dir())}, indent=2))
        return
    t = Table(title=f"device profiles (add your own .toml to {user_dir()})", title_justify="left")
    for col in ("name", "runtime", "precision", "threads", "cpu", "budgets", "source"):
        t.add_column(col, justify="right" if col == "threads" else "left")
    for p in profiles:
        settings = ", ".join(str(p[k]) for k in TARGETS[p["runtime"]].profile_keys if p.get(k))  # e.g. tflite's delegate
        t.add_row(p["name"], p["runtime"] + (f" ({settings})" if settings else ""), p["precision"],
                  str(p["threads"]), p["cpu"] + (f" [emu {p['emulator_cpu']}]" if p.get("emulator_cpu") else ""),
                  _budget_text(p["budgets"]), p["source"])
    (Console() if sys.stdout.isatty() else Console(width=200)).print(t)


@devices_app.command("setup")
def setup_devices(
    names: list[str] = typer.Argument(..., help=f"What to set up: {', '.join(SETUPS)}."),
    best_effort: bool = typer.Option(False, "--best-effort", help="A failed setup is a warning (exit 0)."),
) -> None:
    """Install/prepare device tooling (the ARM64 emulator, a headless Chromium) and say how long it took."""
    import difflib

    for name in names:
        if name not in SETUPS:
            near = difflib.get_close_matches(name, list(SETUPS), n=1, cutoff=0.0)
            fail(f"setup {name!r}: unknown" + (f"; did you mean {near[0]!r}?" if near else "")
                 + f" (known: {', '.join(SETUPS)})", 2)
    failed = []
    for name in names:
        def progress(*args, **_kwargs):
            if args:
                err.print(f"[dim]{name}:[/dim] {' '.join(str(a) for a in args)}", highlight=False, soft_wrap=True)

        started = time.perf_counter()
        try:
            result = SETUPS[name](progress) or {}
        except Exception as exc:  # EmulatorUnavailable, RuntimeError, a missing module...
            message = f"setup {name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
            if best_effort:
                err.print(f"[yellow]warning:[/yellow] {message} (--best-effort: continuing)", highlight=False,
                          soft_wrap=True)
                failed.append(name)
                continue
            fail(message, 1)
        seconds = result.get("seconds", time.perf_counter() - started) if isinstance(result, dict) else \
            time.perf_counter() - started
        typer.echo(f"{name}: ready in {float(seconds):.1f} s")
    if failed:
        typer.echo(f"not set up: {', '.join(failed)}")


def _op_list_command(backend):
    """``compress devices <target>-ops``: the ops the target's reference evaluator runs, with their opsets."""

    def command(json_output: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
        try:
            listing = backend.op_list()
        except (OSError, ValueError) as exc:
            fail(f"{backend.name} op list: cannot be read ({exc})", 2)
        if json_output:
            typer.echo(json.dumps(listing, indent=1))
            return
        t = Table(title=f"{backend.runtime} ops the reference evaluator runs ({len(listing['ops'])})",
                  title_justify="left")
        for col in ("op", "family", "opsets", "definitions followed"):
            t.add_column(col)
        for row in listing["ops"]:
            opsets = row["opsets"]
            span = f"{opsets[0]}–{opsets[-1]}" if len(opsets) > 1 else (opsets[0] if opsets else "(evaluator only)")
            t.add_row(row["op"], row["family"], span, ", ".join(row["definitions"]) or "—")
        console = Console() if sys.stdout.isatty() else Console(width=160)
        console.print(t)
        if listing.get("not_supported"):
            console.print(f"not supported ({len(listing['not_supported'])}): {', '.join(listing['not_supported'])}",
                          markup=False, soft_wrap=True)

    command.__doc__ = (f"List the {backend.runtime} ops the reference evaluator runs, with the opsets they exist in "
                       f"and the op definitions it follows (and the ops it does not run).")
    return command


for _backend in TARGETS.values():
    if _backend.op_list is not None:
        devices_app.command(f"{_backend.name}-ops")(_op_list_command(_backend))


@with_check_options
def validate_command(
    path: str = typer.Argument(..., help="A folder written by distill-and-export, or a model file (" + ", ".join(suffixes()) + ")."),
    device: Optional[str] = typer.Option(None, "--device", help="Device profile: a name from `compress devices list`, or a .toml path."),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="Budget: largest accuracy drop vs the reference, in points."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Budget: largest host p50 latency (batch 1), ms."),
    max_size_kb: Optional[float] = typer.Option(None, help="Budget: largest model size, kB (1024 bytes)."),
    max_peak_memory_mb: Optional[float] = typer.Option(None, help="Budget: largest peak memory of load + run, MiB."),
    max_false_accepts_per_hour: Optional[float] = run_option("max_false_accepts_per_hour", help="Budget (a keyword "
                                                             "folder): largest false accepts per hour on the rebuilt test streams."),
    max_false_reject_rate: Optional[float] = run_option("max_false_reject_rate"),
    max_macs_per_second: Optional[float] = run_option("max_macs_per_second"),
    data: Optional[str] = typer.Option(None, help="Data to evaluate on: a path, or digits for scikit-learn's digits (needed for a bare model file; default for a folder: the data it was made from)."),
    data_format: Optional[str] = run_option("data_format"),
    reference: Optional[list[str]] = typer.Option(None, "--reference", help="Reference model (repeat for a teacher ensemble): .onnx, TorchScript, .pt2, built-in name, a model file of the artifact's target or a folder compress wrote (its float export). Default for a folder: its teachers."),
    max_logit_diff: Optional[float] = typer.Option(None, "--max-logit-diff", help="Fail unless the max abs logit difference from the one --reference is at most this, on the same real test inputs. Default: the variant's parity tolerance when the reference is the artifact's float twin (or the same file); agreement only for a different model."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads (default: the profile's, else 1)."),
    latency_runs: int = typer.Option(100, help="Timed batch-1 runs after warm-up."),
    limit_test: Optional[int] = run_option("limit_test"),
    arm64_emulator: Optional[int] = typer.Option(None, help="Also run N real test samples on emulated aarch64 (QEMU, the ARM wheels of the runtime) and compare with this host's outputs; needs `compress devices setup arm64-emu`."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    report_dir: Optional[str] = typer.Option(None, help="Also write the report to DIR/validate-<device or host>.json."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress: no bar on a terminal, no progress lines in a log."),
    target_options: Optional[dict] = None,  # the target's check flags (generated from export/<target>/: with_check_options)
) -> None:
    """Validate a model in its runtime against a device profile's budgets (CI gate: exit 1 on a breach)."""
    from compress.devices.report import print_report, to_json
    from compress.stages.validate import validate

    from compress.progress import is_interactive, make_progress, one_step

    with guarded("nothing was written", "validate"):
        quiet = quiet or not Path(path).exists()  # a path that is not there: its one error line, alone
        with make_progress(err, quiet=quiet, interactive=is_interactive(err)) as progress, \
                one_step(progress, f"validating {path}"):  # stderr: --json keeps stdout pure JSON
            report = validate(path, profile=device, data=data, data_format=data_format, reference=reference,
                              threads=threads, max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms,
                              max_size_kb=max_size_kb, max_peak_memory_mb=max_peak_memory_mb,
                              target_options=target_options, latency_runs=latency_runs, limit_test=limit_test,
                              arm64_samples=arm64_emulator, max_logit_diff=max_logit_diff,
                              max_false_accepts_per_hour=max_false_accepts_per_hour,
                              max_false_reject_rate=max_false_reject_rate, max_macs_per_second=max_macs_per_second)
        if report_dir:
            out = Path(report_dir)
            try:
                out.mkdir(parents=True, exist_ok=True)
                name = (report["run"].get("profile") or {}).get("name") or "host"
                (out / f"validate-{name}.json").write_text(to_json(report))
            except OSError as exc:
                raise InputError(f"--report-dir {report_dir!r}: cannot write there ({exc.strerror or exc})") from None
    if json_output:
        typer.echo(to_json(report))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=160)
        print_report(report, console)
        lat = report["latency"]
        console.print(f"latency: {lat['host']['label']}; device: {lat['device_estimate']['label']}", markup=False)
        mem = report["peak_memory"]
        if mem.get("peak_memory_mb") is not None:
            console.print(f"peak memory: {mem['peak_memory_mb']:.1f} MB ({mem['includes']})", markup=False)
        for note in report["notes"]:
            console.print(f"note: {note}", markup=False)
    if not report["passed"]:
        print_failures([report])
        raise typer.Exit(1)
