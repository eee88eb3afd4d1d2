"""One ensemble member, whatever its origin: a function from a float32 batch to outputs, a content
fingerprint (soft-target caches invalidate when the member changes), what it outputs and the input contract
it is fed, and, where there is one, its torch module (export, parameter and MAC counts). The helpers every
format's loader shares live here too."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress import models
from compress.core.errors import InputError
from compress.distill.train import predict_logits
from compress.teachers.contracts import Contract


@dataclass
class Teacher:
    """One ensemble member, whatever its origin."""

    name: str
    kind: str
    logits: Callable[[np.ndarray], np.ndarray]
    fingerprint: str
    module: nn.Module | None = None
    artifact: Path | None = None  # a file one registered target runs (the member has no torch module)
    cached: bool = False
    input_shape: tuple | None = None  # per-sample input shape the member declares (None entries: dynamic), if known
    output: str = "logits"  # what ``logits`` returns: "logits", "probs", or "label" (one-hot; a black-box member)
    contract: Contract = field(default_factory=Contract)  # what the member was trained on (compress.teachers.contracts)
    view: Callable[[np.ndarray], np.ndarray] | None = None  # data samples -> the member's own input (None: as is)
    recorded: dict | None = None  # the contract the member's file records about its training data, if any
    training: dict | None = None  # a built-in member's training curve (compress.teachers.training)
    file_params: int | None = None  # the weight count a model file declares (Backend.model_facts)

    def own_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (the data's samples, as the student sees them) in the member's own input contract."""
        return x if self.view is None else self.view(x)

    @property
    def params(self) -> int | None:
        if self.module is not None:
            return models.count_params(self.module)
        return self.file_params


def module_teacher(name: str, kind: str, module: nn.Module, fingerprint: str, cached: bool = False) -> Teacher:
    module = module.eval().cpu()
    return Teacher(name, kind, lambda x: predict_logits(module, x), fingerprint, module=module, cached=cached)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"teacher {str(path)!r}: file not found; expected {what}")
    return path


def first_reason(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception, cut to its first sentence when long (messages stay one short line)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(text) > limit:
        text = text.split(". ")[0]
        text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text


def check_finite_weights(spec: str, module: nn.Module) -> None:
    """A member whose parameters or buffers hold NaN/inf is a broken checkpoint: name the tensor."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise InputError(f"teacher {spec!r}: weight {name!r} holds {bad} NaN or infinite value(s); "
                             "expected finite weights (a diverged or corrupted checkpoint?)")
