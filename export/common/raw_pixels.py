"""The torch side of the raw-pixel input (``compress.export.common.preprocess`` has the rest, numpy only):
the student behind its own normalization, as every target converts it when ``ModelInfo.preprocessing``
is set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compress.export.common.preprocess import check, to_raw


def _per_channel(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


class Normalize(nn.Module):
    """raw (any dtype) -> float32, then ``* scale``, ``- mean[c]``, ``/ std[c]`` (each part optional).

    The parts are optional because Core ML's image input does the scale and the bias itself and leaves
    only the per-channel 1/std to the model."""

    def __init__(self, scale: float | None = None, mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.scale = None if scale is None else float(scale)
        self.register_buffer("mean", None if mean is None else _per_channel(mean))
        self.register_buffer("std", None if std is None else _per_channel(std))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = raw.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x


class RawPixels(nn.Module):
    """``model`` behind its preprocessing: takes raw pixels (uint8, or float 0..255), gives the logits.

    The model is the child ``model`` (so its module names gain a ``model.`` prefix: ``preprocess.wrapped_name``) and
    the preprocessing is the child ``preprocess`` (a target can keep it in float by that name)."""

    def __init__(self, model: nn.Module, preprocessing: dict, normalize: Normalize | None = None):
        super().__init__()
        p = check(preprocessing)
        self.preprocess = normalize if normalize is not None else Normalize(p["scale"], p["mean"], p["std"])
        self.model = model

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(raw))


def raw_export_inputs(model: nn.Module, example, calibration, preprocessing: dict):
    """(``RawPixels`` model, uint8 example tensor, uint8 calibration array or None) for a target that
    exports with a raw-pixel input; the arguments it received are in the normalized space."""
    example = example.detach().cpu() if isinstance(example, torch.Tensor) else torch.as_tensor(example)
    p = check(preprocessing, tuple(example.shape))
    raw_example = torch.from_numpy(to_raw(example, p))
    raw_calibration = None if calibration is None else to_raw(np.asarray(calibration, np.float32), p)
    return RawPixels(model, p), raw_example, raw_calibration
