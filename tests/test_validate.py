"""`compress validate`: a real artifact folder, budgets as CI gates, a user's own model, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from compress.devices.budgets import check_budgets

ROOT = Path(__file__).resolve().parents[1]


def compress(*args, cwd, env_extra=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1].astype(np.float32)})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from compress.pipeline import RunConfig, run

    out = tmp_path_factory.mktemp("validate")
    report = run(RunConfig.from_settings(target="onnx", epochs=5, teacher_epochs=2, limit_train=600, out=str(out)), quiet=True)
    return Path(report["run"]["out_dir"])


@pytest.fixture(scope="module")
def expected(folder):
    """Accuracy, teacher accuracy and agreement computed independently of compress validate."""
    from compress.data import load_data
    from compress.teachers import ensemble_probs, load_teachers

    data = load_data(None, limit_train=600)
    logits = ort_logits(folder / "model.onnx", data.x_test)
    members = load_teachers(["mlp-1200", "cnn", "resnet"], data, epochs=2, seed=0)  # cached by the run
    teacher_pred = np.argmax(ensemble_probs(members, data.x_test), axis=1)
    return {"accuracy": float(np.mean(np.argmax(logits, 1) == data.y_test)),
            "teacher_accuracy": float(np.mean(teacher_pred == data.y_test)),
            "agreement": float(np.mean(np.argmax(logits, 1) == teacher_pred)), "n": len(data.y_test)}


def test_validate_folder_passes_and_reports_what_it_measured(folder, expected, tmp_path):
    proc = compress("validate", str(folder), "--json", "--max-size-kb", "1000", "--max-latency-ms", "1000",
                    "--max-accuracy-drop", "100", "--max-peak-memory-mb", "1000", "--report-dir", str(tmp_path),
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True and report["run"]["mode"] == "folder"
    assert json.loads((tmp_path / "validate-host.json").read_text())["rows"] == report["rows"]
    ref, student = report["rows"]
    size = (folder / "model.onnx").stat().st_size
    assert student["size_bytes"] == size and report["measured"]["size_kb"] == pytest.approx(size / 1024)
    assert student["accuracy"] == pytest.approx(expected["accuracy"])
    assert ref["accuracy"] == pytest.approx(expected["teacher_accuracy"])
    assert student["agreement_with_teacher"] == pytest.approx(expected["agreement"])
    assert report["measured"]["accuracy_drop"] == pytest.approx(100 * (expected["teacher_accuracy"] - expected["accuracy"]))
    assert report["run"]["data"]["test"] == expected["n"]
    lat = report["latency"]["host"]
    assert lat["runs"] == 100 and 0 < lat["p50_ms"] <= lat["p90_ms"] and report["measured"]["latency_ms"] == lat["p50_ms"]
    assert lat["label"].startswith("measured on this host (") and "1 thread" in lat["label"]
    assert report["latency"]["device_estimate"]["p50_ms"] is None
    assert "not estimated" in report["latency"]["device_estimate"]["label"]
    mem = report["peak_memory"]
    assert mem["peak_memory_mb"] is not None and 0 <= mem["peak_memory_mb"] < 1000 and mem["includes"]
    assert report["measured"]["peak_memory_mb"] == mem["peak_memory_mb"]
    names = {c["name"] for c in report["checks"]}
    assert "artifact matches manifest.json" in names and "accuracy reproduces report.json" in names
    assert {b["budget"] for b in report["budgets"]} == {"size_kb", "latency_ms", "max_accuracy_drop", "peak_memory_mb"}
    assert all(b["passed"] and b["checked"] for b in report["budgets"])


def test_latency_budget_breach_exits_1(folder, tmp_path):
    proc = compress("validate", str(folder), "--max-latency-ms", "0.000001", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    breaches = [ln for ln in proc.stderr.splitlines() if ln.startswith("budget breached:")]
    assert len(breaches) == 1 and "latency p50" in breaches[0] and "(--max-latency-ms)" in breaches[0]
    report = json.loads(proc.stdout)
    (b,) = report["budgets"]
    assert b["passed"] is False and b["value"] == report["latency"]["host"]["p50_ms"] and b["limit"] == 1e-6


def test_size_budget_breach_exits_1(folder, tmp_path):
    proc = compress("validate", str(folder), "--max-size-kb", "0.1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    size_kb = (folder / "model.onnx").stat().st_size / 1024
    assert f"budget breached: size {size_kb:.3g} kB > budget 0.1 kB (--max-size-kb)" in proc.stderr
    assert "budgets" in proc.stdout  # the table was printed


def test_profile_file_budget_breach_names_the_profile(folder, tmp_path):
    prof = tmp_path / "tiny-board.toml"
    prof.write_text('name = "tiny-board"\nruntime = "onnx"\nthreads = 2\n[budgets]\nsize_kb = 1\nlatency_ms = 1000\n')
    proc = compress("validate", str(folder), "--device", str(prof), "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "budget breached: size" in proc.stderr and "(tiny-board)" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["run"]["threads"] == 2 and report["latency"]["host"]["threads"] == 2
    by = {b["budget"]: b for b in report["budgets"]}
    assert by["size_kb"]["passed"] is False and by["latency_ms"]["passed"] is True
    assert by["size_kb"]["source"] == "tiny-board" and not by["size_kb"]["explicit"]


def test_users_own_onnx_with_data_and_reference(folder, tmp_path, isolated_cache):
    from compress.data import load_data

    model = tmp_path / "my_model.onnx"
    shutil.copy(folder / "model.onnx", model)
    members = json.loads((folder / "manifest.json").read_text())["teachers"]  # this folder's teachers, as exported
    teacher = max((isolated_cache / "teacher-onnx" / f"{m['fingerprint'][:32]}.onnx" for m in members),
                  key=lambda p: p.stat().st_size)
    proc = compress("validate", str(model), "--data", "digits", "--reference", str(teacher), "--json",
                    "--max-accuracy-drop", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["run"]["mode"] == "file"
    data = load_data("digits")
    ref_pred = np.argmax(ort_logits(teacher, data.x_test), 1)
    pred = np.argmax(ort_logits(model, data.x_test), 1)
    ref, student = report["rows"]
    assert student["accuracy"] == pytest.approx(np.mean(pred == data.y_test))
    assert ref["accuracy"] == pytest.approx(np.mean(ref_pred == data.y_test))
    assert student["agreement_with_teacher"] == pytest.approx(np.mean(pred == ref_pred))
    assert student["size_bytes"] == model.stat().st_size
    assert report["budgets"][0]["value"] == pytest.approx(100 * (ref["accuracy"] - student["accuracy"]))


def test_missing_path_exits_2(tmp_path):
    proc = compress("validate", str(tmp_path / "nope"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "not found" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_device_exits_2_naming_the_nearest(folder, tmp_path):
    proc = compress("validate", str(folder), "--device", "pixle-class", cwd=tmp_path)
    assert proc.returncode == 2 and "did you mean 'pixel-class'" in proc.stderr
    proc = compress("validate", str(folder), "--device", "pixel-class", cwd=tmp_path)  # tflite profile, onnx model
    assert proc.returncode == 2 and "runs tflite" in proc.stderr


def test_accuracy_drop_without_reference_for_a_bare_file_exits_2(folder, tmp_path):
    proc = compress("validate", str(folder / "model.onnx"), "--data", "digits", "--max-accuracy-drop", "1",
                    cwd=tmp_path)
    assert proc.returncode == 2 and "--max-accuracy-drop" in proc.stderr and "--reference" in proc.stderr
    proc = compress("validate", str(folder / "model.onnx"), cwd=tmp_path)
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_unmeasured_budget_semantics():
    measured = {"accuracy_drop": 0.5, "latency_ms": None, "size_kb": 20.0}
    notes = {"latency_ms": "Core ML does not run on Linux"}
    from_profile = check_budgets(measured, {"latency_ms": {"limit": 5, "source": "iphone-class", "explicit": False},
                                            "size_kb": {"limit": 10, "source": "iphone-class"}}, notes=notes)
    lat, size = from_profile
    assert lat["passed"] and not lat["checked"] and "not measured here (Core ML does not run on Linux)" in lat["detail"]
    assert not size["passed"] and size["detail"] == "size 20 kB > budget 10 kB (iphone-class)"
    (explicit,) = check_budgets(measured, {"latency_ms": 5}, notes=notes)
    assert not explicit["passed"] and not explicit["checked"] and "--max-latency-ms" in explicit["detail"]
    (drop,) = check_budgets({"accuracy_drop": 1.0}, {"max_accuracy_drop": 1.0})
    assert drop["passed"] and drop["unit"] == "points"


# --- issue 13: measure, not recall -------------------------------------------------------------------------------

def scaled_copy(source, dest, factor):
    """``source`` with every float initializer (weights and biases) multiplied by ``factor``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, str(dest))
    return dest


