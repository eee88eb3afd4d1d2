"""The registry of export targets: name -> ``Backend``, and the questions everyone else asks it.

Registering a target is one line here (or ``register(backend)`` from outside the package, as the tests do
for a TorchScript backend). Nothing outside ``export/<name>/`` names a target: callers look one up by
name or by file suffix and read its record.
"""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import InputError
from compress.core.metrics import FP32_PARITY_TOLERANCE
from compress.export.backend import Backend
from compress.export.coreml import BACKEND as COREML
from compress.export.onnx import BACKEND as ONNX
from compress.export.tflite import BACKEND as TFLITE

TARGETS: dict[str, Backend] = {b.name: b for b in (ONNX, TFLITE, COREML)}


def register(backend: Backend) -> Backend:
    """Add (or replace) a target; returns it. Every registry question sees it from then on."""
    TARGETS[backend.name] = backend
    return backend


def get(name: str, what: str = "--target") -> Backend:
    """The backend called ``name``; an InputError naming the known ones otherwise."""
    if name not in TARGETS:
        raise InputError(f"{what} {name!r}: unknown; expected one of {sorted(TARGETS)}")
    return TARGETS[name]


def by_suffix(path: Path | str) -> Backend | None:
    """The backend whose artifacts end like ``path`` (".onnx", ".tflite", ".mlpackage"), or None."""
    suffix = Path(path).suffix.lower()
    return next((b for b in TARGETS.values() if b.suffix == suffix), None)


def suffixes() -> list[str]:
    return [b.suffix for b in TARGETS.values()]


def accepting(option: str) -> list[str]:
    """The targets that take a target-only option (e.g. "precision")."""
    return [name for name, b in TARGETS.items() if option in b.options]


def export_options(target: str, scheme: str, **given) -> dict:
    """Keyword options for ``TARGETS[target].export``: ``scheme`` plus the target-only options given
    (None = not given) over the target's defaults. An unsupported scheme or an option the target does
    not take is an InputError naming what is supported."""
    backend = get(target)
    if scheme not in backend.schemes:
        raise InputError(f"--quantize {scheme!r}: not supported for target {target!r}; "
                         f"expected one of {sorted(backend.schemes)}")
    for option, value in given.items():
        if value is not None and option not in backend.options:
            takers = accepting(option)
            what = next((TARGETS[t].options[option] for t in takers), "this option")
            raise InputError(f"--{option.replace('_', '-')} {value!r}: only the {' and '.join(takers) or 'no'} "
                             f"target takes {what}")
    options = {"scheme": scheme, **backend.defaults, **{k: v for k, v in given.items() if v is not None}}
    if backend.check_options is not None:
        backend.check_options(scheme, options)
    return options


def variant_name(target: str, options: dict) -> str:
    """The numeric form an export with ``options`` writes ("fp32", "fp16", "int8-dynamic", ...)."""
    return TARGETS[target].variant(options.get("scheme", "none"), options)


def tolerance_for(target: str, variant: str) -> dict:
    """Parity bounds of ``variant`` on ``target``: an fp32 artifact is held to ``FP32_PARITY_TOLERANCE``
    everywhere; other variants to the bounds their target states (with the reasons) in its folder."""
    if variant == "fp32":
        return {"max_abs": FP32_PARITY_TOLERANCE}
    return TARGETS[target].tolerance(variant)
