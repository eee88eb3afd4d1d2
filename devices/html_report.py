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

import math
from pathlib import Path

from compress.devices.specialists_report import html_section as specialists_section
from compress.devices.streaming_report import html_section as streaming_section
from compress.devices.html_parts import CSS, escape, figure, mpl_text, pill, skipped_list, svg, table_open
from compress.devices.report import _pct, format_count, format_size
from compress.devices.search_report import section as search_section

# one colour per role; exported students get their own so the "what ships" point stands out
ROLE_STYLE = {
    "teacher": ("#1f4e79", "*", 14),
    "member": ("#7f9fbf", "o", 8),
    "student": ("#b35900", "s", 8),  # the torch student
    "exported": ("#d62728", "D", 9),  # a student variant in its target runtime
}
ROLE_LABEL = {"teacher": "teacher ensemble", "member": "teacher member", "student": "student (torch)",
              "exported": "student (exported)"}


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

def _scatter(points: list[dict], xlabel: str, prefix: str, latency: bool) -> str:
    """Accuracy (y) against a log-scale x; each point numbered like its table row, legend below the axes
    (a legend beside them would squeeze the plot whenever a model name is long)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ncol = 2 if len(points) > 3 else 1
    fig = figure(5.6, 3.6 + 0.2 * math.ceil(len(points) / ncol))
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
        fig.legend(handles, [f"{p['index']}. {mpl_text(p['model'])}" for p in points], fontsize=8,
                   loc="outside lower center", ncol=ncol, frameon=False, handletextpad=0.3, columnspacing=1.2)
    else:
        ax.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=ax.transAxes, color="#888888")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    return svg(fig, prefix)


def _confusion_svg(conf: dict, prefix: str) -> str:
    import numpy as np

    m = np.asarray(conf["matrix"], dtype=float)
    labels = [mpl_text(x) for x in conf["labels"]]
    n = len(labels)
    side = min(7.5, max(3.4, 0.32 * n + 1.4))
    fig = figure(side + 0.3, side)
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
    ax.set_xlabel(f"{mpl_text(conf.get('candidate', 'student'))} predicts")
    ax.set_ylabel(f"{mpl_text(conf.get('reference', 'teacher'))} predicts")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#dddddd", lw=0.5)
    ax.tick_params(which="minor", length=0)
    return svg(fig, prefix)


# ---------------------------------------------------------------------------------------------- HTML parts

VERDICT_KEYS = {"passed", "within_budget", "meets_budgets", "parity_passed"}  # booleans that are a check's result


def _value(v, key: str | None = None) -> str:
    """Any JSON value as escaped HTML: used for optional sections whose shape may grow. A boolean is a
    PASS/FAIL pill only where it is a verdict (``VERDICT_KEYS``); a setting's true/false is plain text."""
    if isinstance(v, bool):
        return pill(v) if key in VERDICT_KEYS else escape("true" if v else "false")
    if isinstance(v, float):
        return escape(f"{v:.4g}")
    if isinstance(v, dict):
        if not v:
            return "—"
        return ('<table class="kv">' + "".join(f"<tr><td>{escape(k)}</td><td>{_value(x, k)}</td></tr>" for k, x in v.items())
                + "</table>")
    if isinstance(v, list):
        if not v:
            return "none"
        if all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(k for x in v for k in x))
            head = "".join(f"<th>{escape(c)}</th>" for c in cols)
            body = "".join("<tr>" + "".join(f"<td>{_value(x.get(c), c)}</td>" for c in cols) + "</tr>" for x in v)
            return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
        return escape(", ".join(str(x) if not isinstance(x, (list, dict)) else str(x) for x in v))
    if v is None:
        return "—"
    return escape(v)


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
        f"target <b>{escape(run.get('target'))}</b> · student <b>{escape(run.get('student'))}</b>"
        + (f" distilled from <b>{escape(teachers)}</b>" if teachers else ""),
        f"data <b>{escape(data.get('name'))}</b>"
        + (f" ({escape(data.get('source'))})" if data.get("source") else "")
        + (f" · {escape(data.get('train'))} train / {escape(data.get('test'))} test samples" if data.get("test") is not None else "")
        + (f" · {escape(len(data['labels']))} classes" if data.get("labels") else ""),
    ]
    if run.get("threads") is not None:
        lines.append(f"{escape(run.get('threads'))} thread(s), batch 1"
                     + (f" · wall time {escape(run.get('wall_time_s'))} s (from the command's start)" if run.get("wall_time_s") is not None else ""))
    check_items = "".join(
        f'<li>{pill(c.get("passed"))} <b>{escape(c.get("name"))}</b> <span class="detail">— {escape(c.get("detail"))}</span></li>'
        for c in checks) or '<li class="detail">no checks recorded</li>'
    return (f'<div class="card"><div class="header"><div><h1>{escape(run.get("name", "compress run"))}</h1>'
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
        parts.append(f'<p class="note{" warn" if warn else ""}">{head}{escape(cmp_["timing_note"])}</p>')
    missing = [r for r in rows if not (r.get("latency_ms") or {}).get("p50")]
    if missing:
        names = "; ".join(f"{escape(r.get('model'))} ({escape(r.get('runtime'))})" for r in missing)
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
            f'<td class="model"><span class="dot" style="background:{ROLE_STYLE[key][0]}"></span>{escape(r.get("model"))}</td>'
            f'<td>{escape(ROLE_LABEL[key])}</td><td class="runtime">{escape(r.get("runtime"))}</td>'
            f'<td class="num">{escape(_pct(r.get("accuracy")))}</td><td class="num">{escape(_pct(r.get("agreement_with_teacher")))}</td>'
            f'<td class="num">{escape(format_count(r.get("params")))}</td><td class="num">{escape(format_count(r.get("macs")))}</td>'
            f'<td class="num">{escape(format_size(r.get("size_bytes")))}</td>'
            f'<td class="num{nm}">{escape(_ms(lat, "p50"))}</td><td class="num{nm}">{escape(_ms(lat, "p90"))}</td>'
            f'<td class="num {par_cls}">{escape(par_text)}</td></tr>')
    out.append("</table></div>")
    lat0 = next((r["latency_ms"] for r in report.get("rows") or [] if r.get("latency_ms")), None)
    if lat0:
        out.append(f'<p class="detail">Latency: batch {escape(lat0.get("batch", 1))}, {escape(lat0.get("threads"))} thread(s), '
                   f'{escape(lat0.get("runs"))} timed runs after {escape(lat0.get("warmup", "a"))} warm-up runs. '
                   "Size is the exported file (torch rows have none). Parity compares an exported model with the torch "
                   "model it came from.</p>")
    return "".join(out)


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
            f'<div class="plot"><h3>Accuracy vs latency</h3>{lat}<p class="detail">{escape(lat_caption)}</p>'
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
    top = "".join(f"<li>teacher <b>{escape(labels[i])}</b> → student <b>{escape(labels[j])}</b>: {c} sample{'s' if c != 1 else ''}</li>"
                  for c, i, j in pairs[:5])
    summary = (f"{escape(conf.get('candidate'))} agrees with the {escape(conf.get('reference', 'teacher'))} on "
               f"<b>{agree}</b> of {total} test samples ({100 * agree / total:.2f}%)." if total else "No samples.")
    return (f'<div class="plot confusion"><div class="cm">{_confusion_svg(conf, "pconf")}</div><div class="cm-text">'
            f'<h3>Student vs teacher confusion</h3><p class="detail">Rows: what the {escape(conf.get("reference", "teacher"))} predicts; columns: what '
            f'{escape(conf.get("candidate", "the student"))} predicts. Green: agreement (shade = share of the row); '
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
            return pill(b.get("passed"))

        def measured(b: dict) -> str:
            return "not measured" if b.get("value") is None else f"{_value(b.get('value'))} {escape(b.get('unit', ''))}"

        rows = "".join(
            f"<tr><td>{result(b)}</td><td>{escape(b.get('name'))}</td><td class=\"num\">{measured(b)}</td>"
            f"<td class=\"num\">{_value(b.get('limit'))} {escape(b.get('unit', ''))}</td><td>{escape(b.get('source', ''))}</td>"
            f"<td class=\"detail\">{escape(b.get('detail', ''))}</td></tr>" for b in budgets if isinstance(b, dict))
        out.append(f'<h2>Budgets</h2><div class="card"><table><tr><th style="width:1%"></th><th>budget</th>'
                   f'<th class="num">measured</th><th class="num">limit</th><th>source</th><th>detail</th></tr>'
                   f'{rows}</table></div>')
    fb = report.get("quantization_fallback")
    if fb:
        lead = ""
        if all(isinstance(fb.get(k), (int, float)) for k in ("fp32_accuracy", "int8_accuracy", "accuracy")):
            kept = ", ".join(map(str, fb.get("kept_in_float") or [])) or "nothing"
            lead = (f"<p>fp32 {100 * fb['fp32_accuracy']:.2f}% → int8 {100 * fb['int8_accuracy']:.2f}% → shipped "
                    f"<b>{100 * fb['accuracy']:.2f}%</b>; kept in float: {escape(kept)}</p>")
        out.append(f'<h2>int8 float fallback</h2><div class="card">{lead}<details><summary>all fields</summary>'
                   f"{_value(fb)}</details></div>")
    compat = report.get("compatibility")
    if compat:
        lead = ""
        if compat.get("summary"):  # the target's own line; the table below holds its fields
            lead = f"<p>{escape(compat['summary'])}</p>"
        out.append(f'<h2>Runtime compatibility</h2><div class="card">{lead}{_value(compat)}</div>')
    if report.get("search"):  # the search.json of `compress search` that chose this student
        out.append(search_section(report["search"]))
    return "".join(out)


def _curves_svg(curves: list[tuple[str, dict]], prefix: str, key: str = "val_accuracy",
                label: str = "validation accuracy") -> str:
    """``key`` (validation accuracy, or training loss where no member held out a validation split) per epoch
    of every built-in member, the epoch kept ringed."""
    fig = figure(5.6, 3.2)
    ax = fig.add_subplot()
    for name, curve in curves:
        values = curve[key]
        epochs = list(range(1, len(values) + 1))
        (line,) = ax.plot(epochs, values, marker="o", ms=3, lw=1.4, label=mpl_text(name))
        best = min(max(1, curve["best_epoch"]), len(values))
        ax.plot([best], [values[best - 1]], marker="o", ms=9, mfc="none", mec=line.get_color(), ls="none")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize=8, frameon=False)
    return svg(fig, prefix)


