"""The `compress search` part of report.html: fronts, skipped candidates, budget lines and the chosen point,
checked against the search.json dict they are drawn from and in the SVG that is inlined into the page."""

from __future__ import annotations

import copy
import itertools
import random
import re

import pytest

from compress.devices import html_report, search_report

HOSTILE_ID = "<script>alert(1)</script> $x^2$ & co"
PLOTS = {"latency": ("latency_ms", "slat"), "size": ("size_kb", "ssize")}


def candidate(cid: str, macs: int, **fields) -> dict:
    base = {"id": cid, "student": cid.split()[0], "scheme": "int8", "temperature": 4.0, "alpha": 0.1, "macs": macs,
            "params": macs // 100, "status": "measured", "note": None, "epochs_trained": 20, "val_accuracy": None,
            "accuracy_drop": None, "size_kb": None, "latency_ms": None, "device_latency_ms": None,
            "peak_memory_mb": None, "meets_budgets": None, "breaks": [], "pareto": False}
    return {**base, **fields}


def measured(cid: str, macs: int, acc: float, lat: float | None, size: float, breaks: list[str]) -> dict:
    return candidate(cid, macs, val_accuracy=acc, accuracy_drop=round(100 * (0.981 - acc), 2), size_kb=size,
                     latency_ms=lat, device_latency_ms=None if lat is None else round(3.2 * lat, 4),
                     peak_memory_mb=12.5, meets_budgets=not breaks, breaks=breaks)


@pytest.fixture
def search() -> dict:
    """A search over ten candidates as compress.search writes it: some meet the budgets, some break them, one
    was pruned, one failed, one has no host latency (a runtime that does not run here), one has a hostile id."""
    cands = [
        measured("ds-cnn:0.25 int8", 120_000, 0.952, 0.021, 9.5, ["max_accuracy_drop: 2.9 > 2"]),
        measured("ds-cnn:0.5 int8", 410_000, 0.968, 0.043, 21.0, []),
        measured("ds-cnn:0.5 fp32", 410_000, 0.970, 0.090, 74.0, []),
        measured("ds-cnn:1.0 int8", 1_500_000, 0.976, 0.310, 61.0, ["latency_ms: 0.31 > 0.25"]),
        measured("ds-cnn:2.0 fp32", 6_000_000, 0.979, 6.5, 1500.0, ["latency_ms: 6.5 > 0.25", "size_kb: 1500 > 1000"]),
        measured("mlp:1.0 fp32", 900_000, 0.958, 0.52, 110.0, ["max_accuracy_drop: 2.3 > 2", "latency_ms: 0.52 > 0.25"]),
        candidate("ds-cnn:1.5 int8", 3_000_000, status="pruned", note="pruned at epoch 3: below the median of earlier trials"),
        measured("ds-cnn:0.75 coreml", 800_000, 0.972, None, 40.0, []),
        candidate("mobilenet:0.5 int8", 700_000, status="failed", note="export failed: HardSwish has no int8 kernel"),
        measured(HOSTILE_ID, 250_000, 0.965, 0.150, 30.0, []),
    ]
    flags = html_free_front(cands, [("val_accuracy", "max"), ("latency_ms", "min"), ("size_kb", "min")])
    for c, flag in zip(cands, flags):
        c["pareto"] = flag
    return {"schema": "compress.search/1", "target": "onnx", "runtime": "ONNX Runtime 1.32.0", "threads": 1,
            "latency_label": "host p50, batch 1, 1 thread(s), ONNX Runtime (this machine, not the device)",
            "device_factor": {"factor": 3.2, "basis": "pixel-class profile"},
            "reference": {"name": "teacher ensemble", "val_accuracy": 0.981},
            "budgets": {"max_accuracy_drop": 2.0, "latency_ms": 0.25, "size_kb": 1000.0},
            "accuracy_floor": 0.961, "candidates": cands, "chosen": "ds-cnn:0.5 int8",
            "why": "The smallest and fastest candidate that meets every budget.", "closest": None,
            "elapsed_s": 734.2, "time_budget_min": 20, "trained": 7, "resumed": 1, "pruned": 1}


