"""Defaults chosen for the data at hand, said out loud.

The bundled digits (1,437 training samples of 8x8) train three teachers for 10 epochs and a student for 100
epochs in seconds; the same settings on 60,000 MNIST images ran past 15 minutes on a 2-core CI machine.
So the teacher set, the student and the epoch budgets are left unset by default (``None`` in ``RunConfig``)
and chosen here, after the data is loaded, from

* the data's kind: images (2-D convolutional members), audio (the speech families, which take raw PCM),
  flat features (MLPs only);
* its size: up to ``SMALL_WORK`` (samples x values per sample) the digits' settings; above it, epoch budgets
  that fit a time budget on the training device, measured by timing real training steps of each model on
  this machine (``compress.estimate``) — a few seconds spent to avoid guessing;
* the device: CUDA, when present, gets larger budgets.

Anything the user set (CLI flag or recipe key) is kept. What was picked, and why, is one line on the
console and the ``defaults`` entry of the report.
"""

from __future__ import annotations

import math

from compress.config import RunConfig
from compress.models import build, count_macs, DEFAULT_STUDENT, DEFAULT_TEACHERS, is_known

SMALL_WORK = 2_000_000  # samples x values per sample at or below which the digits' settings are used
BUDGET_S = {"cpu": {"teachers": 300.0, "student": 200.0}, "cuda": {"teachers": 600.0, "student": 300.0}}
EPOCH_LIMITS = {"teachers": (2, 15), "student": (3, 100)}

SMALL = {"teacher_epochs": 10, "epochs": 100}
SETS = {  # (kind, size) -> teachers, student
    ("image", "small"): (list(DEFAULT_TEACHERS), DEFAULT_STUDENT),  # the digits' settings
    ("image", "large-gray"): (["cnn", "resnet", "mlp-1200"], "mlp-800"),
    ("image", "large-colour"): (["resnet", "resnet"], "mobilenet:0.35:0.5"),  # two seeds: cnn trailed by 2.5 pts
    ("audio", "small"): (["speech-cnn", "speech-resnet", "speech-wide-cnn"], "ds-cnn"),
    ("audio", "large"): (["speech-cnn", "speech-resnet"], "ds-cnn"),
    ("keyword-spotting", "small"): (["speech-cnn", "speech-resnet", "speech-wide-cnn"], "ds-cnn-stream"),
    ("keyword-spotting", "large"): (["speech-cnn", "speech-resnet"], "ds-cnn-stream"),
    ("features", "small"): (["mlp-1200", "mlp-1200"], "mlp-small"),
    ("features", "large"): (["mlp-1200", "mlp-1200"], "mlp-800"),
}


def size_class(data, task: str = "classify") -> tuple[str, str]:
    """(kind, size) of the data: which row of ``SETS`` applies (the keyword task: a streaming student)."""
    kind = data.input_kind if data.input_kind in ("image", "audio") else "features"
    if task == "keyword-spotting":
        kind = task
    work = len(data.x_train) * math.prod(data.input_shape)
    if work <= SMALL_WORK:
        return kind, "small"
    if data.input_kind == "image":
        return kind, "large-colour" if data.input_shape[0] > 1 else "large-gray"
    return kind, "large"


