"""``report.html``: the same report as ``report.json``, as one page a person would rather look at than read.

Why a single self-contained file: it is attached to tickets, opened from CI artifacts and copied off
air-gapped build machines, so it must render the same with no network and no other files. Plots are
therefore inline SVG (matplotlib, default fonts drawn as paths, so no font needs to be installed where it
is viewed), the style is inline CSS, and there is no JavaScript at all. Every piece of text that comes
from the report (model names, runtimes, check details) is escaped with :func:`html.escape`, because model
and data names are user input and the page may be opened in a browser with access to other files.

The page is built only from the ``compress.report/1`` dict (see :mod:`compress.devices.report`), so it can be
regenerated from any old ``report.json``; fields that newer runs add (``confusion``, ``budgets``,
``quantization_fallback``, ``compatibility``) are rendered when present and explained when absent.
"""

from __future__ import annotations

import html
import io
import math
import re
from pathlib import Path

from compress.devices.report import _pct, format_count, format_size

# one colour per role; exported students get their own so the "what ships" point stands out
ROLE_STYLE = {
    "teacher": ("#1f4e79", "*", 14),
    "member": ("#7f9fbf", "o", 8),
    "student": ("#b35900", "s", 8),  # the torch student
    "exported": ("#d62728", "D", 9),  # a student variant in its target runtime
}
ROLE_LABEL = {"teacher": "teacher ensemble", "member": "teacher member", "student": "student (torch)",
              "exported": "student (exported)"}


def _e(value) -> str:
    """Escape anything for HTML text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def _style_key(row: dict) -> str:
    if row.get("role") == "student" and row.get("size_bytes") is not None:
        return "exported"
    return row.get("role") if row.get("role") in ROLE_STYLE else "member"


def _ms(lat: dict | None, key: str) -> str:
    if not lat or lat.get(key) is None:
        return "not measured"
    return f"{lat[key]:.3f}"


def _parity_text(par: dict | None) -> tuple[str, str]:
    """(text, css class) for a parity cell; same wording as the terminal table."""
    if not par:
        return "—", ""
    if par.get("max_abs_diff") is None:
        return "FAIL", "fail"
    return f"{par['max_abs_diff']:.1e} {'ok' if par.get('passed') else 'FAIL'}", "ok" if par.get("passed") else "fail"


# ---------------------------------------------------------------------------------------------- plot data

def plot_points(report: dict) -> dict:
    """What the two scatter plots show, as data: ``{"latency": {...}, "size": {...}}``.

    Each entry has ``plotted`` (dicts with index (the row number in the table, also printed next to the
    point), model, role, style, x, y and for latency p90) and ``skipped``
    (model, reason). Separated from drawing so a test, or a reader of the code, can check that a row without
    a measurement is listed as skipped and never drawn at a made-up value.
    """
    out = {"latency": {"plotted": [], "skipped": []}, "size": {"plotted": [], "skipped": []}}
    for index, row in enumerate(report.get("rows", []), start=1):
        model, acc = row.get("model"), row.get("accuracy")
        base = {"index": index, "model": model, "role": row.get("role"), "style": _style_key(row),
                "runtime": row.get("runtime"), "y": acc}
        lat = row.get("latency_ms") or {}
        p50 = lat.get("p50")
        if acc is None:
            out["latency"]["skipped"].append({"model": model, "reason": "no accuracy (test set without labels)"})
        elif p50 is None or not p50 > 0:
            out["latency"]["skipped"].append({"model": model, "reason": f"latency not measured ({row.get('runtime')})"})
        else:
            out["latency"]["plotted"].append({**base, "x": float(p50), "p90": lat.get("p90")})
        size = row.get("size_bytes")
        if acc is None:
            out["size"]["skipped"].append({"model": model, "reason": "no accuracy (test set without labels)"})
        elif size is None or not size > 0:
            why = "in-memory torch model, no file" if str(row.get("runtime", "")).startswith("torch") else "no file size"
            out["size"]["skipped"].append({"model": model, "reason": why})
        else:
            out["size"]["plotted"].append({**base, "x": float(size)})
    return out


# ---------------------------------------------------------------------------------------------- drawing

def _mpl_text(s) -> str:
    """Model names are user input: keep matplotlib from reading ``$...$`` in them as mathtext."""
    return str(s).replace("$", r"\$")


def _figure(width: float, height: float):
    """A Figure that is not registered with pyplot (no global state, nothing to close, thread-safe).

    It gets its own Agg canvas and is saved with ``Figure.savefig`` (which picks the SVG canvas for
    ``format="svg"`` by itself), so the process-wide backend (``matplotlib.use``) is never read or
    switched: the report can be written from a session that uses pyplot with any backend, or none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # headless canvas owned by this figure alone
    return fig


