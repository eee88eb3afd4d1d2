"""The cache: nothing in it is unpickled as code, a damaged entry is detected (sha256 beside every entry),
reported in one warning line and recomputed, and an unusable cache folder is one clear error, never a
traceback (issue 13)."""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import random

import numpy as np
import pytest
import torch

from compress import teachers as T
from compress.teachers.soft_targets import soft_targets
from compress.core.errors import InputError

CACHE_LOGGER = "compress.cache"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets an empty cache of its own."""
    path = tmp_path / "cache"
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(path))
    return path


class _Planted:
    """A pickle that runs code when unpickled: it creates ``marker``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def _plant(path: pathlib.Path, marker: pathlib.Path) -> None:
    """Overwrite a cache entry with a code-running pickle and a *matching* checksum: whoever can write the
    cache can write both, so only ``weights_only=True`` keeps the code from running."""
    torch.save({"history": [0.0], "model": _Planted(marker)}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(digest + "\n")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= logging.WARNING]


def _one_warning_naming(caplog, path: pathlib.Path) -> None:
    found = _warnings(caplog)
    assert len(found) == 1, found
    assert str(path) in found[0] and "\n" not in found[0], found[0]


def _config(tmp_path, **over):
    from compress.pipeline import RunConfig

    settings = dict(target="onnx", teachers=["mlp-small"], student="mlp-small", teacher_epochs=1, epochs=2,
                    limit_train=300, limit_test=100, latency_runs=3, out=str(tmp_path / "dist"), name="t")
    settings.update(over)
    return RunConfig.from_settings(**settings)


def _mlp(digits, seed: int = 0) -> torch.nn.Module:
    from compress import models

    torch.manual_seed(seed)
    return models.build("mlp-small", digits.input_shape, digits.num_classes)


def _fit(digits, checkpoint, epochs=3, on_epoch=None, model=None, noisy=False):
    """A few epochs on 96 digits. ``noisy``: the loss draws from numpy's and Python's global RNGs too."""
    from compress.distill.train import fit

    y = torch.as_tensor(digits.y_train[:96])

    def loss(logits, idx):
        out = torch.nn.functional.cross_entropy(logits, y[idx])
        if noisy:
            out = out * float(1 + 0.01 * np.random.rand() + 0.01 * random.random())
        return out

    model = model if model is not None else _mlp(digits)
    history = fit(model, digits.x_train[:96], loss, epochs=epochs, batch_size=16, seed=3, checkpoint=checkpoint,
                  on_epoch=on_epoch, device=torch.device("cpu"))
    return model, history


# --- 1. nothing from the cache is unpickled as code --------------------------------------------------------


def test_planted_student_checkpoint_never_runs_and_the_run_recovers(tmp_path, own_cache, caplog):
    from compress.pipeline import run

    first = run(_config(tmp_path), quiet=True)
    (checkpoint,) = (own_cache / "students").glob("*.pt")
    marker = tmp_path / "PWNED"
    _plant(checkpoint, marker)
    caplog.set_level(logging.WARNING)
    try:
        again = run(_config(tmp_path), quiet=True)
    finally:
        assert not marker.exists(), "a pickle in the cache ran code"
    assert again["run"]["final_train_loss"] == first["run"]["final_train_loss"]  # recomputed, same result
    _one_warning_naming(caplog, checkpoint)
    assert len(torch.load(str(checkpoint), weights_only=True)["history"]) == 2  # a clean entry again


def test_planted_checkpoint_is_not_executed_when_fit_resumes(tmp_path, digits, caplog):
    checkpoint = tmp_path / "cache" / "student.pt"
    checkpoint.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    _plant(checkpoint, marker)
    caplog.set_level(logging.WARNING)
    try:
        _, history = _fit(digits, checkpoint, epochs=2)
    finally:
        assert not marker.exists(), "a pickle in the cache ran code"
    assert len(history) == 2
    _one_warning_naming(caplog, checkpoint)


def test_checkpoint_loads_weights_only_and_resume_restores_every_rng(tmp_path, digits):
    """Interrupted after 2 of 4 epochs and resumed == uninterrupted: weights, history and the global numpy
    and Python RNG streams (the loss here draws from both), from a checkpoint ``weights_only`` accepts."""
    whole, whole_history = _fit(digits, tmp_path / "a.pt", epochs=4, noisy=True)
    whole_np, whole_py = np.random.rand(), random.random()

    def stop(epoch, _loss):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(digits, tmp_path / "b.pt", epochs=4, noisy=True, on_epoch=stop)
    state = torch.load(str(tmp_path / "b.pt"), weights_only=True)
    assert len(state["history"]) == 2
    np.random.seed(12345)  # the resumed process starts with other global RNG states
    random.seed(54321)
    resumed, resumed_history = _fit(digits, tmp_path / "b.pt", epochs=4, noisy=True)
    assert resumed_history == whole_history
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert (np.random.rand(), random.random()) == (whole_np, whole_py)


# --- 2. a damaged entry is detected and recomputed -----------------------------------------------------------


def _teacher(name="a"):
    def logits(x):
        flat = np.asarray(x, np.float32).reshape(len(x), -1)
        return 3 * flat[:, :10] - flat[:, 10:20]

    return T.Teacher(name, "factory", logits, f"fingerprint-{name}")


