"""The registry of export targets: name -> ``Backend``, and the questions everyone else asks it.

Registering a target is one line here (or ``register(backend)`` from outside the package, as the tests do
for a TorchScript backend). Nothing outside ``export/<name>/`` names a target: callers look one up by
name or by file suffix and read its record.
"""

from __future__ import annotations

from pathlib import Path

from compress.core.errors import InputError
from compress.core.registry import Registry, nearest
from compress.export.backend import Backend, TargetOption
from compress.export.coreml import BACKEND as COREML
from compress.export.onnx import BACKEND as ONNX
from compress.export.tflite import BACKEND as TFLITE

TARGETS = Registry("target", "--target", {b.name: b for b in (ONNX, TFLITE, COREML)})


def register(backend: Backend) -> Backend:
    """Add (or replace) a target; returns it. Every registry question sees it from then on."""
    return TARGETS.register(backend.name, backend)


def get(name: str, what: str = "--target") -> Backend:
    """The backend called ``name``; an InputError naming the known ones otherwise."""
    return TARGETS.lookup(name, what)


def by_suffix(path: Path | str) -> Backend | None:
    """The backend whose artifacts end like ``path`` (".onnx", ".tflite", ".mlpackage"), or None."""
    suffix = Path(path).suffix.lower()
    return next((b for b in TARGETS.values() if b.suffix == suffix), None)


def suffixes() -> list[str]:
    return [b.suffix for b in TARGETS.values()]


def describe_schemes() -> str:
    """Each registered target's ``--quantize`` schemes, for help texts ("onnx: none, fp16, ...; coreml: ...")."""
    return "; ".join(f"{name}: {', '.join(backend.schemes)}" for name, backend in TARGETS.items())


def accepting(option: str) -> list[str]:
    """The targets that take a target-only option (e.g. "precision")."""
    return [name for name, b in TARGETS.items() if b.option(option) is not None]


def declared_options() -> dict[str, list[tuple[str, TargetOption]]]:
    """Every target option declared by a registered target: name -> [(target, its record)], in registration
    order. The CLI flags, the recipe keys and ``compress init`` are generated from this."""
    out: dict[str, list[tuple[str, TargetOption]]] = {}
    for name, backend in TARGETS.items():
        for option in backend.options:
            out.setdefault(option.name, []).append((name, option))
    return out


def describe_option(name: str) -> str:
    """What each target that declares the option ``name`` means by it, with its choices and default: the
    help of its flag and of its recipe key."""
    parts = []
    for target, option in declared_options()[name]:
        extra = [f"one of {', '.join(map(str, option.choices))}"] if option.choices else []
        extra += [f"default {option.default}"] if option.default is not None else []
        parts.append(f"{target}: {option.help}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "; ".join(parts) + "."


def check_option(target: str, name: str, value) -> None:
    """One given option for ``target``: an InputError for a name no target declares (did-you-mean), an
    option only other targets take, or a value of the wrong type or outside its choices."""
    backend, flag = get(target), "--" + name.replace("_", "-")
    declared = declared_options()
    if name not in declared and name not in backend.fixed_options:
        raise InputError(f"target option {name!r}: unknown{nearest(name, declared) if declared else '; no target takes options'}")
    option = backend.option(name)
    if option is None:
        if backend.fixed_options.get(name, object()) == value:
            return  # another target's option at the value this one always has (precision "fp32")
        takers = accepting(name)
        what = next(o.help for _, o in declared.get(name, [])) if name in declared else "this option"
        raise InputError(f"{flag} {value!r}: only the {' and '.join(takers) or 'no'} target takes it ({what})")
    if not option.accepts(value):
        raise InputError(f"{flag} {value!r}: expected {option.expected()} for target {target!r}")


def export_options(target: str, scheme: str, **given) -> dict:
    """Keyword options for ``TARGETS[target].export``: ``scheme`` plus the target-only options given
    (None = not given) over the target's defaults. An unsupported scheme or an option the target does
    not take is an InputError naming what is supported."""
    backend = get(target)
    if scheme not in backend.schemes:
        raise InputError(f"--quantize {scheme!r}: not supported for target {target!r}; "
                         f"expected one of {sorted(backend.schemes)}")
    for name, value in given.items():
        if value is not None:
            check_option(target, name, value)
    options = {"scheme": scheme, **backend.defaults,
               **{k: v for k, v in given.items() if v is not None and backend.option(k) is not None}}
    if backend.check_options is not None:
        backend.check_options(scheme, options)
    return options


def options_for(target: str, given: dict) -> dict:
    """The options of ``given`` that ``target`` reads or holds fixed: a recipe that lists several targets
    gives each its own (an option that no listed target takes is still refused, by ``export_options``)."""
    backend = get(target)
    return {k: v for k, v in given.items() if backend.option(k) is not None or k in backend.fixed_options}


def recorded_options(target: str, recipe: dict) -> dict:
    """The target options a run recorded in its manifest's recipe, over the target's defaults (older
    manifests kept them as top-level recipe keys)."""
    backend = get(target)
    given = recipe.get("target_options")
    if not isinstance(given, dict):
        given = {o.name: recipe[o.name] for o in backend.options if recipe.get(o.name) is not None}
    return {**backend.defaults, **{k: v for k, v in given.items() if backend.option(k) is not None and v is not None}}


def variant_name(target: str, options: dict) -> str:
    """The numeric form an export with ``options`` writes ("fp32", "fp16", "int8-dynamic", ...)."""
    return TARGETS[target].variant(options.get("scheme", "none"), options)


def tolerance_for(target: str, variant: str) -> dict:
    """Parity bounds of ``variant`` on ``target``, as the target states them (with the reasons) in its folder
    (each target's fp32 entry is ``core.metrics.FP32_PARITY_TOLERANCE``, the one fp32 bound, relative to the logits' size)."""
    return TARGETS[target].tolerance(variant)


def layer_errors_for(float_path: Path | str, quantized_path: Path | str, x, model=None) -> list[dict]:
    """Per-layer int8 error rows (worst first) for a float/int8 pair of files of one target, found by their
    suffix (``compress debug-quant``). ``x``: real float32 model inputs (transfer-set or held-out samples, never
    random). ``model``: the torch model both files came from (names the torch module of each row where the
    target can). Every row has ``node`` (what the target's fallback keeps in float), ``op_type``, ``tensor``,
    ``sqnr_db``, ``input_sqnr_db``, ``error_added_db`` and ``weight_sqnr_db``."""
    float_path, quantized_path = Path(float_path), Path(quantized_path)
    by_file_suffix = {b.suffix: b.name for b in TARGETS.values() if b.layer_errors is not None}
    found = {by_file_suffix.get(p.suffix) for p in (float_path, quantized_path)}
    if len(found) != 1 or None in found:
        raise InputError(f"{quantized_path.name} vs {float_path.name}: expected two files of one target "
                         f"({', '.join(by_file_suffix)})")
    return TARGETS[found.pop()].layer_errors(float_path, quantized_path, x, model=model)
