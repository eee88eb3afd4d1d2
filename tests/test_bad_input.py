"""The bad-input matrix: every kind of broken input is exit code 2, one line naming it, and nothing written.

Each case runs the real CLI (``python -m compress.cli distill-and-export``, as ``tests/test_cli.py`` does) with
cheap settings and its own ``--out``, then checks

* exit code 2 and a single ``error:`` line on stderr (no traceback), the last non-empty line;
* that line names the input (file, teacher, option or recipe key) and says what was expected;
* the ``--out`` folder is absent or empty: no half-written artifact and no ``*.tmp`` folder.

All inputs are built once per module (``inputs``) and the module gets its own ``COMPRESS_CACHE_DIR``.
Unconvertible ops are checked at the exporter level (``compress.export.TARGETS[target].export``), where they are raised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compress.core.errors import InputError

CHEAP = ("--teacher-epochs", "1", "--epochs", "1", "--latency-runs", "3", "--limit-train", "400", "--limit-test", "100")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A fresh cache for this module's runs (so no case passes or fails because of another module's cache)."""
    return {**os.environ, "COMPRESS_CACHE_DIR": str(tmp_path_factory.mktemp("bad-input-cache"))}


def compress(*args, cwd, env):
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def assert_nothing_written(out: Path) -> None:
    if out.exists():
        assert out.is_dir(), f"{out} is not a folder"
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert not left, f"partial artifacts left in {out}: {left}"


def error_line(proc) -> str:
    """The one error line: exit 2, no traceback, exactly one 'error:' line and it is the last one."""
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


def run_bad(args, *, cwd: Path, env, must: tuple[str, ...], out: Path | None = None, cheap=True,
            says_expected=True) -> str:
    """Run a failing command; check the one-line error names ``must`` (substrings) and says what was expected."""
    out = out or cwd / "out"
    proc = compress("distill-and-export", *map(str, args), *(CHEAP if cheap else ()), "--out", str(out),
                    cwd=cwd, env=env)
    line = error_line(proc)
    for text in must:
        assert text in line, f"{text!r} not in {line!r}"
    if says_expected:
        assert "expect" in line.lower() or "did you mean" in line, f"the error does not say what was expected: {line!r}"
    assert_nothing_written(out)
    return line