def html_free_front(points: list[dict], objectives) -> list[bool]:
    """Brute force, written independently of compress.core.pareto: a point is on the front unless some other
    point is no worse everywhere and better somewhere; points without every value are never on it."""
    def ok(p):
        return all(p.get(k) is not None for k, _ in objectives)

    def no_worse(a, b, k, sense):
        return a[k] >= b[k] if sense == "max" else a[k] <= b[k]

    def better(a, b, k, sense):
        return a[k] > b[k] if sense == "max" else a[k] < b[k]

    return [ok(p) and not any(ok(q) and all(no_worse(q, p, k, s) for k, s in objectives)
                              and any(better(q, p, k, s) for k, s in objectives) for q in points) for p in points]


def brute_front_ids(search: dict, key: str) -> list[str]:
    drawable = [c for c in search["candidates"] if c["status"] == "measured" and c["val_accuracy"] is not None
                and c[key] is not None]
    flags = html_free_front(drawable, [("val_accuracy", "max"), (key, "min")])
    return [c["id"] for c, f in sorted(zip(drawable, flags), key=lambda cf: (cf[0][key], -cf[0]["val_accuracy"])) if f]


def plot_svg(page: str, prefix: str) -> str:
    """The inlined <svg> whose ids carry ``prefix``."""
    for svg in re.findall(r"<svg\b.*?</svg>", page, flags=re.S):
        if f'id="{prefix}-' in svg:
            return svg
    raise AssertionError(f"no plot with prefix {prefix}")


def drawn_candidates(svg: str, prefix: str) -> set[int]:
    return {int(n) for n in re.findall(rf'id="{prefix}-cand-(\d+)"', svg)}


def marker_xy(svg: str, gid: str) -> tuple[float, float]:
    """Where the first marker of the SVG group ``gid`` is placed (matplotlib draws markers as <use x= y=>)."""
    start = svg.index(f'id="{gid}"')
    use = re.search(r'<use\b[^>]*\bx="([-\d.]+)"[^>]*\by="([-\d.]+)"', svg[start:])
    return float(use.group(1)), float(use.group(2))


# ---------------------------------------------------------------------------------------------- plot data

def test_fronts_equal_brute_force(search):
    data = search_report.plot_data(search)
    for name, (key, _) in PLOTS.items():
        assert data[name]["front"] == brute_front_ids(search, key), name
    # the fixture's fronts are not trivial: they hold several points and leave measured ones off
    assert data["latency"]["front"] == ["ds-cnn:0.25 int8", "ds-cnn:0.5 int8", "ds-cnn:0.5 fp32", "ds-cnn:1.0 int8",
                                        "ds-cnn:2.0 fp32"]
    assert data["size"]["front"] == ["ds-cnn:0.25 int8", "ds-cnn:0.5 int8", "ds-cnn:0.75 coreml", "ds-cnn:1.0 int8",
                                     "ds-cnn:2.0 fp32"]


@pytest.mark.parametrize("seed", range(12))
def test_fronts_equal_brute_force_random(seed):
    """Random searches with ties in accuracy and in x (a tie is where a front is easiest to get wrong)."""
    rng = random.Random(seed)
    cands = []
    for i in range(rng.randint(1, 14)):
        status = rng.choice(["measured"] * 4 + ["pruned", "failed"])
        acc = rng.choice([0.90, 0.93, 0.95, 0.95, 0.97]) if status == "measured" else None
        cands.append(candidate(f"c{i}", 1000 * i, status=status, val_accuracy=acc,
                               latency_ms=rng.choice([None, 0.1, 0.2, 0.2, 0.5]) if acc else None,
                               size_kb=rng.choice([10.0, 20.0, 20.0, 40.0]) if acc else None, meets_budgets=bool(acc)))
    search = {"candidates": cands, "budgets": {}, "accuracy_floor": None, "chosen": None}
    data = search_report.plot_data(search)
    for name, (key, _) in PLOTS.items():
        assert data[name]["front"] == brute_front_ids(search, key)
        assert {p["index"] for p in data[name]["plotted"]} | {s["index"] for s in data[name]["skipped"]} == set(range(len(cands)))