_ID = re.compile(r'\bid="([^"]+)"')


def _svg(fig, prefix: str) -> str:
    """The figure as an ``<svg>`` element ready to inline into HTML.

    Drops the XML prologue, DOCTYPE and RDF metadata (they carry http:// URIs and are not needed inside
    HTML5), and prefixes every id so that clip paths and glyphs of several plots on one page never collide.
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    svg = re.sub(r'\s+version="1\.1"', "", svg, count=1)
    ids = set(_ID.findall(svg))
    if ids:
        pattern = re.compile(r'(id="|url\(#|href="#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)) + r')(?=[")])')
        svg = pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    svg = svg.replace("<svg ", '<svg role="img" class="plot-svg" ', 1)
    return svg.strip()


def _scatter(points: list[dict], xlabel: str, prefix: str, latency: bool) -> str:
    """Accuracy (y) against a log-scale x; each point numbered like its table row, legend below the axes
    (a legend beside them would squeeze the plot whenever a model name is long)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ncol = 2 if len(points) > 3 else 1
    fig = _figure(5.6, 3.6 + 0.2 * math.ceil(len(points) / ncol))
    ax = fig.add_subplot()
    handles = []
    for p in points:
        color, marker, size = ROLE_STYLE[p["style"]]
        if latency and p.get("p90") and p["p90"] > p["x"]:
            ax.plot([p["x"], p["p90"]], [p["y"], p["y"]], color=color, lw=1.5, alpha=0.45, zorder=2)
        (h,) = ax.plot([p["x"]], [p["y"]], marker=marker, ms=size, color=color, mec="white", mew=0.8, ls="none",
                       zorder=3, gid=f"point-{p['index']}")  # -> <g id="<plot>-point-<row number>"> in the SVG
        handles.append(h)
    # one label per position: rows that land on the same spot (e.g. two exports of one student) share it
    spots: dict[tuple, list[str]] = {}
    for p in points:
        spots.setdefault((round(math.log10(p["x"]), 2), round(p["y"], 4)), []).append(str(p["index"]))
    for p in points:
        key = (round(math.log10(p["x"]), 2), round(p["y"], 4))
        if spots[key] and spots[key][0] == str(p["index"]):
            ax.annotate(",".join(spots[key]), (p["x"], p["y"]), xytext=(5, 4), textcoords="offset points", fontsize=9,
                        color="#333333", zorder=4)
    ax.set_xscale("log")
    if latency:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:  # sizes in the table's units (powers of 1024), so the axis reads like the size column
        ticks = [k * 1024 ** e for e in range(0, 5) for k in (1, 10, 100)]
        ax.set_xticks(ticks, [format_size(t).replace(".0 ", " ") for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{100 * v:.0f}%" if abs(100 * v - round(100 * v)) < 1e-6 else f"{100 * v:.1f}%"))
    if points:
        ys = [p["y"] for p in points]
        lo, hi = min(ys), max(ys)
        pad = max(0.01, (hi - lo) * 0.15)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + (0.005 if hi + pad >= 1.0 else 0))
        xs = [p["x"] for p in points] + [p["p90"] for p in points if latency and p.get("p90")]
        ax.set_xlim(min(xs) / 1.8, max(xs) * 1.8)
        fig.legend(handles, [f"{p['index']}. {_mpl_text(p['model'])}" for p in points], fontsize=8,
                   loc="outside lower center", ncol=ncol, frameon=False, handletextpad=0.3, columnspacing=1.2)
    else:
        ax.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax.transAxes, color="#888888")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    return _svg(fig, prefix)


