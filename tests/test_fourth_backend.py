"""The target seam: a fourth, test-only backend (TorchScript run by torch) registered from this module,
driven through ``distill-and-export``, ``search``, ``validate`` and a recipe end to end without editing any
project file -- with a scheme (``fp16``) and an option of its own (``--max-format-version``, an integer check on
the written archive) that every command's flags, the recipe and ``compress init`` must take from its record.

If anything outside ``export/<target>/`` still named a target, this backend would be refused (the CLI's
choices, the recipe, the validate stage), crash (runner, tolerances, manifest I/O) or be measured in
another runtime (the teacher members); each assertion below checks that it is not.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import zipfile

from compress.core.atomic import atomic_path
from compress.core.runner import Runner
from compress.export import TARGETS, register
from compress.export.backend import Backend, TargetOption

ENGINE = f"TorchScript (torch {torch.__version__})"


def ts_export(model, example, path, info, *, scheme="none", calibration=None, float_layers=(),
              max_format_version=None) -> Path:
    """Trace ``model`` (in half precision for ``fp16``) and save it with the run's metadata inside the archive."""
    path = Path(path)
    dtype = torch.float16 if scheme == "fp16" else torch.float32
    model = copy.deepcopy(model).to(dtype) if scheme == "fp16" else model
    traced = torch.jit.trace(model.eval(), example.detach().to(dtype))
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={"metadata.json": json.dumps(info.metadata())})
    return path


def ts_open(path, threads: int = 1) -> Runner:
    module = torch.jit.load(str(path), map_location="cpu").eval()
    dtype = next(module.parameters()).dtype

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dtype)).float().numpy()

    return Runner(engine=ENGINE, predict=predict, threads=int(threads))


