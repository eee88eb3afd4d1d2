"""The one small record every export target fills in, so that nothing outside a target's folder names it.

A target is a folder ``export/<name>/`` whose ``__init__.py`` builds one ``Backend`` of plain functions and
tables and registers it in ``compress.export.TARGETS``. The pipeline, validation, budgets, peak memory, the
emulator, profiles, reports, the CLI's choices and the recipe schema read these fields and never ask
"which target is this?". Functions are given as ``lazy("module", "name")`` so a runtime or converter is
imported only when its target is used.

Parity tolerances have one schema for every target (``TOLERANCE_KEYS``): ``max_abs`` (max |runtime - torch|
logit), ``p99_abs`` (its 99th percentile), ``max_rel`` (max abs over max(1, max |torch logit|)), ``top1``
(minimum top-1 agreement) and ``reason``; a missing or None bound is not checked.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TOLERANCE_KEYS = ("max_abs", "p99_abs", "max_rel", "top1", "reference_steps", "reason")


def lazy(module: str, name: str) -> Callable:
    """A function that imports ``module`` on its first call and calls ``module.name``."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"{module}.{name}"
    call.lazy_target = (module, name)  # checked by tests/test_lazy_references.py: every reference resolves
    call.__doc__ = f"Calls {module}.{name} (imported on first use)."
    return call


def _no_options(profile: dict | None) -> dict:
    return {}


OPTION_TYPES = (str, int, float, bool)


