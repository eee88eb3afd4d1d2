"""The run configuration: one frozen record of everything a run needs, in typed sections, below the stages.

The sections are the recipe's (``compress.toml``'s ``[data]``, ``[teachers]``, ``[student]``, ``[distill]``,
``[quantize]``, ``[export]``, ``[device]``, ``[budgets]``, ``[streaming]``, ``[specialists]``), each field named
as its recipe key, so a recipe maps one-to-one to this record; a stage takes the sections it reads. Every setting also has one flat name, its CLI
flag's (``--teacher-epochs`` is ``teachers.epochs``): ``SETTINGS`` maps the flat names to their places, and
``RunConfig.from_settings`` / ``settings`` / ``with_settings`` convert, for the command line, the recipe merge
and the manifest, which record the settings flat. The target's own options travel as one table,
``export.options``, declared in ``export/<target>/``. Resolving the device profile, the data's defaults or a
search trial gives a new value; nothing changes a configuration in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from compress import models
from compress.core.errors import InputError
from compress.data import parse_image_size
from compress.distill.losses import LOSSES
from compress.distill.train import OPTIMIZERS, TRAIN_PRECISIONS, parse_augment
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


def _flat(name: str) -> dict:
    """A section field whose flat name (its CLI flag, ``SETTINGS``) is not the field's own."""
    return {"setting": name}


@dataclass(frozen=True)
class DataSection:
    """``[data]``: what to load and how much of it."""

    path: str | None = field(default=None, metadata=_flat("data"))  # None / "digits": the embedded default
    format: str | None = field(default=None, metadata=_flat("data_format"))
    limit_train: int | None = None
    limit_test: int | None = None
    unlabelled: bool = False
    image_size: str | int | None = None  # images: resize + centre-crop to this size
    options: dict = field(default_factory=dict, metadata=_flat("data_options"))  # loader options (split, sample_rate, ...)


@dataclass(frozen=True)
class TeachersSection:
    """``[teachers]``: the ensemble members and how the built-in ones train."""

    members: list[str] | None = field(default=None, metadata=_flat("teachers"))  # None: chosen for the data
    contract: dict = field(default_factory=dict, metadata=_flat("teacher_contracts"))  # member spec -> input contract
    strict: bool = field(default=False, metadata=_flat("strict_teachers"))  # a suspicious member fails the run
    epochs: int | None = field(default=None, metadata=_flat("teacher_epochs"))  # the most; early stopping ends sooner
    patience: int | None = field(default=None, metadata=_flat("teacher_patience"))  # None: default_patience
    augment: str = "auto"  # auto, none, or crop[=PIXELS],flip (the teachers'; the student's is distill.augment)
    jitter: int = 0


@dataclass(frozen=True)
class StudentSection:
    """``[student]``: the student's architecture (None: chosen for the data, ``compress.defaults``)."""

    arch: str | None = field(default=None, metadata=_flat("student"))


@dataclass(frozen=True)
class DistillSection:
    """``[distill]``: the distillation loss and the training loop's settings."""

    loss: str = "hinton"
    temperature: float = 2.0
    alpha: float = 0.1
    epochs: int | None = None  # None: chosen for the data size
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0  # the run's seed: data split, members, student
    train_device: str | None = field(default=None, metadata=_flat("device"))  # torch device for training
    train_threads: int | None = None  # None: compress.core.threads' measured rule
    train_precision: str = "auto"  # auto, fp32 or bf16 (compress.estimate.training_precision)
    bias_correction: str | None = None  # "LABEL=DELTA": raise one class's output bias after distillation
    augment: str = field(default="auto", metadata=_flat("student_augment"))  # auto, teachers, none or a spec


@dataclass(frozen=True)
class QuantizeSection:
    """``[quantize]``: the scheme and what int8 needs."""

    scheme: str = field(default="none", metadata=_flat("quantize"))
    calibration_samples: int = 300
    qat: bool = False  # quantization-aware distillation before int8 conversion
    qat_epochs: int = 3
    int8_budget: float | None = None  # accuracy-drop budget in points; the worst layers stay float


@dataclass(frozen=True)
class ExportSection:
    """``[export]``: the target, the model's input form and the target's own options."""

    target: str = "onnx"
    input: str = field(default="raw", metadata=_flat("model_input"))  # raw 8-bit images in, or normalized floats
    options: dict = field(default_factory=dict, metadata=_flat("target_options"))  # declared in export/<target>/

    def export_options(self, scheme: str) -> dict:
        """Keyword options for the target's ``export``: ``scheme`` plus the target's own options over its
        defaults (an unsupported scheme, option or combination is an InputError)."""
        return export_options(self.target, scheme, **self.options)


@dataclass(frozen=True)
class DeviceSection:
    """``[device]``: the device profile and how the runtime is timed."""

    profile: str | None = None  # a profile name or .toml path: threads and budgets
    threads: int | None = None  # None: the profile's, else 1
    latency_runs: int = 100