def _confusion_svg(conf: dict, prefix: str) -> str:
    import numpy as np

    m = np.asarray(conf["matrix"], dtype=float)
    labels = [_mpl_text(x) for x in conf["labels"]]
    n = len(labels)
    side = min(7.5, max(3.4, 0.32 * n + 1.4))
    fig = _figure(side + 0.3, side)
    ax = fig.add_subplot()
    # diagonal (agreement) in green, off-diagonal (disagreement) in red, each on its own scale so a handful
    # of disagreements is visible next to hundreds of agreements
    rgb = np.ones((n, n, 3))
    diag = np.eye(n, dtype=bool)
    row_tot = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row_tot, out=np.zeros_like(m), where=row_tot > 0)
    off_max = max(1.0, m[~diag].max() if n > 1 else 1.0)
    green, red = np.array([0.17, 0.63, 0.17]), np.array([0.84, 0.15, 0.16])
    for i in range(n):
        for j in range(n):
            t = 0.15 + 0.85 * frac[i, j] if i == j and m[i, j] > 0 else (0.2 + 0.8 * m[i, j] / off_max if m[i, j] > 0 else 0)
            rgb[i, j] = 1 - t * (1 - (green if i == j else red))
    ax.imshow(rgb, interpolation="nearest")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if m[i, j] > 0:
                    dark = (i == j and frac[i, j] > 0.5) or (i != j and m[i, j] / off_max > 0.6)
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8 if n <= 12 else 6,
                            color="white" if dark else "#222222")
    ax.set_xticks(range(n), labels, fontsize=8, rotation=90 if max(map(len, labels), default=0) > 3 else 0)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel(f"{_mpl_text(conf.get('candidate', 'student'))} predicts")
    ax.set_ylabel(f"{_mpl_text(conf.get('reference', 'teacher'))} predicts")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#dddddd", lw=0.5)
    ax.tick_params(which="minor", length=0)
    return _svg(fig, prefix)


# ---------------------------------------------------------------------------------------------- HTML parts

