"""Every sample recipe (``samples/**/compress.toml``) loads and builds valid run configurations.

No training: parsing (``compress.recipe.load``), the CLI's merge into one ``RunConfig`` per target
(``compress.cli._run_configs``) and ``RunConfig.validate()``, plus the names a run would resolve (teachers,
student, data format, device profile). The recipes shown in the samples' READMEs must be the files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress import models, recipe
from compress.cli import _run_configs
from compress.data import DATASETS
from compress.teachers import teacher_format

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "samples").rglob("compress.toml"))


def test_the_samples_have_recipes():
    names = {p.parent.relative_to(ROOT / "samples").as_posix() for p in RECIPES}
    assert {"mnist_hinton", "fsdd_speech", "ci"} <= names, names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.parent.name)
def test_sample_recipe_builds_valid_run_configs(path):
    values = recipe.load(path)
    assert values, f"{path} sets nothing"
    configs = _run_configs(str(path), {})
    assert configs and [c.export.target for c in configs] == values.get("targets", ["onnx"])
    for cfg in configs:
        cfg.validate()
        assert cfg.recipe_path == str(path)
        for spec in cfg.teachers.members:
            if teacher_format(spec) == "builtin":
                assert spec in models.MODELS
        assert cfg.student.arch in models.MODELS
        assert cfg.data.format is None or cfg.data.format in DATASETS
        if cfg.device.profile:
            from compress.devices.profiles import load_profile

            assert load_profile(cfg.device.profile)["runtime"] == cfg.export.target


def test_fsdd_recipe_is_the_documented_run():
    configs = {c.export.target: c for c in _run_configs(str(ROOT / "samples/fsdd_speech/compress.toml"), {})}
    assert sorted(configs) == ["coreml", "onnx", "tflite"]
    for cfg in configs.values():
        assert (cfg.data.format, cfg.student.arch, cfg.distill.temperature, cfg.teachers.epochs, cfg.distill.epochs, cfg.distill.lr) == \
               ("audio-folder", "ds-cnn", 4.0, 15, 40, 1e-2)
        assert cfg.teachers.members == ["speech-cnn", "speech-resnet", "speech-wide-cnn"]
        assert cfg.data.options["split"] == "index<5"
    assert configs["coreml"].export.options == {"precision": "fp32"}
    assert configs["onnx"].export.options == configs["tflite"].export.options == {"precision": "fp32"}  # fixed there
    run_sh = (ROOT / "samples/fsdd_speech/run.sh").read_text()
    assert "--recipe samples/fsdd_speech/compress.toml" in run_sh


def test_mnist_recipe_is_the_distilled_row():
    (cfg,) = _run_configs(str(ROOT / "samples/mnist_hinton/compress.toml"), {})
    assert (cfg.student.arch, cfg.distill.temperature, cfg.distill.alpha, cfg.data.format) == ("mlp-800", 20.0, 0.1, "idx")
    assert cfg.teachers.members == ["mlp-1200", "cnn"] and cfg.teachers.jitter == 2


def test_cli_flags_override_a_sample_recipe():
    configs = _run_configs(str(ROOT / "samples/fsdd_speech/compress.toml"), {"target": "tflite", "epochs": 2})
    assert [(c.export.target, c.distill.epochs) for c in configs] == [("tflite", 2)]


SHOWN = [p for p in sorted((ROOT / "samples").rglob("README.md"))
         if "```toml" in p.read_text() and (p.parent / "compress.toml").is_file()]


def test_the_sample_readmes_show_their_recipes():
    assert {p.parent.name for p in SHOWN} >= {"mnist_hinton", "fsdd_speech"}


@pytest.mark.parametrize("readme", SHOWN, ids=lambda p: p.parent.name)
def test_recipes_shown_in_readmes_match_the_files(readme):
    blocks = re.findall(r"```toml\n(.*?)```", readme.read_text(), flags=re.S)
    shown = recipe.parse(blocks[0], str(readme))
    assert shown == recipe.load(readme.parent / "compress.toml")


def test_ci_workflow_parses_and_runs_the_recipe():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / "samples/ci/github-actions.yml").read_text())
    steps = workflow["jobs"]["model"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    assert "compress distill-and-export --recipe compress.toml --device pixel-class" in script
    assert "--max-accuracy-drop 2 --max-size-kb 500 --json > report.json" in script
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "dist/" in upload["with"]["path"] and "report.json" in upload["with"]["path"]
    cache = next(s for s in steps if str(s.get("uses", "")).startswith("actions/cache"))
    assert cache["with"]["path"] == "~/.cache/compress"


def test_ci_recipe_fits_the_workflow_device_profile():
    from compress.devices.profiles import load_profile

    configs = _run_configs(str(ROOT / "samples/ci/compress.toml"),
                           {"profile": "pixel-class", "max_accuracy_drop": 2.0, "max_size_kb": 500.0})
    for cfg in configs:
        cfg.validate()
        assert load_profile(cfg.device.profile)["runtime"] == cfg.export.target
