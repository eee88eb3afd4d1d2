"""Nothing lost, nothing executed, nothing silently wrong: run names, diverged training, leftovers of
killed runs, SIGTERM, concurrent replacement of one output, and internal errors with their own exit code.
Each case was reproduced on the earlier code (see issue 13); deterministic: no timing, no polling."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--teacher", "mlp-small", "--teacher-epochs", "1", "--epochs", "3", "--limit-train", "300",
        "--latency-runs", "3", "--quiet"]


def _env(cache: Path, **extra) -> dict:
    return {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def compress(*args: str, cwd: Path, cache: Path, driver: str = "compress.cli", **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", driver, *args], cwd=cwd, env=_env(cache, **extra),
                          capture_output=True, text=True, timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("name", ["./../victim", "../victim", "/tmp/victim-abs", ".", "..", "a/b", "x\ny"])
def test_a_run_name_cannot_escape_out(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    work = tmp_path / "work"
    work.mkdir()
    proc = compress("distill-and-export", "--name", name, "--out", "dist", *FAST, cwd=work, cache=tmp_path / "c")
    assert proc.returncode == 2, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "--name" in line and "one folder name" in line
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert not (work / "dist").exists() or not any((work / "dist").iterdir())
    assert not (tmp_path / "c" / "teachers").exists(), "refused before any work"


def test_a_recipe_name_cannot_escape_out(tmp_path):
    (tmp_path / "compress.toml").write_text('name = "./../../x"\n')
    proc = compress("distill-and-export", *FAST, cwd=tmp_path, cache=tmp_path / "c")
    assert proc.returncode == 2 and "./../../x" in proc.stderr, proc.stderr


def test_a_diverged_student_stops_before_export_and_keeps_the_good_output(tmp_path):
    cache = tmp_path / "cache"
    good = compress("distill-and-export", "--name", "run", *FAST, cwd=tmp_path, cache=cache)
    assert good.returncode == 0, good.stderr
    model = tmp_path / "dist" / "run" / "model.onnx"
    before = model.read_bytes()
    bad = compress("distill-and-export", "--name", "run", *FAST, "--optimizer", "sgd", "--lr", "1e38", cwd=tmp_path,
                   cache=cache)
    assert bad.returncode == 1, bad.stderr
    (line,) = _error_lines(bad.stderr)
    assert "diverged at epoch 1/3" in line and "nothing was exported" in line
    assert "agreement" not in bad.stderr
    assert model.read_bytes() == before, "a diverged run must never replace a good earlier output"
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["run"]


def test_parity_on_nan_outputs_never_reports_agreement():
    import numpy as np

    from compress.core import metrics

    ref = np.eye(4, dtype=np.float32)
    nan = np.full_like(ref, np.nan)
    p = metrics.parity(ref, nan)
    assert not p["passed"] and p["top1_agreement"] is None and "non-finite" in metrics.describe_parity(p)
    assert metrics.agreement(nan, ref.argmax(1)) == 0.0 and metrics.accuracy(nan, ref.argmax(1)) == 0.0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_removed_at_start(tmp_path):
    from compress.core.atomic import clean_stale

    dead, alive = _dead_pid(), os.getppid()
    out = tmp_path / "dist"
    (out / f".run.{dead}.abc123.tmp").mkdir(parents=True)
    (out / f".run.{dead}.abc123.tmp" / "model.onnx").write_bytes(b"partial")
    (out / f".model.onnx.{dead}.x_y.tmp").mkdir()
    (out / f".run.old-{dead}").mkdir()
    (out / f".run.{alive}.live99.tmp").mkdir()  # a live writer's: left alone
    (out / "run").mkdir()
    removed = clean_stale(out)
    assert len(removed) == 3
    assert sorted(p.name for p in out.iterdir()) == [f".run.{alive}.live99.tmp", "run"]


def test_a_run_cleans_stale_temporaries_in_out_and_cache(tmp_path):
    dead = _dead_pid()
    cache = tmp_path / "cache"
    (tmp_path / "dist" / f".old.{dead}.zz.tmp").mkdir(parents=True)
    (cache / "students" / f".x.pt.{dead}.q1.tmp").mkdir(parents=True)
    proc = compress("distill-and-export", "--name", "run", *FAST, cwd=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["run"]
    assert not [p for p in cache.rglob("*.tmp")]


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    cache = tmp_path / "cache"
    proc = compress("distill-and-export", "--name", "run", *FAST, cwd=tmp_path, cache=cache,
                    driver="tests.interrupting", INTERRUPT_AFTER_EPOCH="2:TERM")
    assert proc.returncode == 143, proc.stderr
    (line,) = _error_lines(proc.stderr)
    assert "terminated (SIGTERM)" in line and "resume" in line
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
    assert not [p for p in cache.rglob("*.tmp")]
    resumed = compress("distill-and-export", "--name", "run", *FAST, cwd=tmp_path, cache=cache)
    assert resumed.returncode == 0 and "resuming from epoch 2/3" in resumed.stderr, resumed.stderr


def test_a_failure_between_export_and_the_final_move_leaves_nothing(tmp_path, monkeypatch):
    """The budget check runs after the temporary folder is written: an exception there (or Ctrl-C)
    must remove it, and the old output must stay."""
    from compress import pipeline

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = dict(teachers=["mlp-small"], teacher_epochs=1, epochs=2, limit_train=300, latency_runs=3,
               out=str(tmp_path / "dist"), name="run")
    pipeline.run(pipeline.RunConfig.from_settings(**cfg), quiet=True)
    before = (tmp_path / "dist" / "run" / "model.onnx").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_check_budgets", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(pipeline.RunConfig.from_settings(**cfg), quiet=True)
    assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == ["run"]
    assert (tmp_path / "dist" / "run" / "model.onnx").read_bytes() == before


def _replace_many(args) -> str:
    from compress.core.atomic import replace_path

    root, worker, rounds = args
    try:
        for i in range(rounds):
            src = Path(root) / f"src-{worker}-{i}"
            src.mkdir()
            (src / "who.txt").write_text(f"{worker}-{i}")
            replace_path(src, Path(root) / "target")
        return "ok"
    except Exception as exc:  # what the race produced: ENOTEMPTY, FileNotFoundError, ...
        return f"{type(exc).__name__}: {exc}"


def test_concurrent_replacements_of_one_output_are_safe(tmp_path):
    (tmp_path / "target").mkdir()
    with multiprocessing.get_context("spawn").Pool(3) as pool:  # fork is unsafe once JAX threads run
        results = pool.map(_replace_many, [(str(tmp_path), w, 150) for w in range(3)])
    assert results == ["ok"] * 3
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["target"], names  # no .old-<pid> folders, no sources left behind
    assert (tmp_path / "target" / "who.txt").read_text().endswith("-149")


def test_an_internal_error_has_its_own_exit_code_and_a_saved_traceback(tmp_path, monkeypatch):
    from compress import pipeline
    from compress.cli import app

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded\nsecond line")

    monkeypatch.setattr(pipeline, "export_student", broken)
    result = CliRunner().invoke(app, ["distill-and-export", "--name", "run", *FAST])
    assert result.exit_code == 3, result.output
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "internal error in stage 'export and validation'" in line and "converter exploded" in line
    saved = Path(line.split("traceback saved to ")[1].rstrip(")"))
    assert "Traceback" in saved.read_text() and "converter exploded" in saved.read_text()
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
    report_free = json.dumps(result.output)
    assert "Traceback" not in report_free  # one line on the console, the traceback in the file