def _training(report: dict) -> str:
    """Each built-in member's training curve: validation accuracy per epoch (on a split held out of the
    training data), the epoch kept, and why training stopped."""
    members = [(t["name"], t["training"]) for t in (report.get("run") or {}).get("teachers") or []
               if t.get("training")]
    if not members:
        return ""
    def row(name: str, c: dict) -> str:
        best = f"{100 * max(c['val_accuracy']):.2f}%" if c["val_accuracy"] else "—"
        return (f"<tr><td>{escape(name)}</td><td>{c['epochs_run']} / {c['epochs_planned']}</td><td>{c['best_epoch']}</td>"
                f"<td>{best}</td><td>{c['val_samples']}</td><td>{_trained_in(c)}</td><td>{escape(c['stopped'])}"
                f"{' (cached)' if c.get('cached') else ''}</td></tr>")

    rows = "".join(row(name, c) for name, c in members)
    plotted = [(n, c) for n, c in members if c["val_accuracy"]]
    losses = [(n, c) for n, c in members if c.get("train_loss")]  # small sets hold out no validation split
    plot = (f'<div class="plot">{_curves_svg(plotted, "curves")}</div>' if plotted else
            f'<div class="plot">{_curves_svg(losses, "curves", "train_loss", "training loss")}</div>' if losses else "")
    return ('<h2>Teacher training</h2><div class="card"><table><tr><th>member</th><th>epochs run / most</th>'
            f"<th>epoch kept</th><th>best validation accuracy</th><th>validation samples</th><th>training time</th>"
            f"<th>stopped</th></tr>"
            f"{rows}</table>{plot}</div>")


