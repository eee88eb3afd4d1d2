"""``distill-and-export``: data -> teachers -> soft targets -> student -> quantize/export -> validate -> report.

``run`` reads as that list of stages; each stage is a function here or in ``compress.stages``. The output
folder ``<out>/<name>/`` is written atomically: everything goes to a temporary folder that replaces the
old one at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from compress import __version__, defaults, models
from compress.config import RunConfig, check_name
from compress.core.atomic import clean_stale, public_mkdtemp, replace_path, temp_prefix, write_text
from compress.core.cache import cache_dir, content_key, file_sha256, path_size
from compress.core.errors import InputError, InternalError, ValidationFailed
from compress.core.threads import torch_threads
from compress.core.versions import versions
from compress.data import Dataset, class_coverage_warnings, load_data
from compress.devices import html_report
from compress.devices.budgets import check_budgets, gather
from compress.devices.profiles import load_profile
from compress.distill.bias_correction import parse_correction, shift_class_bias
from compress.distill.losses import LOSSES
from compress.distill.train import Augment, distributed, fit, load_checkpoint, parse_augment, pick_device, seed_everything
from compress.estimate import (calibrated_step_seconds, estimate_fit_seconds, format_duration, plan_threads,
                               training_precision)
from compress.export import registry
from compress.export.common import ModelInfo
from compress.models.frontend import LogMel
from compress.progress import is_interactive, make_progress
from compress.stages.clock import StageClock
from compress.stages.evaluate import evaluate
from compress.stages.export import Exported, export_student, fallback_check, model_preprocessing
from compress.stages.measure import peak_memory
from compress.stages.specialists import measure as measure_specialists, specialist_targets
from compress.stages.streaming import (KeywordTask, is_keyword_task, keyword_augment, keyword_task,
                                       measure_streaming, streaming_measured)
from compress.teachers import Teacher, contract_warnings, load_teachers
from compress.teachers.soft_targets import soft_targets
from compress.teachers.training import cached_weights_path, default_patience, recipe_for

__all__ = ["RunConfig", "check_name", "run", "versions"]
STATEFUL_TOP1 = 0.99  # a stateful file's float16 states may flip a near-tie hop, not more  # RunConfig lives in compress.config; re-exported


def _train_threads(cfg: RunConfig, data: Dataset):
    """Torch threads for the teachers' and the student's training (``--train-threads``, else the measured
    rule in ``compress.core.threads``): chosen from the allowed CPUs and the models, never from the load."""
    return plan_threads(cfg.distill.train_threads, cfg.teachers.members or [], cfg.student.arch, data.input_shape,
                        data.num_classes,
                        student_batch=cfg.distill.batch_size, teacher_batch=teacher_recipe(cfg, data).batch_size)


def estimate_run(cfg: RunConfig, data: Dataset, threads, clock: StageClock | None = None) -> str | None:
    """One line before any training: how long the built-in members' and the student's training will take
    here, from this machine's calibrated step times (``compress.estimate``: timed once per machine, the same
    figures the defaults' epoch budgets rest on; RNG states untouched). Members stop early
    on their validation split, so the teachers' part is an upper bound. None when every built-in member is
    cached (a warm run): the distillation stage estimates the student itself when it has epochs to train.
    Both estimates go to ``clock`` (the report's stage table sets them beside the measured times)."""
    device_type = pick_device(cfg.distill.train_device).type

    def seconds(spec: str, epochs: int, batch: int, n: int, threads_: int, precision: str, augment) -> float:
        return epochs * math.ceil(n / batch) * calibrated_step_seconds(spec, data.x_train, data.num_classes, batch,
                                                                       device_type, threads_, augment, precision)

    recipe = teacher_recipe(cfg, data)
    built_in = [t for i, t in enumerate(cfg.teachers.members)
                if models.is_known(t) and not cached_weights_path(t, data, recipe, cfg.distill.seed + i).is_file()]
    if not built_in:
        return None  # nothing to train before the student, whose own estimate comes when (if) it trains
    n_members = int(round(len(data.x_train) * 0.9))
    teachers = sum(seconds(t, cfg.teachers.epochs, 64, n_members, threads.teachers or 1, recipe.precision_of(t),
                           recipe.augment) for t in built_in)
    student = seconds(cfg.student.arch, cfg.distill.epochs, cfg.distill.batch_size, len(data.x_train), threads.student,
                      student_precision(cfg, data)[0], student_augmentation(cfg, data))
    if clock is not None:
        clock.expect("teachers", teachers)
        clock.expect("distillation", student)
    parts = ([f"teachers at most ~{format_duration(teachers)} ({len(built_in)} built-in, {cfg.teachers.epochs} "
              f"epochs; early stopping and the cache make it less)"] if built_in else [])
    parts.append(f"student ~{format_duration(student)} ({cfg.distill.epochs} epochs)")
    return (f"estimate: training ~{format_duration(teachers + student)} on {data.x_train.shape[0]:,} samples: "
            + "; ".join(parts) + " (soft targets, export and validation come on top)")


def _epochs_done(checkpoint: Path) -> int:
    """Epochs in the student's checkpoint: verified and read with ``weights_only=True`` (a damaged or
    planted file is discarded with one warning line and counts as 0)."""
    state = load_checkpoint(checkpoint)
    return 0 if state is None else len(state["history"])


def _resolve_profile(cfg: RunConfig) -> tuple[RunConfig, dict | None]:
    """(the configuration with its runtime threads resolved, the device profile or None): the profile's
    threads apply when none were given (else 1); its budgets fill unset ones (``_check_budgets``)."""
    if cfg.device.profile is None:
        return cfg.with_settings(threads=cfg.device.threads or 1), None

    profile = load_profile(cfg.device.profile)
    if profile["runtime"] != cfg.export.target:
        raise InputError(f"--device {profile['name']!r}: the profile runs {profile['runtime']}, "
                         f"but the target is {cfg.export.target}; expected a {cfg.export.target} profile")
    return cfg.with_settings(threads=cfg.device.threads or int(profile.get("threads") or 1)), profile


def _init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on GPUs)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    return distributed()


