"""Every ``lazy("module", "name")`` reference in a registered target's ``Backend`` (and in its int8 fallback and
QAT hooks) names a module that imports and a function it defines: a typo would otherwise surface only when a
user first takes that path."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from compress.export.registry import TARGETS


def _lazy_references(record) -> list[tuple[str, tuple[str, str]]]:
    out = []
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f"{f.name}.{n}", t) for n, t in _lazy_references(value)]
        elif hasattr(value, "lazy_target"):
            out.append((f.name, value.lazy_target))
    return out


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_lazy_reference_resolves(target):
    references = _lazy_references(TARGETS[target])
    assert references, target  # each shipped target defers at least its runner
    for field, (module, name) in references:
        assert callable(getattr(importlib.import_module(module), name, None)), f"{target}.{field}: {module}.{name}"
