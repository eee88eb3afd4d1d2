"""What every HTML report of this tool is built from (the run's ``report.html`` and the search's page): the
style sheet, escaping (every string from a report is user input), headless matplotlib figures inlined as
SVG, pass/fail pills, tables and the "not plotted" lists."""

from __future__ import annotations

import html
import io
import re

def escape(value) -> str:
    """Escape anything for HTML text or attribute context."""
    return html.escape("" if value is None else str(value), quote=True)


def mpl_text(s) -> str:
    """Model names are user input: keep matplotlib from reading ``$...$`` in them as mathtext."""
    return str(s).replace("$", r"\$")


def figure(width: float, height: float):
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


def svg(fig, prefix: str) -> str:
    """The figure as an ``<svg>`` element ready to inline into HTML.

    Drops the XML prologue, DOCTYPE and RDF metadata (they carry http:// URIs and are not needed inside
    HTML5), and prefixes every id so that clip paths and glyphs of several plots on one page never collide.
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r'\s+version="1\.1"', "", text, count=1)
    ids = set(_ID.findall(text))
    if ids:
        pattern = re.compile(r'(id="|url\(#|href="#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)) + r')(?=[")])')
        text = pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)
    text = text.replace("<svg ", '<svg role="img" class="plot-svg" ', 1)
    return text.strip()


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


def pill(passed) -> str:
    if passed is None:
        return '<span class="pill">—</span>'
    return f'<span class="pill {"ok" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


def table_open(head: list[tuple[str, str]]) -> str:
    """A scrolling table's opening and header row: (heading, cell class) per column (the run's rows table and
    the search's candidates table)."""
    return '<div class="scroll"><table><tr>' + "".join(f'<th class="{c}">{escape(h)}</th>' for h, c in head) + "</tr>"


def skipped_list(labels_and_reasons: list[tuple[str, str]]) -> str:
    """What a plot leaves out and why, one line each (never drawn at a made-up value)."""
    if not labels_and_reasons:
        return ""
    return ('<ul class="skipped">' + "".join(f"<li>{escape(label)}: {escape(reason)}, not plotted</li>"
                                             for label, reason in labels_and_reasons) + "</ul>")