@contextlib.contextmanager
def rank_zero_first(first: bool, after: bool):
    """Under ``torchrun``, process 0 runs the block first and the others after it: the block times this machine
    (epoch budgets, bf16 or fp32) once, cached in ``machine_dir()``, and the others read those timings. Timed by
    every process at once, they would each measure a machine half as fast and could choose differently (a
    member trained in bf16 by process 0 would then be another cache entry for the rest)."""
    if after:
        torch.distributed.barrier()
    try:
        yield
    finally:  # also when the block fails: the others then meet the same error themselves
        if first:
            torch.distributed.barrier()


def _augment_key(augment) -> list:
    """The augmentation's part of the student's checkpoint key: nothing when there is none, so checkpoints
    of runs without augmentation keep their keys."""
    return [augment.describe()] if augment else []


def _student_checkpoint(cfg: RunConfig, data: Dataset, members: list[Teacher], world: int,
                        targets_key: str | None = None) -> Path:
    """Where this run's student is checkpointed every epoch: keyed by everything that changes training
    (``targets_key``: soft targets other than the ensemble's, the specialists' combination)."""
    d = cfg.distill
    key = content_key("student-checkpoint", 3, cfg.student.arch, data.fingerprint(), len(data.x_train),
                      data.y_train is not None, [m.fingerprint for m in members], d.loss, float(d.temperature),
                      float(d.alpha), d.epochs, float(d.lr), d.optimizer, float(d.weight_decay),
                      d.batch_size, d.seed, world, *_augment_key(student_augmentation(cfg, data)),
                      *([targets_key] if targets_key else []),
                      *(["bf16"] if student_precision(cfg, data)[0] == "bf16" else []))  # fp32: the keys from before bf16
    return cache_dir("students") / f"{safe_name(cfg.student.arch)}-{key[:24]}.pt"


def load_run_data(cfg: RunConfig) -> Dataset:
    """Stage 1: the data set, split and normalized as the recipe says."""
    d = cfg.data
    options = dict(d.options)
    if d.image_size is not None:
        options["image_size"] = d.image_size
    return load_data(d.path, d.format, limit_train=d.limit_train, limit_test=d.limit_test,
                     unlabelled=d.unlabelled, seed=cfg.distill.seed, **options)


def resolve_defaults(cfg: RunConfig, data: Dataset, console: Console | None) -> tuple[RunConfig, dict]:
    """(the configuration with the settings left unset chosen for this data, what was chosen): see
    ``compress.defaults``; the choice is said on one line."""
    cfg, picked = defaults.choose(cfg, data, pick_device(cfg.distill.train_device).type,
                                  augment=augmentation(cfg, data), student_augment=student_augmentation(cfg, data))
    if picked and console is not None:
        console.print(defaults.describe(picked), highlight=False, soft_wrap=True, markup=False)
    return cfg, picked


def augmentation(cfg: RunConfig, data: Dataset):
    """The teachers' training augmentation: ``auto`` is a random crop (padding 1/10 of the side) for 8-bit
    images of 16 px and up (not for the digits' 8x8, nor features or audio), never a flip (a mirrored digit or
    letter changes class: ask for it with ``crop,flip`` where mirrored images keep theirs); ``--jitter N`` is
    a crop of N for the teachers. The keyword task's ``auto`` is its time shift, gain and background mixing
    (``compress.stages.streaming.keyword_augment``)."""
    return _augmentation_of(cfg.teachers.augment, cfg, data)


