"""The first hour of a real user (issue 24): own teachers do not crash the output, the search does not
choose on timing noise, quick trials keep every class, the CI log holds the tool's lines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_the_timing_note_names_every_runtime_the_teachers_ran_in():
    from compress.config import DeviceSection, ExportSection
    from compress.stages.evaluate import comparison

    student = SimpleNamespace(engine="ONNX Runtime 1.32.0", measured=True)
    ens = {"params": None, "macs": None, "accuracy": 0.9}
    s_row = {"latency_ms": {"p50": 0.1}, "params": 10, "macs": 100, "accuracy": 0.9}
    onnx_member = (SimpleNamespace(engine="ONNX Runtime 1.32.0"), None)
    out = comparison(ExportSection(target="onnx"), DeviceSection(threads=1, latency_runs=5), ens, None, s_row, student, [onnx_member], ["onnx"], 2,
                     ["ONNX Runtime 1.32.0", "torch 2.13.0+cpu"])
    note = out["timing_note"]
    assert not out["same_runtime"] and out["mac_ratio"] is None and out["param_ratio"] is None
    assert "ONNX Runtime 1.32.0 (1 of 2)" in note and "torch 2.13.0+cpu (1 of 2)" in note, note


# -- 2. the search does not choose on timing noise ------------------------------------------------------------

def _row(cid: str, accuracy: float, latency: float, size: float = 10.0) -> dict:
    return {"id": cid, "status": "measured", "meets_budgets": True, "val_accuracy": accuracy, "latency_ms": latency,
            "size_kb": size, "macs": 1000, "scheme": "none", "student": cid, "accuracy_drop": 1.0, "breaks": []}


def _noisy_timer(series: dict[str, list[float]]):
    """A fake ``time_one``: each model's next p50 from its series (no clock is read)."""
    calls = {key: iter(values) for key, values in series.items()}
    return lambda predict: next(calls[predict])


def test_noisy_equal_latencies_choose_the_more_accurate_candidate():
    from compress.search.choice import best_feasible
    from compress.search.measure import time_interleaved

    rows = {"less-accurate": _row("less-accurate", 0.95, 0.0100), "more-accurate": _row("more-accurate", 0.97, 0.0104)}
    # the same speed, measured with noise: the less accurate one is "faster" by its median alone
    timed = time_interleaved({k: k for k in rows}, None, 100, rounds=5, time_one=_noisy_timer({
        "less-accurate": [0.0100, 0.0097, 0.0103, 0.0099, 0.0101], "more-accurate": [0.0102, 0.0098, 0.0104, 0.0101, 0.0103]}))
    assert timed["less-accurate"]["p50"] < timed["more-accurate"]["p50"]
    for key, row in rows.items():
        row.update(latency_ms=timed[key]["p50"], latency_interval_ms=[timed[key]["low"], timed[key]["high"]])
    assert best_feasible(list(rows.values()))["id"] == "more-accurate"


def test_a_clear_latency_difference_still_wins_over_accuracy():
    from compress.search.choice import best_feasible

    fast, slow = _row("fast", 0.95, 0.010), _row("slow", 0.97, 0.020)
    fast["latency_interval_ms"], slow["latency_interval_ms"] = [0.009, 0.011], [0.019, 0.021]
    assert best_feasible([slow, fast])["id"] == "fast"
    assert best_feasible([_row("a", 0.95, 0.0100), _row("b", 0.97, 0.0102)])["id"] == "b", "within 5%: a tie"


def test_interleaved_rounds_alternate_the_order():
    from compress.search.measure import time_interleaved

    order = []
    time_interleaved({"a": "a", "b": "b", "c": "c"}, None, 100, rounds=2, time_one=lambda key: order.append(key) or 1.0)
    assert order == ["a", "b", "c", "c", "b", "a"]


def test_the_choice_says_when_no_budget_is_in_force():
    from compress.search.choice import why

    ctx = SimpleNamespace(budgets={})
    chosen = _row("only", 0.97, 0.01)
    assert "NO budget is in force" in why(ctx, chosen, [chosen])
    assert "NO budget" not in why(SimpleNamespace(budgets={"latency_ms": {"limit": 1}}), chosen, [chosen])


# -- 6. help text readable in a CI log and a narrow terminal -----------------------------------------------------

@pytest.mark.parametrize("command", [["distill-and-export"], ["search"], ["soft-targets"], ["validate"],
                                     ["devices", "list"]])
def test_help_in_a_pipe_crops_nothing(command):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", *command, "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, [line for line in proc.stdout.splitlines() if "…" in line]
    if command == ["distill-and-export"]:
        text = " ".join(proc.stdout.split())
        assert "module:function=weights.pt" in text and "'m.onnx?scale=1/16&shape=64'" in text


# -- 7. smaller ones --------------------------------------------------------------------------------------------

def test_every_commented_line_compress_init_writes_loads_when_uncommented():
    from compress import recipe
    from compress.pipeline import RunConfig

    text = recipe.render({**RunConfig().settings(), "targets": [RunConfig().export.target]})
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if line.startswith("# ") and " = " in line
            and line[2:].split(" = ")[0].isidentifier()]
    assert len(keys) > 10
    for i in keys:
        edited = lines[:i] + [lines[i][2:]] + lines[i + 1:]
        values = recipe.parse("\n".join(edited), f"line {i + 1}: {lines[i]}")
        recipe.check_ranges(values)


def test_version_flag():
    from typer.testing import CliRunner

    from compress import __version__
    from compress.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"compress {__version__}"


