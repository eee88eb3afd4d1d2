"""Teacher outputs computed elsewhere (``compress soft-targets`` -> ``--teacher FILE.npz``) and label-only members.

The key property: a member's outputs written by ``compress soft-targets`` and given back as ``--teacher FILE.npz``
distil the same student, bit for bit, as the live member. Then: every malformed file is one ``error:`` line naming
it (exit 2); a label-only member mixes with a soft one; the ``--inputs-only`` flow for a model run outside this
tool; and a file without test outputs is listed as not measured in the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress import teachers

from compress.teachers import precomputed
from compress.cli import app
from compress.core.errors import InputError
from compress.data import load_data
from compress.export.registry import TARGETS
from compress.pipeline import RunConfig, run
from compress.teachers.ensemble import ensemble_probs, softmax

LIMITS = dict(limit_train=300, limit_test=100)
LIMIT_FLAGS = ["--limit-train", "300", "--limit-test", "100"]
FAST = dict(student="mlp-small", teacher_epochs=1, epochs=3, latency_runs=3, seed=0, **LIMITS)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A cache and working folder of this module's own; the soft-targets file of a live ``mlp-small``."""
    root = tmp_path_factory.mktemp("precomputed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESS_CACHE_DIR", str(root / "cache"))
        mp.chdir(root)  # no ./compress.toml applies
        result = soft_targets("--teacher", "mlp-small", "--teacher-epochs", "1", *LIMIT_FLAGS, "-o", str(root / "mlp.npz"))
        assert result.exit_code == 0, result.output
        yield root


@pytest.fixture(autouse=True)
def in_folder(folder, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(folder / "cache"))
    monkeypatch.chdir(folder)


def soft_targets(*args: str):
    return CliRunner().invoke(app, ["soft-targets", *args])


def data():
    return load_data(None, **LIMITS)


def exported_outputs(report: dict, x: np.ndarray) -> np.ndarray:
    path = Path(report["run"]["out_dir"]) / TARGETS["onnx"].file_name
    return TARGETS["onnx"].open(path, 1).predict(x)


def rows(report: dict) -> dict:
    return {r["model"]: r for r in report["rows"]}


def test_the_file_records_outputs_and_input_hashes(folder):
    f = np.load(folder / "mlp.npz")
    ds = data()
    assert str(f["output"]) == "logits" and f["train"].shape == (300, 10) and f["test"].shape == (100, 10)
    assert f["train"].dtype == np.float32 and f["test_row_sha256"].shape == (100, 32)
    assert str(f["train_sha256"]) == precomputed.split_sha256(ds.x_train)
    assert str(f["test_sha256"]) == precomputed.split_sha256(ds.x_test)


def test_outputs_computed_elsewhere_distil_the_same_student_bit_for_bit(folder):
    ds = data()
    live = run(RunConfig.from_settings(teachers=["mlp-small"], out=str(folder / "live"), name="s", **FAST), quiet=True)
    pre = run(RunConfig.from_settings(teachers=[str(folder / "mlp.npz")], out=str(folder / "pre"), name="s", **FAST), quiet=True)
    assert pre["run"]["teachers"][0]["kind"] == "precomputed"
    assert pre["run"]["final_train_loss"] == live["run"]["final_train_loss"]
    assert np.array_equal(exported_outputs(pre, ds.x_test), exported_outputs(live, ds.x_test))
    assert rows(pre)["member mlp.npz"]["accuracy"] == rows(live)["member mlp-small"]["accuracy"]
    assert rows(pre)["teacher ensemble"]["accuracy"] == rows(live)["teacher ensemble"]["accuracy"]


def test_rows_are_found_by_content_in_any_batch_or_order(folder):
    ds = data()
    (member,) = teachers.load_teachers([str(folder / "mlp.npz")], ds, epochs=1, seed=0)
    f = np.load(folder / "mlp.npz")
    order = np.random.default_rng(0).permutation(len(ds.x_train))[:37]
    assert np.array_equal(member.logits(ds.x_train[order]), f["train"][order])
    assert np.array_equal(member.logits(ds.x_test[5:13]), f["test"][5:13])
    assert np.array_equal(member.logits(np.concatenate([ds.x_test[:2], ds.x_train[:3]])),
                          np.concatenate([f["test"][:2], f["train"][:3]]))
    with pytest.raises(InputError, match="not among the inputs") as err:
        member.logits(ds.x_train[:4] + 0.5)
    assert "mlp.npz" in str(err.value) and "\n" not in str(err.value)
    # a shorter test split (another --limit-test) still finds its rows, by the per-row digests
    (short,) = teachers.load_teachers([str(folder / "mlp.npz")], load_data(None, limit_train=300, limit_test=40),
                                      epochs=1, seed=0)
    assert np.array_equal(short.logits(ds.x_test[:40]), f["test"][:40])


