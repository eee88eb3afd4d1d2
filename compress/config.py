"""The run configuration: one frozen record of everything a run needs, below the stages that read it.

Every field is a CLI option and a recipe key (``compress.recipe`` resolves defaults <- recipe <- flags into
it); the target's own options travel as one table, ``target_options``, declared in ``export/<target>/``.
Resolving the device profile, the data's defaults or a search trial gives a new value
(``dataclasses.replace``); nothing changes a configuration in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from compress import models
from compress.core.errors import InputError
from compress.data import parse_image_size
from compress.distill.losses import LOSSES
from compress.distill.train import OPTIMIZERS, parse_augment
from compress.export import registry
from compress.export.registry import export_options

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(name: str, what: str = "--name") -> str:
    """A run name is one path component of safe characters: it can never escape ``--out`` or replace
    anything outside it (``../x``, ``./../x``, absolute paths, ``.``, ``..`` are refused)."""
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise InputError(f"{what} {name!r}: expected one folder name of letters, digits, '.', '_', '+' and '-' "
                         "(starting with a letter or digit, no '..', at most 128 characters)")
    return name


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs; every field is a CLI option and a recipe key. Frozen: resolving the
    defaults, the device profile or a search trial gives a new value (``dataclasses.replace``), so the
    configuration a stage sees is the one the caller passed."""

    target: str = "onnx"
    quantize: str = "none"
    target_options: dict = field(default_factory=dict)  # the target's own options given (export/<target>/ declares them)
    calibration_samples: int = 300
    data: str | None = None  # None / "digits" = the embedded default
    data_format: str | None = None
    data_options: dict = field(default_factory=dict)  # loader options (split, sample_rate, label_pattern, ...)
    teachers: list[str] | None = None  # None: chosen for the data's kind and size (compress.defaults)
    teacher_contracts: dict = field(default_factory=dict)  # member spec -> its input contract (compress.teachers.contracts)
    strict_teachers: bool = False  # a member far below the others or near chance fails the run instead of warning
    student: str | None = None  # None: chosen for the data (compress.defaults)
    loss: str = "hinton"
    temperature: float = 2.0
    alpha: float = 0.1
    epochs: int | None = None  # None: chosen for the data size (compress.defaults)
    teacher_epochs: int | None = None  # the most; early stopping on a validation split usually ends sooner
    teacher_patience: int = 3
    augment: str = "auto"  # auto, none, or crop[=PIXELS],flip (compress.distill.train.parse_augment)
    image_size: str | int | None = None  # images: resize + centre-crop to this size (data option image_size)
    model_input: str = "raw"  # raw: 8-bit images go into the exported model as is; normalized: float input
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None  # None: the device profile's, else 1
    train_threads: int | None = None  # torch threads for training; None: compress.core.threads' measured rule
    latency_runs: int = 100
    out: str = "dist"
    name: str | None = None
    device: str | None = None
    unlabelled: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    jitter: int = 0
    int8_budget: float | None = None  # int8 (every target): accuracy-drop budget in points; worst layers stay float
    qat: bool = False  # quantization-aware distillation before int8 conversion (tflite int8)
    qat_epochs: int = 3
    bias_correction: str | None = None  # "LABEL=DELTA": raise one class's output bias after distillation
    profile: str | None = None  # device profile name or .toml path: threads and budgets
    max_accuracy_drop: float | None = None  # budgets (points, ms, kB, MB); a breach fails the run (exit 1)
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_peak_memory_mb: float | None = None
    recipe_path: str | None = None  # the recipe file this run came from (its hash goes into the manifest)

    def export_options(self) -> dict:
        """Keyword options for the target's ``export``: ``scheme`` plus the target's own options over its
        defaults (an unsupported scheme, option or combination is an InputError)."""
        return export_options(self.target, self.quantize, **self.target_options)

    def validate(self) -> None:
        """Every option checked before any work: unknown names and target combinations (numeric ranges are
        declared with each option in ``compress.recipe.schema()`` and checked when a command resolves them)."""
        backend = registry.get(self.target)

        if self.name is not None:
            check_name(self.name)

        OPTIMIZERS.lookup(self.optimizer)
        LOSSES.lookup(self.loss)
        if self.student is not None and not models.is_known(self.student):
            raise InputError(f"--student {self.student!r}: {models.why_unknown(self.student)}")
        self.export_options()  # unsupported scheme/option combinations fail here
        if self.qat and (backend.qat is None or self.quantize != "int8"):
            with_qat = " or ".join(f"--target {n}" for n, b in registry.TARGETS.items() if b.qat is not None)
            raise InputError(f"--qat: quantization-aware distillation is available for {with_qat} --quantize int8, "
                             f"not --target {self.target} --quantize {self.quantize}")
        if self.int8_budget is not None and self.quantize != "int8":
            raise InputError(f"--int8-budget: the float fallback applies to --quantize int8, "
                             f"not --quantize {self.quantize}")
        if self.int8_budget is not None and self.qat:
            raise InputError("--int8-budget with --qat: choose one (the fallback re-quantizes the float student)")
        if self.model_input not in ("raw", "normalized"):
            raise InputError(f"--model-input {self.model_input!r}: expected raw (8-bit pixels into the model) or normalized")
        if self.augment != "auto":
            parse_augment(self.augment)
        if self.image_size is not None:
            parse_image_size(self.image_size)