def test_plotted_values_are_the_search_json_values(search):
    data = search_report.plot_data(search)
    for name, (key, _) in PLOTS.items():
        for p in data[name]["plotted"]:
            c = search["candidates"][p["index"]]
            assert (p["id"], p["x"], p["y"], p["meets_budgets"]) == (c["id"], c[key], c["val_accuracy"], c["meets_budgets"])


def test_unmeasured_candidates_are_skipped_with_their_reason_and_not_drawn(search):
    data = search_report.plot_data(search)
    lat_skipped = {s["index"]: s["reason"] for s in data["latency"]["skipped"]}
    size_skipped = {s["index"]: s["reason"] for s in data["size"]["skipped"]}
    assert lat_skipped == {6: "pruned: pruned at epoch 3: below the median of earlier trials",
                           7: "latency not measured here",
                           8: "failed: export failed: HardSwish has no int8 kernel"}
    assert size_skipped == {6: lat_skipped[6], 8: lat_skipped[8]}  # the Core ML-like one has a size: drawn there
    page = search_report.section(search)
    for name, (_, prefix) in PLOTS.items():
        drawn = drawn_candidates(plot_svg(page, prefix), prefix)
        assert drawn == {p["index"] for p in data[name]["plotted"]}
    assert 7 not in drawn_candidates(plot_svg(page, "slat"), "slat")
    assert 7 in drawn_candidates(plot_svg(page, "ssize"), "ssize")
    assert "latency not measured here, not plotted" in page


# ---------------------------------------------------------------------------------------------- drawing

def test_chosen_point_sits_on_the_chosen_candidate(search):
    data = search_report.plot_data(search)
    page = search_report.section(search)
    chosen = search["candidates"][1]
    for name, (key, prefix) in PLOTS.items():
        assert data[name]["chosen"] == chosen["id"]
        point = next(p for p in data[name]["plotted"] if p["id"] == data[name]["chosen"])
        assert (point["x"], point["y"]) == (chosen[key], chosen["val_accuracy"])
        svg = plot_svg(page, prefix)
        assert svg.count(f'id="{prefix}-chosen-point"') == 1
        # drawn where the chosen candidate's own point is, and not where any other is
        assert marker_xy(svg, f"{prefix}-chosen-point") == marker_xy(svg, f"{prefix}-cand-1")
        assert marker_xy(svg, f"{prefix}-chosen-point") != marker_xy(svg, f"{prefix}-cand-2")


def test_budget_lines_drawn_exactly_when_set(search):
    page = search_report.section(search)
    for prefix in ("slat", "ssize"):
        svg = plot_svg(page, prefix)
        assert f'id="{prefix}-budget-floor"' in svg and f'id="{prefix}-budget-x"' in svg
        assert f'id="{prefix}-front-line"' in svg
    no_latency = copy.deepcopy(search)
    del no_latency["budgets"]["latency_ms"]
    data = search_report.plot_data(no_latency)
    assert data["latency"]["budget_x"] is None and data["size"]["budget_x"] == 1000.0
    page = search_report.section(no_latency)
    assert 'id="slat-budget-x"' not in plot_svg(page, "slat")
    assert 'id="ssize-budget-x"' in plot_svg(page, "ssize")
    assert 'id="slat-budget-floor"' in plot_svg(page, "slat")
    no_floor = copy.deepcopy(search)
    del no_floor["budgets"]["max_accuracy_drop"]
    no_floor["accuracy_floor"] = None
    page = search_report.section(no_floor)
    assert "budget-floor" not in page and 'id="slat-budget-x"' in page