def student_augmentation(cfg: RunConfig, data: Dataset):
    """The student's training augmentation (``--student-augment``). ``auto``: none for images, the teachers'
    otherwise. The soft targets are the teachers' outputs on the un-augmented images, so a shifted image
    would be taught with another image's targets; Hinton et al. trained their MNIST student without the
    teachers' jitter, and a ``vgg:0.5`` student on colour spectrograms fit 79% of its own training images
    after 40 epochs with a crop and 99.5% without (test 72.0% vs 88.3%). Audio keeps the teachers' (for the
    keyword task: a time shift, gain and background noise the device will hear)."""
    spec = cfg.distill.augment
    if spec == "teachers" or (spec == "auto" and data.input_kind != "image"):
        return augmentation(cfg, data)
    return Augment() if spec == "auto" else _augmentation_of(spec, cfg, data)


def _augmentation_of(spec: str, cfg: RunConfig, data: Dataset):
    """``spec`` (``auto``, ``none`` or a list, ``compress.distill.train.parse_augment``) for this data."""
    if spec == "auto" and is_keyword_task(cfg):
        return keyword_augment(cfg, int(data.normalization.get("sample_rate") or 0))
    if spec != "auto":
        augment = parse_augment(spec)
        if data.input_kind != "audio":
            return augment
        rate = int(data.normalization.get("sample_rate") or 0)
        if is_keyword_task(cfg):  # its noise is the background recordings' training part, where given
            task = keyword_augment(cfg, rate)
            augment = replace(augment, background=task.background, background_name=task.background_name)
        return replace(augment, sample_rate=rate)
    if data.input_kind == "image" and data.raw_dtype == "uint8" and min(data.input_shape[1:]) >= 16:
        return Augment(crop=max(1, min(data.input_shape[1:]) // 10))
    return Augment()


def teacher_recipe(cfg: RunConfig, data: Dataset):
    """How built-in members train for this run (``compress.teachers.training``)."""
    augment = augmentation(cfg, data)
    if cfg.teachers.jitter:
        augment = replace(augment, crop=cfg.teachers.jitter)
    patience = cfg.teachers.patience or default_patience(cfg.teachers.epochs)
    recipe = recipe_for(data, epochs=cfg.teachers.epochs, patience=patience, augment=augment)
    device_type = pick_device(cfg.distill.train_device).type
    bf16 = tuple(t for t in cfg.teachers.members or [] if models.is_known(t) and training_precision(
        t, data, recipe.batch_size, device_type, cfg.distill.train_precision, augment)[0] == "bf16")
    return replace(recipe, bf16_members=bf16)


def student_precision(cfg: RunConfig, data: Dataset) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why): what the student trains in (``--train-precision``; ``auto``: fp32,
    ``compress.estimate.training_precision``)."""
    return training_precision(cfg.student.arch, data, cfg.distill.batch_size, pick_device(cfg.distill.train_device).type,
                              cfg.distill.train_precision, student_augmentation(cfg, data), student=True)


def safe_name(name: str) -> str:
    """A default name built from the data folder's name, with anything unsafe replaced by '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")
    return re.sub(r"\.{2,}", ".", cleaned)[:128] or "run"


def output_folder(cfg: RunConfig, data: Dataset, rank: int) -> tuple[str, Path]:
    """The run's name and ``<out>``, checked writable before any training (rank 0 writes)."""
    name = cfg.name or safe_name(f"{data.name}-{cfg.student.arch}-{cfg.export.target}"
                                 + ("" if cfg.quantize.scheme == "none" else f"-{cfg.quantize.scheme}"))
    out_root = Path(cfg.out)
    if rank == 0:
        clean_stale(out_root)  # leftovers of killed runs (SIGKILL leaves no chance to clean up)
        for folder in cache_dir().iterdir():
            if folder.is_dir():
                clean_stale(folder)
        try:
            out_root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=out_root, prefix=".write-test-")
            probe.close()
        except OSError as exc:
            raise InputError(f"--out {str(out_root)!r}: cannot write there ({exc.strerror or exc}); "
                             "expected a folder this user can create and write in") from None
        if (out_root / name).is_symlink():  # replacing it would write through the link, or drop it silently
            raise InputError(f"--name {name!r}: {str(out_root / name)!r} is a symbolic link; expected a run folder "
                             "of its own under --out (remove the link, or pass another --name)")
        if (out_root / name).exists() and not (out_root / name).is_dir():
            raise InputError(f"--out {str(out_root / name)!r}: exists and is not a folder; expected a folder name for "
                             "the run's artifacts (or pass another --name)")
    return name, out_root


