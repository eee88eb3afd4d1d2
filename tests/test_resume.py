"""Resumable stages and scale-out: Ctrl-C during distillation then the same command resumes and ends
bit-identical to an uninterrupted run; a 2-process ``torchrun`` (gloo, CPU) trains one student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.interrupting import AFTER_EPOCH

EPOCHS = 12
INTERRUPT_AT = 3
RECIPE = f"""
name = "resume"
[teachers]
members = ["mlp-small"]
epochs = 1
[student]
arch = "mlp-small"
[distill]
epochs = {EPOCHS}
batch_size = 8
temperature = 3
[device]
latency_runs = 3
"""


def _env(cache: Path) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _command(*args: str, driver: str = "compress.cli") -> list[str]:
    return [sys.executable, "-m", driver, "distill-and-export", "--quiet", "--json", *args]


def _checkpoint(cache: Path) -> Path | None:
    found = list((cache / "students").glob("mlp-small-*.pt")) if (cache / "students").is_dir() else []
    return found[0] if found else None


def _epochs_in(path: Path) -> int:
    try:
        return len(torch.load(str(path), weights_only=False)["history"])
    except Exception:  # being replaced right now
        return 0


def test_interrupted_distillation_resumes_to_the_same_result(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "compress.toml").write_text(RECIPE)
    cache = tmp_path / "cache"
    # Ctrl-C right after epoch INTERRUPT_AT was checkpointed, through the after_epoch callback: deterministic,
    # whatever the machine's load (a poller sending SIGINT raced the run and lost on a busy machine)
    env = {**_env(cache), AFTER_EPOCH: str(INTERRUPT_AT)}
    proc = subprocess.run(_command(driver="tests.interrupting"), cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    stderr = proc.stderr
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "resume" in stderr
    interrupted_at = _epochs_in(_checkpoint(cache))
    assert 2 <= interrupted_at < EPOCHS, "the run finished before it could be interrupted; make it longer"
    assert interrupted_at == INTERRUPT_AT
    assert not (work / "dist").exists() or not any((work / "dist").iterdir()), "no partial artifacts after Ctrl-C"

    resumed = subprocess.run(_command(), cwd=work, env=_env(cache), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {interrupted_at}/{EPOCHS}" in resumed.stderr

    fresh_cache = tmp_path / "fresh-cache"
    fresh_work = tmp_path / "fresh"
    fresh_work.mkdir()
    (fresh_work / "compress.toml").write_text(RECIPE)
    fresh = subprocess.run(_command(), cwd=fresh_work, env=_env(fresh_cache), capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stderr

    a, b = json.loads(resumed.stdout), json.loads(fresh.stdout)
    assert a["run"]["final_train_loss"] == b["run"]["final_train_loss"]
    assert [r["accuracy"] for r in a["rows"]] == [r["accuracy"] for r in b["rows"]]
    weights_a = torch.load(str(_checkpoint(cache)), weights_only=False)
    weights_b = torch.load(str(_checkpoint(fresh_cache)), weights_only=False)
    assert weights_a["history"] == weights_b["history"]
    for name, tensor in weights_a["model"].items():
        assert torch.equal(tensor, weights_b["model"][name]), name
    # the exported files are the same model: identical outputs on the real test inputs
    from compress.data import load_digits
    from compress.export import TARGETS

    x = load_digits().x_test
    out_a = TARGETS["onnx"].open(work / "dist" / "resume" / "model.onnx").predict(x)
    out_b = TARGETS["onnx"].open(fresh_work / "dist" / "resume" / "model.onnx").predict(x)
    np.testing.assert_array_equal(out_a, out_b)
    manifest = json.loads((work / "dist" / "resume" / "manifest.json").read_text())
    assert manifest["recipe_file"]["sha256"] == json.loads(
        (fresh_work / "dist" / "resume" / "manifest.json").read_text())["recipe_file"]["sha256"]


def test_torchrun_two_processes_on_cpu_gloo(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    (tmp_path / "compress.toml").write_text(RECIPE.replace(f"epochs = {EPOCHS}", "epochs = 4"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "compress.cli", "distill-and-export", "--quiet", "--json", "--name", "ddp"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path / "cache"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # only rank 0 prints and writes
    assert report["run"]["world_size"] == 2
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["ddp"]
    assert report["rows"][-1]["accuracy"] > 0.5 and report["checks"] and report["passed"]
    # the soft targets were computed once (rank 0) and shared read-only
    assert len(list((tmp_path / "cache" / "soft-targets").glob("*.npy"))) == 1


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_every_optimizer_uses_the_fused_update_where_torch_has_one(name):
    """The per-tensor update cost as much as forward + backward for an MLP on a 2-core CPU: every
    registered optimizer takes torch's fused kernel for float parameters on the CPU, and the per-tensor
    loop where a parameter is elsewhere (here: the meta device), instead of failing."""
    from compress.distill.train import OPTIMIZERS

    fused = OPTIMIZERS[name](torch.nn.Linear(4, 2).parameters(), 1e-3, 1e-4)
    assert fused.defaults["fused"] is True
    elsewhere = OPTIMIZERS[name](torch.nn.Linear(4, 2, device="meta").parameters(), 1e-3, 1e-4)
    assert not elsewhere.defaults["fused"]
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    step = OPTIMIZERS[name](model.parameters(), 1e-2, 0.0)
    model(torch.ones(3, 4)).sum().backward()
    step.step()
    assert not torch.equal(model.weight, before)  # it updates


def test_a_convolutional_model_trains_channels_last_and_comes_back_in_the_ordinary_layout():
    """NHWC halved the cnn's training step on a 2-core CPU; exporters and the cache expect NCHW weights."""
    from compress import models
    from compress.distill.train import fit, nhwc_pays

    x = np.random.default_rng(0).normal(size=(96, 1, 12, 12)).astype(np.float32)
    y = torch.as_tensor(np.arange(96) % 10)
    losses = {}
    for layout in (False, True):
        torch.manual_seed(0)
        model = models.build("cnn", (1, 12, 12), 10)
        assert nhwc_pays(model, 4) and not nhwc_pays(models.build("mlp-small", (1, 12, 12), 10), 4)
        seen = []
        losses[layout] = fit(model, x, lambda logits, idx: torch.nn.functional.cross_entropy(logits, y[idx]),
                             epochs=2, batch_size=16, channels_last=layout,
                             on_epoch=lambda e, loss, m=model: seen.append(_nhwc(m)))
        assert all(p.is_contiguous() for p in model.parameters())
        assert seen == [layout, layout]  # it trained in the layout asked for
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)  # the same training, another memory order


def _nhwc(model) -> bool:
    """Whether a convolution weight with several input channels is in channels-last order (with one input
    channel both orders are the same memory)."""
    weight = next(p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


@pytest.mark.parametrize("caller_flushes", [False, True])
def test_training_steps_flush_denormals_and_the_callers_setting_comes_back(caller_flushes):
    """Denormal Adam moments made a 60k distillation's late steps 1.5x slower than its first (and its
    estimate): every training step runs with them flushed; whatever the caller had is put back after."""
    from compress.distill.train import fit, flushing_denormals

    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    y = torch.as_tensor(np.arange(32) % 3)
    during = []

    def loss(logits, idx):
        during.append(flushing_denormals())
        return torch.nn.functional.cross_entropy(logits, y[idx])

    torch.set_flush_denormal(caller_flushes)
    try:
        assert flushing_denormals() is caller_flushes
        fit(torch.nn.Linear(6, 3), x, loss, epochs=2, batch_size=8)
        assert during == [True] * 8
        assert flushing_denormals() is caller_flushes
    finally:
        torch.set_flush_denormal(False)
