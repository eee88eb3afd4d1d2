"""Model families, found by registered name (``MODELS``: name -> factory(input_shape, num_classes)).

Teachers are deliberately different architectures (an ensemble gains most from diverse members);
students are small enough for a phone. Every factory takes the input shape (C, H, W) or (F,) and the
class count, so one registry serves any data set a loader produces.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.core.errors import InputError


def _flat_features(input_shape: tuple[int, ...]) -> int:
    return int(math.prod(input_shape))


def _need_image(input_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise InputError(
            f"model {name!r}: input shape {tuple(input_shape)} does not fit; expected images (channels, height, width)"
        )
    return tuple(input_shape)  # type: ignore[return-value]


def mlp(input_shape, num_classes, hidden=(1200, 1200), dropout=0.0) -> nn.Module:
    """Fully connected ReLU network on flattened input (the paper's MNIST family)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_features(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape, num_classes, channels=(32, 64, 128)) -> nn.Module:
    """VGG-style conv/BN/ReLU stack with one downsampling and global average pooling."""
    c, _, _ = _need_image(input_shape, "cnn")
    layers: list[nn.Module] = []
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if i == 0:
            layers.append(nn.MaxPool2d(2))
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


def resnet(input_shape, num_classes, width=48, blocks=2) -> nn.Module:
    """A small ResNet: stem conv, residual blocks, global average pooling."""
    c, _, _ = _need_image(input_shape, "resnet")
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[ResidualBlock(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def cnn_small(input_shape, num_classes, channels=(8, 16)) -> nn.Module:
    """A phone-sized CNN student: two strided conv/BN/ReLU layers and global average pooling."""
    c, _, _ = _need_image(input_shape, "cnn-small")
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


MODELS = {
    # teachers
    "mlp-1200": lambda s, n: mlp(s, n, hidden=(1200, 1200), dropout=0.2),
    "cnn": lambda s, n: cnn(s, n),
    "resnet": lambda s, n: resnet(s, n),
    # students
    "mlp-small": lambda s, n: mlp(s, n, hidden=(64,)),
    "mlp-800": lambda s, n: mlp(s, n, hidden=(800, 800)),
    "cnn-small": lambda s, n: cnn_small(s, n),
}

DEFAULT_TEACHERS = ("mlp-1200", "cnn", "resnet")
DEFAULT_STUDENT = "mlp-small"


def build(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate a registered model; an unknown name is an error listing the registry."""
    if name not in MODELS:
        raise InputError(f"model {name!r}: unknown; expected one of {sorted(MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample, from torch's own FLOP counter (1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops() // 2)

from compress.speech import SPEECH_MODELS  # noqa: E402  (speech families register beside the image ones)
MODELS.update(SPEECH_MODELS)
