"""Reports: the same content as a table for people (rich) and as ``report.json`` for machines.

report.json schema ``compress.report/1`` (stable; fields are only ever added):
  run         what ran: name, target, data (loader, sizes, normalization), teachers, student, settings
  rows[]      one per model: model, role (teacher|member|student), runtime, accuracy,
              agreement_with_teacher, params, macs, size_bytes, latency_ms {p50, p90, runs, batch, threads}
              (null where not measured), parity (for exported models, vs the torch model they came from)
  comparison  student vs teacher ensemble ratios, and whether both were timed in the same runtime
  checks[]    name, passed, detail; ``passed`` is true when every check passed
  specialists (with ``--specialists``) the class subsets, generalist vs generalist + specialists on the test
              split, the Table 4 view, the combination's cost (``compress.stages.specialists``)
"""

from __future__ import annotations

import json

from compress.devices.specialists_report import console_lines as specialist_lines
from compress.devices.streaming_report import console_lines
from rich.console import Console
from rich.table import Table


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def format_count(v) -> str:
    if v is None:
        return "—"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f}{unit}"
    return str(int(v))


def format_size(v) -> str:
    if v is None:
        return "—"
    for unit, div in (("MB", 1 << 20), ("kB", 1 << 10)):
        if v >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v} B"


def _ms(lat, key) -> str:
    return "—" if not lat else f"{lat[key]:.3f}"


def table(report: dict) -> Table:
    run = report["run"]
    t = Table(title=f"{run['name']}: {run['data']['name']} test split ({run['data']['test']} samples), "
                    f"target {run['target']}, {run['threads']} thread(s), batch 1", title_justify="left")
    for col, just in (("model", "left"), ("runtime", "left"), ("accuracy", "right"), ("agree w/ teacher", "right"),
                      ("params", "right"), ("MACs", "right"), ("size", "right"), ("p50 ms", "right"),
                      ("p90 ms", "right"), ("parity max|Δ|", "right")):
        t.add_column(col, justify=just)
    for r in report["rows"]:
        par = r.get("parity")
        par_text = "—" if not par else (
            f"{par['max_abs_diff']:.1e} {'ok' if par['passed'] else 'FAIL'}" if par["max_abs_diff"] is not None else "FAIL")
        t.add_row(r["model"], r["runtime"], _pct(r["accuracy"]), _pct(r["agreement_with_teacher"]),
                  format_count(r["params"]), format_count(r["macs"]), format_size(r["size_bytes"]), _ms(r["latency_ms"], "p50"),
                  _ms(r["latency_ms"], "p90"), par_text)
    return t


def budgets_table(report: dict) -> Table:
    prof = (report["run"].get("profile") or {}).get("name")
    t = Table(title="budgets" + (f" ({prof})" if prof else ""), title_justify="left")
    for col, just in (("budget", "left"), ("measured", "right"), ("limit", "right"), ("source", "left"),
                      ("result", "left")):
        t.add_column(col, justify=just)
    for b in report["budgets"]:
        unit = b.get("unit") or ""
        value = "not measured" if b.get("value") is None else f"{b['value']:.3g} {unit}"
        limit = "—" if b.get("limit") is None else f"{b['limit']:g} {unit}"
        result = ("[green]pass[/green]" if b.get("checked", True) else "[dim]skipped[/dim]") if b["passed"] else "[red]BREACH[/red]"
        t.add_row(b["name"], value, limit, b.get("source") or "—", result)
    return t


def _ratio(value, what: str, missing: str) -> str:
    return f"{value:.1f}x {what}" if isinstance(value, (int, float)) else missing


def comparison_line(cmp_: dict) -> str:
    """Student vs ensemble in one line; every ratio may be missing (a member given as an .onnx file, a
    folder or precomputed outputs has no MAC count; latency is compared only in one runtime)."""
    parts = [_ratio(cmp_.get("param_ratio"), "fewer params", "params not compared (a member's count is unknown)"),
             _ratio(cmp_.get("mac_ratio"), "fewer MACs", "MACs not compared (a member's count is unknown)"),
             _ratio(cmp_.get("latency_ratio_p50"), "lower p50 latency", "latency not compared")]
    note = cmp_.get("timing_note")
    return "student vs teacher ensemble: " + ", ".join(parts) + (f" ({note})" if note else "")


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(table(report))
    cmp_ = report.get("comparison") or {}
    if cmp_:
        console.print(comparison_line(cmp_), highlight=False, soft_wrap=True, markup=False)
    fb = report.get("quantization_fallback")
    if fb:
        int8 = "did not convert" if fb["int8_accuracy"] is None else f"{100 * fb['int8_accuracy']:.2f}%"
        console.print(f"int8 fallback: {fb.get('reference', 'fp32')} {100 * fb['fp32_accuracy']:.2f}% -> int8 {int8} -> "
                      f"shipped {100 * fb['accuracy']:.2f}% on {fb['eval_samples']} held-out training samples; "
                      f"kept in float: {', '.join(fb['kept_in_float']) or 'nothing'}")
    compat = report.get("compatibility")
    if compat and compat.get("summary"):  # each target's own format checks say themselves in one line
        console.print(compat["summary"], highlight=False, soft_wrap=True, markup=False)
    for line in console_lines(report["streaming"]) if report.get("streaming") else []:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    for line in specialist_lines(report["specialists"]) if report.get("specialists") else []:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    for c in report["checks"]:
        mark = "[green]PASS[/green]" if c["passed"] else "[red]FAIL[/red]"
        console.print(f"{mark} {c['name']}: {c['detail']}")
    if report.get("budgets"):
        console.print(budgets_table(report))
    console.print(f"artifacts: {report['run']['out_dir']}")


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False)