def _trained_in(curve: dict) -> str:
    """The member's training wall time (from the run that trained it, when it came from the cache)."""
    seconds = curve.get("seconds")
    if seconds is None:  # cached by a version that did not record it
        return "—"
    return f"{seconds:.0f} s" + (" (when cached)" if curve.get("cached") else "")


def _stages(report: dict) -> str:
    """Where the run's minutes went: each stage's wall seconds beside the estimate the run printed for it."""
    stages = (report.get("run") or {}).get("stages") or []
    if not stages:
        return ""

    def row(st: dict) -> str:
        estimate, ratio = st.get("estimate_s"), st.get("measured_over_estimate")
        return (f"<tr><td>{escape(st.get('stage'))}</td><td>{escape(st.get('seconds'))} s</td>"
                f"<td>{'—' if estimate is None else f'{escape(estimate)} s'}</td>"
                f"<td>{'—' if ratio is None else escape(ratio)}</td></tr>")

    return ('<h2>Time per stage</h2><div class="card"><table><tr><th>stage</th><th>measured</th>'
            "<th>estimate printed before it</th><th>measured / estimate</th></tr>"
            f"{''.join(row(st) for st in stages)}</table></div>")


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
        f"<title>{escape(run.get('name', 'compress report'))} — compress report</title><style>{CSS}</style></head>"
        f"<body><main>{_header(report)}"
        f"<h2>Models</h2>{_table(report)}"
        f"<h2>Trade-offs</h2>{_plots(report)}"
        f"<h2>Student vs teacher</h2>{_confusion(report)}"
        f"{streaming_section(report.get('streaming'))}{specialists_section(report.get('specialists'))}"
        f"{_training(report)}{_stages(report)}{_optional_sections(report)}{_details(report)}"
        f"<footer>{escape(tool.get('name', 'compress'))} {escape(tool.get('version', ''))} · schema {escape(report.get('schema'))}"
        + (f" · artifacts in {escape(run.get('out_dir'))}" if run.get("out_dir") else "")
        + "</footer></main></body></html>\n")


def write(report: dict, path) -> Path:
    """Render ``report`` to ``path`` (UTF-8) and return the path; the parent folder must exist."""
    path = Path(path)
    path.write_text(render(report), encoding="utf-8")
    return path