# --- the inputs, built once ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Broken and mismatched teachers, data folders and arrays, all in one folder."""
    import onnx
    import torch
    from PIL import Image
    from torch import nn

    import soundfile as sf
    from compress.data import load_digits
    from compress.export.common import ModelInfo
    from compress.export.onnx.convert import export as export_onnx

    root = tmp_path_factory.mktemp("bad-inputs")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    # teachers: ONNX with 10 and 5 outputs on 8x8 digits, one built for 28x28 inputs
    def onnx_teacher(name, module, shape):
        export_onnx(module.eval(), torch.zeros(1, *shape), root / name, ModelInfo(name, [str(i) for i in range(10)]))

    onnx_teacher("ten.onnx", nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 8, 8))
    onnx_teacher("five.onnx", nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), (1, 8, 8))
    onnx_teacher("mnist28.onnx", nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28))
    proto = onnx.load(str(root / "ten.onnx"))  # the same teacher with one NaN weight
    init = next(i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(root / "nan-weight.onnx"))

    # TorchScript teachers: one for 28x28 inputs (no declared shape), one NaN weight, NaN/inf outputs
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()), str(root / "mnist28.pt"))
    nan_weight = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        nan_weight[1].weight[3, 7] = float("nan")
    torch.jit.save(torch.jit.script(nan_weight), str(root / "nan-weight.pt"))

    class InfOutput(nn.Module):  # finite weights, but logits / 0 on every input
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) / (x.flatten(1)[:, :1] * 0.0)

    torch.jit.save(torch.jit.script(InfOutput().eval()), str(root / "inf-output.pt"))

    # NaN only on some inputs: finite on the samples the member check probes (the first 8 test samples),
    # NaN on the training samples with the largest pixel sums, so the soft targets must catch it
    digits = load_digits()
    sums = digits.x_train.reshape(len(digits.x_train), -1)[:400].sum(1)
    threshold = float(max(digits.x_test.reshape(len(digits.x_test), -1)[:8].sum(1).max(), np.quantile(sums, 0.9)))
    assert (sums > threshold).any()

    class SometimesNaN(nn.Module):
        def __init__(self, threshold: float):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            self.register_buffer("threshold", torch.tensor(threshold))

        def forward(self, x):
            z = self.fc(x.flatten(1))
            return torch.where(x.flatten(1).sum(1, keepdim=True) > self.threshold, torch.full_like(z, float("nan")), z)

    torch.jit.save(torch.jit.script(SometimesNaN(threshold).eval()), str(root / "sometimes-nan.pt"))

    # corrupt checkpoints: garbage bytes with each teacher suffix
    for suffix in ("onnx", "pt", "pt2"):
        (root / f"garbage.{suffix}").write_bytes(b"\x00\x13not a model\xff" * 64)

    # data: empty folders, class folders without files, an unreadable image and an unreadable wav
    (root / "empty").mkdir()
    for cls in ("a", "b"):
        (root / "no-files" / cls).mkdir(parents=True)
        (root / "images" / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / "images" / cls / f"{i}.png")
    (root / "images" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not image data" * 16)
    (root / "audio").mkdir()
    for label in ("0", "1"):
        for take in range(8):
            sf.write(root / "audio" / f"{label}_sp_{take}.wav", (rng.normal(size=800) * 0.1).astype(np.float32), 8000,
                     subtype="PCM_16")
    (root / "audio" / "1_sp_9.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + b"\x00garbage" * 32)

    # arrays: labels outside the class list
    x_tr, x_te = rng.normal(size=(40, 12)).astype(np.float32), rng.normal(size=(10, 12)).astype(np.float32)
    np.savez(root / "test-label-7.npz", x_train=x_tr, y_train=np.arange(40) % 3, x_test=x_te,
             y_test=np.r_[np.arange(9) % 3, 7], labels=np.array(["cat", "dog", "fox"]))
    np.savez(root / "train-label-3.npz", x_train=x_tr, y_train=np.r_[np.arange(39) % 3, 3], x_test=x_te,
             y_test=np.arange(10) % 3, labels=np.array(["cat", "dog", "fox"]))
    np.savez(root / "train-label-negative.npz", x_train=x_tr, y_train=np.r_[np.arange(39) % 3, -1], x_test=x_te,
             y_test=np.arange(10) % 3)
    np.savez(root / "flat.npz", x_train=x_tr, y_train=np.arange(40) % 3, x_test=x_te, y_test=np.arange(10) % 3)
    return root


# --- 0. an export scheme the deployment target cannot run: refused before any training ----------------

@pytest.mark.parametrize("scheme, target, need", [("int8", None, "iOS17"), ("int4-block", "iOS17", "iOS18")])
def test_a_scheme_newer_than_the_deployment_target_fails_before_training(tmp_path, env, scheme, target, need):
    args = ["--target", "coreml", "--quantize", scheme] + (["--deployment-target", target] if target else [])
    run_bad(args, cwd=tmp_path, env=env, must=(f"--quantize {scheme}", f"--deployment-target {need}"))


# --- 1. missing and corrupt teacher checkpoints --------------------------------------------------------

@pytest.mark.parametrize("suffix, expected", [
    ("pt", "expected a TorchScript archive"),
    ("onnx", "expected an ONNX model"),
    ("pt2", "expected a torch.export .pt2 archive"),
])
def test_missing_teacher_checkpoint(tmp_path, env, suffix, expected):
    spec = str(tmp_path / f"missing.{suffix}")
    run_bad(["--teacher", spec], cwd=tmp_path, env=env, must=(f"teacher {spec!r}: file not found", expected))


@pytest.mark.parametrize("suffix, what", [
    ("pt", "not a loadable TorchScript archive"),
    ("onnx", "not a loadable ONNX model"),
    ("pt2", "not a loadable torch.export archive"),
])
def test_corrupt_teacher_checkpoint(tmp_path, env, inputs, suffix, what):
    spec = str(inputs / f"garbage.{suffix}")
    run_bad(["--teacher", spec], cwd=tmp_path, env=env, must=(f"teacher {spec!r}: {what}",))


# --- 2. members with different class counts ------------------------------------------------------------

def test_members_disagree_on_class_count(tmp_path, env, inputs):
    run_bad(["--teacher", inputs / "ten.onnx", "--teacher", inputs / "five.onnx"], cwd=tmp_path, env=env,
            must=("teachers 'ten.onnx' and 'five.onnx' disagree on the number of classes (10 vs 5)",))


def test_teacher_class_count_differs_from_the_data(tmp_path, env, inputs):
    run_bad(["--teacher", inputs / "five.onnx"], cwd=tmp_path, env=env,
            must=("teacher 'five.onnx': predicts 5 classes but the data has 10 labels", "expected 10 outputs"))


# --- 3. input shapes that do not fit -------------------------------------------------------------------

def test_onnx_teacher_for_another_input_shape(tmp_path, env, inputs):
    run_bad(["--teacher", inputs / "mnist28.onnx"], cwd=tmp_path, env=env,
            must=("teacher 'mnist28.onnx': takes samples of shape (1, 28, 28) but the data's samples have shape (1, 8, 8)",))


def test_torchscript_teacher_for_another_input_shape(tmp_path, env, inputs):
    run_bad(["--teacher", inputs / "mnist28.pt"], cwd=tmp_path, env=env,
            must=("teacher 'mnist28.pt': fails on the data's samples of shape (1, 8, 8)", "(batch, 1, 8, 8)"))


@pytest.mark.parametrize("args, message", [
    (["--student", "ds-cnn", "--teacher", "mlp-small"], "model 'ds-cnn': input shape (1, 8, 8) does not fit"),
    (["--teacher", "speech-cnn"], "model 'speech-cnn': input shape (1, 8, 8) does not fit"),
    (["--student", "cnn-small", "--teacher", "mlp-small", "--data", "FLAT"], "model 'cnn-small': input shape (12,) does not fit"),
])
def test_architecture_that_cannot_take_the_data_shape(tmp_path, env, inputs, args, message):
    args = [str(inputs / "flat.npz") if a == "FLAT" else a for a in args]
    run_bad(args, cwd=tmp_path, env=env, must=(message,))


# --- 4. empty data folders -----------------------------------------------------------------------------

@pytest.mark.parametrize("folder, fmt, message", [
    ("empty", None, "empty: no class subfolders found; expected"),
    ("no-files", None, "no-files: no image files in the class folders; expected"),
    ("empty", "audio-folder", "empty: no audio files found; expected"),
    ("no-files", "audio-folder", "no-files: no audio files found; expected"),
])
def test_empty_data_folder(tmp_path, env, inputs, folder, fmt, message):
    args = ["--data", inputs / folder, "--teacher", "mlp-small"] + (["--data-format", fmt] if fmt else [])
    run_bad(args, cwd=tmp_path, env=env, must=(message,))


# --- 5. unreadable files name the file -----------------------------------------------------------------

def test_unreadable_image_names_the_file(tmp_path, env, inputs):
    run_bad(["--data", inputs / "images", "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{inputs / 'images' / 'b' / 'broken.png'}: unreadable image",))


def test_unreadable_wav_names_the_file(tmp_path, env, inputs):
    run_bad(["--data", inputs / "audio", "--teacher", "mlp-small", "--student", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{inputs / 'audio' / '1_sp_9.wav'}: unreadable audio file",))


# --- 6. labels outside the class list ------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("test-label-7.npz", "test-label-7.npz (test labels): label 7 is outside the class list"),
    ("train-label-3.npz", "train-label-3.npz (train labels): label 3 is outside the class list"),
    ("train-label-negative.npz", "train-label-negative.npz (train labels): label -1 is outside the class list"),
])
def test_labels_outside_the_class_list(tmp_path, env, inputs, name, message):
    line = run_bad(["--data", inputs / name, "--teacher", "mlp-small"], cwd=tmp_path, env=env, must=(message,))
    assert "expected class indices 0..2" in line


# --- 7. NaN / inf in teacher weights and outputs -------------------------------------------------------

@pytest.mark.parametrize("name, weight", [("nan-weight.pt", "'1.weight'"), ("nan-weight.onnx", "")])
def test_nan_in_teacher_weights(tmp_path, env, inputs, name, weight):
    spec = str(inputs / name)
    run_bad(["--teacher", spec], cwd=tmp_path, env=env,
            must=(f"teacher {spec!r}: weight {weight}", "NaN or infinite", "expected finite weights"))


def test_inf_in_teacher_outputs(tmp_path, env, inputs):
    run_bad(["--teacher", inputs / "inf-output.pt"], cwd=tmp_path, env=env,
            must=("teacher 'inf-output.pt': outputs NaN or infinity", "expected finite logits"))


def test_nan_in_teacher_outputs_on_some_transfer_samples(tmp_path, env, inputs):
    """Finite on the few samples the member check probes; the soft targets over the transfer set catch it."""
    run_bad(["--teacher", inputs / "sometimes-nan.pt"], cwd=tmp_path, env=env,
            must=("teacher 'sometimes-nan.pt': outputs NaN or infinity for", "of 400 real samples", "expected finite logits"))


# --- 8. ops a target cannot convert (exporter level) ----------------------------------------------------

def _unconvertible(kind: str):
    import torch

    class Cumprod(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=1)

    class Det(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.det(x)

    return (Cumprod(), torch.rand(1, 4)) if kind == "cumprod" else (Det(), torch.randn(1, 3, 3))


@pytest.mark.parametrize("target, kind, op, module", [
    ("onnx", "cumprod", "prims.prod", "onnx"),
    ("tflite", "cumprod", "cumprod", "litert_torch"),
    ("coreml", "det", "linalg_det", "coremltools"),
])
def test_op_the_target_cannot_convert(tmp_path, target, kind, op, module):
    pytest.importorskip(module)
    from compress.export import TARGETS
    from compress.export.common import ModelInfo

    export_fn, file_name = TARGETS[target].export, TARGETS[target].file_name
    model, example = _unconvertible(kind)
    with pytest.raises(InputError) as err:
        export_fn(model.eval(), example, tmp_path / file_name, ModelInfo("bad-op", ["a", "b"] if kind == "det" else []))
    message = str(err.value)
    assert op in message and f"target '{target}'" in message and "\n" not in message, message
    assert "expected" in message, message
    assert list(tmp_path.iterdir()) == []  # atomic: nothing half-written


# --- 9. output folders that cannot be written ----------------------------------------------------------

def test_output_folder_under_a_regular_file(tmp_path, env):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "dist"
    run_bad(["--teacher", "mlp-small"], cwd=tmp_path, env=env, out=out, must=(f"--out {str(out)!r}: cannot write there",))
    assert blocker.read_text() == "a file, not a folder"


def test_output_folder_that_is_a_regular_file(tmp_path, env):
    blocker = tmp_path / "dist"
    blocker.write_text("x")
    proc = compress("distill-and-export", "--teacher", "mlp-small", *CHEAP, "--out", str(blocker), cwd=tmp_path, env=env)
    assert f"--out {str(blocker)!r}: cannot write there" in error_line(proc)
    assert blocker.read_text() == "x"


def test_read_only_output_folder(tmp_path, env):
    """Tests run as root, so chmod cannot make a folder read-only: /proc/self is a folder nobody can write in."""
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    proc = compress("distill-and-export", "--teacher", "mlp-small", *CHEAP, "--out", "/proc/self", cwd=tmp_path, env=env)
    line = error_line(proc)
    assert "--out '/proc/self': cannot write there" in line


def test_run_folder_that_is_a_regular_file(tmp_path, env):
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken").write_text("x")
    proc = compress("distill-and-export", "--teacher", "mlp-small", *CHEAP, "--out", str(out), "--name", "taken",
                    cwd=tmp_path, env=env)
    line = error_line(proc)
    assert str(out / "taken") in line and (out / "taken").read_text() == "x"
    assert sorted(p.name for p in out.iterdir()) == ["taken"]


# --- 10. recipes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('[distill]\nepochs = "ten"\n', "[distill] epochs: expected an integer, got str 'ten'"),
    ("[distill]\ntemprature = 4\n", "[distill] temprature: unknown key; did you mean 'temperature'?"),
    ("[distil]\nepochs = 3\n", "unknown section 'distil'; did you mean 'distill'?"),
    ("epochs = 3\n", "unknown key 'epochs'; did you mean 'distill.epochs'?"),
    ("[distill\nepochs = 3\n", "not valid TOML (Expected ']'"),
    ("[export]\ntargets = []\n", "[export] targets is empty; expected at least one of"),
])
def test_bad_recipe(tmp_path, env, text, message):
    recipe = tmp_path / "compress.toml"
    recipe.write_text(text)
    run_bad(["--recipe", recipe], cwd=tmp_path, env=env, must=(f"{recipe}: {message}",), cheap=False)


# --- 11. data that would be silently wrong (issue 13) -----------------------------------------------------

def _images(root: Path, classes, n: int = 4) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _wavs(folder: Path, names) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        sf.write(folder / name, (rng.normal(size=800) * 0.1).astype(np.float32), 8000, subtype="PCM_16")
    return folder


def _npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    base = {"x_train": rng.normal(size=(40, 12)).astype(np.float32), "y_train": np.arange(40) % 3,
            "x_test": rng.normal(size=(12, 12)).astype(np.float32), "y_test": np.arange(12) % 3}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _idx(path: Path, arr: np.ndarray) -> None:
    path.write_bytes(bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
                     + arr.astype(np.uint8).tobytes())


def _bad_labels(kind: str, root: Path) -> Path:
    takes = range(6)
    if kind == "image-folder-newline":
        return _images(root / "d", ["a\nb", "c"])
    if kind == "npz-tab":
        return _npz(root / "d.npz", labels=np.array(["cat\tdog", "fox", "owl"]))
    if kind == "npz-space":
        return _npz(root / "d.npz", labels=np.array([" cat", "fox", "owl"]))
    if kind == "npz-duplicate":
        return _npz(root / "d.npz", labels=np.array(["cat", "fox", "cat"]))
    if kind == "audio-name-tab":
        return _wavs(root / "d", [f"{label}_sp_{i}.wav" for label in ("a\tb", "c") for i in takes])
    if kind == "audio-folder-newline":
        for label in ("a\nb", "c"):
            _wavs(root / "d" / label, [f"{i}.wav" for i in takes])
        return root / "d"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, must", [
    ("image-folder-newline", ("label 'a\\nb' from the class folder names", "contains a line break")),
    ("npz-tab", ("label 'cat\\tdog' from the 'labels' array", "contains a tab")),
    ("npz-space", ("label ' cat' from the 'labels' array", "leading or trailing whitespace")),
    ("npz-duplicate", ("label 'cat' from the 'labels' array", "appears more than once")),
    ("audio-name-tab", ("label 'a\\tb' from the file names (label_pattern '{label}_{speaker}_{index}')", "contains a tab")),
    ("audio-folder-newline", ("label 'a\\nb' from the class folder names", "contains a line break")),
])
def test_label_that_would_break_labels_txt(tmp_path, env, kind, must):
    """A label is one line of labels.txt: printable, no line/field separators, no surrounding spaces, unique."""
    data = _bad_labels(kind, tmp_path)
    line = run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env, must=(f"{data}: ", *must))
    assert "expected printable" in line


