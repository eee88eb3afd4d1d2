"""Soft targets at scale (issue 14): the transfer set's rows are computed in fixed-size shards, each
process of a ``torchrun`` its contiguous share, all into the one cached memory-mapped file; a killed run
resumes shard by shard (whatever the world size) and ends with the same bits as an uninterrupted one."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.teachers import soft_targets as S
from compress.core.errors import InputError
from compress.teachers import Teacher
from tests.interrupting import AFTER_SHARDS

SHARD_ROWS = 128  # the digits' 1,437 training rows: 12 shards (the last one 29 rows)
SHARDS = 12
RECIPE = """
name = "shards"
[teachers]
members = ["mlp-small"]
epochs = 1
[student]
arch = "mlp-small"
[distill]
epochs = 2
batch_size = 8
temperature = 3
[device]
latency_runs = 3
"""


# --- in one process ------------------------------------------------------------------------------------------

@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(path))
    monkeypatch.delenv(S.SHARD_ROWS_ENV, raising=False)
    monkeypatch.delenv(AFTER_SHARDS, raising=False)
    return path


def _logits(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x, np.float32).reshape(len(x), -1)
    return 3 * flat[:, :10] - flat[:, 10:20]


class _Calls:
    """A member that records the rows it is asked for, and can die (a killed run) on its k-th call."""

    def __init__(self, x: np.ndarray, die_on_call: int | None = None):
        self.x, self.die_on_call, self.rows = x, die_on_call, []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.die_on_call is not None and len(self.rows) + 1 == self.die_on_call:
            raise KeyboardInterrupt  # the process is killed while computing this shard
        start = next(a for a in range(len(self.x)) if np.array_equal(self.x[a:a + len(batch)], batch, equal_nan=True))
        self.rows.append((start, start + len(batch)))
        return _logits(batch)

    def teacher(self) -> Teacher:
        return Teacher("a", "factory", self, "fingerprint-a")


def _record(cache: Path) -> dict:
    (path,) = (cache / "soft-targets").glob("*.shards.json")
    return json.loads(path.read_text())


def _x(rows: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, 1, 8, 8)).astype(np.float32)


def test_one_process_is_world_size_one_of_the_same_code_and_writes_todays_entry(own_cache):
    """Default shards (4096 rows, a multiple of every member's inference batch): the entry is the file
    np.save wrote before sharding, byte for byte, under the same name, with its checksum."""
    x = _x(300)
    calls = _Calls(x)
    targets, cached = S.soft_targets([calls.teacher()], x, 2.0, "data")
    assert cached is False and calls.rows == [(0, 300)]
    assert isinstance(targets, np.memmap) and not targets.flags.writeable
    expected = io.BytesIO()
    np.save(expected, S.ensemble_probs([Teacher("a", "factory", _logits, "fingerprint-a")], x, 2.0))
    (entry,) = (own_cache / "soft-targets").glob("*.npy")
    assert entry.read_bytes() == expected.getvalue()
    checksum = entry.with_name(entry.name + ".sha256").read_text().split()
    assert checksum == [hashlib.sha256(entry.read_bytes()).hexdigest()]
    key = S.content_key("soft-targets", ["fingerprint-a"], "data", 2.0)
    assert entry.name == f"{key[:32]}.npy"
    assert _record(own_cache)["computed_by_rank"] == {"0": [0]} and _record(own_cache)["world_size"] == 1
    assert sorted(p.name for p in (own_cache / "soft-targets").iterdir()) == sorted(
        [entry.name, entry.name + ".sha256", f"{key[:32]}.shards.json"]), "the shards folder is removed when done"
    again, cached = S.soft_targets([calls.teacher()], x, 2.0, "data")
    assert cached is True and len(calls.rows) == 1
    np.testing.assert_array_equal(again, targets)


def test_shards_of_a_torch_member_are_the_bits_of_one_pass(own_cache, monkeypatch):
    """A torch member runs in batches of 512: 4096-row shards give the very batches of one pass."""
    from compress.distill.train import predict_logits
    from tests.helper_models import small_mlp

    torch.manual_seed(0)
    model = small_mlp().eval()
    member = Teacher("m", "factory", lambda x: predict_logits(model, x), "fingerprint-m")
    x = _x(9000)  # 3 shards: 4096, 4096, 808 rows
    targets, _ = S.soft_targets([member], x, 2.0, "data")
    assert _record(own_cache)["shards"] == 3
    np.testing.assert_array_equal(targets, S.ensemble_probs([member], x, 2.0))


def test_a_killed_run_resumes_shard_by_shard(own_cache, monkeypatch, tmp_path):
    monkeypatch.setenv(S.SHARD_ROWS_ENV, "32")
    x = _x(200)  # 7 shards: 6 of 32 rows, one of 8
    bounds = [(a, min(a + 32, 200)) for a in range(0, 200, 32)]
    dying = _Calls(x, die_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        S.soft_targets([dying.teacher()], x, 2.0, "data")
    assert dying.rows == bounds[:3]
    assert not list((own_cache / "soft-targets").glob("*.npy")), "an unfinished entry is never in place"
    (folder,) = (own_cache / "soft-targets").glob("*.shards")
    assert sorted(p.name for p in folder.glob("rows-*")) == [f"rows-{a:010d}-{b:010d}.sha256" for a, b in bounds[:3]]
    # the rows of shard 1 damaged after its marker was written: its digest no longer matches, it is recomputed
    partial = np.lib.format.open_memmap(folder / "targets.npy", mode="r+")
    partial[40] = 0.5
    partial.flush()
    del partial

    resumed = _Calls(x)
    targets, cached = S.soft_targets([resumed.teacher()], x, 2.0, "data")
    assert cached is False
    assert resumed.rows == [bounds[1]] + bounds[3:], "only the missing (and the damaged) shards are computed"
    record = _record(own_cache)
    assert record["reused"] == [0, 2] and record["computed_by_rank"] == {"0": [1, 3, 4, 5, 6]}
    assert not folder.exists()

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "fresh"))
    fresh = _Calls(x)
    uninterrupted, _ = S.soft_targets([fresh.teacher()], x, 2.0, "data")
    assert fresh.rows == bounds
    np.testing.assert_array_equal(targets, uninterrupted)
    assert (next((own_cache / "soft-targets").glob("*.npy")).read_bytes()
            == next((tmp_path / "fresh" / "soft-targets").glob("*.npy")).read_bytes())


def test_markers_of_another_shard_size_are_not_reused(own_cache, monkeypatch):
    monkeypatch.setenv(S.SHARD_ROWS_ENV, "32")
    x = _x(100)
    with pytest.raises(KeyboardInterrupt):
        S.soft_targets([_Calls(x, die_on_call=3).teacher()], x, 2.0, "data")
    monkeypatch.setenv(S.SHARD_ROWS_ENV, "50")
    calls = _Calls(x)
    targets, _ = S.soft_targets([calls.teacher()], x, 2.0, "data")
    assert calls.rows == [(0, 50), (50, 100)] and _record(own_cache)["reused"] == []
    np.testing.assert_array_equal(targets, S.ensemble_probs([calls.teacher()], x, 2.0))


def test_a_full_disk_is_one_warning_and_the_targets_come_from_memory(own_cache, monkeypatch, caplog):
    def full(*_args, **_kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    caplog.set_level(logging.WARNING)
    x = _x(60)
    targets, cached = S.soft_targets([_Calls(x).teacher()], x, 2.0, "data")
    assert cached is False and not targets.flags.writeable
    np.testing.assert_array_equal(targets, S.ensemble_probs([_Calls(x).teacher()], x, 2.0))
    assert list((own_cache / "soft-targets").iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "No space left" in warnings[0]


def test_bad_shard_size_and_non_finite_rows_are_clear_errors(own_cache, monkeypatch):
    monkeypatch.setenv(S.SHARD_ROWS_ENV, "0")
    with pytest.raises(InputError, match=f"{S.SHARD_ROWS_ENV}='0': expected an integer >= 1"):
        S.soft_targets([_Calls(_x(10)).teacher()], _x(10), 2.0, "data")
    monkeypatch.setenv(S.SHARD_ROWS_ENV, "32")
    x = _x(100)
    x[70, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"transfer-set rows 64\.\.95 \(of 100\): teacher 'a': outputs NaN"):
        S.soft_targets([_Calls(x).teacher()], x, 2.0, "data")


# --- torchrun: two processes (gloo, CPU) ------------------------------------------------------------------

def _env(cache: Path, **extra: str) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", S.SHARD_ROWS_ENV: str(SHARD_ROWS),
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop(AFTER_SHARDS, None)
    return {**env, **extra}


def _run(work: Path, cache: Path, processes: int, **extra: str) -> subprocess.CompletedProcess:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
              if processes > 1 else [sys.executable])
    driver = "tests.interrupting" if extra else "compress.cli"  # the interruption is installed by tests/interrupting.py
    cmd = [*launch, "-m", driver, "distill-and-export", "--quiet", "--json", "--name", f"w{processes}"]
    return subprocess.run(cmd, cwd=work, env=_env(cache, **extra), capture_output=True, text=True, timeout=600)


def _entry(cache: Path) -> Path:
    (path,) = (cache / "soft-targets").glob("*.npy")
    return path


def _forget(entry: Path) -> None:
    """The finished entry removed (with its checksum and record): the next run computes it again."""
    for path in (entry, entry.with_name(entry.name + ".sha256"), entry.with_name(entry.stem + ".shards.json")):
        path.unlink()


@pytest.fixture
def torchrun(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    (tmp_path / "compress.toml").write_text(RECIPE)
    return tmp_path


def test_two_processes_each_compute_their_shards_and_match_one_process(torchrun):
    work, cache = torchrun, torchrun / "cache"
    one = _run(work, cache, 1)
    assert one.returncode == 0, one.stderr[-3000:]
    entry = _entry(cache)
    single = np.load(entry).copy()
    single_bytes = entry.read_bytes()
    assert _record(cache)["computed_by_rank"] == {"0": list(range(SHARDS))}
    _forget(entry)

    two = _run(work, cache, 2)  # the teachers come from the cache; the soft targets are computed again
    assert two.returncode == 0, two.stderr[-3000:]
    report = json.loads(two.stdout)
    assert report["run"]["world_size"] == 2 and report["run"]["soft_targets_cached"] is False
    record = _record(cache)
    assert record["world_size"] == 2 and record["reused"] == []
    assert record["computed_by_rank"] == {"0": list(range(SHARDS // 2)), "1": list(range(SHARDS // 2, SHARDS))}
    assert _entry(cache) == entry, "the same cache entry"
    np.testing.assert_array_equal(np.load(entry), single)
    assert entry.read_bytes() == single_bytes
    assert sorted(p.name for p in (cache / "soft-targets").iterdir()) == sorted(
        [entry.name, entry.name + ".sha256", entry.stem + ".shards.json"])


def test_a_killed_two_process_run_resumes_in_one_process(torchrun):
    """Both processes killed after their first 2 shards; one process resumes: the 4 finished shards are
    reused (shard size does not depend on the world size), the 8 others computed; the same bits as an
    uninterrupted run."""
    work, cache = torchrun, torchrun / "cache"
    killed = _run(work, cache, 2, **{AFTER_SHARDS: "2"})
    assert killed.returncode != 0
    assert "interrupted" in killed.stderr
    assert not list((cache / "soft-targets").glob("*.npy"))
    (folder,) = (cache / "soft-targets").glob("*.shards")
    assert len(list(folder.glob("rows-*.sha256"))) == 4

    resumed = _run(work, cache, 1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = _record(cache)
    assert record["reused"] == [0, 1, 6, 7]
    assert record["computed_by_rank"] == {"0": [2, 3, 4, 5, 8, 9, 10, 11]}
    entry = _entry(cache)
    resumed_targets = np.load(entry).copy()
    _forget(entry)

    again = _run(work, cache, 1)  # uninterrupted (the student is reused from the checkpoint)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _record(cache)["computed_by_rank"] == {"0": list(range(SHARDS))}
    np.testing.assert_array_equal(np.load(_entry(cache)), resumed_targets)