@dataclass(frozen=True)
class BudgetsSection:
    """``[budgets]``: a breach fails the run (exit 1). The keyword-spotting ones gate the streaming student
    on the test streams (``max_false_accepts_per_hour`` also sets where the threshold is chosen)."""

    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_peak_memory_mb: float | None = None
    max_false_accepts_per_hour: float | None = None  # unset: the threshold meets 1.0 on validation, no gate
    max_false_reject_rate: float | None = None  # a fraction of the keyword spans, in [0, 1]
    max_macs_per_second: float | None = None  # of audio, the streaming student's front-end included


TASKS = ("classify", "keyword-spotting")


@dataclass(frozen=True)
class SpecialistsSection:
    """``[specialists]``: specialist members for classes the generalist confuses, combined with it into the
    student's soft targets (Hinton et al. 2015 §5; ``compress.specialists``). Off unless ``count`` or
    ``subsets`` is set, or specialists computed elsewhere are given (``outputs``: their .npz files)."""

    count: int = field(default=0, metadata=_flat("specialists"))  # K-means clusters (0: no specialists)
    subsets: list[str] | None = field(default=None, metadata=_flat("specialist_subsets"))  # by hand: "cat+dog", ...
    min_classes: int = field(default=2, metadata=_flat("specialist_min_classes"))
    max_classes: int | None = field(default=None, metadata=_flat("specialist_max_classes"))  # None: classes - 1
    generalist: str = "ensemble"  # "ensemble" or one member's name
    arch: str | None = field(default=None, metadata=_flat("specialist_arch"))  # None: the generalist's own
    top_n: int = field(default=1, metadata=_flat("specialist_top_n"))  # generalist classes that wake specialists
    outputs: list[str] | None = field(default=None, metadata=_flat("specialist_outputs"))  # computed elsewhere

    @property
    def enabled(self) -> bool:
        return bool(self.count or self.subsets or self.outputs)


