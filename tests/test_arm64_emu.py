"""ARM64 emulator runner: the same exported files in the aarch64 ONNX Runtime / LiteRT wheels under QEMU.

A small CNN (conv + batchnorm + relu + pool + linear: NEON conv, gemm and int8 kernels) is trained for a
second on the real digits, exported to fp32 ONNX and full-int8 TFLite, and run on 50 real test samples in
the emulator and on the host. Tests download nothing: the emulator is built beforehand by
``compress devices setup arm64-emu`` (part of the README's test command; ~20 s, ~260 MB download, cached),
and where it is not built the tests skip with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.devices.arm64_emu import compare_with_host, open_arm64, run_on_emulator, setup, status  # noqa: E402
from compress.export.common import ModelInfo  # noqa: E402

pytestmark = pytest.mark.arm64_emu
SAMPLES = 50


@pytest.fixture(scope="module")
def emulator():
    built = status()
    if built is None:
        pytest.skip("ARM64 emulator not built: run `compress devices setup arm64-emu` (the README's test command does)")
    return built


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(16 * 2 * 2, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """The trained CNN exported to fp32 ONNX and full-int8 TFLite, plus 50 real test samples."""
    from compress.export.onnx.convert import export as export_onnx
    from compress.export.tflite.convert import export as export_tflite

    torch.manual_seed(0)
    model = CNN()
    x, y = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):  # about a second on one thread
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    info = ModelInfo(name="digits-cnn", labels=digits.labels, normalization=digits.normalization)
    out = tmp_path_factory.mktemp("arm64")
    example = torch.from_numpy(digits.x_test[:4])
    return {
        "onnx": export_onnx(model, example, out / "model.onnx", info),
        "int8": export_tflite(model, example, out / "model.tflite", info, variant="int8",
                              calibration=digits.x_train[:200]),
        "x": digits.x_test[:SAMPLES],
        "y": digits.y_test[:SAMPLES],
    }


def test_setup_is_cached_and_matches_host_versions(emulator):
    from importlib.metadata import version

    again = setup()
    assert again["cached"] and again["seconds"] < 1.0
    assert again["sysroot"] == emulator["sysroot"] and again["python_version"].startswith("3.11")
    for name in ("numpy", "onnxruntime", "ai-edge-litert"):
        assert again["packages"][name] == version(name)


def test_onnx_fp32_reproduces_host(emulator, exported):
    r = compare_with_host(exported["onnx"], exported["x"])
    print(f"onnx fp32 on aarch64: bit_exact={r['bit_exact']} max|diff|={r['max_abs_diff']:.3g} "
          f"top1={r['top1_agreement']:.4f} n={r['samples']} {r['seconds']:.1f}s  {r['engine']}")
    assert r["samples"] == SAMPLES and r["engine"].startswith("ONNX Runtime ") and "aarch64, QEMU" in r["engine"]
    # Not bit-exact: ONNX Runtime's aarch64 (NEON) conv kernels sum in another order than the x86 (AVX2/FMA)
    # ones. Measured max |diff| 3.8e-06 on logits of magnitude ~10-30 (a pure Linear/ReLU MLP was bit-exact),
    # so fp32 is held to a tight tolerance instead.
    assert r["max_abs_diff"] <= 1e-4
    assert r["top1_agreement"] == 1.0


def test_tflite_int8_reproduces_host(emulator, exported):
    r = compare_with_host(exported["int8"], exported["x"])
    print(f"tflite int8 on aarch64: bit_exact={r['bit_exact']} max|diff|={r['max_abs_diff']:.3g} "
          f"top1={r['top1_agreement']:.4f} n={r['samples']} {r['seconds']:.1f}s  {r['engine']}")
    assert r["samples"] == SAMPLES and "XNNPACK, 1 thread" in r["engine"] and "aarch64, QEMU" in r["engine"]
    # Measured bit-exact (max |diff| 0): XNNPACK's int8 kernels are integer math with the same requantization
    # on NEON and AVX2. Held to one output quantization step, as the host's XNNPACK-vs-builtin check is.
    from ai_edge_litert.interpreter import Interpreter

    step = Interpreter(model_path=str(exported["int8"])).get_output_details()[0]["quantization"][0]
    assert r["max_abs_diff"] <= step + 1e-6
    assert r["top1_agreement"] == 1.0


def test_open_arm64_runner(emulator, exported):
    runner = open_arm64(exported["int8"], threads=2)
    assert not runner.measured and runner.threads == 2
    assert "XNNPACK, 2 threads" in runner.engine and "aarch64, QEMU" in runner.engine
    scores = runner.predict(exported["x"][:5])
    assert scores.dtype == np.float32 and scores.shape == (5, 10)
    assert (scores.argmax(1) == exported["y"][:5]).mean() >= 0.8


def test_missing_model_is_a_clear_error(emulator, tmp_path):
    missing = tmp_path / "absent.onnx"
    with pytest.raises(InputError, match=r"absent\.onnx: no such model file"):
        run_on_emulator(missing, np.zeros((1, 1, 8, 8), np.float32))


def test_wrong_input_shape_is_a_clear_error(emulator, exported):
    with pytest.raises(InputError, match=r"expected shape \(N, 1, 8, 8\)"):
        run_on_emulator(exported["int8"], np.zeros((2, 64), np.float32))


@pytest.mark.parametrize("target, quantize", [("onnx", "none"), ("tflite", "int8")])
def test_mnist_sample_models_reproduce_host_outputs_via_validate(emulator, tmp_path, target, quantize):
    """`compress validate --arm64-emulator N` on MNIST students (fp32 ONNX, full-int8 TFLite)."""
    from compress.pipeline import RunConfig, run
    from compress.stages.validate import validate
    from tests.conftest import require_mnist

    mnist = require_mnist()
    report = run(RunConfig.from_settings(target=target, quantize=quantize, data=str(mnist), limit_train=2000, limit_test=300,
                           teachers=["mlp-small"], teacher_epochs=1, epochs=3, latency_runs=3, out=str(tmp_path)),
                 quiet=True)
    checked = validate(report["run"]["out_dir"], arm64_samples=100, latency_runs=3)
    check = next(c for c in checked["checks"] if c["name"] == "arm64 emulator reproduces host outputs")
    emu = checked["arm64_emulator"]
    print(target, quantize, check["detail"])
    assert check["passed"] and emu["samples"] == 100 and emu["top1_agreement"] == 1.0
    if quantize == "int8":
        assert emu["bit_exact"], "int8 XNNPACK kernels are integer arithmetic: expected identical outputs"
    else:
        assert emu["max_abs_diff"] <= 1e-4