def _budgeted_epochs(seconds_per_epoch: float, budget: float, limits: tuple[int, int]) -> int:
    low, high = limits
    if not math.isfinite(seconds_per_epoch) or seconds_per_epoch <= 0:
        return high
    return int(max(low, min(high, budget // seconds_per_epoch)))


def choose(cfg: RunConfig, data, device_type: str, seconds_per_epoch=None) -> tuple[RunConfig, dict]:
    """(``cfg`` with its unset ``teachers``, ``student``, ``teacher_epochs`` and ``epochs`` chosen for ``data``,
    what was chosen: ``{}`` when the user set everything). A new configuration; ``cfg`` is not changed.
    ``seconds_per_epoch(name, data, batch, device_type)`` models one training epoch of a registry model
    (default: ``_modelled_epoch_seconds``)."""
    kind, size = size_class(data, cfg.streaming.task)
    teachers, student = SETS[(kind, size)]
    picked: dict = {}
    if cfg.teachers.members is None:
        picked["teachers"] = list(teachers)
    if cfg.student.arch is None:
        picked["student"] = student
    if cfg.teachers.epochs is None or cfg.distill.epochs is None:
        chosen = cfg.with_settings(**{k: picked[k] for k in ("teachers", "student") if k in picked})
        if size == "small":
            budget = dict(SMALL)
        else:
            budget = _epoch_budgets(chosen, data, device_type, seconds_per_epoch or _modelled_epoch_seconds)
        if cfg.teachers.epochs is None:
            picked["teacher_epochs"] = budget["teacher_epochs"]
        if cfg.distill.epochs is None:
            picked["epochs"] = budget["epochs"]
    cfg = cfg.with_settings(**picked)
    if picked:
        picked["why"] = (f"{kind} data, {len(data.x_train):,} training samples of {'x'.join(map(str, data.input_shape))}"
                         + ("" if size == "small" else f": epoch budgets fit about {BUDGET_S[_dev(device_type)]['teachers']:.0f} s "
                            f"of teacher and {BUDGET_S[_dev(device_type)]['student']:.0f} s of student training on "
                            f"{device_type} (early stopping may end teachers sooner)"))
    return cfg, picked


def _dev(device_type: str) -> str:
    return "cuda" if device_type == "cuda" else "cpu"


def _epoch_budgets(cfg: RunConfig, data, device_type: str, seconds_per_epoch) -> dict:
    """Epochs that fit the time budgets, from measured seconds per epoch of each model to train."""
    budgets = BUDGET_S[_dev(device_type)]
    builtin = [t for t in cfg.teachers.members if is_known(t)]
    teacher_s = sum(seconds_per_epoch(t, data, 64, device_type) for t in builtin) if builtin else 0.0
    student_s = seconds_per_epoch(cfg.student.arch, data, cfg.distill.batch_size, device_type)
    return {"teacher_epochs": _budgeted_epochs(teacher_s, budgets["teachers"], EPOCH_LIMITS["teachers"]),
            "epochs": _budgeted_epochs(student_s, budgets["student"], EPOCH_LIMITS["student"])}


TRAIN_MACS_PER_S = {"cpu": 5e10, "cuda": 2e12}  # multiply-accumulates per second of training (forward + backward)
LAYER_STEP_S = {"cpu": 6e-4, "cuda": 2e-4}  # per layer with weights and optimizer step (a deep thin net pays it)


def _modelled_epoch_seconds(name: str, data, batch_size: int, device_type: str = "cpu") -> float:
    """Seconds one training epoch of registry model ``name`` takes, modelled from its MACs per sample
    (forward + backward = 3x forward) and a cost per weighted layer and step. A model, not a timing: the
    same data and settings always choose the same epochs, however busy the machine is (same recipe + seed
    -> same result). The rates were fitted to a quiet 2-core x86 CI machine with 2 training threads
    (convolutions ran at 50-80 G MAC/s, MLPs at 30-40, a 0.35 MobileNet at ~10 with its ~100 layers
    costing ~0.6 ms each per step); within 2x of the measured epoch times there."""
    import torch


    with torch.random.fork_rng():
        model = build(name, data.input_shape, data.num_classes)
    macs = count_macs(model, data.input_shape)
    layers = sum(1 for m in model.modules() if next(m.parameters(recurse=False), None) is not None)
    dev = _dev(device_type)
    steps = -(-len(data.x_train) // batch_size)
    return len(data.x_train) * 3 * macs / TRAIN_MACS_PER_S[dev] + steps * layers * LAYER_STEP_S[dev]


def describe(picked: dict) -> str:
    """The console line for what was chosen."""
    parts = []
    if "teachers" in picked:
        parts.append(f"teachers {', '.join(picked['teachers'])}")
    if "teacher_epochs" in picked:
        parts.append(f"at most {picked['teacher_epochs']} teacher epochs (early stopping)")
    if "student" in picked:
        parts.append(f"student {picked['student']}")
    if "epochs" in picked:
        parts.append(f"{picked['epochs']} student epochs")
    return (f"defaults for this data: {'; '.join(parts)} ({picked['why']}); set --teacher, --student, "
            "--teacher-epochs or --epochs to choose yourself")
