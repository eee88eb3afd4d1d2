"""The keyword-spotting part of a report, for people: console lines and the HTML section with the DET curve.

Reads ``report["streaming"]`` (``compress.stages.streaming.measure_streaming``); every rate is printed with
what it rests on (the spans behind a false-reject rate, the count, the 95% interval and the hours behind a
false-accept rate), because a rate from a handful of events over minutes of audio is a guess.
"""

from __future__ import annotations

import math

from compress.devices.html_parts import escape, figure, svg


def _rate(row: dict) -> str:
    """``FRR 8.3% (1 of 12 missed); 0 false accepts in 0.08 h = 0.0/h (95%: 0-49/h)``."""
    frr = "—" if row["frr"] is None else f"{100 * row['frr']:.1f}%"
    low, high = row["fa_per_hour_95"]
    fa = "—" if row["fa_per_hour"] is None else f"{row['fa_per_hour']:.2f}/h"
    return (f"FRR {frr} ({row['spans'] - row['hits']} of {row['spans']} missed); {row['false_accepts']} false "
            f"accept(s) in {row['non_keyword_hours']:.2f} h of non-keyword audio = {fa} (95%: {low:.2g}-{high:.3g}/h)")


def _per_hop(latency: dict | None) -> str:
    if latency is None:
        return "per-hop latency not measured (a reference evaluator runs the file here, not the device's runtime)"
    return f"per hop p50 {latency['p50']:.3f} ms, p99 {latency['p99']:.3f} ms over {latency['hops']} hops"


def _per_hour_of_one(hours: float) -> str:
    return "—" if hours <= 0 else f"{1 / hours:.3g}/h"


def console_lines(section: dict) -> list[str]:
    """What ``print_report`` says about a streaming student (a few lines)."""
    if "threshold" not in section:  # compress validate: the file re-measured at its own threshold
        return [f"streaming file {section['file']} ({section['runtime']}) at its threshold "
                f"{section['contract']['threshold']:.3g}: {_rate(section['test']['all'])}",
                _per_hop(section["latency_ms_per_hop"])]
    t, cost = section["threshold"], section["cost"]
    s, sliding, ens = cost["streaming_student"], cost["sliding_window_student"], cost["ensemble"]
    lines = [f"streaming file {section['file']} ({section['runtime']}): threshold {t['value']:.3g} chosen on validation "
             f"streams for <= {t['max_false_accepts_per_hour']:g} false accepts/h"
             + ("" if t["met_on_validation"] else " (NOT met there: the closest point)")
             + f"; one false accept there is {_per_hour_of_one(t['validation']['non_keyword_hours'])}",
             f"test streams: {_rate(section['test']['all'])}"]
    for keyword, row in section["test"]["keywords"].items():
        if len(section["test"]["keywords"]) > 1:
            lines.append(f"  {keyword}: {_rate(row)}")
    at = section["at_budget_on_test_det"]
    lines.append(f"on the test DET curve at <= {t['max_false_accepts_per_hour']:g}/h: student FRR "
                 f"{100 * at['student']['frr']:.1f}%, teacher ensemble (sliding windows) FRR "
                 f"{100 * at['teacher_ensemble']['frr']:.1f}%")
    conditions = section.get("by_condition") or []
    for row in conditions if len(conditions) > 1 else []:
        at = row["at_budget_on_test_det"]
        lines.append(f"  at {row['snr_db']:g} dB SNR: {_rate(row['shipped'])}; on its DET curve student FRR "
                     f"{100 * at['student']['frr']:.1f}%, ensemble {100 * at['teacher_ensemble']['frr']:.1f}%")
    ens_macs = "unknown" if ens["macs_per_second"] is None else f"{ens['macs_per_second'] / 1e6:.1f} M"
    lines.append(f"cost per second of audio: streaming {s['macs_per_second'] / 1e6:.2f} M MACs, sliding-window student "
                 f"{sliding['macs_per_second'] / 1e6:.1f} M, ensemble {ens_macs}; {_per_hop(s['latency_ms_per_hop'])}"
                 + ("" if s["real_time_factor"] is None else f", real-time factor {s['real_time_factor']:.4f}")
                 + f"; state {s['state_bytes'] / 1024:.1f} kB")
    if cost.get("frontend"):
        fe = cost["frontend"]
        lines.append(f"front-end: {fe['form']}, n_fft {fe['n_fft']}, hop {fe['hop']}, {fe['n_mels']} mels: "
                     f"{fe['macs_per_hop'] / 1e3:.0f} k of the {s['macs_per_hop'] / 1e3:.0f} k MACs per hop")
    lines += [f"note: {n}" for n in section.get("notes", [])]
    return lines


def _det_svg(curves: list[tuple[str, list[dict]]], budget: float, chosen: float | None, prefix: str) -> str:
    """FRR against false accepts per hour over thresholds; the budget as a vertical line."""
    fig = figure(5.6, 3.4)
    ax = fig.add_subplot()
    floor = min([r["fa_per_hour"] for _, c in curves for r in c if r["fa_per_hour"]] or [budget]) / 2
    for name, curve in curves:
        xs = [max(r["fa_per_hour"] or 0.0, floor) for r in curve]
        ax.plot(xs, [100 * (r["frr"] or 0.0) for r in curve], marker="o", ms=2.5, lw=1.3, label=name)
        if chosen is not None and name.startswith("student"):
            point = min(curve, key=lambda r: abs(r["threshold"] - chosen))
            ax.plot([max(point["fa_per_hour"] or 0.0, floor)], [100 * (point["frr"] or 0.0)], marker="o", ms=9,
                    mfc="none", mec="black", ls="none", label=f"shipped threshold {chosen:.3g}")
    ax.axvline(max(budget, floor), color="grey", ls="--", lw=1, label=f"budget {budget:g}/h")
    ax.set_xscale("log")
    ax.set_xlabel(f"false accepts per hour (0 drawn at {floor:.2g})")
    ax.set_ylabel("false-reject rate, %")
    ax.grid(True, alpha=0.35, which="both")
    ax.legend(fontsize=8, frameon=False)
    return svg(fig, prefix)


def html_section(section: dict | None) -> str:
    """The report page's keyword-spotting section ('' when the run is not a keyword task)."""
    if not section:
        return ""
    t = section["threshold"]
    curves = [("student (test streams)", section["det"]["student"]),
              ("teacher ensemble (test streams)", section["det"]["teacher_ensemble"]),
              ("student (validation streams)", section["det"]["validation_student"])]
    lines = "".join(f"<li>{escape(line)}</li>" for line in console_lines(section))
    parity = section["parity"]
    diff = parity["max_abs_diff"]
    parity_text = ("—" if diff is None or (isinstance(diff, float) and math.isnan(diff))
                   else f"max abs diff {diff:.2e}, top-1 agreement {100 * parity.get('top1_agreement', 1):.2f}% over "
                        f"{parity['windows']} windows ({parity.get('bounds', 'max abs')} bound {parity['tolerance']:g})")
    return ("<h2>Keyword spotting on streams</h2><div class=\"card\">"
            f"<ul>{lines}<li>streaming vs sliding-window student: {escape(parity_text)}</li></ul>"
            f"<div class=\"plot\">{_det_svg(curves, t['max_false_accepts_per_hour'], t['value'], 'det')}</div>"
            "</div>")