CSS = """
:root { --ok:#1e7b34; --okbg:#e3f4e6; --fail:#b00020; --failbg:#fde7ea; --muted:#5f6b76; --line:#d9dee3; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0;
       color: #1d2329; background: #f5f7f9; font-size: 14px; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 0 0 4px; word-break: break-word; }
h2 { font-size: 16px; margin: 28px 0 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
.header { display: flex; gap: 18px; align-items: flex-start; justify-content: space-between; }
.meta { color: var(--muted); margin: 2px 0; }
.badge { display: inline-block; border-radius: 6px; padding: 6px 14px; font-weight: 700; font-size: 18px; white-space: nowrap; }
.badge.ok { background: var(--okbg); color: var(--ok); border: 1px solid var(--ok); }
.badge.fail { background: var(--failbg); color: var(--fail); border: 1px solid var(--fail); }
.pill { display: inline-block; min-width: 44px; text-align: center; border-radius: 4px; padding: 0 6px; font-weight: 600; font-size: 12px; }
.pill.ok { background: var(--okbg); color: var(--ok); }
.pill.fail { background: var(--failbg); color: var(--fail); }
ul.checks { list-style: none; padding: 0; margin: 10px 0 0; }
ul.checks li { margin: 3px 0; }
.detail { color: var(--muted); }
.note { border-left: 4px solid #8aa4bd; background: #eef3f8; padding: 8px 12px; margin: 10px 0 0; border-radius: 0 6px 6px 0; }
.note.warn { border-left-color: #c98a00; background: #fff6e0; }
.summary { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.stat { background: #f0f3f6; border-radius: 6px; padding: 6px 12px; }
.stat b { font-size: 16px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { padding: 5px 6px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef1f4; font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.r-teacher td { background: #f1f6fb; }
tr.r-exported td { background: #fff3ef; font-weight: 600; }
td.ok { color: var(--ok); } td.fail { color: var(--fail); font-weight: 700; }
td.nm { color: var(--muted); font-style: italic; white-space: normal; }
td.model { min-width: 180px; }
td.runtime { min-width: 120px; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }
.plots { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.plot { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px; min-width: 0; }
.plot svg { width: 100%; height: auto; display: block; }
.plot.confusion { display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: flex-start; }
.plot.confusion .cm { flex: 0 1 560px; min-width: 0; }
.plot.confusion .cm-text { flex: 1 1 300px; }
.plot h3 { margin: 0 0 4px; font-size: 14px; }
.skipped { color: var(--muted); font-size: 13px; margin: 6px 0 0; padding-left: 18px; }
.kv td:first-child { color: var(--muted); white-space: nowrap; width: 1%; }
details { margin-top: 10px; }
summary { cursor: pointer; color: var(--muted); }
.scroll { overflow-x: auto; }
footer { color: var(--muted); font-size: 12px; margin-top: 28px; }
@media (max-width: 900px) { .plots { grid-template-columns: 1fr; } }
"""


def _pill(passed) -> str:
    if passed is None:
        return '<span class="pill">—</span>'
    return f'<span class="pill {"ok" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


VERDICT_KEYS = {"passed", "within_budget", "meets_budgets", "parity_passed"}  # booleans that are a check's result


def _value(v, key: str | None = None) -> str:
    """Any JSON value as escaped HTML: used for optional sections whose shape may grow. A boolean is a
    PASS/FAIL pill only where it is a verdict (``VERDICT_KEYS``); a setting's true/false is plain text."""
    if isinstance(v, bool):
        return _pill(v) if key in VERDICT_KEYS else _e("true" if v else "false")
    if isinstance(v, float):
        return _e(f"{v:.4g}")
    if isinstance(v, dict):
        if not v:
            return "—"
        return ('<table class="kv">' + "".join(f"<tr><td>{_e(k)}</td><td>{_value(x, k)}</td></tr>" for k, x in v.items())
                + "</table>")
    if isinstance(v, list):
        if not v:
            return "none"
        if all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(k for x in v for k in x))
            head = "".join(f"<th>{_e(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_value(x.get(c), c)}</td>" for c in cols) + "</tr>" for x in v)
            return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
        return _e(", ".join(str(x) if not isinstance(x, (list, dict)) else str(x) for x in v))
    if v is None:
        return "—"
    return _e(v)


