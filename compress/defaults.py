"""Defaults chosen for the data at hand, said out loud.

The bundled digits (1,437 training samples of 8x8) train three teachers for 10 epochs and a student for 100
epochs in seconds; the same settings on 60,000 MNIST images ran past 15 minutes on a 2-core CI machine.
So the teacher set, the student and the epoch budgets are left unset by default (``None`` in ``RunConfig``)
and chosen here, after the data is loaded, from

* the data's kind: images (2-D convolutional members), audio (the speech families, which take raw PCM),
  flat features (MLPs only);
* its size: up to ``SMALL_WORK`` (samples x values per sample) the digits' settings; above it, epoch budgets
  that fit a time budget on the training device, measured by timing real training steps of each model on
  this machine (``compress.estimate``), once per machine and model — a few seconds spent to avoid guessing;
* the device: CUDA, when present, gets larger budgets;
* how many members the teachers' budget holds: each default member should see at least
  ``MEMBER_MIN_SAMPLES`` training samples, and where the budget does not hold them all, the last members of the
  list (ordered strongest first) are left out rather than every member trained too briefly.

Anything the user set (CLI flag or recipe key) is kept. What was picked, and why, is one line on the
console and the ``defaults`` entry of the report.
"""

from __future__ import annotations

import math

from compress.config import RunConfig
from compress.estimate import calibrated_epoch_seconds, training_precision
from compress.models import DEFAULT_STUDENT, DEFAULT_TEACHERS, is_known
from compress.teachers.training import SMALL_SET, holds_out_validation

SMALL_WORK = 2_000_000  # samples x values per sample at or below which the digits' settings are used
BUDGET_S = {"cpu": {"teachers": 140.0, "student": 80.0}, "cuda": {"teachers": 600.0, "student": 300.0}}
# colour images carry three values per pixel and whole-image structure: twice the time (a 10-minute goal)
BUDGET_SCALE = {("image", "large-colour"): 2.0}
# the teachers' cap lets members on small sets use their time: one ``vgg`` member on 2,700 colour spectrograms
# (image recipe, same seed) reached 91.00% after 60 epochs and 94.67% after 100; at 60 the members used 185 of 280 s
EPOCH_LIMITS = {"teachers": (2, 150), "student": (3, 100)}
# training samples (epochs x rows) a default member should see: one `vgg` member on 2,700 colour spectrograms
# scored 86-90% after 32 epochs (86k samples) and 94.33% after 60 (162k), and the default pair at 32 epochs
# each made a 92.00% ensemble; MNIST members reach 98.8-99.2% in 2 epochs (120k)
MEMBER_MIN_SAMPLES = 120_000