def test_no_candidate_chosen(search, tmp_path):
    failed = copy.deepcopy(search)
    failed["chosen"], failed["why"] = None, "no candidate meets the budgets"
    failed["closest"] = {"id": HOSTILE_ID, "breaks": ["latency_ms: 0.31 > 0.25"]}
    data = search_report.plot_data(failed)
    assert data["latency"]["chosen"] is None and data["size"]["chosen"] is None
    page = search_report.section(failed)
    assert "chosen-point" not in page
    assert ("No candidate meets the budgets</b>: closest <b>&lt;script&gt;alert(1)&lt;/script&gt; $x^2$ &amp; co</b> "
            "breaks latency_ms: 0.31 &gt; 0.25.") in page
    path = search_report.write(failed, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and html_report.CSS in text and page in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left beside it


def test_chosen_without_a_latency_is_not_marked_in_the_latency_plot(search):
    search["chosen"] = "ds-cnn:0.75 coreml"
    data = search_report.plot_data(search)
    assert data["latency"]["chosen"] is None and data["size"]["chosen"] == "ds-cnn:0.75 coreml"
    page = search_report.section(search)
    assert "chosen-point" not in plot_svg(page, "slat")
    assert marker_xy(plot_svg(page, "ssize"), "ssize-chosen-point") == marker_xy(plot_svg(page, "ssize"), "ssize-cand-7")


# ---------------------------------------------------------------------------------------------- HTML

def test_summary_and_table(search):
    page = search_report.section(search)
    assert page.startswith("<section") and page.endswith("</section>")
    assert "Chosen: <b>ds-cnn:0.5 int8</b>: The smallest and fastest candidate that meets every budget." in page
    assert "host p50, batch 1, 1 thread(s), ONNX Runtime (this machine, not the device)" in page
    assert "host latency × 3.2 (pixel-class profile)" in page
    assert "Searched for 12.2 min of a 20 min time budget." in page
    assert (f"Students: 7 trained here, 1 from the cache (an earlier run), 1 pruned, {search.get('skipped', 0)} skipped "
            f"by their untrained export, {search.get('not_reached', 0)} not reached.") in page
    table = page[page.index("<table>"):]
    rows = re.findall(r'<tr[^>]*><td class="num">(\d+)</td>', table)
    macs = [search["candidates"][int(i)]["macs"] for i in rows]
    assert sorted(map(int, rows)) == list(range(len(search["candidates"])))
    assert macs == sorted(macs)
    chosen_row = re.search(r'<tr class="r-exported">(.*?)</tr>', table).group(1)
    assert "ds-cnn:0.5 int8" in chosen_row and "(chosen)" in chosen_row
    assert "latency_ms: 6.5 &gt; 0.25; size_kb: 1500 &gt; 1000" in table
    assert "HardSwish has no int8 kernel" in table


def test_hostile_names_are_escaped(search):
    page = search_report.section(search)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; $x^2$ &amp; co" in page
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # two plots on one page, no shared id


def minimal_report() -> dict:
    return {"schema": "compress.report/1", "tool": {"name": "compress", "version": "0"}, "passed": True,
            "run": {"name": "kws", "target": "onnx", "student": "ds-cnn:0.5", "teachers": [], "data": {"name": "fsdd"}},
            "rows": [], "checks": []}


def test_run_report_includes_the_search_section_only_with_a_search_key(search):
    plain = html_report.render(minimal_report())
    assert "Architecture search" not in plain and "slat-" not in plain
    with_search = html_report.render({**minimal_report(), "search": search})
    assert search_report.section(search) in with_search
    ids = re.findall(r'\bid="([^"]+)"', with_search)
    assert len(ids) == len(set(ids))  # the run report's own plots and the search plots do not collide
    assert "<script" not in with_search.lower()