def _header(report: dict) -> str:
    run = report.get("run", {})
    data = run.get("data") or {}
    passed = report.get("passed")
    checks = (report.get("checks") or []) + [b for b in report.get("budgets") or [] if isinstance(b, dict)]
    n_fail = sum(1 for c in checks if not c.get("passed"))
    badge = (f'<span class="badge ok">PASS · {len(checks)} check{"s" if len(checks) != 1 else ""}</span>' if passed else
             f'<span class="badge fail">FAIL · {n_fail} of {len(checks)} checks failed</span>')
    teachers = ", ".join(t.get("name", "?") for t in run.get("teachers") or [])
    lines = [
        f"target <b>{_e(run.get('target'))}</b> · student <b>{_e(run.get('student'))}</b>"
        + (f" distilled from <b>{_e(teachers)}</b>" if teachers else ""),
        f"data <b>{_e(data.get('name'))}</b>"
        + (f" ({_e(data.get('source'))})" if data.get("source") else "")
        + (f" · {_e(data.get('train'))} train / {_e(data.get('test'))} test samples" if data.get("test") is not None else "")
        + (f" · {_e(len(data['labels']))} classes" if data.get("labels") else ""),
    ]
    if run.get("threads") is not None:
        lines.append(f"{_e(run.get('threads'))} thread(s), batch 1"
                     + (f" · wall time {_e(run.get('wall_time_s'))} s (from the command's start)" if run.get("wall_time_s") is not None else ""))
    check_items = "".join(
        f'<li>{_pill(c.get("passed"))} <b>{_e(c.get("name"))}</b> <span class="detail">— {_e(c.get("detail"))}</span></li>'
        for c in checks) or '<li class="detail">no checks recorded</li>'
    return (f'<div class="card"><div class="header"><div><h1>{_e(run.get("name", "compress run"))}</h1>'
            + "".join(f'<p class="meta">{ln}</p>' for ln in lines)
            + f"</div><div>{badge}</div></div>"
            + f'<ul class="checks">{check_items}</ul>'
            + _timing(report) + _comparison(report) + "</div>")


def _timing(report: dict) -> str:
    """The timing note, plus plain statements of what was not measured or not comparable."""
    cmp_ = report.get("comparison") or {}
    rows = report.get("rows") or []
    parts = []
    if cmp_.get("timing_note"):
        warn = cmp_.get("same_runtime") is False
        head = ("Latency: student and teachers were <b>not</b> timed in the same runtime, so their latencies are "
                "not comparable. " if warn else "Latency: ")
        parts.append(f'<p class="note{" warn" if warn else ""}">{head}{_e(cmp_["timing_note"])}</p>')
    missing = [r for r in rows if not (r.get("latency_ms") or {}).get("p50")]
    if missing:
        names = "; ".join(f"{_e(r.get('model'))} ({_e(r.get('runtime'))})" for r in missing)
        parts.append(f'<p class="note warn">Latency <b>not measured</b> for: {names}. '
                     "The runtime cannot execute the model on this machine (e.g. Core ML outside macOS); "
                     "these rows show no latency and are left out of the latency plot.</p>")
    return "".join(parts)


def _comparison(report: dict) -> str:
    cmp_ = report.get("comparison") or {}
    stats = []
    if cmp_.get("param_ratio"):
        stats.append(f"<b>{cmp_['param_ratio']:.1f}×</b> fewer parameters")
    if cmp_.get("mac_ratio"):
        stats.append(f"<b>{cmp_['mac_ratio']:.1f}×</b> fewer MACs")
    if cmp_.get("latency_ratio_p50"):
        stats.append(f"<b>{cmp_['latency_ratio_p50']:.1f}×</b> lower p50 latency")
    elif cmp_:
        stats.append("latency <b>not compared</b>")
    if cmp_.get("accuracy_gap") is not None:
        stats.append(f"accuracy gap <b>{100 * cmp_['accuracy_gap']:.2f}</b> points")
    if not stats:
        return ""
    return ('<div class="summary"><span class="stat">student vs teacher ensemble:</span>'
            + "".join(f'<span class="stat">{s}</span>' for s in stats) + "</div>")