@dataclass(frozen=True)
class StreamingSection:
    """``[streaming]``: the keyword-spotting task (``compress.keywords``, ``compress.stages.streaming``): which
    labels are keywords, the background audio, how training mixes it, and how the streams that measure the
    streaming student are built and scored."""

    task: str = "classify"
    keywords: list[str] | None = None
    background: str | None = None  # a folder (or file) of long ambient recordings; None: generated noise
    background_snr: list[float] = field(default_factory=lambda: [0.0, 20.0])  # training mix, dB (low, high)
    time_shift_ms: int = 100  # training: clips shifted up to this either way
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])  # training: each clip's gain, dB (low, high)
    silence_share: float = 0.1
    unknown_share: float | None = None  # None: every other word kept as _unknown_
    validation_share: float = 0.1  # training clips held out for the validation streams (the threshold)
    test_snr: list[float] = field(default_factory=lambda: [10.0, 20.0])  # one test stream per SNR, dB
    test_streams: str | None = None  # a folder of long recordings + labels.csv (file,start_s,end_s,label)
    stream_hours: float = 0.0  # built streams: re-mixed (new order, gaps, noise) until this long per SNR; 0: one pass
    smoothing_hops: int = 3
    refractory_hops: int = 50
    tolerance_s: float | None = None  # a hit may come this long after its word ends (None: one window)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs, by section. Frozen: resolving the defaults, the device profile or a search
    trial gives a new value (``with_settings``), so the configuration a stage sees is the one the caller passed."""

    data: DataSection = field(default_factory=DataSection)
    teachers: TeachersSection = field(default_factory=TeachersSection)
    student: StudentSection = field(default_factory=StudentSection)
    distill: DistillSection = field(default_factory=DistillSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    export: ExportSection = field(default_factory=ExportSection)
    device: DeviceSection = field(default_factory=DeviceSection)
    budgets: BudgetsSection = field(default_factory=BudgetsSection)
    streaming: StreamingSection = field(default_factory=StreamingSection)
    specialists: SpecialistsSection = field(default_factory=SpecialistsSection)
    out: str = "dist"
    name: str | None = None
    recipe_path: str | None = None  # the recipe file this run came from (its hash goes into the manifest)

    @classmethod
    def from_settings(cls, **settings: Any) -> RunConfig:
        """A configuration from flat settings (``SETTINGS``' names; an unknown name is a TypeError)."""
        return cls().with_settings(**settings)

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name, in ``SETTINGS`` order (what the manifest records as the recipe)."""
        return {flat: getattr(getattr(self, section), name) if section else getattr(self, name)
                for flat, (section, name) in SETTINGS.items()}

    def with_settings(self, **settings: Any) -> RunConfig:
        """A new configuration with the flat-named ``settings`` changed, each in its section."""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise TypeError(f"RunConfig has no setting(s) {unknown}")
        top = {SETTINGS[k][1]: v for k, v in settings.items() if not SETTINGS[k][0]}
        changed: dict[str, dict] = {}
        for flat, value in settings.items():
            section, name = SETTINGS[flat]
            if section:
                changed.setdefault(section, {})[name] = value
        return replace(self, **top, **{s: replace(getattr(self, s), **v) for s, v in changed.items()})

    def export_options(self) -> dict:
        """Keyword options for the target's ``export``: ``scheme`` plus the target's own options over its
        defaults (an unsupported scheme, option or combination is an InputError)."""
        return self.export.export_options(self.quantize.scheme)

    def validate(self) -> None:
        """Every option checked before any work: unknown names and target combinations (numeric ranges are
        declared with each option in ``compress.recipe.schema()`` and checked when a command resolves them)."""
        backend = registry.get(self.export.target)

        if self.name is not None:
            check_name(self.name)

        OPTIMIZERS.lookup(self.distill.optimizer)
        LOSSES.lookup(self.distill.loss)
        if self.distill.train_precision not in TRAIN_PRECISIONS:
            raise InputError(f"--train-precision {self.distill.train_precision!r}: expected one of "
                             f"{', '.join(TRAIN_PRECISIONS)}")
        student = self.student.arch
        if student is not None and not models.is_known(student):
            raise InputError(f"--student {student!r}: {models.why_unknown(student)}")
        self.export_options()  # unsupported scheme/option combinations fail here
        quantize = self.quantize
        if quantize.qat and (backend.qat is None or quantize.scheme != "int8"):
            with_qat = " or ".join(f"--target {n}" for n, b in registry.TARGETS.items() if b.qat is not None)
            raise InputError(f"--qat: quantization-aware distillation is available for {with_qat} --quantize int8, "
                             f"not --target {self.export.target} --quantize {quantize.scheme}")
        if quantize.int8_budget is not None and quantize.scheme != "int8":
            raise InputError(f"--int8-budget: the float fallback applies to --quantize int8, "
                             f"not --quantize {quantize.scheme}")
        if quantize.int8_budget is not None and quantize.qat:
            raise InputError("--int8-budget with --qat: choose one (the fallback re-quantizes the float student)")
        if self.export.input not in ("raw", "normalized"):
            raise InputError(f"--model-input {self.export.input!r}: expected raw (8-bit pixels into the model) or normalized")
        if self.teachers.augment != "auto":
            parse_augment(self.teachers.augment)
        if self.distill.augment not in ("auto", "teachers"):
            parse_augment(self.distill.augment, where="--student-augment")
        if self.data.image_size is not None:
            parse_image_size(self.data.image_size)
        self._validate_streaming()
        self._validate_specialists()

    def _validate_specialists(self) -> None:
        """The ``[specialists]`` settings that can be checked before the data is read."""
        s = self.specialists
        if not s.enabled:
            return
        if s.outputs and (s.count or s.subsets or s.arch):
            raise InputError("--specialist-outputs: the specialists are the files given; expected no --specialists, "
                             "--specialist-subsets or --specialist-arch with it")
        if s.arch is not None and not models.is_known(s.arch):
            raise InputError(f"--specialist-arch {s.arch!r}: {models.why_unknown(s.arch)}")
        if self.streaming.task != "classify":
            raise InputError("--specialists: specialists combine class distributions of --task classify; "
                             f"expected no specialists with --task {self.streaming.task}")
        if self.data.unlabelled:
            raise InputError("--specialists: specialists train on labels; expected a labelled transfer set (no --unlabelled)")

    def _validate_streaming(self) -> None:
        """The keyword task's settings that can be checked before the data is read."""
        s = self.streaming
        if s.task not in TASKS:
            raise InputError(f"--task {s.task!r}: expected one of {', '.join(TASKS)}")
        if s.task != "keyword-spotting":
            if s.keywords:
                raise InputError("--keywords: keywords belong to --task keyword-spotting; expected that task too")
            return
        if not s.keywords:
            raise InputError("--task keyword-spotting: expected --keywords WORD[,WORD...] (labels of the data)")
        if len(s.background_snr) != 2 or s.background_snr[0] > s.background_snr[1]:
            raise InputError(f"--background-snr {s.background_snr}: expected two numbers LOW,HIGH (dB, LOW <= HIGH)")
        if len(s.gain_db) != 2 or s.gain_db[0] > s.gain_db[1]:
            raise InputError(f"--gain-db {s.gain_db}: expected two numbers LOW,HIGH (dB, LOW <= HIGH)")
        if not s.test_snr:
            raise InputError("--test-snr: expected at least one SNR in dB (one test stream each)")
        if self.student.arch is not None and not models.is_streamable(self.student.arch):
            raise InputError(f"--student {self.student.arch!r}: --task keyword-spotting needs a streaming family; "
                             f"expected one of {', '.join(models.STREAMING_FAMILIES)}")


def _settings_table() -> dict[str, tuple[str, str]]:
    """flat setting name -> (section, field): a section field's own name unless its metadata names another;
    the top-level fields (out, name, recipe_path) have section ""."""
    table = {}
    for top in fields(RunConfig):
        if isinstance(top.default_factory, type):  # a section
            for f in fields(top.default_factory):
                table[f.metadata.get("setting", f.name)] = (top.name, f.name)
        else:
            table[top.name] = ("", top.name)
    return table


SETTINGS = _settings_table()
