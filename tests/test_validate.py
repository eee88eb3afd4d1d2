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
    report = run(RunConfig(target="onnx", epochs=5, teacher_epochs=2, limit_train=600, out=str(out)), quiet=True)
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