def _table(report: dict) -> str:
    head = [("#", "num"), ("model", ""), ("role", ""), ("runtime", ""), ("accuracy", "num"), ("agree w/ teacher", "num"),
            ("params", "num"), ("MACs", "num"), ("size", "num"), ("p50 ms", "num"), ("p90 ms", "num"), ("parity max|Δ|", "num")]
    out = [table_open(head)]
    for i, r in enumerate(report.get("rows") or []):
        key = _style_key(r)
        lat = r.get("latency_ms")
        par_text, par_cls = _parity_text(r.get("parity"))
        nm = "" if lat and lat.get("p50") is not None else " nm"
        out.append(
            f'<tr class="r-{key}"><td class="num">{i + 1}</td>'
            f'<td class="model"><span class="dot" style="background:{ROLE_STYLE[key][0]}"></span>{_e(r.get("model"))}</td>'
            f'<td>{_e(ROLE_LABEL[key])}</td><td class="runtime">{_e(r.get("runtime"))}</td>'
            f'<td class="num">{_e(_pct(r.get("accuracy")))}</td><td class="num">{_e(_pct(r.get("agreement_with_teacher")))}</td>'
            f'<td class="num">{_e(format_count(r.get("params")))}</td><td class="num">{_e(format_count(r.get("macs")))}</td>'
            f'<td class="num">{_e(format_size(r.get("size_bytes")))}</td>'
            f'<td class="num{nm}">{_e(_ms(lat, "p50"))}</td><td class="num{nm}">{_e(_ms(lat, "p90"))}</td>'
            f'<td class="num {par_cls}">{_e(par_text)}</td></tr>')
    out.append("</table></div>")
    lat0 = next((r["latency_ms"] for r in report.get("rows") or [] if r.get("latency_ms")), None)
    if lat0:
        out.append(f'<p class="detail">Latency: batch {_e(lat0.get("batch", 1))}, {_e(lat0.get("threads"))} thread(s), '
                   f'{_e(lat0.get("runs"))} timed runs after {_e(lat0.get("warmup", "a"))} warm-up runs. '
                   "Size is the exported file (torch rows have none). Parity compares an exported model with the torch "
                   "model it came from.</p>")
    return "".join(out)


def table_open(head: list[tuple[str, str]]) -> str:
    """A scrolling table's opening and header row: (heading, cell class) per column (the run's rows table and
    the search's candidates table)."""
    return '<div class="scroll"><table><tr>' + "".join(f'<th class="{c}">{_e(h)}</th>' for h, c in head) + "</tr>"


def skipped_list(labels_and_reasons: list[tuple[str, str]]) -> str:
    """What a plot leaves out and why, one line each (never drawn at a made-up value)."""
    if not labels_and_reasons:
        return ""
    return ('<ul class="skipped">' + "".join(f"<li>{_e(label)}: {_e(reason)}, not plotted</li>"
                                             for label, reason in labels_and_reasons) + "</ul>")


def _skipped_list(skipped: list[dict]) -> str:
    return skipped_list([(s["model"], s["reason"]) for s in skipped])


def _plots(report: dict) -> str:
    pts = plot_points(report)
    cmp_ = report.get("comparison") or {}
    lat_caption = ("p50 latency at batch 1 (dot) with a line to p90; numbers match the table."
                   + ("" if cmp_.get("same_runtime", True) else " Runtimes differ between rows: compare with care."))
    lat = _scatter(pts["latency"]["plotted"], "p50 latency per sample, ms (log scale)", "plat", latency=True)
    size = _scatter(pts["size"]["plotted"], "model file size (log scale)", "psize", latency=False)
    return ('<div class="plots">'
            f'<div class="plot"><h3>Accuracy vs latency</h3>{lat}<p class="detail">{_e(lat_caption)}</p>'
            f'{_skipped_list(pts["latency"]["skipped"])}</div>'
            f'<div class="plot"><h3>Accuracy vs size</h3>{size}<p class="detail">File size of each exported model on disk.</p>'
            f'{_skipped_list(pts["size"]["skipped"])}</div></div>')