def ts_io(path) -> dict:
    extra = {"metadata.json": ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return {"inputs": [{"name": "x", "dtype": "float32"}], "outputs": [{"name": "logits", "dtype": "float32"}],
            "metadata": json.loads(extra["metadata.json"])}


def format_version(path) -> int:
    with zipfile.ZipFile(path) as archive:
        return int(archive.read(next(n for n in archive.namelist() if n.endswith("/version"))))


def ts_check(path, options: dict, checks: list) -> dict:
    """The archive's file-format version, and ``--max-format-version`` as a check on it."""
    version, most = format_version(path), options.get("max_format_version")
    if most is not None:
        checks.append({"name": f"TorchScript format <= {most}", "passed": version <= most,
                       "detail": f"the archive is format version {version}"})
    return {"runtime": "torchscript", "format_version": version, "summary": f"TorchScript format version {version}"}


TORCHSCRIPT = Backend(
    name="torchscript", suffix=".ts", runtime="TorchScript", export=ts_export, open=ts_open, describe_io=ts_io,
    schemes={"none": "fp32", "fp16": "half-precision weights and compute"},
    variant=lambda scheme, options: "fp16" if scheme == "fp16" else "fp32",
    tolerances={"fp32": {"max_abs": 1e-5, "reason": "the same torch kernels"},
                "fp16": {"max_abs": 0.5, "top1": 0.95, "reason": "every tensor rounded to fp16"}},
    options=(TargetOption("max_format_version", "fail unless the archive's file-format version is at most this",
                          type=int, example=8, checks_artifact=True),),
    check_artifact=ts_check,
)


@pytest.fixture
def torchscript(monkeypatch):
    """The backend registered for one test only (the registry is restored after)."""
    monkeypatch.setitem(TARGETS, "torchscript", TORCHSCRIPT)
    yield TORCHSCRIPT
    assert TARGETS["torchscript"] is TORCHSCRIPT


def test_registering_is_one_call(monkeypatch):
    monkeypatch.delitem(TARGETS, "torchscript", raising=False)
    assert register(TORCHSCRIPT) is TORCHSCRIPT and TARGETS["torchscript"] is TORCHSCRIPT
    monkeypatch.delitem(TARGETS, "torchscript")


def test_distill_and_export_then_validate_through_the_fourth_backend(torchscript, tmp_path, monkeypatch):
    from compress.cli import app

    monkeypatch.chdir(tmp_path)
    cli = CliRunner()
    result = cli.invoke(app, ["distill-and-export", "--target", "torchscript", "--teacher", "mlp-800",
                              "--teacher", "cnn-small", "--teacher-epochs", "2", "--epochs", "10", "--latency-runs",
                              "5", "--limit-train", "600", "--name", "ts", "--out", str(tmp_path / "dist"), "--json",
                              "--max-size-kb", "1000"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "dist" / "ts"
    report = json.loads((folder / "report.json").read_text())
    assert report["passed"] and report["run"]["target"] == "torchscript"
    exported = next(r for r in report["rows"] if r["model"].startswith("student ("))
    assert exported["model"] == "student (torchscript fp32)" and exported["runtime"] == ENGINE
    assert exported["parity"]["passed"] and exported["parity"]["max_abs_diff"] <= 1e-5
    assert exported["latency_ms"]["runs"] == 5 and exported["size_bytes"] == (folder / "model.ts").stat().st_size
    members = [r for r in report["rows"] if r["role"] == "member"]
    assert members and all(r["runtime"] == ENGINE for r in members)  # teachers timed in the same runtime
    assert report["comparison"]["same_runtime"] and report["comparison"]["latency_ratio_p50"] > 0
    assert [b["name"] for b in report["budgets"]] and all(b["passed"] for b in report["budgets"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["artifact"] == "model.ts" and manifest["metadata"]["name"] == "ts"
    assert manifest["files"]["model.ts"]["bytes"] == exported["size_bytes"]

    # the loaded model reproduces the torch student's accuracy recorded in the report, in its own runtime
    from compress.data import load_digits

    data = load_digits()
    logits = ts_open(folder / "model.ts").predict(data.x_test)
    assert float(np.mean(logits.argmax(1) == data.y_test)) == pytest.approx(exported["accuracy"])

    result = cli.invoke(app, ["validate", str(folder), "--json", "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    checked = json.loads(result.stdout)
    assert checked["run"]["target"] == "torchscript" and checked["passed"]
    assert {c["name"] for c in checked["checks"]} >= {"artifact matches manifest.json", "accuracy reproduces report.json"}
    result = cli.invoke(app, ["validate", str(folder / "model.ts"), "--data", "digits", "--reference", "mlp-800",
                              "--json", "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][-1]["runtime"] == ENGINE


def test_a_scheme_the_backend_lacks_is_refused_before_training(torchscript, tmp_path):
    from compress.core.errors import InputError
    from compress.pipeline import RunConfig

    with pytest.raises(InputError, match=r"--quantize 'int8': not supported for target 'torchscript'"):
        RunConfig.from_settings(target="torchscript", quantize="int8").validate()
    with pytest.raises(InputError, match="only the coreml target"):
        RunConfig.from_settings(target="torchscript", target_options={"precision": "fp32"}).validate()
    with pytest.raises(InputError, match="--qat"):
        RunConfig.from_settings(target="torchscript", qat=True).validate()


def test_the_backends_own_scheme_and_option_flow_through_every_command_and_the_recipe(torchscript, tmp_path,
                                                                                      monkeypatch):
    """``--quantize fp16`` and ``--max-format-version`` exist nowhere but in TORCHSCRIPT's record above."""
    from compress.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    cli = CliRunner()
    help_text = " ".join(cli.invoke(app, ["distill-and-export", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--max-format-version" in help_text and "torchscript: none, fp16" in help_text  # wrapping aside
    assert "--max-format-version" in cli.invoke(app, ["validate", "--help"], env={"COLUMNS": "200"}).output
    assert "--max-format-version" in cli.invoke(app, ["search", "--help"], env={"COLUMNS": "200"}).output

    # a recipe sets the option in [export]; the flag and the scheme come from the command line
    assert cli.invoke(app, ["init"]).exit_code == 0
    assert "# max_format_version = 8" in (tmp_path / "compress.toml").read_text()  # compress init's template
    (tmp_path / "compress.toml").write_text('[export]\ntargets = ["torchscript"]\nmax_format_version = 99\n')
    small = ["--teacher", "mlp-800", "--teacher-epochs", "2", "--epochs", "5", "--latency-runs", "3",
             "--limit-train", "600", "--out", str(tmp_path / "dist"), "--json"]
    result = cli.invoke(app, ["distill-and-export", "--quantize", "fp16", "--name", "half", *small])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "dist" / "half"
    report = json.loads((folder / "report.json").read_text())
    exported = next(r for r in report["rows"] if r["model"].startswith("student ("))
    assert exported["model"] == "student (torchscript fp16)" and exported["parity"]["passed"]
    assert report["compatibility"]["format_version"] == format_version(folder / "model.ts")
    assert {"name": "TorchScript format <= 99", "passed": True} .items() <= next(
        c for c in report["checks"] if c["name"].startswith("TorchScript format")).items()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["recipe"]["target_options"] == {"max_format_version": 99}

    # the flag over the recipe: a version below the archive's fails the run's check (exit 1)
    result = cli.invoke(app, ["distill-and-export", "--max-format-version", "1", "--name", "old", *small])
    assert result.exit_code == 1 and "TorchScript format <= 1" in result.output
    # validate takes the check option (and refuses a value of the wrong type, exit 2)
    result = cli.invoke(app, ["validate", str(folder), "--max-format-version", "1", "--json", "--latency-runs", "3"])
    assert result.exit_code == 1 and not json.loads(result.stdout)["passed"]
    result = cli.invoke(app, ["validate", str(folder), "--max-format-version", "99", "--json", "--latency-runs", "3"])
    assert result.exit_code == 0, result.output
    assert cli.invoke(app, ["validate", str(folder), "--max-format-version", "new"]).exit_code == 2

    # search measures the backend's scheme, with the option in its cache key and in the chosen folder's checks
    (tmp_path / "compress.toml").unlink()
    args = ["search", "--target", "torchscript", "--family", "mlp", "--widths", "0.5", "--depths", "0.5",
            "--schemes", "none,fp16", "--epochs", "2", "--teacher", "mlp-800", "--teacher-epochs", "2",
            "--latency-runs", "3", "--limit-train", "600", "--max-format-version", "99", "--name", "searched",
            "--out", str(tmp_path / "dist"), "--json", "--quiet"]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    searched = json.loads(result.stdout)
    assert {c["id"].split()[1] for c in searched["candidates"] if c["status"] == "measured"} == {"none", "fp16"}
    chosen = json.loads((tmp_path / "dist" / "searched" / "report.json").read_text())
    assert any(c["name"] == "TorchScript format <= 99" and c["passed"] for c in chosen["checks"])


def test_a_profiles_runner_options_reach_every_command_that_measures(tmp_path, monkeypatch):
    """``Backend.runner_options(profile)`` is honoured by distill-and-export (the artifact and the members timed
    in its runtime) and by validate alike: one place opens an artifact (``compress.stages.measure``)."""
    from compress.cli import app

    opened: list[dict] = []

    def recording_open(path, threads=1, **options):
        opened.append(options)
        return ts_open(path, threads)

    backend = dataclasses.replace(TORCHSCRIPT, open=recording_open, profile_keys={"engine": ("jit", "eager")},
                                  runner_options=lambda profile: {"engine": (profile or {}).get("engine")})
    monkeypatch.setitem(TARGETS, "torchscript", backend)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    profile = tmp_path / "ts-device.toml"
    profile.write_text('name = "ts-device"\nruntime = "torchscript"\nengine = "eager"\nthreads = 1\n')
    result = CliRunner().invoke(app, ["distill-and-export", "--target", "torchscript", "--device", str(profile),
                                      "--teacher", "mlp-800", "--teacher-epochs", "2", "--epochs", "3",
                                      "--latency-runs", "3", "--limit-train", "400", "--name", "p",
                                      "--out", str(tmp_path / "dist"), "--json"])
    assert result.exit_code == 0, result.output
    assert len(opened) == 2 and all(o == {"engine": "eager"} for o in opened)  # the member and the student
    opened.clear()
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "dist" / "p"), "--device", str(profile), "--json",
                                      "--latency-runs", "3"])
    assert result.exit_code == 0, result.output
    assert opened and all(o == {"engine": "eager"} for o in opened)