def test_empty_class_folders_are_refused(tmp_path, env):
    data = _images(tmp_path / "d", ["a", "b"])
    (data / "c").mkdir()
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{data / 'c'}: class folder has no image files", "expected at least one sample per class"))


def test_empty_audio_class_folders_are_refused(tmp_path, env):
    data = tmp_path / "d"
    for label in ("left", "right"):
        _wavs(data / label, [f"{i}.wav" for i in range(5)])
    (data / "up").mkdir()
    (data / "up" / "notes.txt").write_text("no audio here")
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{data / 'up'}: class folder has no audio files", "expected at least one sample per class"))


@pytest.mark.parametrize("kind", ["image-class", "image-file", "audio-class", "audio-file"])
def test_symlinks_out_of_the_data_root_are_refused(tmp_path, env, kind):
    """Links that stay inside the data root are followed; a class folder or sample file resolving outside it is refused."""
    data = tmp_path / "d"
    if kind.startswith("image"):
        _images(data, ["a", "b"])
        _images(tmp_path / "elsewhere", ["x"])
        sample = "0.png"
    else:
        for label in ("a", "b"):
            _wavs(data / label, [f"{i}.wav" for i in range(5)])
        _wavs(tmp_path / "elsewhere" / "x", ["0.wav"])
        sample = "0.wav"
    link = data / "x" if kind.endswith("class") else data / "a" / f"9{Path(sample).suffix}"
    link.symlink_to(tmp_path / "elsewhere" / "x" / ("" if kind.endswith("class") else sample))
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{link}: symbolic link resolves outside the data root {data}", "expected"))