def teachers_and_soft_targets(cfg: RunConfig, data: Dataset, progress: Progress, rank: int, world: int,
                              warnings: list[str] | None = None, clock: StageClock | None = None):
    """Stages 2 and 3: the teacher members, then the ensemble's soft targets once per (teachers,
    transfer set, T). Rank 0 loads (trains and caches) the members first, then the other processes load
    them from the cache; every process then computes its share of the soft-target shards into the one
    cached file and reads the finished entry (read-only memmap). The members' warnings go to ``warnings``;
    the two stages' times to ``clock``."""
    clock = clock or StageClock()
    if rank != 0:
        torch.distributed.barrier()
    with clock.time("teachers"):
        task = progress.add_task("teacher members", total=len(cfg.teachers.members))
        members = load_members(cfg, data, progress, task, [] if warnings is None else warnings)
    if rank == 0 and world > 1:
        torch.distributed.barrier()
    with clock.time("soft targets"):
        shards = progress.add_task("soft targets", total=None)
        targets, cached = soft_targets(members, data.x_train, cfg.distill.temperature,
                                       content_key(data.fingerprint(), len(data.x_train)), rank=rank, world=world,
                                       on_shard=lambda done, total: progress.update(shards, completed=done, total=total))
    if cached:
        progress.update(shards, total=1, completed=1, description="soft targets (cached)")
    return members, targets, cached


def load_members(cfg: RunConfig, data: Dataset, progress: Progress, task, warnings: list[str]) -> list[Teacher]:
    """Stage 2: every member loaded (built-ins trained or taken from the cache), each fed its own input
    contract; a member that scores as if fed the wrong inputs is a warning (an error with --strict)."""
    epochs_task, epochs_done = {}, {}

    def bar(spec: str):  # opened when the member's first training step starts (a cached member has none)
        if spec not in epochs_task:
            epochs_task[spec] = progress.add_task(f"training teacher {spec}", total=cfg.teachers.epochs, unit="epoch")
        return epochs_task[spec]

    def on_epoch(spec: str, epoch: int, val_accuracy: float | None) -> None:
        note = "" if val_accuracy is None else f" (validation {100 * val_accuracy:.2f}%)"
        epochs_done[spec] = epoch + 1
        progress.update(bar(spec), completed=epoch + 1, description=f"training teacher {spec}{note}")

    members = load_teachers(cfg.teachers.members, data, epochs=cfg.teachers.epochs, seed=cfg.distill.seed,
                            device=cfg.distill.train_device, contracts=cfg.teachers.contract,
                            recipe=teacher_recipe(cfg, data), on_epoch=on_epoch,
                            on_progress=lambda spec, done: progress.update(bar(spec), completed=round(done, 2)),
                            on_member=lambda i, spec, fmt: progress.update(task, completed=i, description=f"teacher {spec}"))
    for spec, t in epochs_task.items():  # early stopping ends a member before its budget: close its bar
        progress.update(t, total=epochs_done[spec])
    progress.update(task, completed=len(members), description="teacher members")
    for message in contract_warnings(members, data, strict=cfg.teachers.strict):
        progress.console.print(f"warning: {message}", highlight=False, soft_wrap=True, markup=False)
        warnings.append(message)
    return members


def with_specialists(cfg: RunConfig, data: Dataset, members: list[Teacher], targets, progress: Progress, rank: int,
                     world: int, threads, clock: StageClock) -> tuple[object, list | None]:
    """Stage 3b (``--specialists``): (the student's soft targets, [report section, generalist, specialists]) from
    generalist + specialists (``compress.stages.specialists``); (``targets``, None) without specialists."""
    if not cfg.specialists.enabled:
        return targets, None
    with stage("specialists", clock), torch_threads(threads.teachers or threads.student):
        combined, *specialists = specialist_targets(cfg, data, members, teacher_recipe(cfg, data), progress, rank, world)
    return combined, specialists


def initial_student(cfg: RunConfig, data: Dataset) -> torch.nn.Module:
    """The student's initial weights, which depend only on the seed. Built before the teachers train:
    the seeded generators then reach the teachers in the same state on every run (same recipe + seed ->
    same numbers)."""
    seed_everything(cfg.distill.seed)
    return models.build(cfg.student.arch, data.input_shape, data.num_classes)


