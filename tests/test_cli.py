"""`compress distill-and-export` end to end, through the real console script."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from compress.core.cache import file_sha256
from compress.data import load_data
from compress.export.onnx.runner import open_onnx
from compress.core.metrics import batched
from tests.conftest import require_mnist


def compress(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ}, timeout=600)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The README's main command, unchanged: the embedded default (digits) to ONNX."""
    cwd = tmp_path_factory.mktemp("default")
    proc = compress("distill-and-export", "--target", "onnx", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, json.loads(proc.stdout)


def test_default_run_meets_the_issue_targets(default_run):
    cwd, report = default_run
    rows = {r["model"]: r for r in report["rows"]}
    ensemble, student_onnx = rows["teacher ensemble"], rows["student (onnx fp32)"]
    assert len([r for r in report["rows"] if r["role"] == "member"]) >= 3
    assert ensemble["accuracy"] - student_onnx["accuracy"] <= 0.02
    assert ensemble["params"] >= 10 * student_onnx["params"]
    for r in report["rows"]:
        assert r["latency_ms"]["runs"] >= 100 and 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p90"]
    assert report["comparison"]["same_runtime"] is True
    assert report["passed"] and student_onnx["parity"]["max_abs_diff"] <= 1e-4


def test_artifacts_reproduce_the_report(default_run):
    cwd, report = default_run
    out = cwd / "dist" / "digits-mlp-small-onnx"
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "manifest.json", "model.onnx", "report.html", "report.json"]
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert file_sha256(out / name) == entry["sha256"]
    assert (out / "labels.txt").read_text().split() == manifest["labels"]
    # an app reproducing the manifest's normalization gets the reported accuracy from the file alone
    from sklearn.datasets import load_digits

    data = load_data()
    norm = manifest["normalization"]
    raw = load_digits().images.astype(np.float32)
    x_all = (raw * norm["scale"] - norm["mean"]) / norm["std"]
    idx = [int(np.flatnonzero(np.all(np.isclose(x_all, t[0], atol=1e-5), axis=(1, 2)))[0]) for t in data.x_test]
    logits = batched(open_onnx(out / "model.onnx").predict, x_all[idx][:, None].astype(np.float32))
    acc = float(np.mean(logits.argmax(1) == data.y_test))
    row = next(r for r in report["rows"] if r["model"] == "student (onnx fp32)")
    assert acc == pytest.approx(row["accuracy"])


def test_second_run_reuses_caches_and_repeats_the_result(default_run):
    cwd, first = default_run
    proc = compress("distill-and-export", "--json", "--latency-runs", "5", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert all(t["cached"] for t in second["run"]["teachers"]) and second["run"]["soft_targets_cached"]
    for a, b in zip(first["rows"], second["rows"]):
        assert (a["model"], a["accuracy"], a["agreement_with_teacher"]) == (b["model"], b["accuracy"], b["agreement_with_teacher"])


def test_table_output_names_every_row(tmp_path):
    proc = compress("distill-and-export", "--teacher", "mlp-small", "--teacher", "cnn-small", "--student", "mlp-small",
                    "--teacher-epochs", "2", "--epochs", "3", "--latency-runs", "5", "--name", "t", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for text in ("teacher ensemble", "member mlp-small", "member cnn-small", "student (onnx fp32)", "p50 ms", "PASS onnx fp32 parity"):
        assert text in proc.stdout
    members = [line for line in proc.stdout.splitlines() if line.startswith("PASS member")]
    assert len(members) == 2 and all("= 0.0001 x max(1, max |logit|" in line for line in members), \
        "members' fp32 exports are held to the same relative bound as the student's"


@pytest.mark.parametrize("args, message", [
    (["--data", "no/such/folder"], "no/such/folder: data path does not exist"),
    (["--target", "pdf"], "--target 'pdf': unknown; expected one of"),
    (["--teacher", "missing.pt2"], "teacher 'missing.pt2': file not found"),
    (["--student", "cnn-small", "--data", "FLAT"], "model 'cnn-small': input shape (12,) does not fit"),
    (["--temperature", "0"], "--temperature 0.0: expected a number > 0"),
])
def test_bad_input_exits_2_with_one_line_and_no_artifacts(tmp_path, args, message):
    if "FLAT" in args:
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "flat.npz", x_train=rng.normal(size=(40, 12)), y_train=rng.integers(0, 3, 40),
                 x_test=rng.normal(size=(10, 12)), y_test=rng.integers(0, 3, 10))
        args = [a if a != "FLAT" else str(tmp_path / "flat.npz") for a in args]
    proc = compress("distill-and-export", *args, "--epochs", "1", "--teacher-epochs", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = compress("distill-and-export", "--out", str(blocker / "sub"), "--epochs", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot write there" in proc.stderr


def test_unlabelled_transfer_set_with_an_onnx_teacher(tmp_path, digits):
    """Soft targets only, from a teacher given as an ONNX file (run through ONNX Runtime)."""
    import torch

    from compress import models
    from compress.distill.train import fit
    from compress.export.common import ModelInfo
    from compress.export.onnx.convert import export

    teacher = models.build("mlp-small", digits.input_shape, 10)
    y = torch.as_tensor(digits.y_train)
    fit(teacher, digits.x_train, lambda z, i: torch.nn.functional.cross_entropy(z, y[i]), epochs=10)
    export(teacher, torch.as_tensor(digits.x_test[:1]), tmp_path / "teacher.onnx", ModelInfo("t", digits.labels))
    np.savez(tmp_path / "u.npz", x_train=digits.x_train, x_test=digits.x_test, y_test=digits.y_test)
    proc = compress("distill-and-export", "--data", str(tmp_path / "u.npz"), "--teacher", str(tmp_path / "teacher.onnx"),
                    "--student", "cnn-small", "--epochs", "30", "--latency-runs", "5", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["run"]["data"]["labelled_transfer_set"] is False
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["member teacher.onnx"]["runtime"].startswith("ONNX Runtime")
    assert rows["student (onnx fp32)"]["agreement_with_teacher"] > 0.8


def test_mnist_idx_folder(tmp_path):
    mnist = require_mnist()
    proc = compress("distill-and-export", "--target", "onnx", "--data", str(mnist), "--limit-train", "3000",
                    "--limit-test", "1000", "--teacher", "mlp-1200", "--teacher", "cnn-small", "--teacher", "mlp-800",
                    "--teacher-epochs", "3", "--epochs", "10", "--latency-runs", "100", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["model"]: r for r in report["rows"]}
    assert report["run"]["data"]["input_shape"] == [1, 28, 28]
    assert rows["student (onnx fp32)"]["accuracy"] > 0.85 and rows["teacher ensemble"]["accuracy"] > 0.9
    assert rows["student (onnx fp32)"]["parity"]["passed"]
    student = report["run"]["student"]  # 3,000 28x28 images: the defaults pick a student for that size
    assert report["run"]["defaults_chosen"]["student"] == student == "mlp-800"
    assert (tmp_path / "dist" / f"mnist-{student}-onnx" / "model.onnx").is_file()
    assert report["run"]["model_input"]["input"] == "uint8"  # raw 8-bit pixels go into the model
