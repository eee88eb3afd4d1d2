"""The one policy around every export (``compress.export.common.mode``): each target converts the model in
eval mode and gives it back exactly as the caller had it -- every submodule's own train/eval flag (a frozen
BatchNorm inside a model that is training stays in eval), also when the converter fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.common.mode import converting
from compress.export.registry import TARGETS, export_options

CONVERTERS = [t for t in ("onnx", "tflite", "coreml") if t in TARGETS]


def mixed_mode_model() -> nn.Module:
    """Training, except one BatchNorm the caller froze in eval (a common fine-tuning setup)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model.train()
    model[1].eval()
    return model


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("target", CONVERTERS)
def test_every_target_restores_each_submodules_mode(target, tmp_path):
    model = mixed_mode_model()
    before = modes(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32))
    info = ModelInfo(name="mode", labels=["a", "b", "c"], input_kind="features")
    backend = TARGETS[target]
    backend.export(model, x[:1], tmp_path / backend.file_name, info, **export_options(target, "none"))
    assert modes(model) == before, target
    assert (tmp_path / backend.file_name).exists()


def test_modes_are_restored_when_the_converter_fails():
    model = mixed_mode_model()
    before = modes(model)
    with pytest.raises(InputError), converting(model):
        assert not any(modes(model))  # eval inside the block
        raise InputError("the converter refused the model")
    assert modes(model) == before