def _confusion(report: dict) -> str:
    conf = report.get("confusion")
    if not conf or not conf.get("matrix"):
        return ('<div class="plot confusion"><h3>Student vs teacher confusion</h3>'
                '<p class="note">This report has no <code>confusion</code> field (it was written by an older '
                "version of compress), so the student-vs-teacher confusion matrix cannot be shown. "
                "Re-run distill-and-export to get it.</p></div>")
    labels = [str(x) for x in conf.get("labels") or range(len(conf["matrix"]))]
    conf = {**conf, "labels": labels}
    m = conf["matrix"]
    total = sum(map(sum, m))
    agree = sum(m[i][i] for i in range(min(len(m), len(m[0]) if m else 0)))
    pairs = sorted(((m[i][j], i, j) for i in range(len(m)) for j in range(len(m[i])) if i != j and m[i][j] > 0), reverse=True)
    top = "".join(f"<li>teacher <b>{_e(labels[i])}</b> → student <b>{_e(labels[j])}</b>: {c} sample{'s' if c != 1 else ''}</li>"
                  for c, i, j in pairs[:5])
    summary = (f"{_e(conf.get('candidate'))} agrees with the {_e(conf.get('reference', 'teacher'))} on "
               f"<b>{agree}</b> of {total} test samples ({100 * agree / total:.2f}%)." if total else "No samples.")
    return (f'<div class="plot confusion"><div class="cm">{_confusion_svg(conf, "pconf")}</div><div class="cm-text">'
            f'<h3>Student vs teacher confusion</h3><p class="detail">Rows: what the {_e(conf.get("reference", "teacher"))} predicts; columns: what '
            f'{_e(conf.get("candidate", "the student"))} predicts. Green: agreement (shade = share of the row); '
            f"red: disagreement (shade = count).</p><p>{summary}</p>"
            + (f'<p class="detail">Most frequent disagreements:</p><ul class="skipped">{top}</ul>' if top else "")
            + "</div></div>")


def _optional_sections(report: dict) -> str:
    """Fields that only some runs have, rendered generically so new keys show up without code changes."""
    out = []
    budgets = report.get("budgets")
    if budgets:
        def result(b: dict) -> str:
            if b.get("passed") and b.get("checked") is False:
                return '<span class="detail">skipped</span>'
            return _pill(b.get("passed"))

        def measured(b: dict) -> str:
            return "not measured" if b.get("value") is None else f"{_value(b.get('value'))} {_e(b.get('unit', ''))}"

        rows = "".join(
            f"<tr><td>{result(b)}</td><td>{_e(b.get('name'))}</td><td class=\"num\">{measured(b)}</td>"
            f"<td class=\"num\">{_value(b.get('limit'))} {_e(b.get('unit', ''))}</td><td>{_e(b.get('source', ''))}</td>"
            f"<td class=\"detail\">{_e(b.get('detail', ''))}</td></tr>" for b in budgets if isinstance(b, dict))
        out.append(f'<h2>Budgets</h2><div class="card"><table><tr><th style="width:1%"></th><th>budget</th>'
                   f'<th class="num">measured</th><th class="num">limit</th><th>source</th><th>detail</th></tr>'
                   f'{rows}</table></div>')
    fb = report.get("quantization_fallback")
    if fb:
        lead = ""
        if all(isinstance(fb.get(k), (int, float)) for k in ("fp32_accuracy", "int8_accuracy", "accuracy")):
            kept = ", ".join(map(str, fb.get("kept_in_float") or [])) or "nothing"
            lead = (f"<p>fp32 {100 * fb['fp32_accuracy']:.2f}% → int8 {100 * fb['int8_accuracy']:.2f}% → shipped "
                    f"<b>{100 * fb['accuracy']:.2f}%</b>; kept in float: {_e(kept)}</p>")
        out.append(f'<h2>int8 float fallback</h2><div class="card">{lead}<details><summary>all fields</summary>'
                   f"{_value(fb)}</details></div>")
    compat = report.get("compatibility")
    if compat:
        lead = ""
        if compat.get("summary"):  # the target's own line; the table below holds its fields
            lead = f"<p>{_e(compat['summary'])}</p>"
        out.append(f'<h2>Runtime compatibility</h2><div class="card">{lead}{_value(compat)}</div>')
    if report.get("search"):  # the search.json of `compress search` that chose this student
        from compress.devices.search_report import section  # imported here: search_report builds on this module

        out.append(section(report["search"]))
    return "".join(out)


