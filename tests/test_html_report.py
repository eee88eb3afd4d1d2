"""report.html: built from a real (cheap) run, checked as HTML and, where Chromium exists, as pixels."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest

from compress.pipeline import RunConfig, run
from compress.devices import html_report
from compress.devices.chromium import find_chromium, screenshot
from compress.devices.report import _pct

CHEAP = dict(teachers=["mlp-800", "cnn-small"], teacher_epochs=2, epochs=5, limit_train=300, limit_test=150,
             latency_runs=5, threads=1)


def teacher_student_confusion(cfg: RunConfig, report: dict) -> dict:
    """The ``confusion`` field, computed independently of the pipeline: teacher ensemble (members reloaded
    from this session's cache) vs the exported student as its runtime runs it."""
    from sklearn.metrics import confusion_matrix

    from compress.data import load_data
    from compress.teachers import ensemble_probs, load_teachers
    from compress.core import metrics as validation
    from compress.export import TARGETS

    data = load_data(cfg.data.path, cfg.data.format, limit_train=cfg.data.limit_train, limit_test=cfg.data.limit_test, seed=cfg.distill.seed)
    members = load_teachers(cfg.teachers.members, data, epochs=cfg.teachers.epochs, seed=cfg.distill.seed)
    teacher_pred = np.argmax(ensemble_probs(members, data.x_test), axis=1)
    artifact = Path(report["run"]["out_dir"]) / TARGETS[cfg.export.target].file_name
    student_pred = np.argmax(validation.batched(TARGETS[cfg.export.target].open(artifact, 1).predict, data.x_test), axis=1)
    exported = next(r for r in report["rows"] if r["model"].startswith("student ("))
    return {"reference": "teacher ensemble", "candidate": exported["model"], "labels": list(data.labels),
            "matrix": confusion_matrix(teacher_pred, student_pred, labels=list(range(data.num_classes))).tolist()}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cfg = RunConfig.from_settings(target="onnx", out=str(tmp_path_factory.mktemp("html-run")), **CHEAP)
    rep = run(cfg, quiet=True)
    conf = teacher_student_confusion(cfg, rep)
    if "confusion" in rep:  # newer pipelines write it themselves: it must agree with the independent count
        assert rep["confusion"]["matrix"] == conf["matrix"]
        assert rep["confusion"]["candidate"] == conf["candidate"]
    rep["confusion"] = conf
    return rep


@pytest.fixture(scope="module")
def hostile(report):
    """The real report plus what other runs produce: a Core ML row with no latency (it cannot run on
    Linux), a model name with markup in it, and the optional sections."""
    rep = copy.deepcopy(report)
    exported = next(r for r in rep["rows"] if r["model"].startswith("student ("))
    rep["rows"].append({**copy.deepcopy(exported), "model": "student <script>alert(1)</script> & co",
                        "runtime": "Core ML 9.0 (not runnable here)", "latency_ms": None})
    rep["budgets"] = [{"name": "size <= 1 MB", "limit": 1 << 20, "value": exported["size_bytes"], "passed": True},
                      {"name": "p50 <= 1 µs", "limit": 0.001, "value": 0.02, "passed": False}]
    rep["quantization_fallback"] = {"fp32_accuracy": 0.93, "int8_accuracy": 0.88, "accuracy": 0.925, "drop": 0.005,
                                    "within_budget": True, "kept_in_float": ["/fc1/Gemm"], "eval_samples": 150}
    rep["compatibility"] = {"runtime": "tflite", "operators": [{"op": "FULLY_CONNECTED", "version": 9}],
                            "min_runtime": "2.14", "unknown_operators": [], "required_by_user": None}
    return rep


def test_rows_accuracies_and_plots(report):
    page = html_report.render(report)
    for row in report["rows"]:
        assert f">{row['model']}<" in page or row["model"] in page
        assert _pct(row["accuracy"]) in page
        assert _pct(row["agreement_with_teacher"]) in page
    curves = any((t.get("training") or {}).get("val_accuracy") or (t.get("training") or {}).get("train_loss")
                 for t in report["run"]["teachers"])  # validation accuracy, or training loss where none was held out
    assert len(re.findall(r"<svg\b", page)) == 3 + curves  # two trade-off plots, the confusion, teacher curves
    assert report["run"]["name"] in page and report["comparison"]["timing_note"] in page
    for check in report["checks"]:
        assert check["name"] in page
    assert ("PASS" if report["passed"] else "FAIL") in page


def test_self_contained(hostile):
    page = html_report.render(hostile)
    assert not re.search(r"https?://", page, re.I)
    assert "<script" not in page.lower()  # no JavaScript at all, and user text cannot add any
    # nothing loaded from anywhere: references are in-page (#id) or inline data (the confusion image)
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']{0,30})""", page)
    assert refs and all(r.startswith(("#", "data:image/png;base64,")) for r in refs), refs
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # the three inlined SVGs do not share ids


def test_escapes_model_names(hostile):
    page = html_report.render(hostile)
    assert "<script>alert(1)</script>" not in page
    assert "student &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page


def test_null_latency_not_measured_and_not_plotted(hostile):
    name = "student <script>alert(1)</script> & co"
    pts = html_report.plot_points(hostile)
    plotted = {p["model"] for p in pts["latency"]["plotted"]}
    skipped = {s["model"]: s["reason"] for s in pts["latency"]["skipped"]}
    assert name not in plotted and "not measured" in skipped[name]
    assert plotted == {r["model"] for r in hostile["rows"] if r["latency_ms"]}
    for p in pts["latency"]["plotted"]:
        row = hostile["rows"][p["index"] - 1]
        assert (p["model"], p["x"], p["y"]) == (row["model"], row["latency_ms"]["p50"], row["accuracy"])
    # size: the file-less torch student is skipped, the Core ML row (it has a file) is plotted
    assert "student" in {s["model"] for s in pts["size"]["skipped"]}
    assert name in {p["model"] for p in pts["size"]["plotted"]}
    page = html_report.render(hostile)
    escaped = "student &lt;script&gt;alert(1)&lt;/script&gt; &amp; co"
    assert re.search(re.escape(escaped) + r"[^<]*latency not measured", page)
    assert "Latency <b>not measured</b>" in page
    # what the SVG draws: one <g id="plat-point-N"> per plotted row N, none for the unmeasured row
    lat_svg = page[page.index("<svg"):page.index("</svg>")]
    drawn = sorted(int(n) for n in re.findall(r'id="plat-point-(\d+)"', lat_svg))
    assert drawn == sorted(p["index"] for p in pts["latency"]["plotted"])
    assert len(hostile["rows"]) not in drawn  # the appended null-latency row


def test_optional_sections_and_old_reports(report, hostile):
    page = html_report.render(hostile)
    for text in ("Budgets", "size &lt;= 1 MB", "p50 &lt;= 1 µs", "int8 float fallback", "/fc1/Gemm", "2.14",
                 "FULLY_CONNECTED"):
        assert text in page
    old = copy.deepcopy(report)
    assert [st["stage"] for st in report["run"]["stages"]][:4] == ["setup", "data", "teachers", "soft targets"]
    assert "Time per stage" in page and "<td>distillation</td>" in page  # quiet: no estimate printed, none shown
    for key in ("confusion", "budgets", "quantization_fallback", "compatibility"):
        old.pop(key, None)
    old["run"].pop("stages")
    old_page = html_report.render(old)
    assert "Time per stage" not in old_page
    assert "no <code>confusion</code> field" in old_page
    curves = any((t.get("training") or {}).get("val_accuracy") or (t.get("training") or {}).get("train_loss")
                 for t in old["run"]["teachers"])  # validation accuracy, or training loss where none was held out
    assert len(re.findall(r"<svg\b", old_page)) == 2 + curves
    assert "Budgets" not in old_page


def test_confusion_summary(report):
    conf = report["confusion"]
    m = np.array(conf["matrix"])
    page = html_report.render(report)
    assert f"<b>{int(np.trace(m))}</b> of {int(m.sum())} test samples" in page
    assert int(m.sum()) == report["run"]["data"]["test"]


def test_write(report, tmp_path):
    path = html_report.write(report, tmp_path / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium/Chrome on this machine (compress.devices.chromium.setup() "
                                                     "installs Debian's chromium as root)")
def test_screenshot_is_a_real_nonblank_page(hostile, tmp_path):
    from PIL import Image

    html = html_report.write(hostile, tmp_path / "report.html")
    png = screenshot(html, tmp_path / "report.png", width=1280, height=2000)
    img = Image.open(png)
    img.load()
    assert img.size == (1280, 2000)
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert arr.std() > 10  # not a blank page
    # the plots sit in the middle band of the page: it must hold the role colours and plenty of others
    band = arr[700:1500]
    colours = {tuple(c) for c in band.reshape(-1, 3)[::7]}
    assert len(colours) > 50
    for hex_ in ("#1f4e79", "#d62728"):
        target = np.array([int(hex_[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(band - target).sum(axis=2) < 30).sum() > 20, f"no {hex_} markers in the plot region"


# Every optional field a report may lack (a member without MACs: an .onnx file, a dist/<name> folder, a .npz;
# no latency where the runtime does not run here; no parity for a member given as a file; ...)
OPTIONAL = [("comparison", "param_ratio"), ("comparison", "mac_ratio"), ("comparison", "latency_ratio_p50"),
            ("comparison", "timing_note"), ("rows", "accuracy"), ("rows", "agreement_with_teacher"),
            ("rows", "params"), ("rows", "macs"), ("rows", "size_bytes"), ("rows", "latency_ms"), ("rows", "parity"),
            ("run", "profile"), ("", "comparison"), ("", "confusion"), ("", "budgets"), ("", "compatibility"),
            ("", "quantization_fallback")]


def _without(report: dict, section: str, key: str) -> dict:
    rep = copy.deepcopy(report)
    if section == "":
        rep[key] = None
    elif section == "rows":
        for r in rep["rows"]:
            r[key] = None
    elif isinstance(rep.get(section), dict):
        rep[section][key] = None
    return rep


def _step_summary(report: dict, tmp_path: Path) -> str:
    """The CI sample's job-summary script (samples/ci/github-actions.yml), run on ``report``."""
    import json
    import subprocess
    import sys
    import textwrap

    workflow = (Path(__file__).resolve().parents[1] / "samples/ci/github-actions.yml").read_text()
    script = textwrap.dedent(workflow.split("python - <<'EOF' >> \"$GITHUB_STEP_SUMMARY\"\n", 1)[1].split("EOF\n", 1)[0])
    (tmp_path / "report.json").write_text(json.dumps(report))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("missing", [*OPTIONAL, ("all", "all")], ids=lambda m: ".".join(m))
def test_every_printed_report_path_survives_every_missing_optional_field(report, hostile, tmp_path, missing):
    import io

    from rich.console import Console

    from compress.devices.report import print_report

    rep = hostile
    for section, key in (OPTIONAL if missing == ("all", "all") else [missing]):
        rep = _without(rep, section, key)
    out = io.StringIO()
    print_report(rep, Console(file=out, width=160))
    assert "artifacts:" in out.getvalue()
    assert "<html" in html_report.render(rep)
    assert rep["run"]["name"] in _step_summary(rep, tmp_path)


def test_the_console_line_says_what_was_not_compared(report):
    from compress.devices.report import comparison_line

    line = comparison_line({"param_ratio": None, "mac_ratio": None, "latency_ratio_p50": None,
                            "timing_note": "NOT compared"})
    assert "params not compared" in line and "MACs not compared" in line and "latency not compared" in line