@dataclass(frozen=True)
class TargetOption:
    """One option only this target reads, declared once, in the target's folder.

    Everything else is generated from this record (``compress.cli.options``, ``compress.recipe.schema``,
    ``compress.export.registry``): the flag of every command that takes it (``--deployment-target``), the
    recipe key in ``[export]`` and its line in ``compress init``'s template, the term in the search cache
    key, and the check of a value (its type and ``choices``) with a one-line error. A cross-option rule (a scheme that needs a newer deployment
    target) stays in the backend's ``check_options``.

    name: snake_case; the recipe key, and the flag with dashes. help: what it is, said without the
    target's name (that is added). default: the value when not given (None: unset; a check option that
    runs only when given). choices: the accepted values (empty: any value of ``type``). example: what
    ``compress init`` shows for an option without a default. checks_artifact: the option is a check on a
    written file, so ``compress validate`` takes it too (it reaches ``Backend.check_artifact``).
    """

    name: str
    help: str
    default: object = None
    choices: tuple = ()
    type: type = str
    example: object = None
    checks_artifact: bool = False

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"target option {self.name!r}: expected a snake_case identifier")
        if self.type not in OPTION_TYPES:
            raise ValueError(f"target option {self.name!r}: type {self.type!r}; expected one of {OPTION_TYPES}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def accepts(self, value: object) -> bool:
        """A value of the declared type (an int where a float is declared) among ``choices`` if there are any."""
        typed = (isinstance(value, (int, float)) and not isinstance(value, bool) if self.type is float
                 else isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool)))
        return typed and (not self.choices or value in self.choices)

    def expected(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[self.type]


@dataclass(frozen=True)
class Int8Fallback:
    """How a target keeps layers in float when static int8 loses too much accuracy.

    reference(model, example, path, info, options) -> Path: the float export the drop is measured against.
    convert(model, example, reference, path, info, calibration, float_layers, options) -> dict: the int8
      export with ``float_layers`` (names as in the ``layer`` of a ``layer_errors`` row) kept in float;
      returns ``{"path": Path, "float_layers": [...actually kept], **facts for the attempt record}`` and
      raises ``ConversionFailed`` when the converter rejects that mix.
    reference_variant: the variant name of ``reference`` ("fp32", or "fp16" where int8 builds on fp16).
    """

    reference: Callable
    convert: Callable
    reference_variant: str = "fp32"


@dataclass(frozen=True)
class Qat:
    """Quantization-aware distillation hooks (a target whose converter reads a fake-quantized torch graph).

    prepare(model, example, calibration) -> a trainable graph with fake-quant observers;
    convert(prepared) -> the int8 torch graph the artifact is checked against;
    export(converted, example, path, info) -> Path; predict(module, x) -> logits of that graph.
    """

    prepare: Callable
    convert: Callable
    export: Callable
    predict: Callable


@dataclass(frozen=True)
class Backend:
    """One export target. Every field is data or a plain function; see the module docstring.

    export(model, example, path, info, *, scheme="none", calibration=None, float_layers=(), **options) -> Path;
      ``model`` takes normalized float32 and ``example``/``calibration`` are normalized; with
      ``info.preprocessing`` the file takes raw 8-bit pixels instead (``compress.export.common.preprocess``)
    open(path, threads=1, **runner_options) -> compress.core.runner.Runner (normalized float32 in, and uint8
      pixels as they are for a file that takes raw pixels)
    describe_io(path) -> {"inputs": [...], "outputs": [...]} as the file declares them (for the manifest)
    model_facts(path) -> {"params", "input_shape", "metadata", "nonfinite"}: what a model file of this format
      (made by anyone) says about itself when it is a teacher member (None: the format is not a teacher file)
    schemes: --quantize scheme -> what it means for this target (help text); "none" first
    variant(scheme, options) -> the name of the numeric form written ("fp32", "int8-dynamic", ...): the
      tolerance key and the label in reports
    options: the target-only options (``TargetOption`` records; ``defaults`` derives from them);
      ``fixed_options``: another target's option whose value this target always has (precision "fp32"),
      accepted and ignored, so one recipe can list several targets
    check_options(options): raise InputError for a bad combination (before any training)
    layer_errors(float_path, quantized_path, x, model=None) -> rows, worst first (``compress debug-quant``)
    check_artifact(path, options, checks) -> dict | None: format checks (appends to ``checks``); the dict is the
      report's ``compatibility`` section, with ``summary``: the one line a report prints
    runner_options(profile) -> keyword options for ``open`` from a device profile
    profile_keys: profile settings only this target reads -> allowed values
    runtime_module: what a peak-memory child imports before its baseline reading
    emulated_runner: a self-contained runner file (numpy + the runtime only) for the ARM64 emulator, and
      emulator_wheel: the runtime's pip distribution it needs there
    runs_here: False where the device runtime cannot run on this host (numbers come from a reference
      evaluator and no latency is reported)
    batches: its runner's ``predict`` takes a batch of any size in one call (the teacher ensemble's hours of
      sliding windows run in such a runtime: thousands of calls instead of hundreds of thousands)
    op_list() -> {"ops": [{"op", "family", "opsets", "definitions"}], "opsets", "not_supported", ...}: the ops a
      reference evaluator of this target runs (``compress devices <name>-ops`` prints it)
    export_streaming(step, state_shapes, path, contract, name, scheme="none", calibration=None) -> Path: a
      keyword spotter's streaming form as a file of the one I/O contract (``compress.export.common.streaming``);
      ``calibration``: real per-hop input feeds (``{input name: array}``) for a scheme that needs them; None:
      the target has none yet
    streaming_schemes: the quantization schemes its streaming files take (float32 always)
    export_stateful_streaming(step, state_shapes, path, contract, name, options) -> Path | None: the runtime's
      own stateful form (states kept inside the model), where the target's ``options`` allow it; None: none
    open_streaming(path, threads=1, **runner_options) -> a ``StreamRunner`` (``step(audio, states)``)
    """

    name: str
    suffix: str
    runtime: str
    export: Callable
    open: Callable
    describe_io: Callable
    schemes: dict[str, str]
    variant: Callable[[str, dict], str]
    tolerances: dict[str, dict]
    options: tuple[TargetOption, ...] = ()
    fixed_options: dict[str, object] = field(default_factory=dict)
    check_options: Callable[[str, dict], None] | None = None
    model_facts: Callable[[Path], dict] | None = None
    calibrated_schemes: tuple[str, ...] = ("int8",)
    int8_fallback: Int8Fallback | None = None
    layer_errors: Callable | None = None
    qat: Qat | None = None
    check_artifact: Callable | None = None
    runner_options: Callable[[dict | None], dict] = _no_options
    profile_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    runtime_module: str = ""
    emulated_runner: Path | None = None
    emulator_wheel: str | None = None
    runs_here: bool = True
    batches: bool = False
    op_list: Callable[[], dict] | None = None
    stderr_noise: tuple[str, ...] = ()  # regexes of runtime/converter lines that say nothing to a user (core.noise)
    export_streaming: Callable | None = None
    open_streaming: Callable | None = None
    streaming_schemes: tuple[str, ...] = ("none",)
    export_stateful_streaming: Callable | None = None

    @property
    def defaults(self) -> dict[str, object]:
        """The options' values when not given (options without a default are absent)."""
        return {o.name: o.default for o in self.options if o.default is not None}

    def option(self, name: str) -> TargetOption | None:
        """The declared option called ``name``, or None where this target does not take it."""
        return next((o for o in self.options if o.name == name), None)

    @property
    def file_name(self) -> str:
        """The artifact's name inside an output folder."""
        return "model" + self.suffix

    def tolerance(self, variant: str) -> dict:
        """Parity bounds of ``variant`` (the checked keys of ``TOLERANCE_KEYS``; None = unbounded)."""
        if variant not in self.tolerances:
            raise KeyError(f"no parity tolerance for {self.name}/{variant}")
        return {k: v for k, v in self.tolerances[variant].items() if k in ("max_abs", "p99_abs", "max_rel", "top1")}


class ConversionFailed(Exception):
    """A converter rejected a mix of int8 and float layers (the fallback records it and tries another)."""
