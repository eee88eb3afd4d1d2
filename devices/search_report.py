"""The ``compress search`` part of ``report.html``: what was tried, what it cost, and why one was chosen.

Two plots, accuracy against host latency and against file size, each with the 2-D Pareto front as a step
line, the accuracy floor and the latency / size budget as dashed lines and the chosen candidate marked, then
one table row per candidate (sorted by MACs, the cost a reader compares first).

Built only from the ``compress.search/1`` dict (``search.json``), so a page can be rebuilt from any saved
search. Nothing is drawn that ``search.json`` does not hold: a candidate that was pruned, failed, skipped or
not timed on this machine is listed under the plot with the reason, never placed at a guessed value.
Candidate ids come from user input (student names, scheme names), so every string is escaped for HTML
(:func:`html.escape`) and for matplotlib's mathtext (``$``); the plots label points by their index in
``candidates`` (the table's ``#`` column) rather than by id, so a long id never squeezes an axis.

Used in two places: :func:`section` inside the chosen candidate's run report (``html_report.render`` adds it
when the report carries a ``search`` key), and :func:`write` as a page of its own when no candidate met
the budgets, so there is no run report to put it in.
"""

from __future__ import annotations

from pathlib import Path

from compress.core.atomic import write_text
from compress.core.pareto import on_front
from compress.devices.html_parts import CSS, escape, figure, mpl_text, pill, skipped_list, svg, table_open
from compress.devices.report import _pct, format_count, format_size

# plot name -> (candidate key, x-axis label, what the budget line is called, SVG id prefix)
PLOTS = {
    "latency": ("latency_ms", "host p50 latency per sample, ms (log scale)", "latency budget", "slat"),
    "size": ("size_kb", "model file size (log scale)", "size budget", "ssize"),
}
MEETS, BREAKS = "#1e7b34", "#9aa3ab"  # green: meets every budget; grey: breaks one (or was not judged)
FRONT, BUDGET, CHOSEN = "#1f4e79", "#b00020", "#d62728"


def _limit(budget) -> float | None:
    """A budget as a number: search.json writes numbers, a device profile's budgets are ``{"limit": ...}``."""
    if isinstance(budget, dict):
        budget = budget.get("limit")
    return None if budget is None else float(budget)


def _skip_reason(cand: dict, key: str) -> str | None:
    """Why ``cand`` is not drawn in the plot of ``key``; None when it is drawn."""
    status = cand.get("status")
    if status != "measured":
        return f"{status}: {cand['note']}" if cand.get("note") else str(status)
    if cand.get("val_accuracy") is None:
        return "accuracy not measured"
    value = cand.get(key)
    if value is None:
        return "latency not measured here" if key == "latency_ms" else "size not measured"
    if not float(value) > 0:
        return f"{key} is {value}, which a log-scale axis cannot show"
    return None


def plot_data(search: dict) -> dict:
    """What the two plots show, as data: ``{"latency": {...}, "size": {...}}``.

    Each has ``plotted`` (index in ``candidates``, id, x, y, meets_budgets, on_front), ``skipped`` (index,
    id, reason), ``front`` (ids on the 2-D front of accuracy (max) and x (min), in x order), ``budget_x``
    (the latency / size budget, or None), ``floor_y`` (the accuracy floor, or None) and ``chosen`` (the
    chosen id when it is drawn in this plot, else None). Separated from drawing so a test can check every
    point against ``search.json``.
    """
    candidates = search.get("candidates") or []
    budgets = search.get("budgets") or {}
    out = {}
    for name, (key, *_rest) in PLOTS.items():
        plotted, skipped = [], []
        for index, cand in enumerate(candidates):
            reason = _skip_reason(cand, key)
            if reason is not None:
                skipped.append({"index": index, "id": cand.get("id"), "reason": reason})
            else:
                plotted.append({"index": index, "id": cand.get("id"), "x": float(cand[key]),
                                "y": float(cand["val_accuracy"]), "meets_budgets": cand.get("meets_budgets")})
        flags = on_front(({"val_accuracy": p["y"], key: p["x"]} for p in plotted), [("val_accuracy", "max"), (key, "min")])
        for p, flag in zip(plotted, flags):
            p["on_front"] = flag
        front = sorted((p for p in plotted if p["on_front"]), key=lambda p: (p["x"], -p["y"]))
        chosen = search.get("chosen")
        out[name] = {"plotted": plotted, "skipped": skipped, "front": [p["id"] for p in front],
                     "budget_x": _limit(budgets.get(key)), "floor_y": search.get("accuracy_floor"),
                     "chosen": chosen if any(p["id"] == chosen for p in plotted) else None}
    return out