def _curves_svg(curves: list[tuple[str, dict]], prefix: str) -> str:
    """Validation accuracy per epoch of every built-in member, its best epoch ringed."""
    fig = _figure(5.6, 3.2)
    ax = fig.add_subplot()
    for name, curve in curves:
        acc = curve["val_accuracy"]
        epochs = list(range(1, len(acc) + 1))
        (line,) = ax.plot(epochs, acc, marker="o", ms=3, lw=1.4, label=_mpl_text(name))
        best = curve["best_epoch"]
        ax.plot([best], [acc[best - 1]], marker="o", ms=9, mfc="none", mec=line.get_color(), ls="none")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig, prefix)


def _training(report: dict) -> str:
    """Each built-in member's training curve: validation accuracy per epoch (on a split held out of the
    training data), the epoch kept, and why training stopped."""
    members = [(t["name"], t["training"]) for t in (report.get("run") or {}).get("teachers") or []
               if t.get("training")]
    if not members:
        return ""
    def row(name: str, c: dict) -> str:
        best = f"{100 * max(c['val_accuracy']):.2f}%" if c["val_accuracy"] else "—"
        return (f"<tr><td>{_e(name)}</td><td>{c['epochs_run']} / {c['epochs_planned']}</td><td>{c['best_epoch']}</td>"
                f"<td>{best}</td><td>{c['val_samples']}</td><td>{_e(c['stopped'])}"
                f"{' (cached)' if c.get('cached') else ''}</td></tr>")

    rows = "".join(row(name, c) for name, c in members)
    plotted = [(n, c) for n, c in members if c["val_accuracy"]]
    plot = f'<div class="plot">{_curves_svg(plotted, "curves")}</div>' if plotted else ""
    return ('<h2>Teacher training</h2><div class="card"><table><tr><th>member</th><th>epochs run / most</th>'
            f"<th>epoch kept</th><th>best validation accuracy</th><th>validation samples</th><th>stopped</th></tr>"
            f"{rows}</table>{plot}</div>")


def _details(report: dict) -> str:
    run = report.get("run") or {}
    settings = {k: v for k, v in run.items() if k not in ("data", "teachers", "name", "target")}
    return ('<details><summary>run settings, data and versions</summary><div class="card">'
            f"{_value(settings)}<h3>data</h3>{_value(run.get('data') or {})}"
            f"<h3>teachers</h3>{_value(run.get('teachers') or [])}"
            f"<h3>versions</h3>{_value(report.get('versions') or {})}</div></details>")


def render(report: dict) -> str:
    """The whole page as one HTML string (no external references, no scripts).

    Takes the report dict rather than a path so the pipeline can write the page from the report it just
    built, and ``compress`` can rebuild a page from any saved ``report.json``.
    """
    run = report.get("run") or {}
    tool = report.get("tool") or {}
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(run.get('name', 'compress report'))} — compress report</title><style>{CSS}</style></head>"
        f"<body><main>{_header(report)}"
        f"<h2>Models</h2>{_table(report)}"
        f"<h2>Trade-offs</h2>{_plots(report)}"
        f"<h2>Student vs teacher</h2>{_confusion(report)}"
        f"{_training(report)}{_optional_sections(report)}{_details(report)}"
        f"<footer>{_e(tool.get('name', 'compress'))} {_e(tool.get('version', ''))} · schema {_e(report.get('schema'))}"
        + (f" · artifacts in {_e(run.get('out_dir'))}" if run.get("out_dir") else "")
        + "</footer></main></body></html>\n")


def write(report: dict, path) -> Path:
    """Render ``report`` to ``path`` (UTF-8) and return the path; the parent folder must exist."""
    path = Path(path)
    path.write_text(render(report), encoding="utf-8")
    return path