def test_symlinks_inside_the_data_root_are_followed(tmp_path):
    from compress.data import load_data

    data = _images(tmp_path / "d", ["a", "b"])
    (data / "a" / "9.png").symlink_to(data / "b" / "0.png")
    ds = load_data(str(data))
    assert ds.labels == ["a", "b"] and len(ds.x_train) + len(ds.x_test) == 9


def test_idx_labels_that_skip_classes(tmp_path, env):
    """One label of 200 among 0..9 would make a 201-output model with 190 classes nobody has seen."""
    rng = np.random.default_rng(0)
    y_train = np.arange(30) % 10
    y_train[7] = 200
    _idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (30, 8, 8)))
    _idx(tmp_path / "train-labels-idx1-ubyte", y_train)
    _idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 8, 8)))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10))
    run_bad(["--data", tmp_path, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{tmp_path / 'train-labels-idx1-ubyte'}: label value(s) 200 leave class index(es) 10..199 "
                  "with no training sample", "expected integer labels contiguous from 0"))


def test_npz_labels_that_skip_classes(tmp_path, env):
    data = _npz(tmp_path / "gap.npz", y_train=np.array([0, 1, 2, 5] * 10), y_test=np.array([0, 1, 2, 5] * 3))
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{data} (train labels): label value(s) 5 leave class index(es) 3..4 with no training sample",
                  "expected integer labels contiguous from 0", "'labels' array"))


