"""Device profiles as data: shipped TOML files, the user's folder, key/type validation, `compress devices`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.core.errors import InputError
from compress.devices import profiles
from compress.devices.profiles import PROFILES, load_profile

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"iphone-class": "coreml", "pixel-class": "tflite", "rpi4-class": "tflite", "arm64-linux": "onnx"}


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_profiles_load_with_their_runtime():
    assert isinstance(PROFILES, dict) and set(SHIPPED) <= set(PROFILES)
    for name, runtime in SHIPPED.items():
        p = PROFILES[name]()
        assert p == load_profile(name)
        assert p["name"] == name and p["runtime"] == runtime
        assert p["threads"] >= 1 and p["cpu"] and p["description"]
        assert Path(p["source"]) == profiles.SHIPPED_DIR / f"{name}.toml"
        # no shipped profile claims a host-to-device latency factor without a measured basis
        assert "estimate" not in p
    assert load_profile("pixel-class")["threads"] == 4 and load_profile("pixel-class")["delegate"] == "xnnpack"
    assert load_profile("rpi4-class")["emulator_cpu"] == "cortex-a72"
    assert load_profile("arm64-linux")["emulator_cpu"] == "neoverse-n1"
    assert load_profile("iphone-class")["precision"] == "fp16"


def test_user_profile_dir_adds_and_overrides(tmp_path, monkeypatch):
    user = tmp_path / "profiles"
    _write(user, "my-board", 'runtime = "onnx"\nthreads = 2\ncpu = "Cortex-A53"\n[budgets]\nsize_kb = 64\n')
    _write(user, "pixel-class", 'name = "pixel-class"\nruntime = "tflite"\nthreads = 8\n')
    monkeypatch.setenv("COMPRESS_PROFILES_DIR", str(user))
    assert profiles.user_dir() == user
    p = load_profile("my-board")
    assert p["name"] == "my-board" and p["threads"] == 2 and p["budgets"] == {"size_kb": 64}
    assert p["precision"] == "fp32" and Path(p["source"]) == user / "my-board.toml"
    assert load_profile("pixel-class")["threads"] == 8  # the user's file wins over the shipped one
    assert "my-board" not in PROFILES  # the shipped registry is unchanged
    monkeypatch.setenv("COMPRESS_PROFILES_DIR", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="my-board"):
        load_profile("my-board")


def test_profile_by_path(tmp_path):
    path = _write(tmp_path, "anything", 'name = "lab-board"\nruntime = "tflite"\nthreads = 3\n'
                  '[estimate]\nhost_to_device_latency_factor = 4.0\nbasis = "measured: 12 models, lab 2024-05"\n')
    p = load_profile(str(path))
    assert p["name"] == "lab-board" and p["estimate"]["host_to_device_latency_factor"] == 4.0


def test_unknown_key_names_the_nearest_valid_key(tmp_path):
    path = _write(tmp_path, "x", 'name = "x"\nruntime = "onnx"\ntreads = 4\n')
    with pytest.raises(InputError) as exc:
        load_profile(str(path))
    msg = str(exc.value)
    assert "'treads'" in msg and "nearest valid key: 'threads'" in msg and "\n" not in msg
    path = _write(tmp_path, "y", 'name = "y"\nruntime = "onnx"\n[budgets]\nlatency = 5\n')
    with pytest.raises(InputError, match=r"\[budgets\] 'latency'; nearest valid key: 'latency_ms'"):
        load_profile(str(path))


@pytest.mark.parametrize("line, key, expected", [
    ('threads = "4"', "threads", "integer"),
    ("threads = 2.5", "threads", "integer"),
    ("cpu = 76", "cpu", "string"),
    ("budgets = 5", "budgets", "table"),
])
def test_wrong_type_names_key_and_expected_type(tmp_path, line, key, expected):
    path = _write(tmp_path, "x", f'name = "x"\nruntime = "onnx"\n{line}\n')
    with pytest.raises(InputError) as exc:
        load_profile(str(path))
    assert f"'{key}' must be a {expected}" in str(exc.value) and "\n" not in str(exc.value)


def test_budget_types_and_values_are_checked(tmp_path):
    path = _write(tmp_path, "x", 'name = "x"\nruntime = "onnx"\n[budgets]\nsize_kb = "big"\n')
    with pytest.raises(InputError, match=r"\[budgets\] 'size_kb' must be a number"):
        load_profile(str(path))
    path = _write(tmp_path, "x", 'name = "x"\nruntime = "onnx"\n[budgets]\nlatency_ms = true\n')
    with pytest.raises(InputError, match="must be a number"):
        load_profile(str(path))
    path = _write(tmp_path, "x", 'name = "x"\nruntime = "onnx"\n[budgets]\nlatency_ms = -1\n')
    with pytest.raises(InputError, match=">= 0"):
        load_profile(str(path))


@pytest.mark.parametrize("text, match", [
    ('name = "x"\nruntime = "openvino"\n', "runtime 'openvino'"),
    ('name = "x"\nthreads = 2\n', "missing required key 'runtime'"),
    ('name = "x"\nruntime = "onnx"\ndelegate = "xnnpack"\n', "delegate is a tflite setting"),
    ('name = "x"\nruntime = "onnx"\n[estimate]\nhost_to_device_latency_factor = 3\n', "basis"),
    ('name = "x"\nruntime = "onnx"\nthreads = 0\n', "threads 0"),
    ('name = "x"\nruntime = ', "not valid TOML"),
])
def test_bad_values_are_one_line_input_errors(tmp_path, text, match):
    path = _write(tmp_path, "x", text)
    with pytest.raises(InputError, match=match) as exc:
        load_profile(str(path))
    assert "\n" not in str(exc.value)


def test_registry_name_must_match_the_file_name(tmp_path, monkeypatch):
    _write(tmp_path, "board-a", 'name = "board-b"\nruntime = "onnx"\n')
    monkeypatch.setenv("COMPRESS_PROFILES_DIR", str(tmp_path))
    with pytest.raises(InputError, match="differs from the file name 'board-a'"):
        load_profile("board-a")


def test_unknown_profile_names_the_nearest(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_PROFILES_DIR", str(tmp_path))
    with pytest.raises(InputError, match="did you mean 'pixel-class'"):
        load_profile("pixle-class")
    with pytest.raises(InputError, match="not found"):
        load_profile(str(tmp_path / "missing.toml"))


def test_devices_list_json(tmp_path):
    user = tmp_path / "profiles"
    _write(user, "my-board", 'runtime = "onnx"\nthreads = 2\ncpu = "Cortex-A53"\n[budgets]\nlatency_ms = 3\n')
    env = {**os.environ, "COMPRESS_PROFILES_DIR": str(user),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "compress.cli", "devices", "list", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in out["profiles"]}
    assert set(by_name) == set(SHIPPED) | {"my-board"}
    for name, runtime in SHIPPED.items():
        assert by_name[name]["runtime"] == runtime
        assert by_name[name] == {**load_profile(name)}
    assert by_name["my-board"]["budgets"] == {"latency_ms": 3}
    assert Path(by_name["my-board"]["source"]) == user / "my-board.toml" and out["user_dir"] == str(user)
    table = subprocess.run([sys.executable, "-m", "compress.cli", "devices", "list"], cwd=tmp_path,
                           capture_output=True, text=True, env=env, timeout=300)
    assert table.returncode == 0 and "my-board" in table.stdout and "Cortex-A53" in table.stdout


def test_devices_setup_registry(monkeypatch):
    from compress.cli import devices as cli_devices
    from compress.cli import app

    calls = []

    def ok(progress):
        progress("downloading")
        calls.append("ok")
        return {"seconds": 1.5}

    def broken(progress):
        raise RuntimeError("qemu-aarch64-static not installable here")

    monkeypatch.setattr(cli_devices, "SETUPS", {"good": ok, "bad": broken})
    runner = CliRunner()
    res = runner.invoke(app, ["devices", "setup", "good"])
    assert res.exit_code == 0 and "good: ready in 1.5 s" in res.output and calls == ["ok"]
    res = runner.invoke(app, ["devices", "setup", "bad"])
    assert res.exit_code == 1
    res = runner.invoke(app, ["devices", "setup", "good", "bad", "--best-effort"])
    assert res.exit_code == 0 and "not set up: bad" in res.output
    res = runner.invoke(app, ["devices", "setup", "goood"])
    assert res.exit_code == 2


def test_setup_registry_is_lazy():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = ("import sys, compress.cli; from compress.cli.devices import SETUPS; "
            "print(sorted(SETUPS), 'compress.devices.arm64_emu' in sys.modules, 'compress.devices.chromium' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "['arm64-emu', 'chromium'] False False"