# ---------------------------------------------------------------------------------------------- drawing

def _budget_label(name: str, limit: float) -> str:
    return f"≤ {limit:g} ms" if name == "latency" else f"≤ {format_size(limit * 1024).replace('.0 ', ' ')}"


def _axes_format(ax, name: str, xs: list[float]) -> None:
    """Log x in the table's units, percent y."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    if name == "latency":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:  # kB on the axis read like the size column (powers of 1024)
        ticks = [k * 1024.0 ** e for e in range(-1, 4) for k in (1, 10, 100)]
        ax.set_xticks(ticks, [format_size(t * 1024).replace(".0 ", " ") for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(min(xs) / 1.8, max(xs) * 1.8)
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{100 * v:.0f}%" if abs(100 * v - round(100 * v)) < 1e-6 else f"{100 * v:.1f}%"))


def _plot_svg(name: str, data: dict) -> str:
    """One accuracy-vs-x plot; SVG groups carry ids (``<prefix>-cand-<n>``, ``-front-line``, ``-budget-floor``,
    ``-budget-x``, ``-chosen-point``) so what was drawn can be checked in the page itself."""
    from matplotlib.lines import Line2D

    key, xlabel, budget_name, prefix = PLOTS[name]
    points, floor, limit = data["plotted"], data["floor_y"], data["budget_x"]
    fig = figure(5.6, 4.0)
    ax = fig.add_subplot()
    if not points:
        ax.text(0.5, 0.5, "nothing measured to plot", ha="center", va="center", transform=ax.transAxes, color="#888888")
        ax.set_xticks([])
        ax.set_yticks([])
        return svg(fig, prefix)
    for p in points:
        color = MEETS if p["meets_budgets"] else BREAKS
        ax.plot([p["x"]], [p["y"]], marker="o", ms=7, color=color, mec="white", mew=0.8, ls="none", zorder=3,
                gid=f"cand-{p['index']}")
        ax.annotate(str(p["index"]), (p["x"], p["y"]), xytext=(5, 4), textcoords="offset points", fontsize=8,
                    color="#333333", zorder=4)
    by_id = {p["id"]: p for p in points}
    front = [by_id[i] for i in data["front"]]
    ax.step([p["x"] for p in front], [p["y"] for p in front], where="post", color=FRONT, lw=1.4, alpha=0.8, zorder=2,
            gid="front-line")
    handles = [Line2D([], [], marker="o", color=MEETS, ls="none", label="meets budgets"),
               Line2D([], [], marker="o", color=BREAKS, ls="none", label="breaks a budget"),
               Line2D([], [], color=FRONT, lw=1.4, label="Pareto front")]
    ys, xs = [p["y"] for p in points], [p["x"] for p in points]
    if floor is not None:
        ax.axhline(floor, ls="--", lw=1.1, color=BUDGET, zorder=1, gid="budget-floor")
        ax.annotate("accuracy budget", (0.01, floor), xycoords=("axes fraction", "data"), xytext=(0, 3),
                    textcoords="offset points", fontsize=8, color=BUDGET, gid="budget-floor-label")
        ys.append(floor)
    if limit is not None and limit > 0:
        ax.axvline(limit, ls="--", lw=1.1, color=BUDGET, zorder=1, gid="budget-x")
        ax.annotate(mpl_text(f"{budget_name} {_budget_label(name, limit)}"), (limit, 0.99),
                    xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points", fontsize=8,
                    color=BUDGET, va="top", rotation=90, gid="budget-x-label")
        xs.append(limit)
    chosen = by_id.get(data["chosen"]) if data["chosen"] is not None else None
    if chosen:
        ax.plot([chosen["x"]], [chosen["y"]], marker="*", ms=18, mfc="none", mec=CHOSEN, mew=1.6, ls="none", zorder=5,
                gid="chosen-point")
        ax.annotate("chosen", (chosen["x"], chosen["y"]), xytext=(-9, 7), textcoords="offset points", fontsize=9,
                    color=CHOSEN, fontweight="bold", ha="right", zorder=6)
        handles.append(Line2D([], [], marker="*", ms=12, mfc="none", mec=CHOSEN, ls="none", label="chosen"))
    _axes_format(ax, name, xs)
    lo, hi = min(ys), max(ys)
    pad = max(0.005, (hi - lo) * 0.15)
    ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) + (0.005 if hi + pad >= 1.0 else 0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.grid(True, which="major", alpha=0.35)
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False,
               handletextpad=0.3, columnspacing=1.2)
    return svg(fig, prefix)


# ---------------------------------------------------------------------------------------------- HTML parts

def _duration(seconds) -> str:
    if seconds is None:
        return "an unrecorded time"
    seconds = float(seconds)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _summary(search: dict) -> str:
    """One paragraph: the outcome first, then what the numbers mean and what the search cost."""
    parts = []
    if search.get("chosen") is not None:
        why = str(search.get("why") or "").removeprefix(f"{search['chosen']}: ").rstrip(".")  # it starts with the id
        parts.append(f"Chosen: <b>{escape(search['chosen'])}</b>: {escape(why)}.")
    else:
        closest = search.get("closest") or {}
        if closest.get("id") is not None:
            breaks = "; ".join(map(str, closest.get("breaks") or [])) or "no budget recorded"
            parts.append(f"<b>No candidate meets the budgets</b>: closest <b>{escape(closest['id'])}</b> breaks {escape(breaks)}.")
        else:
            parts.append("<b>No candidate meets the budgets</b> and none was measured.")
    ref = search.get("reference") or {}
    if ref.get("val_accuracy") is not None:
        floor = search.get("accuracy_floor")
        parts.append(f"Reference: {escape(ref.get('name', 'reference'))} at {escape(_pct(ref['val_accuracy']))} validation "
                     "accuracy" + (f", accuracy floor {escape(_pct(floor))}." if floor is not None else "."))
    if search.get("latency_label"):
        parts.append(f"Latency is {escape(search['latency_label'])}.")
    factor = search.get("device_factor") or {}
    if factor.get("factor") is not None:
        scale = f"{float(factor['factor']):g}"
        parts.append(f"Device estimate: host latency × {escape(scale)}"
                     + (f" ({escape(factor['basis'])})." if factor.get("basis") else "."))
    budget_min = search.get("time_budget_min")
    of_budget = f" of a {float(budget_min):g} min time budget." if budget_min is not None else " (no time budget)."
    parts.append(f"Searched for {escape(_duration(search.get('elapsed_s')))}{escape(of_budget)}")
    parts.append(f"Students: {escape(search.get('trained', 0))} trained here, {escape(search.get('resumed', 0))} from the cache "
                 f"(an earlier run), {escape(search.get('pruned', 0))} pruned, {escape(search.get('skipped', 0))} skipped by "
                 f"their untrained export, {escape(search.get('not_reached', 0))} not reached.")
    return f"<p>{' '.join(parts)}</p>"


def _num(value, fmt: str, missing: str = "—") -> str:
    return missing if value is None else format(float(value), fmt)


def _table(search: dict) -> str:
    """Every candidate, cheapest (fewest MACs) first; the chosen one highlighted."""
    head = [("#", "num"), ("candidate", ""), ("status", ""), ("MACs", "num"), ("val accuracy", "num"),
            ("drop, points", "num"), ("size", "num"), ("latency ms", "num"), ("device est. ms", "num"),
            ("peak memory MB", "num"), ("budgets", ""), ("on front", ""), ("note", "")]
    cands = list(enumerate(search.get("candidates") or []))
    cands.sort(key=lambda ic: (ic[1].get("macs") is None, ic[1].get("macs") or 0, ic[0]))
    out = [table_open(head)]
    for index, c in cands:
        chosen = c.get("id") == search.get("chosen") and c.get("id") is not None
        breaks = "; ".join(map(str, c.get("breaks") or []))
        verdict = pill(c.get("meets_budgets")) + (f' <span class="detail">{escape(breaks)}</span>' if breaks else "")
        size_kb = c.get("size_kb")
        latency = c.get("latency_ms")
        nm = "" if latency is not None else " nm"
        row_class = ' class="r-exported"' if chosen else ""
        out.append(
            f'<tr{row_class}><td class="num">{index}</td><td class="model">{escape(c.get("id"))}'
            + (" <b>(chosen)</b>" if chosen else "")
            + f'</td><td>{escape(c.get("status"))}</td><td class="num">{escape(format_count(c.get("macs")))}</td>'
            f'<td class="num">{escape(_pct(c.get("val_accuracy")))}</td><td class="num">{escape(_num(c.get("accuracy_drop"), ".2f"))}</td>'
            f'<td class="num">{escape(format_size(None if size_kb is None else size_kb * 1024))}</td>'
            f'<td class="num{nm}">{escape(_num(latency, ".3f", "not measured"))}</td>'
            f'<td class="num">{escape(_num(c.get("device_latency_ms"), ".3f"))}</td>'
            f'<td class="num">{escape(_num(c.get("peak_memory_mb"), ".1f"))}</td><td>{verdict}</td>'
            f'<td>{"yes" if c.get("pareto") else ("no" if c.get("pareto") is False else "—")}</td>'
            f'<td class="detail">{escape(c.get("note") or "")}</td></tr>')
    out.append("</table></div>")
    out.append('<p class="detail"># is the candidate\'s place in search.json and its number in the plots. '
               "Drop is in accuracy points against the reference. On front: no other candidate is at least as "
               "accurate, as fast and as small (the plots show the fronts of each pair).</p>")
    return "".join(out)


def _skipped_list(skipped: list[dict]) -> str:
    return skipped_list([(f"{s['index']}. {s['id']}", s["reason"]) for s in skipped])


def section(search: dict) -> str:
    """The search as an HTML ``<section>``: summary, the two Pareto plots, the candidates table."""
    data = plot_data(search)
    plots = []
    for name, title in (("latency", "Accuracy vs latency"), ("size", "Accuracy vs size")):
        plots.append(f'<div class="plot"><h3>{title}</h3>{_plot_svg(name, data[name])}'
                     f'<p class="detail">Green: meets every budget; grey: breaks one. Step line: the Pareto front '
                     f"of these two measures. Dashed: budgets.</p>{_skipped_list(data[name]['skipped'])}</div>")
    target = " · ".join(escape(v) for v in (search.get("target"), search.get("runtime")) if v)
    return ('<section class="search"><h2>Architecture search</h2><div class="card">'
            + (f'<p class="meta">{target}</p>' if target else "")
            + _summary(search) + "</div>"
            + f'<div class="plots" style="margin-top:16px">{"".join(plots)}</div>'
            + f'<h3>Candidates</h3>{_table(search)}</section>')


def write(search: dict, path) -> Path:
    """A page of its own for a search that chose nothing (so no run report exists); written atomically."""
    title = "compress search" + (f" — {search['target']}" if search.get("target") else "")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{escape(title)}</h1>{section(search)}"
            f"<footer>schema {escape(search.get('schema'))}</footer></main></body></html>\n")
    return write_text(path, page)