def test_reference_parity_breach_exits_1_and_identical_file_passes(folder, tmp_path):
    scaled = scaled_copy(folder / "model.onnx", tmp_path / "scaled.onnx", 1.5)
    original = folder / "model.onnx"
    proc = compress("validate", str(scaled), "--data", "digits", "--reference", str(original), "--max-logit-diff",
                    "1e-4", "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("check failed:")]
    assert len(failed) == 1 and "output parity vs reference model.onnx" in failed[0] and "(bound 1e-04)" in failed[0]
    report = json.loads(proc.stdout)
    data_x = __import__("compress.data", fromlist=["load_data"]).load_data("digits").x_test
    expected = np.abs(ort_logits(scaled, data_x).astype(np.float64) - ort_logits(original, data_x)).max()
    par = report["rows"][-1]["parity"]
    assert par["max_abs_diff"] == pytest.approx(expected, rel=1e-5) and par["passed"] is False
    assert par["tolerance"] == {"max_abs": 1e-4} and {"p99_abs_diff", "max_rel_diff", "top1_agreement"} <= set(par)
    ref = report["reference"]
    assert ref["relation"] == "different model" and ref["bound"] == {"max_abs": 1e-4}
    assert ref["bound_source"] == "--max-logit-diff"
    # without --max-logit-diff a file not shown to be the artifact's float twin gets agreement only, said so
    proc = compress("validate", str(scaled), "--data", "digits", "--reference", str(original), "--json",
                    "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["reference"]["bound"] is None and report["rows"][-1]["parity"] is None
    assert any("agreement only" in n for n in report["notes"])
    # the original against itself: measured, held to the per-variant default (fp32), exit 0
    proc = compress("validate", str(original), "--data", "digits", "--reference", str(original), "--json",
                    "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    par = report["rows"][-1]["parity"]
    assert par["max_abs_diff"] == 0.0 and par["top1_agreement"] == 1.0 and par["passed"] is True
    assert report["reference"]["relation"] == "identical file" and report["reference"]["bound"] == {"max_rel": 1e-4}
    assert any(c["name"].startswith("output parity vs reference model.onnx") and c["passed"] for c in report["checks"])
    proc = compress("validate", str(original), "--data", "digits", "--reference", str(original), "--max-logit-diff",
                    "1e-4", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_max_logit_diff_needs_one_reference_model(folder, tmp_path):
    proc = compress("validate", str(folder / "model.onnx"), "--data", "digits", "--max-logit-diff", "1e-4",
                    cwd=tmp_path)
    assert proc.returncode == 2 and "--max-logit-diff" in proc.stderr and "--reference" in proc.stderr
    proc = compress("validate", str(folder), "--max-logit-diff", "1e-4", cwd=tmp_path)  # three teachers
    assert proc.returncode == 2 and "--max-logit-diff" in proc.stderr and "one reference" in proc.stderr
    proc = compress("validate", str(folder), "--max-logit-diff", "-1", cwd=tmp_path)
    assert proc.returncode == 2 and "--max-logit-diff -1" in proc.stderr


@pytest.fixture(scope="module")
def fp16_folder(folder):
    """The same student as ``folder`` (same recipe, cached student), exported as fp16 ONNX beside it."""
    from compress.pipeline import RunConfig, run

    report = run(RunConfig.from_settings(target="onnx", quantize="fp16", epochs=5, teacher_epochs=2, limit_train=600,
                           out=str(folder.parent)), quiet=True)
    return Path(report["run"]["out_dir"])


def test_float_twin_reference_gets_the_per_variant_bound(folder, fp16_folder, tmp_path):
    from compress.export.registry import tolerance_for

    proc = compress("validate", str(fp16_folder), "--reference", str(folder), "--json", "--latency-runs", "3",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    ref = report["reference"]
    assert ref["relation"] == "float twin" and ref["variant"] == "fp16"
    assert ref["bound"] == tolerance_for("onnx", "fp16") and "fp16" in ref["bound_source"]
    from compress.data import load_data

    x = load_data(None, limit_train=600).x_test
    expected = np.abs(ort_logits(fp16_folder / "model.onnx", x).astype(np.float64)
                      - ort_logits(folder / "model.onnx", x)).max()
    par = report["rows"][-1]["parity"]
    assert 0 < par["max_abs_diff"] == pytest.approx(expected, rel=1e-5) and par["passed"]
    # an explicit bound replaces the default: fp16 rounding breaches 1e-6
    proc = compress("validate", str(fp16_folder), "--reference", str(folder / "model.onnx"), "--max-logit-diff",
                    "1e-6", "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 1 and "check failed: output parity vs reference model.onnx (float twin)" in proc.stderr


def test_swapped_model_fails_sha_and_rows_show_only_what_was_measured(folder, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    recorded = next(r for r in json.loads((folder / "report.json").read_text())["rows"]
                    if r["role"] == "student" and r["size_bytes"])["parity"]
    scaled_copy(folder / "model.onnx", swapped / "model.onnx", 1.5)
    proc = compress("validate", str(swapped), "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    sha = next(c for c in report["checks"] if c["name"] == "artifact matches manifest.json")
    assert sha["passed"] is False and "DIFFERS" in sha["detail"]
    student = report["rows"][-1]
    assert student["parity"] != recorded and student["parity"] is None  # nothing measured parity in this run
    assert report["recorded"]["source"] == "report.json" and report["recorded"]["parity"] == recorded
    assert report["recorded"]["describes_this_file"] is False
    # an export-time value shown at all is named as recorded, never as measured
    assert all("recorded" in c["name"] for c in report["checks"] if "torch student" in c["name"])
    # the untouched folder: the recorded parity is carried as a check labelled recorded, not as a row value
    proc = compress("validate", str(folder), "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rows"][-1]["parity"] is None and report["recorded"]["describes_this_file"] is True
    assert any(c["name"].startswith("parity vs torch student (recorded at export") for c in report["checks"])


def test_manifest_without_a_sha256_for_the_model_is_a_failed_check(folder, tmp_path):
    copy = tmp_path / "no-sha"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = compress("validate", str(copy), "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "check failed: artifact matches manifest.json: manifest has no sha256 for model.onnx" in proc.stderr
    del manifest["files"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = compress("validate", str(copy), "--json", "--latency-runs", "3", cwd=tmp_path)
    assert proc.returncode == 1 and "manifest has no sha256 for model.onnx" in proc.stderr