def _edited(folder: Path, name: str, **changes) -> Path:
    arrays = dict(np.load(folder / "mlp.npz"))
    arrays.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        arrays.pop(k)
    path = folder / name
    np.savez(path, **arrays)
    return path


def _other_file(folder: Path, name: str, *flags: str) -> Path:
    result = soft_targets("--teacher", "mlp-small", "--teacher-epochs", "1", *flags, "-o", str(folder / name))
    assert result.exit_code == 0, result.output
    return folder / name


def _reversed(folder: Path, name: str, split: str) -> Path:
    """A member well above chance (mlp-small, 20 epochs) with one split's rows reversed after computing."""
    strong = folder / "strong.npz"
    if not strong.exists():
        result = soft_targets("--teacher", "mlp-small", "--teacher-epochs", "20", *LIMIT_FLAGS, "-o", str(strong))
        assert result.exit_code == 0, result.output
    arrays = dict(np.load(strong))
    arrays[split] = arrays[split][::-1]
    np.savez(folder / name, **arrays)
    return folder / name


BAD = {
    "rows": (lambda f: _other_file(f, "rows.npz", "--limit-train", "200", "--limit-test", "100"),
             "has 200 rows but the data's transfer set has 300"),
    "other split": (lambda f: _other_file(f, "seed.npz", "--seed", "1", *LIMIT_FLAGS), "train_sha256"),
    "dtype": (lambda f: _edited(f, "int.npz", train=np.zeros((300, 10), np.int32)), "expected float (300, 10)"),
    "ndim": (lambda f: _edited(f, "flat.npz", train=np.zeros(3000, np.float32)), "expected float (300, 10)"),
    "label range": (lambda f: _edited(f, "label.npz", output=np.array("label"), train=np.full(300, 10, np.int64)),
                    "label 10"),
    "classes": (lambda f: _edited(f, "nine.npz", train=np.load(f / "mlp.npz")["train"][:, :9]), "has 9 outputs per row"),
    "no hash": (lambda f: _edited(f, "nohash.npz", train_sha256=None), "no 'train_sha256'"),
    "inputs only": (lambda f: _edited(f, "inputs.npz", train=None, output=None), "no 'train' array"),
    "train rows reversed": (lambda f: _reversed(f, "reversed.npz", "train"), "'train' rows agree with the data's"),
    "test rows reversed": (lambda f: _reversed(f, "test-reversed.npz", "test"), "'test' rows agree with the data's"),
    "bare npy": (lambda f: (np.save(f / "bare.npy", np.load(f / "mlp.npz")["train"]), f / "bare.npy")[1],
                 "one bare array"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_is_one_error_line_naming_it(folder, case):
    make, expected = BAD[case]
    path = make(folder)
    result = CliRunner().invoke(app, ["distill-and-export", "--teacher", str(path), *LIMIT_FLAGS, "--epochs", "1",
                                      "--out", str(folder / "bad"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert path.name in lines[0] and expected in lines[0], lines[0]
    assert not list((folder / "bad").glob("*/model.onnx"))


def test_a_label_only_member_mixes_with_a_soft_member(folder):
    labels = folder / "labels.npz"
    result = soft_targets("--teacher", "mlp-small", "--teacher-epochs", "1", *LIMIT_FLAGS, "--output", "label",
                          "-o", str(labels))
    assert result.exit_code == 0, result.output
    f = np.load(labels)
    assert str(f["output"]) == "label" and f["train"].shape == (300,) and f["train"].dtype == np.int64
    ds = data()
    members = teachers.load_teachers([str(labels), str(folder / "mlp.npz")], ds, epochs=1, seed=0)
    assert [m.output for m in members] == ["label", "logits"]
    one_hot = np.eye(10)[f["train"]]
    soft = softmax(np.load(folder / "mlp.npz")["train"], 4.0)
    assert np.allclose(ensemble_probs(members, ds.x_train, 4.0), (one_hot + soft) / 2, atol=1e-6)
    report = run(RunConfig.from_settings(teachers=[str(labels), "mlp-small"], out=str(folder / "mixed"), name="m", temperature=4.0,
                           **FAST), quiet=True)
    assert (Path(report["run"]["out_dir"]) / TARGETS["onnx"].file_name).is_file()
    assert rows(report)["member labels.npz"]["accuracy"] == float(np.mean(f["test"] == ds.y_test))
    assert report["passed"] and np.isfinite(report["run"]["final_train_loss"])


def test_inputs_only_then_outputs_from_a_model_run_elsewhere(folder):
    from sklearn.linear_model import LogisticRegression

    inputs = folder / "inputs.npz"
    result = soft_targets("--inputs-only", *LIMIT_FLAGS, "-o", str(inputs))
    assert result.exit_code == 0, result.output
    f = dict(np.load(inputs))
    assert f["x_train"].shape == (300, 1, 8, 8) and "train" not in f
    # elsewhere: any model, run on the file's own inputs, its outputs added to the file
    ds = data()
    outside = LogisticRegression(max_iter=500).fit(f["x_train"].reshape(300, -1), ds.y_train)
    f["train"] = outside.decision_function(f["x_train"].reshape(300, -1)).astype(np.float32)
    f["test"] = outside.decision_function(f["x_test"].reshape(100, -1)).astype(np.float32)
    f["output"] = np.array("logits")
    np.savez(folder / "outside.npz", **f)
    report = run(RunConfig.from_settings(teachers=[str(folder / "outside.npz")], out=str(folder / "outside"), name="o", **FAST),
                 quiet=True)
    expected = float(outside.score(ds.x_test.reshape(100, -1), ds.y_test))
    assert rows(report)["member outside.npz"]["accuracy"] == pytest.approx(expected)


def test_a_file_without_test_outputs_is_listed_not_measured(folder, monkeypatch):
    path = _edited(folder, "notest.npz", test=None, test_sha256=None, test_row_sha256=None)
    ds = data()
    member = precomputed.load_precomputed(str(path), data=ds)
    assert np.array_equal(member.logits(ds.x_train[10:20]), np.load(folder / "mlp.npz")["train"][10:20])
    with pytest.raises(precomputed.MissingOutputs, match="no test-split outputs") as err:
        member.logits(ds.x_test[:8])
    assert "notest.npz" in str(err.value) and "\n" not in str(err.value)
    # load_teachers' 8-sample probe of the test split skips such a member (checked at load instead)
    report = run(RunConfig.from_settings(teachers=[str(path), "mlp-small"], out=str(folder / "notest"), name="n", **FAST),
                 quiet=True)
    row = rows(report)["member notest.npz"]
    assert row["accuracy"] is None and row["latency_ms"] is None and "not measured" in row["note"]
    ens = rows(report)["teacher ensemble"]
    assert "1 of 2" in ens["note"] and "1 of 2" in ens["runtime"]
    assert ens["accuracy"] == rows(report)["member mlp-small"]["accuracy"]  # the one member with test outputs


@pytest.mark.parametrize("args, expected", [
    (["--teacher", "mlp-small", "-o", "out.txt"], "ending in .npz"),
    (["--inputs-only", "--teacher", "mlp-small", "-o", "out.npz"], "--inputs-only"),
    (["-o", "out.npz"], "--teacher"),
    (["--teacher", "mlp-small", "--output", "scores", "-o", "out.npz"], "--output 'scores'"),
    (["--teacher", str(Path("labels.npz")), *LIMIT_FLAGS, "--output", "logits", "-o", "out.npz"], "--output label"),
])
def test_soft_targets_usage_errors_write_nothing(folder, args, expected):
    if "labels.npz" in args and not (folder / "labels.npz").exists():
        assert soft_targets("--teacher", "mlp-small", "--teacher-epochs", "1", *LIMIT_FLAGS, "--output", "label",
                            "-o", "labels.npz").exit_code == 0
    result = soft_targets(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (folder / "out.npz").exists() and not (folder / "out.txt").exists()


def test_probs_files_hold_the_members_probabilities(folder):
    result = soft_targets("--teacher", str(folder / "mlp.npz"), *LIMIT_FLAGS, "--output", "probs", "-o", "probs.npz")
    assert result.exit_code == 0, result.output  # a file converts too: any member load_teachers accepts
    logits, probs = np.load(folder / "mlp.npz"), np.load(folder / "probs.npz")
    assert str(probs["output"]) == "probs" and str(probs["teacher"]) == "mlp.npz"
    assert np.allclose(probs["train"], softmax(logits["train"]), atol=1e-6)
    (member,) = teachers.load_teachers([str(folder / "probs.npz")], data(), epochs=1, seed=0)
    assert np.allclose(ensemble_probs([member], data().x_train, 4.0), softmax(logits["train"], 4.0), atol=1e-5)
