"""Image and feature model families: MLPs, plain CNNs, a small ResNet (teachers) and the students that scale
(``mlp``, ``cnn-small``, ``cnn``, MobileNetV2), each factory taking (input_shape, num_classes)."""

from __future__ import annotations

import math

import torch
from torch import nn

from compress.core.errors import InputError
from compress.models.scaling import member_name, scaled


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


CNN_CHANNELS = (32, 64, 128)  # the registered cnn (a teacher): the cnn family's base


def cnn(input_shape, num_classes, channels=None, name: str = "cnn") -> nn.Module:
    """VGG-style conv/BN/ReLU stack with global average pooling: one 2x2 max-pool for small inputs (the
    digits' 8x8), a second one for 16 px and up, so a 60,000-image set trains in minutes on a CPU (28x28
    MNIST: 7.4 M MACs instead of 18 M; 32x32 colour: 10.3 M instead of 24.5 M)."""
    c, h, w = _need_image(input_shape, name)
    pools = (0, 1) if min(h, w) >= 16 else (0,)
    channels = channels or CNN_CHANNELS
    layers: list[nn.Module] = []
    for i, out in enumerate(channels):
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if i in pools:
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


def resnet(input_shape, num_classes, width=None, blocks=2) -> nn.Module:
    """A small ResNet: stem conv, residual blocks, global average pooling. Width 48 at full resolution for
    small inputs (the digits); for 16 px and up a stride-2 stem and width 32, so the blocks run at a
    quarter of the pixels (32x32 colour: 9.6 M MACs instead of 85 M)."""
    c, h, w = _need_image(input_shape, "resnet")
    large = min(h, w) >= 16
    width = width or (32 if large else 48)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, stride=2 if large else 1, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[ResidualBlock(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


MLP_800_HIDDEN = (800, 800)  # the registered mlp-800: the mlp family's base
CNN_SMALL_CHANNELS = (8, 16)  # the registered cnn-small: the cnn-small family's base


def cnn_small(input_shape, num_classes, channels=CNN_SMALL_CHANNELS, name: str = "cnn-small") -> nn.Module:
    """A phone-sized CNN student: two strided conv/BN/ReLU layers and global average pooling."""
    c, _, _ = _need_image(input_shape, name)
    layers: list[nn.Module] = []
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def make_divisible(value: float, divisor: int = 8, minimum: int = 8) -> int:
    """A scaled channel count rounded as the MobileNetV2 reference does: to the nearest multiple of
    ``divisor`` (vector units and int8 kernels work in such lanes), never below ``minimum``, and bumped up a
    step when plain rounding would lose more than 10% of the requested width."""
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class InvertedResidual(nn.Module):
    """MobileNetV2 block (Sandler et al. 2018): 1x1 expansion + ReLU6, 3x3 depthwise + ReLU6, then a *linear*
    1x1 projection (a ReLU on the narrow output would destroy information), with an identity shortcut
    when the block keeps the shape."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


# MobileNetV2's stages (paper Table 2): expansion t, output channels c, blocks n, stride of the first block s.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))
MOBILENET_STEM, MOBILENET_HEAD = 32, 1280
SMALLEST_FEATURE_MAP = 4  # stop downsampling before the last feature map gets smaller than this


def downsampling_steps(height: int, width: int, available: int) -> int:
    """How many stride-2 steps an input of this size can take (at most ``available``) while the last
    feature map stays at least ``SMALLEST_FEATURE_MAP`` on its short side (a stride-2 3x3 conv gives
    ceil(side / 2)): 224 -> 5 steps (7x7, as in the paper), 96 -> 4 (6x6), 32 -> 3 (4x4), 28 -> 3 (4x4),
    8 -> 1 (4x4), anything under 7 -> 0."""
    side, steps = min(height, width), 0
    while steps < available and math.ceil(side / 2 ** (steps + 1)) >= SMALLEST_FEATURE_MAP:
        steps += 1
    return steps


def mobilenet(input_shape, num_classes, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2,
              name: str = "mobilenet") -> nn.Module:
    """MobileNetV2-style student for any image size and channel count.

    ``width`` multiplies every layer's channels (rounded by ``make_divisible``), the 1280-channel last
    conv included below 224 px (the paper keeps it at 1280 for ImageNet; on a 28x28 digit it would be a
    third of a 0.35 student's MACs for nothing); ``depth`` multiplies the blocks per stage (rounded up, at
    least 1). The paper downsamples 5 times (224 -> 7); a small input cannot afford that, so the stride-2
    steps that do not fit (``downsampling_steps``) are dropped from the back: the stem and the first
    stages still halve the image, so the wide expanded layers run on few pixels (28x28: 14 -> 7 -> 4;
    a CPU trains it in minutes and a phone runs it in a fraction of a millisecond; dropping from the front,
    as CIFAR adaptations do, costs 16x the MACs at 28 px).
    """
    c, h, w = _need_image(input_shape, name)
    strides = [2] + [s for _, _, _, s in MOBILENET_V2_STAGES]
    drop = strides.count(2) - downsampling_steps(h, w, strides.count(2))
    for i in reversed(range(len(strides))):
        if strides[i] == 2 and drop > 0:
            strides[i], drop = 1, drop - 1
    cin = make_divisible(MOBILENET_STEM * width)
    layers: list[nn.Module] = [nn.Conv2d(c, cin, 3, stride=strides[0], padding=1, bias=False),
                               nn.BatchNorm2d(cin), nn.ReLU6()]
    for (expand, channels, blocks, _), stride in zip(MOBILENET_V2_STAGES, strides[1:]):
        cout = make_divisible(channels * width)
        for b in range(max(1, math.ceil(blocks * depth))):
            layers.append(InvertedResidual(cin, cout, stride if b == 0 else 1, expand))
            cin = cout
    head = make_divisible(MOBILENET_HEAD * (max(1.0, width) if min(h, w) >= 224 else width))
    layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(head, num_classes))
    model = nn.Sequential(*layers)
    _init_like_mobilenet(model)
    return model


def _init_like_mobilenet(model: nn.Module) -> None:
    """The reference initialization (He fan-out convs, unit BN, small linear head): PyTorch's default
    conv init trains a deep linear-bottleneck stack noticeably slower."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenet_family(input_shape, num_classes, width: float = 1.0, depth: float = 1.0) -> nn.Module:
    """MobileNetV2-style inverted residuals; width multiplies channels, depth multiplies blocks per stage."""
    return mobilenet(input_shape, num_classes, width=width, depth=depth, name=member_name("mobilenet", width, depth))


def mlp_family(input_shape, num_classes, width: float = 1.0, depth: float = 1.0) -> nn.Module:
    """ReLU MLP scaled from mlp-800; width multiplies the 800 hidden units, depth the 2 hidden layers.

    Rounded half up, at least 8 units and 1 layer; at 1.0 it is ``mlp-800`` (no dropout). Any input shape
    fits (it is flattened), so there is no shape error to name the member in."""
    units = scaled(MLP_800_HIDDEN[0], width, minimum=8)
    layers = scaled(len(MLP_800_HIDDEN), depth, minimum=1)
    return mlp(input_shape, num_classes, hidden=(units,) * layers)


def cnn_family(input_shape, num_classes, width: float = 1.0) -> nn.Module:
    """VGG-style CNN scaled from the cnn teacher; width multiplies its 32, 64 and 128 channels.

    Rounded half up, at least 4 channels; at 1.0 it is the registered ``cnn``. A student between
    ``cnn-small`` (two strided layers) and the teacher: three 3x3 layers keep the spatial detail that
    handwriting needs."""
    channels = tuple(scaled(c, width, minimum=4) for c in CNN_CHANNELS)
    return cnn(input_shape, num_classes, channels=channels, name=member_name("cnn", width))


def cnn_small_family(input_shape, num_classes, width: float = 1.0) -> nn.Module:
    """Strided conv/BN/ReLU CNN scaled from cnn-small; width multiplies its 8 and 16 channels.

    Rounded half up, at least 4 channels; at 1.0 it is ``cnn-small``. No depth multiplier: it is two
    stride-2 layers by design, and a third would shrink an 8x8 digit to a 1x1 map."""
    channels = tuple(scaled(c, width, minimum=4) for c in CNN_SMALL_CHANNELS)
    return cnn_small(input_shape, num_classes, channels=channels, name=member_name("cnn-small", width))


class PerImageStandardize(nn.Module):
    """Each image to mean 0 and standard deviation 1 over its pixels and channels (TensorFlow's
    ``per_image_standardization``), inside the model so every runtime computes it: images whose colours or
    brightness vary from one to the next (random colour maps, lighting) then look alike to the first conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        centred = x - mean
        std = torch.sqrt((centred * centred).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
        return centred / std


VGG_CHANNELS = (16, 32, 64, 128)  # the registered vgg: the vgg family's base; blocks follow the input size


def vgg(input_shape, num_classes, width: float = 1.0, name: str = "vgg") -> nn.Module:
    """Blocks of two 3x3 conv/BN/ReLU and a 2x2 max-pool, as many blocks as the input size allows
    (``downsampling_steps``: 32 or 40 px -> 3, 96 -> 4, 8 -> 1), channels 16, 32, 64, 128 times ``width``,
    per-image standardization first, global average pooling and one linear layer. Its receptive field covers
    the whole image at every size; ``cnn`` and ``resnet`` (two downsamplings) see ~15-20 px patches, which
    fits a digit and not a spectrogram or a photograph (on a 40 px colour spectrogram set they stayed near
    chance where this reached 70%+ in a minute)."""
    c, h, w = _need_image(input_shape, name)
    layers: list[nn.Module] = [PerImageStandardize()]
    for block in range(max(1, downsampling_steps(h, w, len(VGG_CHANNELS)))):
        out = make_divisible(VGG_CHANNELS[block] * width, divisor=4, minimum=4)
        for _ in range(2):
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def vgg_family(input_shape, num_classes, width: float = 1.0) -> nn.Module:
    """VGG blocks sized to the input, per-image standardization inside; width multiplies the channels.

    At 1.0 it is the registered ``vgg`` (16/32/64/128 channels, as many blocks as the size allows); channels
    are rounded to multiples of 4, at least 4."""
    return vgg(input_shape, num_classes, width=width, name=member_name("vgg", width))