def test_a_label_list_may_name_classes_missing_from_training(tmp_path):
    """The omitted-class experiment: a label list says there are 4 classes though class 3 has no training sample."""
    from compress.data import load_data

    data = _npz(tmp_path / "omitted.npz", y_test=np.arange(12) % 4, labels=np.array(["a", "b", "c", "d"]))
    assert load_data(str(data)).num_classes == 4


@pytest.mark.parametrize("kind", ["image-folder", "npz"])
def test_single_class_data_set(tmp_path, env, kind):
    if kind == "image-folder":
        data = _images(tmp_path / "one", ["only"], n=10)
    else:
        data = _npz(tmp_path / "one.npz", y_train=np.zeros(40, int), y_test=np.zeros(12, int))
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{data}: ", "expected at least 2 classes"))


@pytest.mark.parametrize("flag, value", [("--limit-train", "0"), ("--limit-train", "-1"), ("--limit-test", "-300")])
def test_sample_limits_below_one(tmp_path, env, flag, value):
    run_bad(["--teacher", "mlp-small", "--teacher-epochs", "1", "--epochs", "1", "--latency-runs", "3", flag, value],
            cwd=tmp_path, env=env, cheap=False, must=(f"{flag} {value}: expected an integer >= 1",))


@pytest.mark.parametrize("option, value", [("limit_train", 0), ("limit_train", -1), ("limit_test", -300),
                                           ("limit_test", 2.5), ("limit_train", True)])
