"""The one policy for a model handed to a converter: eval mode on the CPU while it converts, and afterwards
exactly as the caller had it.

Converters trace the model, so BatchNorm and dropout must be in inference mode, and the traced tensors on
the CPU. The caller's model is often mid-training (the search, quantization-aware distillation, a user's
own loop), possibly on a GPU, and possibly with submodules deliberately in another mode (a frozen
BatchNorm inside a training model): ``model.train(was_training)`` would flip those, so each submodule's own
flag is restored, and so is the device.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import torch


def _device(model: torch.nn.Module) -> torch.device | None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device


@contextlib.contextmanager
def converting(model: torch.nn.Module):
    """``model`` in eval mode on the CPU inside the block; each submodule's train/eval flag and the model's
    device as they were after it (also when the converter raises)."""
    modes = [(m, m.training) for m in model.modules()]
    device = _device(model)
    model.eval()
    if device is not None and device.type != "cpu":
        model.cpu()
    try:
        yield model
    finally:
        if device is not None and device.type != "cpu":
            model.to(device)
        for module, mode in modes:
            module.training = mode


def converts_model(function):
    """A converter entry point ``function(model, ...)`` run inside ``converting(model)``."""

    @functools.wraps(function)
    def call(model, *args, **kwargs):
        with converting(model):
            return function(model, *args, **kwargs)

    return call
