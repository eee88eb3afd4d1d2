"""Model families, found by registered name (``MODELS``: name -> factory(input_shape, num_classes)).

Teachers are deliberately different architectures (an ensemble gains most from diverse members);
students are small enough for a phone. Every factory takes the input shape (C, H, W) or (F,) and the
class count, so one registry serves any data set a loader produces.

Students that scale with the problem are parametrized families (``FAMILIES``: family -> factory(input_shape,
num_classes, *multipliers)), named ``family[:arg[:arg]]``: ``mobilenet:0.35`` (width 0.35),
``mobilenet:0.5:0.5`` (width and depth 0.5), ``mobilenet`` (the defaults, 1.0). Besides MobileNetV2 there are
``mlp``, ``cnn-small``, ``cnn`` and (from ``compress.speech``) ``ds-cnn``, each scaled from the registered
model of that name (``mlp`` from ``mlp-800``), which is what the family builds at 1.0: ``compress search`` can then
shrink or grow any of the small students. ``build``, ``is_known`` and ``why_unknown`` accept both kinds of
name, so callers never look a name up in ``MODELS`` themselves.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from compress.core.errors import InputError
from compress.core.registry import Registry
from compress.scaling import Family, member_name, scaled


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


MODELS = Registry("model", "--student", {  # name -> factory(input_shape, num_classes) -> nn.Module
    # teachers
    "mlp-1200": lambda s, n: mlp(s, n, hidden=(1200, 1200), dropout=0.2),
    "cnn": lambda s, n: cnn(s, n),
    "resnet": lambda s, n: resnet(s, n),
    # students
    "mlp-small": lambda s, n: mlp(s, n, hidden=(64,)),
    "mlp-800": lambda s, n: mlp(s, n, hidden=MLP_800_HIDDEN),
    "cnn-small": lambda s, n: cnn_small(s, n),
})

# Parametrized families: name -> Family (compress.scaling.Family: the factory, examples and search defaults).
# Registered in the order the default search lists them.
FAMILIES = Registry("student family", "--family", {
    "mlp": Family(mlp_family, ("mlp:0.25", "mlp:0.5:0.5"),
                  search={"width": (0.125, 0.25, 0.5, 1.0), "depth": (0.5, 1.0)}, searched_for=("image", "features")),
    "cnn-small": Family(cnn_small_family, ("cnn-small:0.5", "cnn-small:2"), search={"width": (1.0, 2.0, 4.0)},
                        searched_for=("image",)),
    "cnn": Family(cnn_family, ("cnn:0.25", "cnn:0.5"), search={"width": (0.25, 0.5)}, searched_for=("image",)),
    "mobilenet": Family(mobilenet_family, ("mobilenet:0.35", "mobilenet:0.5:0.5"),
                        search={"width": (0.25, 0.35, 0.5), "depth": (0.5, 1.0)}, searched_for=("image",)),
})
MULTIPLIER_RANGE = (0.0, 4.0)  # (exclusive, inclusive): 4x is already ~16x the compute; larger is a typo

DEFAULT_TEACHERS = ("mlp-1200", "cnn", "resnet")
DEFAULT_STUDENT = "mlp-small"


def family_params(family: str) -> list[str]:
    return list(inspect.signature(FAMILIES[family].factory).parameters)[2:]


def _family_usage(family: str) -> str:
    """``mobilenet[:width[:depth]]``: the name pattern, built from the factory's own parameters."""
    params = family_params(family)
    return family + "".join(f"[:{p}" for p in params) + "]" * len(params)


def _parse_family(name: str) -> tuple[str, tuple[float, ...]] | str | None:
    """``(family, multipliers)`` for a valid family name; a one-line reason when ``name`` is a family name with
    bad arguments; None when it is not a family name at all (so teacher specs such as
    ``pkg.module:function=weights.pt`` are never mistaken for one)."""
    family, sep, rest = name.partition(":")
    if family not in FAMILIES:
        return None
    raw = rest.split(":") if sep else []
    params = family_params(family)
    low, high = MULTIPLIER_RANGE
    expected = (f"expected {_family_usage(family)} with multipliers in ({low:g}, {high:g}], "
                f"e.g. {' or '.join(FAMILIES[family].examples)}")
    if len(raw) > len(params):
        return f"{len(raw)} arguments, but {family} takes at most {len(params)}; {expected}"
    values = []
    for param, text in zip(params, raw):
        try:
            value = float(text)
        except ValueError:
            return f"{param} {text!r} is not a number; {expected}"
        if not (math.isfinite(value) and low < value <= high):
            return f"{param} {text} is out of range; {expected}"
        values.append(value)
    return family, tuple(values)


def is_known(name: str) -> bool:
    """True for a registry name or a family name with valid arguments (``mobilenet``, ``mobilenet:0.35``)."""
    return name in MODELS or isinstance(_parse_family(name), tuple)


def describe_names() -> str:
    """One line for error messages and help: every registry name, then every family with its arguments."""
    families = "; ".join(f"{_family_usage(f)} ({inspect.getdoc(entry.factory).splitlines()[0].rstrip('.')}, "
                         f"e.g. {entry.examples[0]})" for f, entry in FAMILIES.items())
    return f"one of {', '.join(sorted(MODELS))}, or a family: {families}"


def why_unknown(name: str) -> str:
    """What is wrong with a name ``is_known`` rejects, and what was expected (one line, without the name)."""
    parsed = _parse_family(name)
    if isinstance(parsed, str):
        return parsed
    return f"unknown; expected {describe_names()}"


def build(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate a registered model or a family member; an unknown name or bad arguments are an
    InputError naming the model and what was expected."""
    if name in MODELS:
        return MODELS[name](tuple(input_shape), num_classes)
    parsed = _parse_family(name)
    if not isinstance(parsed, tuple):
        raise InputError(f"model {name!r}: {why_unknown(name)}")
    family, values = parsed
    return FAMILIES[family].factory(tuple(input_shape), num_classes, *values)


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample, from torch's own FLOP counter (1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops() // 2)

from compress.speech import SPEECH_FAMILIES, SPEECH_MODELS  # noqa: E402  (speech registers here too)
MODELS.update(SPEECH_MODELS)
FAMILIES.update(SPEECH_FAMILIES)
