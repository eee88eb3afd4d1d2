"""Model families, found by registered name (``MODELS``: name -> factory(input_shape, num_classes)).

Teachers are deliberately different architectures (an ensemble gains most from diverse members);
students are small enough for a phone. Every factory takes the input shape (C, H, W) or (F,) and the
class count, so one registry serves any data set a loader produces.

Students that scale with the problem are parametrized families (``FAMILIES``: family -> factory(input_shape,
num_classes, *multipliers)), named ``family[:arg[:arg]]``: ``mobilenet:0.35`` (width 0.35),
``mobilenet:0.5:0.5`` (width and depth 0.5), ``mobilenet`` (the defaults, 1.0). Besides MobileNetV2 there are
``mlp``, ``cnn-small``, ``cnn`` and (from ``compress.models.speech``) ``ds-cnn``, each scaled from the registered
model of that name (``mlp`` from ``mlp-800``), which is what the family builds at 1.0: ``compress search`` can then
shrink or grow any of the small students. ``build``, ``is_known`` and ``why_unknown`` accept both kinds of
name, so callers never look a name up in ``MODELS`` themselves.

The factories live one module per input kind: ``images`` (image and feature models) and ``speech`` (audio, its
log-mel front-end in ``frontend``, inside the model); ``scaling`` holds the ``Family`` record and the multiplier
arithmetic. This module is the registry.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from compress.core.errors import InputError
from compress.core.registry import Registry
from compress.models.images import (CNN_CHANNELS, CNN_SMALL_CHANNELS, MLP_800_HIDDEN, InvertedResidual,  # noqa: F401
                                    ResidualBlock, cnn, cnn_family, cnn_small, cnn_small_family, downsampling_steps,
                                    make_divisible, mlp, mlp_family, mobilenet, mobilenet_family, resnet, vgg,
                                    vgg_family)
from compress.models.scaling import Family
from compress.models.speech import SPEECH_FAMILIES, SPEECH_MODELS


MODELS = Registry("model", "--student", {  # name -> factory(input_shape, num_classes) -> nn.Module
    # teachers
    "mlp-1200": lambda s, n: mlp(s, n, hidden=(1200, 1200), dropout=0.2),
    "cnn": lambda s, n: cnn(s, n),
    "resnet": lambda s, n: resnet(s, n),
    "vgg": lambda s, n: vgg(s, n),
    # students
    "mlp-small": lambda s, n: mlp(s, n, hidden=(64,)),
    "mlp-800": lambda s, n: mlp(s, n, hidden=MLP_800_HIDDEN),
    "cnn-small": lambda s, n: cnn_small(s, n),
    **SPEECH_MODELS,
})

# Parametrized families: name -> Family (compress.models.scaling.Family: the factory, examples and search defaults).
# Registered in the order the default search lists them.
FAMILIES = Registry("student family", "--family", {
    "mlp": Family(mlp_family, ("mlp:0.25", "mlp:0.5:0.5"),
                  search={"width": (0.125, 0.25, 0.5, 1.0), "depth": (0.5, 1.0)}, searched_for=("image", "features")),
    "cnn-small": Family(cnn_small_family, ("cnn-small:0.5", "cnn-small:2"), search={"width": (1.0, 2.0, 4.0)},
                        searched_for=("image",)),
    "cnn": Family(cnn_family, ("cnn:0.25", "cnn:0.5"), search={"width": (0.25, 0.5)}, searched_for=("image",)),
    "vgg": Family(vgg_family, ("vgg:0.5", "vgg:0.25"), search={"width": (0.25, 0.5, 1.0)}, searched_for=("image",)),
    "mobilenet": Family(mobilenet_family, ("mobilenet:0.35", "mobilenet:0.5:0.5"),
                        search={"width": (0.25, 0.35, 0.5), "depth": (0.5, 1.0)}, searched_for=("image",)),
    **SPEECH_FAMILIES,
})
MULTIPLIER_RANGE = (0.0, 4.0)  # (exclusive, inclusive): 4x is already ~16x the compute; larger is a typo

STREAMING_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.streaming)

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


def is_streamable(name: str) -> bool:
    """True for a member of a streaming family (its models give ``streaming_step()``), ``ds-cnn-stream:0.5``."""
    parsed = _parse_family(name)
    return isinstance(parsed, tuple) and FAMILIES[parsed[0]].streaming


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


def streaming_macs_per_hop(model: nn.Module) -> int:
    """Multiply-accumulates of one hop of a streaming model (``streaming_step()``, front-end included), from
    torch's FLOP counter on a step from zero states."""
    from torch.utils.flop_counter import FlopCounterMode

    step = model.eval().streaming_step()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step(torch.zeros(1, model.hop_samples), *step.zero_states())
    return int(counter.get_total_flops() // 2)


def streaming_macs_per_second(model: nn.Module) -> float:
    """Multiply-accumulates per second of audio of a streaming model run hop by hop: what an always-on model's
    battery pays (``count_macs`` is the window model's, recomputed every hop)."""
    return streaming_macs_per_hop(model) * model.frontend.sample_rate / model.hop_samples
