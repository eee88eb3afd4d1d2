"""The specialists part of a report, for people: console lines and the HTML section.

Reads ``report["specialists"]`` (``compress.stages.specialists``): the class subsets with the share of the
generalist's confusion each covers, the generalist's and the combination's test accuracy with the number of
test rows they rest on and the interval of their difference, the paper's Table 4 view and the combination's
cost beside the student's.
"""

from __future__ import annotations

from compress.devices.html_parts import escape


def _subset(entry: dict) -> str:
    names = entry["classes"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} classes)" if len(names) > 8 else "")
    return f"{{{shown}}} covers {100 * entry['confusion_share']:.1f}% of the confusion"


def _macs(value: int | None, digits: int) -> str:
    return "not measured" if value is None else f"{value / 1e6:.{digits}f} M"


def _gain(section: dict) -> str:
    """The combination's change over the generalist on the same rows, with its interval and what it means."""
    d = section["combined_vs_generalist"]
    return (f"{d['points']:+.2f} points, {100 * d['confidence']:.0f}% interval {d['low']:+.2f} to {d['high']:+.2f}: "
            f"{d['verdict']}")


def _cost(cost: dict) -> str:
    if cost["combination_macs_per_row"] is None:
        return cost["note"]  # why it is not measured, a whole sentence
    return (f"the combination costs {_macs(cost['combination_macs_per_row'], 2)} MACs per row vs the student's "
            f"{_macs(cost['student_macs'], 3)}")


def _p50(latency: dict | None) -> str:
    return "not measured" if latency is None else f"{latency['p50']:.3f} ms"


def _origin(section: dict) -> str:
    """Where the specialists came from: files computed elsewhere, or trained here (from what)."""
    if section.get("computed_elsewhere"):
        return "computed elsewhere: " + ", ".join(section["computed_elsewhere"])
    return f"{section['arch']}, {'started from the generalist' if section['started_from_generalist'] else 'trained from scratch'}"


def console_lines(section: dict) -> list[str]:
    """What ``print_report`` says about the specialists (a few lines)."""
    cost = section["cost"]
    lines = [f"specialists: {len(section['subsets'])} ({_origin(section)}) for the "
             f"{section['generalist']}'s confusions; test accuracy {100 * section['generalist_accuracy']:.2f}% "
             f"generalist alone -> {100 * section['combined_accuracy']:.2f}% with specialists ({_gain(section)}; "
             f"{section['test_rows']} test rows, {section['active_per_row']:.2f} specialists active per row); {_cost(cost)}"]
    lines += [f"  specialist {i + 1}: {_subset(entry)}" for i, entry in enumerate(section["subsets"])]
    return lines


def html_section(section: dict | None) -> str:
    """The report.html section (empty without specialists)."""
    if not section:
        return ""
    cost = section["cost"]
    subsets = "".join(
        f"<tr><td>{i + 1}</td><td>{escape(', '.join(e['classes']))}</td><td>{100 * e['confusion_share']:.1f}%</td>"
        f"<td>{escape(e['specialist_training'].get('epochs_run', 'elsewhere'))}</td><td>{e['dustbin_correction']:+.3f}</td></tr>"
        for i, e in enumerate(section["subsets"]))
    table4 = "".join(
        f"<tr><td>{g['covering']}</td><td>{g['test_rows']}</td><td>{g['generalist']:.2f}%</td><td>{g['combined']:.2f}%</td>"
        f"<td>{g['change_points']:+.2f}</td><td>{g['errors_fixed']}</td><td>{g['errors_made']}</td></tr>"
        for g in section["table4"])
    return (
        "<h2>Specialists</h2><div class=\"card\">"
        f"<p>Generalist: {escape(section['generalist'])}; specialists: {escape(_origin(section))}; a row's "
        f"top {section['top_n']} generalist class(es) choose which take part. Test accuracy "
        f"{100 * section['generalist_accuracy']:.2f}% alone, {100 * section['combined_accuracy']:.2f}% with "
        f"specialists ({escape(_gain(section))}), on {section['test_rows']} test rows.</p>"
        "<table><tr><th>#</th><th>classes</th><th>confusion covered</th><th>epochs</th><th>dustbin logit +</th></tr>"
        f"{subsets}</table>"
        "<h3>By how many specialists cover the true class (Hinton et al. Table 4)</h3>"
        "<table><tr><th>covering</th><th>test rows</th><th>generalist</th><th>with specialists</th><th>change (pts)</th>"
        f"<th>errors fixed</th><th>errors made</th></tr>{table4}</table>"
        f"<p>Cost ({escape(cost['runtime'])}, {cost['threads']} thread(s), batch 1): combination "
        f"{_macs(cost['combination_macs_per_row'], 2)} MACs per row, p50 {_p50(cost['combination_latency_ms'])}; "
        f"student {_macs(cost['student_macs'], 3)} MACs, p50 {_p50(cost['student_latency_ms'])}. "
        f"{escape(cost['note'])}.</p></div>")