def test_output_folders_are_readable_by_other_users(tmp_path):
    import os
    import stat

    from compress.core.atomic import atomic_path, public_mkdtemp

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.mlpackage") as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(b"x")
        folder = public_mkdtemp(".run.1.", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out.mlpackage").stat().st_mode) == 0o755


def test_the_emulator_follows_the_cache_root(monkeypatch, tmp_path):
    from compress.devices.arm64_emu import emu_root

    monkeypatch.delenv("COMPRESS_EMU_DIR", raising=False)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    assert emu_root() == tmp_path / "arm64-emu"
    monkeypatch.setenv("COMPRESS_EMU_DIR", str(tmp_path / "emu"))
    assert emu_root() == tmp_path / "emu"


def test_settings_booleans_are_text_and_verdicts_are_pills():
    from compress.devices.html_report import _value

    page = _value({"qat": True, "unlabelled": False, "passed": True})
    assert "true" in page and "false" in page and page.count("PASS") == 1


# -- 4. a CI log holds the tool's lines, not the libraries' ------------------------------------------------------

NOISE = ("absl::InitializeLog", "oneDNN custom operations", "XNNPACK delegate", "FutureWarning", "LeafSpec",
         "Please consider to run pre-processing")


def _stderr_of(tmp_path, *args: str, verbose: bool = False) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("COMPRESS_VERBOSE", None)
    proc = subprocess.run([sys.executable, "-m", "compress.cli", *(["--verbose"] if verbose else []), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_tflite_run_prints_only_the_tools_lines_unless_verbose(tmp_path):
    args = ("distill-and-export", "--target", "tflite", "--teacher", "mlp-small", "--teacher-epochs", "1",
            "--epochs", "2", "--limit-train", "300", "--latency-runs", "3", "--json")
    quiet = _stderr_of(tmp_path, *args)
    assert not [line for line in quiet.splitlines() if any(n in line for n in NOISE)], quiet
    assert "distilling" in quiet, "the tool's own progress lines are kept"
    loud = _stderr_of(tmp_path, *args, "--name", "loud", verbose=True)
    assert "XNNPACK delegate" in loud, "--verbose keeps the runtime's own lines"


def test_a_search_with_int8_prints_no_onnxruntime_hints(tmp_path):
    err = _stderr_of(tmp_path, "search", "--family", "mlp", "--widths", "0.5", "--depths", "0.5", "--schemes",
                     "none,int8", "--epochs", "1", "--teacher", "mlp-small", "--teacher-epochs", "1",
                     "--time-budget", "5", "--latency-runs", "3", "--limit-train", "300", "--json")
    assert not [line for line in err.splitlines() if any(n in line for n in NOISE)], err


# -- 3. quick trials keep every class ----------------------------------------------------------------------------

def _sorted_npz(path, classes: int = 5, per_class: int = 40, test_classes: int | None = None):
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class)  # sorted by class, as folder and FSDD loaders return them
    y_test = np.repeat(np.arange(test_classes or classes), 10)
    np.savez(path, x_train=rng.normal(size=(len(y), 6)).astype(np.float32), y_train=y,
             x_test=rng.normal(size=(len(y_test), 6)).astype(np.float32), y_test=y_test)
    return str(path)


def test_limits_are_stratified_seeded_and_nested(tmp_path):
    import numpy as np

    from compress.data import load_data

    data = _sorted_npz(tmp_path / "sorted.npz")
    small = load_data(data, limit_train=50, limit_test=10)
    assert np.bincount(small.y_train).tolist() == [10] * 5, "every class keeps its share"
    assert sorted(set(small.y_test.tolist())) == [0, 1, 2, 3, 4]
    assert np.array_equal(small.x_train, load_data(data, limit_train=50).x_train), "same seed, same rows"
    larger = load_data(data, limit_train=100)
    rows = {r.tobytes() for r in larger.x_train}
    assert all(r.tobytes() in rows for r in small.x_train), "a smaller limit keeps a subset of a larger one's rows"
    assert len(set(load_data(data, limit_train=3).y_train.tolist())) == 3, "fewer rows than classes: distinct ones"


def test_fsdd_limit_keeps_all_ten_digits(fsdd_dataset):
    from compress.data import load_data

    ds = load_data(fsdd_dataset.source, limit_train=400, limit_test=100)
    assert sorted(set(ds.y_train.tolist())) == list(range(10)) and sorted(set(ds.y_test.tolist())) == list(range(10))


def test_a_split_missing_a_class_is_said_and_reported(tmp_path):
    import json

    from typer.testing import CliRunner

    from compress.cli import app

    data = _sorted_npz(tmp_path / "gap.npz", test_classes=4)  # the test split has no class 4
    result = CliRunner().invoke(app, ["distill-and-export", "--data", data, "--teacher", "mlp-small",
                                      "--teacher-epochs", "1", "--epochs", "1", "--latency-runs", "3",
                                      "--out", str(tmp_path / "dist"), "--name", "gap", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    assert "the test split has no sample of 1 class(es)" in result.stderr
    report = json.loads((tmp_path / "dist" / "gap" / "report.json").read_text())
    assert any("the test split has no sample" in w for w in report["run"]["warnings"])


def test_a_failure_while_printing_the_report_is_exit_3_with_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import compress.devices.report as report_module
    from compress.cli import app

    def broken(report, console=None):
        raise TypeError("unsupported format string passed to NoneType.__format__")

    monkeypatch.setattr(report_module, "print_report", broken)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["distill-and-export", "--teacher", "mlp-small", "--teacher-epochs", "1",
                                      "--epochs", "1", "--limit-train", "200", "--latency-runs", "3",
                                      "--out", str(tmp_path / "dist"), "--quiet"])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "internal error in report" in lines[0] and "TypeError" in lines[0]
    assert (tmp_path / "dist" / "digits-mlp-small-onnx" / "report.json").is_file(), "the artifacts stay"