def test_sample_limits_below_one_in_load_data(option, value):
    """``load_data`` checks the limits itself (``compress validate`` passes a recipe's limits straight to it)."""
    from compress.data import load_data

    flag = "--" + option.replace("_", "-")
    with pytest.raises(InputError, match=f"^{flag} {value}: expected an integer >= 1"):
        load_data(None, **{option: value})


@pytest.mark.parametrize("array, value, must", [
    ("x_train", 1e308, ("(x_train): 1 value(s) not finite after conversion to float32", "1e+308")),
    ("x_test", np.nan, ("(x_test): 1 value(s) not finite after conversion to float32", "1 NaN")),
])
def test_values_that_are_not_finite_as_float32(tmp_path, env, array, value, must):
    x = np.random.default_rng(0).normal(size=(40 if array == "x_train" else 12, 12))
    x[3, 4] = value
    data = _npz(tmp_path / "big.npz", **{array: x})
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(str(data), *must, "expected finite numbers"))


def test_class_too_small_for_a_stratified_split(tmp_path, env):
    """One image per class cannot be split 80/20 by class: exit 2 naming the folder, not sklearn's traceback."""
    data = _images(tmp_path / "tiny", ["a", "b"], n=1)
    run_bad(["--data", data, "--teacher", "mlp-small"], cwd=tmp_path, env=env,
            must=(f"{data}: cannot make a stratified 0.2 test split of 2 samples", "expected at least 2 samples per class"))