def distill_student(cfg: RunConfig, data: Dataset, student: torch.nn.Module, members: list[Teacher], targets,
                    progress: Progress, console: Console, rank: int, world: int,
                    after_epoch=None, clock: StageClock | None = None,
                    targets_key: str | None = None) -> tuple[torch.nn.Module | None, list, torch.device]:
    """Stage 4: distillation, checkpointed every epoch (an interrupted run resumes from the last one).
    Returns (student on the CPU in eval mode, loss history, device); the student is None on ranks > 0.
    ``after_epoch(epoch)`` is called after each epoch's checkpoint (``compress search`` measures the
    validation accuracy there and may stop a candidate by raising). ``targets_key``: the content key of
    ``targets`` when they are not the ensemble's (the specialists' combination)."""
    d = cfg.distill
    device = pick_device(d.train_device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    loss_fn = LOSSES[d.loss]
    labels = None if data.y_train is None else torch.as_tensor(data.y_train)
    checkpoint = _student_checkpoint(cfg, data, members, world, targets_key)
    done = _epochs_done(checkpoint)
    if done and rank == 0:
        console.print(f"{'student already trained' if done >= d.epochs else f'resuming from epoch {done}/{d.epochs}'}"
                      f" (checkpoint {checkpoint})", highlight=False, soft_wrap=True, markup=False)

    def batch_loss(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        soft = torch.as_tensor(np.asarray(targets[idx]), device=logits.device)
        hard = None if labels is None else labels[idx].to(logits.device)
        return loss_fn(logits, soft, hard, d.temperature, d.alpha)

    augment, precision = student_augmentation(cfg, data), student_precision(cfg, data)[0]
    if rank == 0 and done < d.epochs:
        seconds = estimate_fit_seconds(student, data.x_train[:d.batch_size], len(data.x_train), d.epochs - done,
                                       d.batch_size, batch_loss, optimizer=d.optimizer, device=device,
                                       checkpoint_dir=checkpoint.parent, augment=augment, precision=precision)
        progress.note(f"estimate: distilling {cfg.student.arch} ~{format_duration(seconds)} "
                      f"({d.epochs - done} epochs x {len(data.x_train)} samples)")
        if clock is not None:
            clock.expect("distillation", seconds)
    task = progress.add_task(f"distilling {cfg.student.arch} (T={d.temperature:g})", total=d.epochs, completed=done,
                             unit="epoch")

    history = fit(student, data.x_train, batch_loss, epochs=d.epochs, lr=d.lr, batch_size=d.batch_size,
                  optimizer=d.optimizer, weight_decay=d.weight_decay, seed=d.seed, device=device,
                  checkpoint=checkpoint, data_parallel=world > 1, augment=augment,
                  on_epoch=lambda e, l: (progress.update(task, completed=e + 1), after_epoch and after_epoch(e)),
                  on_progress=lambda done: progress.update(task, completed=round(done, 2)), channels_last=True,
                  precision=precision)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        if rank != 0:
            return None, history, device
    student = student.cpu().eval()
    if cfg.distill.bias_correction:
        shift_class_bias(student, *parse_correction(cfg.distill.bias_correction, data.labels))
    return student, history, device


def export_and_validate(cfg: RunConfig, data: Dataset, members: list[Teacher], student, targets, name: str,
                        tmp_dir: Path, progress: Progress, profile: dict | None = None) -> tuple[dict, Exported]:
    """Stages 5 and 6: the student into ``tmp_dir`` in the target's format, then every row measured (with
    the device profile's runner options)."""
    task = progress.add_task(f"exporting to {cfg.export.target}", total=1)
    info = ModelInfo(name=name, labels=data.labels, normalization=data.normalization, input_kind=data.input_kind,
                     preprocessing=model_preprocessing(cfg.export, data),
                     description=f"{cfg.student.arch} distilled from {len(members)} teachers on {data.name}",
                     version=__version__)
    exported = export_student(cfg.export, cfg.quantize, cfg.distill, data, student, targets, info, tmp_dir,
                              on_status=lambda text: progress.update(task, description=text))
    (tmp_dir / "labels.txt").write_text("\n".join(data.labels) + "\n")
    progress.update(task, completed=1)
    task = progress.add_task("validating and timing", total=len(members) + 3)
    report = evaluate(cfg.export, cfg.device, data, members, student, exported, advance=lambda: progress.advance(task),
                      profile=profile)
    if exported.fallback is not None:
        report["quantization_fallback"] = exported.fallback
        report["checks"].append(fallback_check(exported.fallback, cfg.quantize.int8_budget))
        report["passed"] = all(c["passed"] for c in report["checks"])
    return report, exported


def streaming_stage(cfg: RunConfig, task: KeywordTask, student, members: list[Teacher], report: dict, tmp_dir: Path,
                    name: str, progress: Progress) -> None:
    """Stage 6b (``--task keyword-spotting``): the streaming file, its threshold and its streams
    (``compress.stages.streaming``), into ``report["streaming"]`` with its parity check."""
    bar = progress.add_task("streaming file", total=1)
    section = measure_streaming(cfg, task, student, members, report["rows"], tmp_dir, name,
                                on_status=lambda text: progress.update(bar, description=text))
    progress.update(bar, completed=1, description="streaming file")
    report["streaming"] = section
    parity = section["parity"]
    detail = ("no whole window in the first test stream" if parity["max_abs_diff"] is None else
              f"max abs diff {parity['max_abs_diff']:.2e}, top-1 agreement {100 * parity['top1_agreement']:.2f}% over "
              f"{parity['windows']} windows ({parity['bounds']} bound {parity['tolerance']:g})")
    report["checks"].append({"name": f"streaming {cfg.export.target} {section['scheme']} file vs the PyTorch student "
                                     f"({section['runtime']})", "passed": bool(parity["passed"]),
                             "detail": f"{detail}; against {parity.get('against', 'the student')}"})
    stateful = section.get("stateful")
    if stateful:
        report["checks"].append({"name": f"stateful {cfg.export.target} file vs the explicit-state file "
                                         f"({stateful['runtime']})", "passed": stateful["top1_agreement"] >= STATEFUL_TOP1,
                                 "detail": f"max abs diff {stateful['max_abs_diff']:.2e}, top-1 agreement "
                                           f"{100 * stateful['top1_agreement']:.2f}% over {stateful['hops']} hops "
                                           f"(bound: top-1 >= {100 * STATEFUL_TOP1:g}%; {stateful['note']})"})
    report["passed"] = all(c["passed"] for c in report["checks"])


def run(cfg: RunConfig, console: Console | None = None, quiet: bool = False, search: dict | None = None,
        started: float | None = None) -> dict | None:
    """Run the whole pipeline; returns the report (also written to ``<out>/<name>/report.json``).

    ``search`` (``compress search``'s ``search.json``, when the search chose this run's settings) is written
    beside the report and drawn in report.html.

    Under ``torchrun`` every process trains its share; only rank 0 exports, validates and returns the
    report (the others return None). An unexpected failure inside a stage is an ``InternalError`` naming
    the stage; whatever happens, nothing half-written stays in ``<out>``.
    """
    cfg.validate()
    console = console or Console(stderr=True)
    clock = StageClock()  # each stage's wall seconds beside its estimate: the report's run.stages
    if started is not None:  # the CLI passes its command's start: imports and argument parsing took this
        clock.record("start-up", time.perf_counter() - started)
    started = time.perf_counter() if started is None else started
    warnings: list[str] = []  # what the run warned about (said, and carried by the report)
    with stage("setup", clock):
        cfg, profile = _resolve_profile(cfg)
        rank, world = _init_distributed()
    with stage("data", clock):
        data = load_run_data(cfg)
        task = keyword_task(cfg, data) if is_keyword_task(cfg) else None
        data = data if task is None else task.data
        for message in class_coverage_warnings(data):
            if rank == 0:
                console.print(f"warning: {message}", highlight=False, soft_wrap=True, markup=False)
            warnings.append(message)
        with rank_zero_first(world > 1 and rank == 0, world > 1 and rank != 0):
            cfg, picked = resolve_defaults(cfg, data, None if quiet or rank != 0 else console)
            teacher_recipe(cfg, data), student_precision(cfg, data)  # this machine's timings, read by every rank
        name, out_root = output_folder(cfg, data, rank)
        student = initial_student(cfg, data)
    with make_progress(console, quiet=quiet or rank != 0, interactive=is_interactive(console)) as progress:
        with stage("setup", clock):
            threads = _train_threads(cfg, data)
            estimate = estimate_run(cfg, data, threads, clock) if rank == 0 and not quiet else None
        if estimate:
            progress.note(estimate)
        with stage("teachers"), torch_threads(threads.teachers or threads.student):
            members, targets, targets_cached = teachers_and_soft_targets(cfg, data, progress, rank, world, warnings,
                                                                         clock)
        targets, specialists = with_specialists(cfg, data, members, targets, progress, rank, world, threads, clock)
        with stage("distillation", clock), torch_threads(threads.student):
            student, history, device = distill_student(cfg, data, student, members, targets, progress, console,
                                                       rank, world, clock=clock,
                                                       targets_key=specialists and specialists[0]["targets_key"])
        if student is None:
            return None
        tmp_dir = public_mkdtemp(temp_prefix(name), out_root)
        try:
            with stage("export and validation", clock):
                report, exported = export_and_validate(cfg, data, members, student, targets, name, tmp_dir,
                                                       progress, profile)
            if specialists:
                with stage("specialists test", clock):
                    report["specialists"] = measure_specialists(*specialists, data=data, student=student,
                                                                threads=cfg.device.threads, runs=cfg.device.latency_runs)
            if task is not None:
                with stage("streaming", clock), torch_threads(threads.student):
                    streaming_stage(cfg, task, student, members, report, tmp_dir, name, progress)
            with stage("budgets"):
                report["budgets"] = _check_budgets(cfg, profile, report, exported.artifact, data)
            report["passed"] = report["passed"] and all(b["passed"] for b in report["budgets"])
            report["run"].update(_run_facts(cfg, data, members, profile, name, out_root / name, device, world,
                                            targets_cached, history, started, threads.facts(), warnings))
            if search is not None:
                report["search"] = search
                report["run"]["student_from"] = ("compress search chose it on a validation split of the training data; "
                                                 "distilled here on the whole training split")
            report["run"].update(defaults_chosen=picked, augment=augmentation(cfg, data).describe(),
                                 student_augment=student_augmentation(cfg, data).describe(),
                                 model_input=model_preprocessing(cfg.export, data) or "normalized float32 (the app normalizes)")
            report["run"]["stages"] = clock.rows()  # up to here: writing the report itself is not in it
            with stage("report"):
                write_outputs(cfg, data, members, student, report, tmp_dir, out_root / name, name)
        finally:  # an exception, Ctrl-C or SIGTERM anywhere in this window leaves nothing behind
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return report


@contextlib.contextmanager
def stage(name: str, clock: StageClock | None = None):
    """Turn an unexpected exception inside the stage ``name`` into an ``InternalError`` that names the
    stage and points to its saved traceback; the user's errors (InputError, a failed check) and
    interruptions pass through unchanged. With ``clock``, the stage's wall seconds are added to it."""
    try:
        with clock.time(name) if clock is not None else contextlib.nullcontext():
            yield
    except (InputError, ValidationFailed, InternalError):
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise InternalError(name, f"{type(exc).__name__}: {first}", save_traceback(name)) from exc


def save_traceback(stage_name: str) -> str | None:
    """Write the current exception's traceback to a file (under the cache's ``errors/``, else the temp
    folder) and return its path, so the one-line error can point to it."""
    import traceback

    text = traceback.format_exc()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for folder in (lambda: cache_dir("errors"), lambda: Path(tempfile.gettempdir())):
        try:
            path = folder() / f"compress-{stamp}-{os.getpid()}-{re.sub(r'[^a-z]+', '-', stage_name)}.txt"
            write_text(path, text)  # atomic: a full disk leaves no empty traceback file behind
            return str(path)
        except OSError:
            continue
    return None


def _run_facts(cfg: RunConfig, data: Dataset, members: list[Teacher], profile: dict | None, name: str, final_dir: Path,
               device, world: int, targets_cached: bool, history: list, started: float,
               train_threads: dict | None = None, warnings: list[str] = ()) -> dict:
    """The report's ``run`` section: what was run, on what, and how long it took (and with how many training
    threads, and why: ``train_threads``, ``train_threads_teachers``, ``train_threads_reason``)."""
    d = cfg.distill
    return {
        "name": name, "out_dir": str(final_dir), "target": cfg.export.target, "threads": cfg.device.threads,
        "data": data.describe(), "teachers": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint,
                                               "cached": m.cached, "output": m.output, "training": m.training,
                                               "contract": m.contract.describe()} for m in members],
        "warnings": list(warnings),
        "student": cfg.student.arch, "loss": d.loss, "temperature": d.temperature, "alpha": d.alpha,
        "epochs": d.epochs, "teacher_epochs": cfg.teachers.epochs, "seed": d.seed, "device": str(device),
        "world_size": world, "optimizer": d.optimizer, "profile": None if profile is None else {k: profile.get(k) for k in (
            "name", "description", "runtime", "precision", "threads", "cpu", "budgets", "source")},
        "soft_targets_cached": targets_cached, "final_train_loss": history[-1] if history else None,
        "wall_time_s": round(time.perf_counter() - started, 2), **(train_threads or {}),
        "train_precision": dict(zip(("student", "why"), student_precision(cfg, data)),
                                requested=d.train_precision),  # each built-in member's: its training curve
    }