SMALL = {"teacher_epochs": 10, "epochs": 100}
SETS = {  # (kind, size) -> teachers, student
    ("image", "small"): (list(DEFAULT_TEACHERS), DEFAULT_STUDENT),  # the digits' settings
    ("image", "large-gray"): (["resnet", "cnn", "mlp-1200"], "mlp-800"),  # strongest first: resnet 99.1-99.3% on MNIST, cnn 98.5-98.9%
    ("image", "large-colour"): (["vgg", "vgg"], "vgg:0.5"),  # two seeds; resnet/cnn stayed near chance on spectrograms
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


def choose(cfg: RunConfig, data, device_type: str, seconds_per_epoch=None, augment=None,
           student_augment=None) -> tuple[RunConfig, dict]:
    """(``cfg`` with its unset ``teachers``, ``student``, ``teacher_epochs`` and ``epochs`` chosen for ``data``,
    what was chosen: ``{}`` when the user set everything). A new configuration; ``cfg`` is not changed.
    ``seconds_per_epoch(name, data, batch, device_type, student)`` models one training epoch of a registry
    model as a member or the student (default: ``compress.estimate.calibrated_epoch_seconds`` in the precision
    it trains in, timed once per machine with the run's batch ``augment``: the teachers', or ``student_augment``)."""
    kind, size = size_class(data, cfg.streaming.task)
    teachers, student = SETS[(kind, size)]
    picked: dict = {}
    if cfg.teachers.members is None:
        picked["teachers"] = list(teachers)
    if cfg.student.arch is None:
        picked["student"] = student
    scale = BUDGET_SCALE.get((kind, size), 1.0)
    held = None
    if cfg.teachers.epochs is None or cfg.distill.epochs is None:
        if size == "small":
            budget = dict(SMALL)
        else:
            measured = seconds_per_epoch or (lambda name, data_, batch, device, student: _calibrated_epoch(
                cfg, name, data_, batch, device, student_augment if student else augment, student))
            if "teachers" in picked and cfg.teachers.epochs is None:
                held = _members_the_budget_holds(picked["teachers"], data, device_type, measured,
                                                 scale * BUDGET_S[_dev(device_type)]["teachers"])
                picked["teachers"] = held[0]
            chosen = cfg.with_settings(**{k: picked[k] for k in ("teachers", "student") if k in picked})
            budget = _epoch_budgets(chosen, data, device_type, measured, scale)
        if cfg.teachers.epochs is None:
            picked["teacher_epochs"] = budget["teacher_epochs"]
        if cfg.distill.epochs is None:
            picked["epochs"] = budget["epochs"]
    cfg = cfg.with_settings(**picked)
    if picked:
        budgets = BUDGET_S[_dev(device_type)]
        picked["why"] = (f"{kind} data, {len(data.x_train):,} training samples of {'x'.join(map(str, data.input_shape))}"
                         + ("" if size == "small" else f": epoch budgets fit about {scale * budgets['teachers']:.0f} s "
                            f"of teacher and {scale * budgets['student']:.0f} s of student training on "
                            f"{device_type} ({_stopping(data)}{_members_left_out(teachers, held)})"))
    return cfg, picked


def _members_the_budget_holds(members: list[str], data, device_type: str, seconds_per_epoch,
                              budget_s: float) -> tuple[list[str], int]:
    """(the first of ``members`` that each see ``MEMBER_MIN_SAMPLES`` training samples within ``budget_s``,
    at least one; that minimum in epochs). Why: on a 2-core machine without bf16 the three MNIST members at
    their 2-epoch floor overran a 140 s budget by a quarter, and two `vgg` members on 2,700 spectrograms got
    32 epochs each where one member trained 60 epochs scores 2-8 points more: fewer members trained enough
    beat more members trained too briefly. The list is ordered strongest first, so the last are left out."""
    floor = max(EPOCH_LIMITS["teachers"][0], math.ceil(MEMBER_MIN_SAMPLES / max(1, len(data.x_train))))
    seconds = {m: seconds_per_epoch(m, data, 64, device_type, False) for m in dict.fromkeys(members)}  # once each
    kept = list(members)
    while len(kept) > 1 and floor * sum(seconds[m] for m in kept) > budget_s:
        kept.pop()
    return kept, floor


def _members_left_out(members: list[str], held) -> str:
    """The why-line's account of members the budget did not hold (empty when it held them all)."""
    if held is None or len(held[0]) == len(members):
        return ""
    return (f"; the budget holds {len(held[0])} of the {len(members)} default members at {held[1]}+ epochs "
            f"({MEMBER_MIN_SAMPLES:,}+ training samples each), so {', '.join(members[len(held[0]):])} "
            f"{'is' if len(members) - len(held[0]) == 1 else 'are'} left out")


def _stopping(data) -> str:
    """Whether the members' epochs are a cap or what they run (``compress.teachers.training.holds_out_validation``)."""
    if holds_out_validation(data.y_train):
        return "early stopping may end teachers sooner"
    return f"{SMALL_SET}: members train on every row for all their epochs"


def _calibrated_epoch(cfg: RunConfig, name: str, data, batch: int, device_type: str, augment, student: bool) -> float:
    """Seconds per epoch of ``name`` as a member or the student, in the precision it trains in."""
    precision = training_precision(name, data, batch, device_type, cfg.distill.train_precision, augment, student)[0]
    return calibrated_epoch_seconds(name, data, batch, device_type, augment=augment, precision=precision)


def _dev(device_type: str) -> str:
    return "cuda" if device_type == "cuda" else "cpu"


def _epoch_budgets(cfg: RunConfig, data, device_type: str, seconds_per_epoch, scale: float = 1.0) -> dict:
    """Epochs that fit the time budgets (times ``scale``), from measured seconds per epoch of each model."""
    budgets = {part: scale * seconds for part, seconds in BUDGET_S[_dev(device_type)].items()}
    builtin = [t for t in cfg.teachers.members if is_known(t)]
    teacher_s = sum(seconds_per_epoch(t, data, 64, device_type, False) for t in builtin) if builtin else 0.0
    student_s = seconds_per_epoch(cfg.student.arch, data, cfg.distill.batch_size, device_type, True)
    return {"teacher_epochs": _budgeted_epochs(teacher_s, budgets["teachers"], EPOCH_LIMITS["teachers"]),
            "epochs": _budgeted_epochs(student_s, budgets["student"], EPOCH_LIMITS["student"])}


def describe(picked: dict) -> str:
    """The console line for what was chosen."""
    parts = []
    if "teachers" in picked:
        parts.append(f"teachers {', '.join(picked['teachers'])}")
    if "teacher_epochs" in picked:
        parts.append(f"at most {picked['teacher_epochs']} teacher epochs")
    if "student" in picked:
        parts.append(f"student {picked['student']}")
    if "epochs" in picked:
        parts.append(f"{picked['epochs']} student epochs")
    return (f"defaults for this data: {'; '.join(parts)} ({picked['why']}); set --teacher, --student, "
            "--teacher-epochs or --epochs to choose yourself")
