"""ONNX export compared with the torch model it came from, in ONNX Runtime, on real digits."""

import numpy as np
import onnx
import pytest
import torch

from compress import models
from compress.core.errors import InputError
from compress.distill.train import fit
from compress.export.onnx.runner import open_onnx
from compress.core.metrics import FP32_PARITY_TOLERANCE, batched, describe_parity, parity
from compress.export.registry import tolerance_for
from compress.export.common import ModelInfo
from compress.export.onnx.convert import export, read_metadata


@pytest.mark.parametrize("arch", ["mlp-small", "cnn-small", "cnn"])
def test_export_parity_dynamic_batch_and_metadata(tmp_path, digits, arch):
    torch.manual_seed(0)
    model = models.build(arch, digits.input_shape, 10)
    y = torch.as_tensor(digits.y_train)
    fit(model, digits.x_train[:300], lambda z, i: torch.nn.functional.cross_entropy(z, y[i]), epochs=1)
    info = ModelInfo(name=arch, labels=digits.labels, normalization=digits.normalization, version="t")
    path = export(model, torch.as_tensor(digits.x_test[:1]), tmp_path / "m.onnx", info)
    onnx.checker.check_model(str(path), full_check=True)
    meta = read_metadata(path)
    assert meta["labels"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    assert '"scale": 0.0625' in meta["normalization"] and meta["producer"].startswith("compress ")
    runner = open_onnx(path, threads=1)
    ref = model(torch.as_tensor(digits.x_test)).detach().numpy()
    for bs in (1, 7, 360):  # the batch axis is dynamic
        got = batched(runner.predict, digits.x_test, bs)
        result = parity(ref, got)
        assert result["passed"], result
        assert result["top1_agreement"] == 1.0
    assert result["max_abs_diff"] <= FP32_PARITY_TOLERANCE


def test_parity_detects_a_corrupted_weight(tmp_path, digits):
    model = models.build("mlp-small", digits.input_shape, 10).eval()
    path = export(model, torch.as_tensor(digits.x_test[:1]), tmp_path / "m.onnx", ModelInfo("m", digits.labels))
    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    ref = model(torch.as_tensor(digits.x_test)).detach().numpy()
    bad = batched(open_onnx(tmp_path / "bad.onnx").predict, digits.x_test)
    assert not parity(ref, bad)["passed"] and not parity(ref, bad, tolerance_for("onnx", "fp32"))["passed"]


def test_the_fp32_bound_grows_with_the_logits():
    """Rounding grows with the logits (a `vgg:0.5` with logits up to 4.9 differed by 1.5e-4 in ONNX Runtime with
    every graph optimization off): the one fp32 bound is 1e-4 of max(1, max |torch logit|), said in the line."""
    fp32 = tolerance_for("onnx", "fp32")
    assert fp32 == {"max_rel": FP32_PARITY_TOLERANCE}
    large = np.array([[40.0, -3.0, 1.0], [2.0, 5.0, -1.0]], np.float32)
    rounded = parity(large, large + np.float32(1e-3), fp32)
    assert rounded["passed"] and not parity(large, large + np.float32(1e-3))["passed"]
    assert "(bound 4.0e-03 = 0.0001 x max(1, max |logit| 40))" in describe_parity(rounded)
    assert not parity(large, large + np.float32(5e-3), fp32)["passed"]
    small = np.array([[0.5, -0.2]], np.float32)
    assert not parity(small, small + np.float32(2e-4), fp32)["passed"], "below 1 the bound stays 1e-4"


def test_failed_export_leaves_nothing_behind(tmp_path, digits):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=1)  # no ONNX translation for the product it decomposes into

    with pytest.raises(InputError, match=r"'u': cannot be converted to target 'onnx' \(op torch.ops.prims.prod has no ONNX"):
        export(Unexportable(), torch.as_tensor(digits.x_test[:1]), tmp_path / "m.onnx", ModelInfo("u", ["a"]))
    assert list(tmp_path.iterdir()) == []


def test_unloadable_onnx_is_a_clear_error(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="x.onnx: not a loadable ONNX model"):
        open_onnx(tmp_path / "x.onnx")