def write_outputs(cfg: RunConfig, data: Dataset, members: list[Teacher], student, report: dict, tmp_dir: Path,
                  final_dir: Path, name: str) -> None:
    """Stage 7: report.json, report.html and manifest.json beside the artifact, then the folder moved
    into place in one step (the temporary folder is removed whatever happens)."""
    try:
        (tmp_dir / "report.json").write_text(json.dumps(report, indent=2))
        if report.get("search") is not None:
            (tmp_dir / "search.json").write_text(json.dumps(report["search"], indent=2))

        html_report.write(report, tmp_dir / "report.html")
        manifest = _manifest(cfg, data, members, student, tmp_dir, registry.TARGETS[cfg.export.target].file_name, name,
                             report.get("streaming"))
        (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        replace_path(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _check_budgets(cfg: RunConfig, profile: dict | None, report: dict, artifact: Path, data: Dataset) -> list[dict]:
    """The device profile's budgets and the --max-* options against what this run measured."""
    b = cfg.budgets
    budgets = gather(profile, {"max_accuracy_drop": b.max_accuracy_drop, "latency_ms": b.max_latency_ms,
                               "size_kb": b.max_size_kb, "peak_memory_mb": b.max_peak_memory_mb,
                               "max_false_accepts_per_hour": b.max_false_accepts_per_hour,
                               "max_false_reject_rate": b.max_false_reject_rate,
                               "max_macs_per_second": b.max_macs_per_second})
    if not budgets:
        return []
    student = report["rows"][-1]
    measured = {"accuracy_drop": 100 * report["comparison"]["accuracy_gap"],
                "latency_ms": None if student["latency_ms"] is None else student["latency_ms"]["p50"],
                "size_kb": path_size(artifact) / 1024, "peak_memory_mb": None}
    keyword_measured, keyword_notes = streaming_measured(report)
    measured.update(keyword_measured)
    notes = {"latency_ms": f"{student['runtime']} does not run on this machine", **keyword_notes}
    if "peak_memory_mb" in budgets and student["latency_ms"] is not None:
        mem = peak_memory(cfg.export.target, artifact, data.x_test[:20], cfg.device.threads, profile)
        measured["peak_memory_mb"] = mem.get("peak_memory_mb")
        notes["peak_memory_mb"] = mem.get("note")
        report["peak_memory"] = mem
    else:
        notes["peak_memory_mb"] = notes["latency_ms"]
    return check_budgets(measured, budgets, notes=notes)


def _front_end(student: torch.nn.Module) -> dict | None:
    """The audio front-end the exported model computes itself (so the app feeds raw PCM), or None."""
    for module in student.modules():
        if isinstance(module, LogMel):
            return {"kind": "log-mel", "inside_model": True, "sample_rate": module.sample_rate,
                    "n_fft": module.n_fft, "hop": module.hop, "n_mels": module.n_mels, "fmin": module.fmin,
                    "fmax": module.fmax, "log_epsilon": module.eps}
    return None


def streaming_manifest(section: dict | None) -> dict | None:
    """The streaming file's entry (from the report's ``streaming`` section), or None."""
    if not section:
        return None
    return {"file": section["file"], "contract": section["contract"], "io": section["io"],
            "detection_rule": "a keyword fires when the mean of its probs over the last smoothing_hops hops reaches "
                              "threshold, then cannot fire again for refractory_hops hops"}


def _manifest(cfg: RunConfig, data: Dataset, members: list[Teacher], student: torch.nn.Module, folder: Path,
              file_name: str, name: str, streaming: dict | None = None) -> dict:
    recipe = cfg.settings()
    files = {p.name: {"sha256": file_sha256(p), "bytes": path_size(p)} for p in sorted(folder.iterdir())}
    return {
        "schema": "compress.manifest/1",
        "name": name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "compress", "version": __version__},
        "versions": versions(),
        "target": cfg.export.target,
        "artifact": file_name,
        "input_kind": data.input_kind,
        **registry.TARGETS[cfg.export.target].describe_io(folder / file_name),
        "output_meaning": "unnormalized class scores (logits) in labels.txt order; softmax gives probabilities",
        "normalization": data.normalization,
        "preprocessing": {"inside_model": bool(model_preprocessing(cfg.export, data)), **model_preprocessing(cfg.export, data)},
        "front_end": _front_end(student),
        "labels": data.labels,
        "labels_file": "labels.txt",
        "streaming": streaming_manifest(streaming),
        "student": {"arch": cfg.student.arch, "params": models.count_params(student),
                    "macs": models.count_macs(student, data.input_shape)},
        "teachers": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint, "output": m.output,
                      "contract": m.contract.describe()} for m in members],
        "data": data.describe(),
        "recipe": recipe,
        "recipe_sha256": content_key(recipe),
        "recipe_file": None if not cfg.recipe_path else {"path": str(cfg.recipe_path),
                                                          "sha256": file_sha256(Path(cfg.recipe_path))},
        "files": files,
    }