def _soft_targets_file(own_cache) -> pathlib.Path:
    (path,) = (own_cache / "soft-targets").glob("*.npy")
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "same-shape-wrong-values"])
def test_damaged_soft_targets_are_recomputed(digits, own_cache, caplog, damage):
    x = digits.x_train[:120]
    first, cached = soft_targets([_teacher()], x, 2.0, "data")
    assert cached is False
    good = np.array(first)
    path = _soft_targets_file(own_cache)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(path.stat().st_size))
    else:
        np.save(path, np.full_like(good, 0.1))  # a valid .npy of the right shape: only the checksum tells
    caplog.set_level(logging.WARNING)
    again, cached = soft_targets([_teacher()], x, 2.0, "data")
    assert cached is False, "a damaged entry was used"
    np.testing.assert_array_equal(np.asarray(again), good)
    _one_warning_naming(caplog, path)
    third, cached = soft_targets([_teacher()], x, 2.0, "data")  # and the repaired entry is used again
    assert cached is True
    np.testing.assert_array_equal(np.asarray(third), good)


def test_soft_targets_without_a_checksum_are_recomputed(digits, own_cache, caplog):
    x = digits.x_train[:60]
    soft_targets([_teacher()], x, 2.0, "data")
    path = _soft_targets_file(own_cache)
    path.with_name(path.name + ".sha256").unlink()
    caplog.set_level(logging.WARNING)
    assert soft_targets([_teacher()], x, 2.0, "data")[1] is False
    _one_warning_naming(caplog, path)


def _small(digits):
    from compress.data import Dataset

    return Dataset("d", "s", digits.x_train[:120], digits.y_train[:120], digits.x_test, digits.y_test, digits.labels)


@pytest.mark.parametrize("damage", ["truncated", "same-shape-wrong-values"])
def test_damaged_teacher_checkpoint_is_retrained(digits, own_cache, caplog, damage):
    small = _small(digits)
    first = T.train_builtin("mlp-small", small, epochs=1, seed=0)
    assert first.cached is False
    (path,) = (own_cache / "teachers").glob("*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save({k: torch.zeros_like(v) for k, v in first.module.state_dict().items()}, str(path))
    caplog.set_level(logging.WARNING)
    again = T.train_builtin("mlp-small", small, epochs=1, seed=0)
    assert again.cached is False, "a damaged entry was used"
    assert any(bool(p.abs().sum() > 0) for p in again.module.parameters())
    _one_warning_naming(caplog, path)
    assert T.train_builtin("mlp-small", small, epochs=1, seed=0).cached is True


def test_truncated_student_checkpoint_is_recomputed(tmp_path, digits, caplog):
    from compress.pipeline import _epochs_done

    checkpoint = tmp_path / "cache" / "students" / "s.pt"
    model, history = _fit(digits, checkpoint, epochs=2)
    assert _epochs_done(checkpoint) == 2
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    caplog.set_level(logging.WARNING)
    assert _epochs_done(checkpoint) == 0
    again, again_history = _fit(digits, checkpoint, epochs=2)
    assert again_history == history
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    _one_warning_naming(caplog, checkpoint)
    assert _epochs_done(checkpoint) == 2


def test_a_failed_cache_write_is_one_warning_not_a_traceback(tmp_path, digits, own_cache, caplog, monkeypatch):
    """Disk full while writing soft targets or a checkpoint: the run continues without that entry."""
    def full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    caplog.set_level(logging.WARNING)
    x = digits.x_train[:60]
    with monkeypatch.context() as m:
        m.setattr(np.lib.format, "open_memmap", full)
        targets, cached = soft_targets([_teacher()], x, 2.0, "data")
    assert cached is False and targets.shape == (60, 10)
    np.testing.assert_allclose(np.asarray(targets), T.ensemble_probs([_teacher()], x, 2.0), atol=1e-7)
    assert not list((own_cache / "soft-targets").glob("*.npy"))
    assert len(_warnings(caplog)) == 1 and "No space left" in _warnings(caplog)[0]
    caplog.clear()
    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        _, history = _fit(digits, own_cache / "students" / "s.pt", epochs=2)
    assert len(history) == 2
    assert _warnings(caplog) and all("No space left" in w and "\n" not in w for w in _warnings(caplog))


# --- 3. an unusable cache folder -----------------------------------------------------------------------------


def _never_train(monkeypatch):
    def trained(*_a, **_kw):
        raise AssertionError("training started although the cache folder is unusable")

    monkeypatch.setattr("compress.teachers.training.fit", trained)
    monkeypatch.setattr("compress.pipeline.fit", trained)


def test_cache_dir_that_is_a_file_is_an_input_error_before_training(tmp_path, monkeypatch):
    from compress.pipeline import run

    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(not_a_folder))
    _never_train(monkeypatch)
    with pytest.raises(InputError) as info:
        run(_config(tmp_path), quiet=True)
    message = str(info.value)
    assert "COMPRESS_CACHE_DIR" in message and str(not_a_folder) in message and "\n" not in message
    assert not (tmp_path / "dist" / "t").exists()


def test_read_only_cache_dir_is_an_input_error_before_training(tmp_path, own_cache, monkeypatch):
    from compress.pipeline import run

    own_cache.mkdir()
    os.chmod(own_cache, 0o500)
    if os.geteuid() == 0:  # root writes through chmod: simulate what a non-root user's kernel answers
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and str(os.fspath(path)).startswith(str(own_cache)):
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    _never_train(monkeypatch)
    try:
        with pytest.raises(InputError) as info:
            run(_config(tmp_path), quiet=True)
    finally:
        os.chmod(own_cache, 0o700)
    message = str(info.value)
    assert "COMPRESS_CACHE_DIR" in message and str(own_cache) in message and "\n" not in message
