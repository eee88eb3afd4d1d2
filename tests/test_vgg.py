"""The vgg teacher and student family: blocks that follow the input size, per-image standardization inside
the model (so every runtime computes it), exported with parity against torch in every target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress import models
from compress.models.images import PerImageStandardize
from tests.test_student_families import _check_parity, _prepare_for_parity, digit_images  # noqa: F401


def _pools(model: nn.Module) -> int:
    return sum(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_blocks_follow_the_input_size_and_width_scales_the_channels():
    assert [_pools(models.build("vgg", (3, side, side), 10)) for side in (8, 28, 32, 40, 96)] == [1, 3, 3, 3, 4]
    macs = [models.count_macs(models.build(f"vgg:{w}", (3, 32, 32), 10), (3, 32, 32)) for w in (0.25, 0.5, 1)]
    assert macs[0] < macs[1] < macs[2]
    registered, family = models.build("vgg", (3, 32, 32), 10), models.build("vgg:1", (3, 32, 32), 10)
    assert [p.shape for p in registered.parameters()] == [p.shape for p in family.parameters()]


def test_per_image_standardization_removes_each_images_brightness_and_contrast():
    x = torch.randn(4, 3, 16, 16)
    scaled = x * torch.tensor([2.0, 0.5, 3.0, 1.0]).view(4, 1, 1, 1) + torch.tensor([5.0, -1.0, 0.0, 2.0]).view(4, 1, 1, 1)
    out = PerImageStandardize()(scaled)
    torch.testing.assert_close(out, PerImageStandardize()(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_vgg_export_parity_on_colour_digits(tmp_path, digit_images, target):  # noqa: F811
    train, test = digit_images["rgb"]
    torch.manual_seed(0)
    model = models.build("vgg:0.5", tuple(train.shape[1:]), len(digit_images["labels"]))
    _prepare_for_parity(model, train, seed=3)
    _check_parity(tmp_path, model, np.ascontiguousarray(test.numpy()), target, "vgg:0.5", digit_images["labels"], "image")
