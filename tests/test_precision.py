"""bf16 training (issue 27): fit's bf16 autocast keeps the weights in fp32 and trains deterministically, and
``--train-precision auto`` picks bf16 only where it was measured to hold accuracy and is timed here to pay."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from compress import estimate, models
from compress.config import RunConfig
from compress.core.errors import InputError
from compress.data import Dataset
from compress.distill.train import fit
from compress.teachers.training import TeacherRecipe, cached_weights_path


def _images(n: int = 96, side: int = 16, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, side, side), dtype=np.float32), rng.integers(0, classes, n)


def _trained(precision: str) -> torch.nn.Module:
    x, y = _images()
    torch.manual_seed(0)
    model = models.build("cnn", x.shape[1:], 3)
    labels = torch.as_tensor(y)
    fit(model, x, lambda logits, idx: torch.nn.functional.cross_entropy(logits, labels[idx]), epochs=2,
        batch_size=32, seed=0, channels_last=True, precision=precision)
    return model


def test_bf16_training_keeps_fp32_weights_changes_the_numbers_and_repeats_exactly():
    fp32, bf16, again = _trained("fp32"), _trained("bf16"), _trained("bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    w32, w16, w16b = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (fp32, bf16, again))
    assert not torch.equal(w32, w16)  # the forward pass really ran in bf16
    assert torch.equal(w16, w16b)  # same seed, same numbers
    assert torch.isfinite(w16).all()


def test_fit_refuses_an_unknown_precision():
    x, y = _images(8)
    with pytest.raises(ValueError, match="precision 'fp16': expected one of fp32, bf16"):
        fit(models.build("cnn", x.shape[1:], 3), x, lambda logits, idx: logits.sum(), epochs=1, precision="fp16")


def _data(side: int, flat: bool = False) -> Dataset:
    x, y = _images(64, side, 10)
    x = x.reshape(len(x), -1) if flat else x
    return Dataset(name="synthetic", source="test", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8],
                   labels=[str(i) for i in range(10)])


@pytest.fixture
def timed(monkeypatch):
    """Calibrated step times set by the test (no timing: the choice must not rest on this machine's load)."""
    steps = {}
    monkeypatch.setattr(estimate, "bf16_native", lambda: True)
    monkeypatch.setattr(estimate, "calibrated_step_seconds", lambda *a, precision="fp32", **k: steps[precision])
    return steps


def test_auto_picks_bf16_only_for_a_large_convolutional_step_timed_faster(timed):
    timed.update(fp32=0.040, bf16=0.025)
    large = _data(28)
    assert estimate.training_precision("cnn", large, 64, "cpu")[0] == "bf16"
    timed.update(fp32=0.040, bf16=0.038)  # under BF16_MIN_GAIN
    precision, why = estimate.training_precision("cnn", large, 64, "cpu")
    assert precision == "fp32" and "not faster" in why
    timed.update(fp32=0.040, bf16=0.010)
    assert estimate.training_precision("mlp-800", _data(28, flat=True), 64, "cpu")[0] == "fp32"  # accuracy unmeasured
    precision, why = estimate.training_precision("cnn-small", _data(8), 64, "cpu")  # the digits' size
    assert precision == "fp32" and "too small" in why
    assert estimate.training_precision("cnn", large, 64, "cuda")[0] == "fp32"
    assert estimate.training_precision("mlp-800", _data(28, flat=True), 64, "cpu", "bf16") == (
        "bf16", "asked for (--train-precision)")


def test_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(estimate, "bf16_native", lambda: False)
    monkeypatch.setattr(estimate, "calibrated_step_seconds", lambda *a, **k: pytest.fail("timed without a reason"))
    assert estimate.training_precision("cnn", _data(28), 64, "cpu") == ("fp32", "auto: this CPU has no native bf16")


def test_a_bf16_member_is_its_own_cache_entry_and_fp32_keys_are_unchanged():
    data = _data(28)
    plain, with_bf16 = TeacherRecipe(epochs=2), TeacherRecipe(epochs=2, bf16_members=("cnn",))
    assert with_bf16.precision_of("cnn") == "bf16" and with_bf16.precision_of("resnet") == "fp32"
    assert cached_weights_path("cnn", data, plain, 0) != cached_weights_path("cnn", data, with_bf16, 0)
    assert cached_weights_path("resnet", data, plain, 0) == cached_weights_path("resnet", data, with_bf16, 0)


def test_an_unknown_train_precision_is_one_clear_line(tmp_path):
    with pytest.raises(InputError, match="--train-precision 'fp16': expected one of auto, fp32, bf16"):
        RunConfig.from_settings(train_precision="fp16").validate()
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "distill-and-export", "--train-precision", "fp16",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--train-precision 'fp16': expected one of auto, fp32, bf16" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_run_in_bf16_says_so_and_its_export_matches_the_trained_model(tmp_path):
    """``--train-precision bf16``: members and student train under autocast, the report says which and why, and
    the exported student (fp32) passes the run's own parity check against the PyTorch model it came from."""
    import json
    import os

    env = {**os.environ, "COMPRESS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "distill-and-export", "--train-precision", "bf16",
                           "--teacher", "cnn", "--teacher", "mlp-small", "--student", "cnn-small",
                           "--teacher-epochs", "2", "--epochs", "2", "--limit-train", "400", "--limit-test", "100",
                           "--latency-runs", "3", "--quiet", "--json", "--out", str(tmp_path / "dist")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    run = report["run"]
    assert run["train_precision"] == {"student": "bf16", "why": "asked for (--train-precision)", "requested": "bf16"}
    assert [t["training"]["precision"] for t in run["teachers"]] == ["bf16", "bf16"]
    parity = [c for c in report["checks"] if "parity" in c["name"].lower() or "match" in c["name"].lower()]
    assert parity and all(c["passed"] for c in parity), report["checks"]


def test_auto_keeps_the_student_in_fp32_even_where_a_member_would_train_in_bf16(timed):
    """bf16's accuracy was measured for members trained on labels; a distilled student lost 7 points (README)."""
    from compress.pipeline import student_precision, teacher_recipe

    timed.update(fp32=0.040, bf16=0.020)
    cfg, data = RunConfig.from_settings(teachers=["cnn"], student="cnn", teacher_epochs=2), _data(28)
    assert teacher_recipe(cfg, data).precision_of("cnn") == "bf16"
    precision, why = student_precision(cfg, data)
    assert precision == "fp32" and "students train in fp32" in why
    assert student_precision(cfg.with_settings(train_precision="bf16"), data)[0] == "bf16"
    assert estimate.training_precision("cnn", data, 64, "cpu", student=True) == (precision, why)  # budgets, estimates
