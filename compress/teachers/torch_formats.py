"""Members given as torch files: a TorchScript archive, a ``torch.export`` ``.pt2`` archive (checked to hold
no pickled code before it is opened), or ``package.module:function=weights.pt`` (a factory plus a
state_dict, loaded with ``weights_only=True``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from compress.core.cache import file_sha256, state_dict_sha256
from compress.core.errors import InputError
from compress.core.pt2_check import check_pt2_archive
from compress.distill.train import predict_logits
from compress.teachers.member import Teacher, check_finite_weights, first_reason, module_teacher, require_file


def load_torchscript(spec: str, **_) -> Teacher:
    path = require_file(Path(spec), "a TorchScript archive")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: not a loadable TorchScript archive ({first_reason(exc)}); "
                         "expected a file written by torch.jit.save") from None
    check_finite_weights(spec, module)
    return module_teacher(path.name, "torchscript", module, file_sha256(path))


def load_pt2(spec: str, **_) -> Teacher:
    path = require_file(Path(spec), "a torch.export .pt2 archive")
    check_pt2_archive(spec, path)  # torch.export.load unpickles some payloads with a full unpickler: refuse those
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: not a loadable torch.export archive ({first_reason(exc)}); "
                         "expected a file written by torch.export.save") from None
    check_finite_weights(spec, module)
    cpu = torch.device("cpu")

    def logits(x: np.ndarray) -> np.ndarray:
        try:
            return predict_logits(module, x, device=cpu, set_eval=False)
        except (AssertionError, RuntimeError):  # exported with a static batch size: one sample at a time
            return np.concatenate([predict_logits(module, x[i:i + 1], device=cpu, set_eval=False) for i in range(len(x))])

    return Teacher(path.name, "pt2", logits, file_sha256(path), module=module)



def load_factory(spec: str, **_) -> Teacher:
    target, _, weights = spec.partition("=")
    module_name, _, func_name = target.partition(":")
    if not weights:
        raise InputError(f"teacher {spec!r}: expected 'package.module:function=weights.pt' (state_dict path missing)")
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"teacher {spec!r}: cannot import factory {target!r} ({exc})") from None
    path = require_file(Path(weights), "a state_dict saved with torch.save")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        module = factory()
        module.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"teacher {spec!r}: weights do not load into {target}() ({first_reason(exc)}); "
                         f"expected a state_dict of the model {target}() builds") from None
    check_finite_weights(spec, module)
    return module_teacher(Path(weights).name, "factory", module, state_dict_sha256(module.state_dict()))
