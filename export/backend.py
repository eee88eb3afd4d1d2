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
    call.__doc__ = f"Calls {module}.{name} (imported on first use)."
    return call


def _no_options(profile: dict | None) -> dict:
    return {}


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
    schemes: --quantize scheme -> what it means for this target (help text); "none" first
    variant(scheme, options) -> the name of the numeric form written ("fp32", "int8-dynamic", ...): the
      tolerance key and the label in reports
    options: target-only export options (name -> what it is), with ``defaults``; ``fixed_options``: another
      target's option whose value this target always has (precision "fp32"), accepted and ignored, so one
      recipe can list several targets
    check_options(options): raise InputError for a bad combination (before any training)
    layer_errors(float_path, quantized_path, x, model=None) -> rows, worst first (``compress debug-quant``)
    check_artifact(path, options, checks) -> dict | None: format checks (appends to ``checks``)
    runner_options(profile) -> keyword options for ``open`` from a device profile
    profile_keys: profile settings only this target reads -> allowed values
    runtime_module: what a peak-memory child imports before its baseline reading
    emulated_runner: a self-contained runner file (numpy + the runtime only) for the ARM64 emulator, and
      emulator_wheel: the runtime's pip distribution it needs there
    runs_here: False where the device runtime cannot run on this host (numbers come from a reference
      evaluator and no latency is reported)
    op_list() -> {"ops": [{"op", "family", "opsets", "definitions"}], "opsets", "not_supported", ...}: the ops a
      reference evaluator of this target runs (``compress devices <name>-ops`` prints it)
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
    options: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, object] = field(default_factory=dict)
    fixed_options: dict[str, object] = field(default_factory=dict)
    check_options: Callable[[str, dict], None] | None = None
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
    op_list: Callable[[], dict] | None = None
    stderr_noise: tuple[str, ...] = ()  # regexes of runtime/converter lines that say nothing to a user (core.noise)

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
