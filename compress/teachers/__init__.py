"""Teacher members and the ensemble teacher.

A member is given as one of (``TEACHER_FORMATS`` in ``formats.py``, chosen by the spec's form), one module each:
  builtin      a registry name from ``compress.models`` ("cnn"), trained on the fly and cached (``training.py``)
  torchscript  a ``.ts`` / ``.torchscript`` / ``.pt`` TorchScript archive (``torch_formats.py``)
  pt2          a ``torch.export`` ``.pt2`` archive (``torch_formats.py``)
  factory      ``package.module:function=weights.pt`` (a Python factory plus a state_dict; ``torch_formats.py``)
  onnx         a model file a registered target's runtime runs (``runtime_formats.py``)
  folder       a run folder this tool wrote (``runtime_formats.py``)
  precomputed  outputs computed elsewhere (``compress soft-targets``; ``precomputed.py``)

Every member is reduced to one ``Teacher`` (``member.py``), fed its own input contract (``contracts.py``),
checked (``checks.py``); the ensemble's distribution and its cached soft targets are ``ensemble.py`` and
``soft_targets.py``. This module resolves a list of specs into members.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from compress.core.cache import content_key
from compress.core.errors import InputError
from compress.teachers.checks import check_members, contract_warnings
from compress.teachers.contracts import Contract, make_contract, member_view, split_spec
from compress.teachers.ensemble import ensemble_probs, softmax
from compress.teachers.formats import SUFFIX_FORMATS, TEACHER_FORMATS, teacher_format
from compress.teachers.member import Teacher
from compress.teachers.torch_formats import load_pt2
from compress.teachers.training import train_builtin

__all__ = ["SUFFIX_FORMATS", "TEACHER_FORMATS", "Teacher", "check_members", "contract_warnings", "ensemble_probs",
           "load_pt2", "load_teachers", "softmax", "teacher_format", "train_builtin", "with_contract"]


def with_contract(member: Teacher, contract: Contract, data) -> Teacher:
    """The member fed its own view of the data's samples: its ``logits(x)`` take the data's samples and
    apply the contract first; its fingerprint changes with the contract (caches invalidate)."""
    if contract.key() == Contract().key():
        return replace(member, contract=contract, output=contract.output if contract.output != "logits" else member.output)
    raw = member.logits

    def view(x: np.ndarray) -> np.ndarray:
        return member_view(contract, x, data.normalization, data.input_kind, member.name)

    return replace(member, logits=lambda x: raw(view(x)), view=view, contract=contract,
                   output=contract.output if contract.output != "logits" else member.output,
                   fingerprint=content_key(member.fingerprint, contract.key()))


def _contract_for(spec: str, table: dict, recipe_contracts: dict, member: Teacher, data) -> Contract:
    """The member's contract: the CLI's ``SPEC?key=value``, else the recipe's table for it, else what the
    member's file says about its own training data (this tool's output folders and ONNX files record
    their normalization), else the data's own view."""
    if table:
        return make_contract(spec, table, "command line")
    for key in (spec, Path(spec).name):
        if key in (recipe_contracts or {}):
            return make_contract(spec, recipe_contracts[key], "recipe")
    recorded = member.recorded
    if recorded and not ({"scale", "mean", "std"} >= set(recorded) and _same_values(recorded, data.normalization)):
        return make_contract(spec, recorded, "the member's own metadata")
    return Contract()


def _same_values(a: dict, b: dict) -> bool:
    try:
        return all(np.allclose(np.asarray(a.get(k, 0.0), dtype=np.float64), np.asarray(b.get(k, 0.0), dtype=np.float64),
                               rtol=1e-6, atol=1e-9) for k in ("scale", "mean", "std"))
    except (TypeError, ValueError):
        return False


def load_teachers(specs: list[str], data, *, epochs: int, seed: int, device: str | None = None,
                  jitter_pixels: int = 0, on_member=None, contracts: dict | None = None, recipe=None,
                  on_epoch=None, on_progress=None) -> list[Teacher]:
    """Resolve every teacher spec into a member (training built-ins when not cached), each fed its own
    input contract (``SPEC?key=value&...``, ``contracts[spec]``, or what its file records). A built-in's
    training is reported as ``on_epoch(spec, epoch, val_accuracy)`` and ``on_progress(spec, epochs_done)``."""
    if not specs:
        raise InputError("--teacher: at least one teacher member is needed")
    members = []
    for i, full_spec in enumerate(specs):
        spec, table = split_spec(full_spec)
        fmt = teacher_format(spec)
        if on_member:
            on_member(i, full_spec, fmt)
        if fmt == "builtin":
            member = train_builtin(spec, data, epochs=epochs, seed=seed + i, device=device,
                                   jitter_pixels=jitter_pixels, recipe=recipe,
                                   on_epoch=None if on_epoch is None else (lambda e, acc, s=spec: on_epoch(s, e, acc)),
                                   on_progress=None if on_progress is None else (lambda done, s=spec: on_progress(s, done)))
        else:
            member = TEACHER_FORMATS[fmt](spec, data=data)
        contract = _contract_for(spec, table, contracts, member, data)
        if fmt == "precomputed" and contract.key() != Contract().key():
            raise InputError(f"teacher {full_spec!r}: outputs computed elsewhere take no input contract (they were "
                             "computed on the inputs their hashes name); expected the file alone, or output=...")
        members.append(with_contract(member, contract, data))
    names = [m.name for m in members]
    for i, m in enumerate(members):  # make names unique for the report
        if names.count(m.name) > 1:
            m.name = f"{m.name}#{i + 1}"
    check_members(members, data.x_test[:8], data.num_classes)
    return members
