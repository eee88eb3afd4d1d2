"""Before training: how long it will take, and how many threads to train with.

``estimate_fit_seconds`` times a few real training steps of a model on a deep copy and extrapolates, so a
CI log says up front whether a run takes a minute or an hour. ``plan_threads`` applies the measured rule of
``compress.core.threads`` to the models this run trains. Neither changes anything a run computes: the
model is copied and every random generator is saved and restored, so the same recipe and seed give the
same numbers with or without them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from compress import models
from compress.core.cache import content_key, machine_dir, read_verified, write_entry
from compress.core.threads import Cpus, allowed_cpus, choose_threads, torch_threads
from compress.distill.train import (OPTIMIZERS, Augment, bf16_native, checkpoint_state, denormals_flushed,
                                   nhwc_pays, train_step, training_layout)


@contextlib.contextmanager
def rng_preserved(device: torch.device | None = None) -> Iterator[None]:
    """Run the block and put torch's (CPU and ``device``'s CUDA), numpy's and Python's global generators
    back as they were: whatever the block draws (dropout, initial weights) leaves the run's draws alone."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [device] if device is not None and device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _default_loss(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    return logits.float().logsumexp(-1).mean()


def estimate_fit_seconds(model: nn.Module, x_sample: np.ndarray, n_samples: int, epochs: int, batch_size: int,
                         loss: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None, *,
                         steps: int = 20, optimizer: str = "adam", device: torch.device | None = None,
                         checkpoint_dir: Path | None = None, channels_last: bool = True,
                         augment: Augment | None = None, precision: str = "fp32") -> float:
    """Seconds ``compress.distill.train.fit`` will take for ``epochs`` over ``n_samples`` samples.

    Times one warm-up step (allocations, kernel selection) and then ``steps`` of fit's own training steps
    (``compress.distill.train.train_step``: the row gather, ``augment``, the layout and ``precision`` fit trains
    in, forward, ``loss``, backward, the ``optimizer`` and schedule steps) of a deep copy of ``model`` on ``device``
    (default: where the model is), on ``batch_size`` rows of ``x_sample`` (repeated when fewer); the median
    step is extrapolated to every step of every epoch. Twenty steps, not three: on a 2-core EPYC the median
    of the first five steps of ``mlp-800`` was 8.9 ms, of twenty 10.2, and fit's steady state 10.3. With
    ``checkpoint_dir`` (fit's ``checkpoint`` folder), writing fit's checkpoint there is timed too and counted
    once per epoch (for a tiny student it costs more than the epoch's steps). Real steps, not a FLOP count:
    on a CPU the small models this tool trains are bound by per-operation overhead, which only a
    measurement sees.

    ``loss(logits, idx)`` is fit's per-batch loss (``idx`` indexes ``x_sample``: pass the training arrays'
    first rows, so the real loss, soft-target look-up included, is timed); default: a cheap stand-in. The
    model (weights, gradients, buffers, mode) and torch's, numpy's and Python's generators are left exactly
    as they were, so a run with the estimate computes the same numbers as one without.
    """
    if epochs <= 0 or n_samples <= 0:
        return 0.0
    device = device or next(model.parameters(), torch.empty(0)).device
    loss = loss or _default_loss
    idx = np.arange(batch_size) % len(x_sample)
    x_all = torch.as_tensor(np.array(x_sample[:batch_size], dtype=np.float32), device=device)  # a copy: writable
    times, generator = [], torch.Generator().manual_seed(0)
    with rng_preserved(device), denormals_flushed():  # as fit's epochs run
        trial = copy.deepcopy(model).to(device).train()
        nhwc = training_layout(trial, channels_last, x_all.dim())  # the layout fit trains in
        opt = OPTIMIZERS[optimizer](trial.parameters(), 1e-3, 0.0)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps + 1)
        for i in range(steps + 1):
            started = time.perf_counter()
            train_step(trial, x_all, np.sort(idx), loss, opt, schedule, augment, generator, nhwc,
                       autocast=precision == "bf16")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first step warms up
                times.append(time.perf_counter() - started)
        per_epoch = 0.0 if checkpoint_dir is None else _checkpoint_seconds(trial, opt, schedule, checkpoint_dir)
    per_step = sorted(times)[len(times) // 2]
    return epochs * (math.ceil(n_samples / batch_size) * per_step + per_epoch)


CALIBRATION_VERSION = 2  # bump when what a calibration entry times changes


def machine_fingerprint(device_type: str = "cpu") -> dict:
    """What a training-rate calibration is valid for: the processor, the CPUs this process may use, the
    torch build and, for CUDA, the GPU (a changed one measures anew)."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if device_type == "cuda" and torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": allowed_cpus().count, "torch": torch.__version__, "gpu": gpu}


def calibrated_step_seconds(spec: str, x_sample: np.ndarray, num_classes: int, batch_size: int,
                            device_type: str = "cpu", threads: int | None = None,
                            augment: Augment | None = None, precision: str = "fp32") -> float:
    """Seconds of one training step of the built-in model ``spec`` on this machine (``threads`` torch threads,
    default: the measured rule for its step size), timed once per machine and cached in ``machine_dir()``.

    Why cached per machine and not timed per run: the defaults' epoch budgets rest on it, and a timing
    moves with the machine's load, so two runs would choose different epochs and train different models.
    Why timed at all: a fixed model of MACs per second was fitted to one CI machine and was 1.6x off on
    the next (an EPYC with 0.4x its fp32 matrix-multiply rate). The step is fit's (channels-last,
    denormals flushed, fused Adam, the batch ``augment``: a crop is 7% of an ``mlp-800`` step) on the
    first ``batch_size`` rows of ``x_sample`` (only their shape and kind matter), in ``precision``. A damaged
    entry is discarded and measured again."""
    input_shape = tuple(int(v) for v in np.shape(x_sample)[1:])
    if threads is None:
        threads = choose_threads(step_macs(spec, input_shape, num_classes, batch_size))[0] if device_type != "cuda" else 1
    machine = machine_fingerprint(device_type)
    key = content_key("training-step", CALIBRATION_VERSION, machine, spec, input_shape,
                      num_classes, batch_size, threads, device_type, augment.describe() if augment else "none",
                      precision)
    entry = machine_dir() / f"step-{key[:24]}.json"
    cached = read_verified(entry, lambda p: float(json.loads(p.read_text(encoding="utf-8"))["seconds_per_step"]))
    if cached is not None and math.isfinite(cached) and cached > 0:
        return cached
    device = torch.device("cuda" if device_type == "cuda" and torch.cuda.is_available() else "cpu")
    with rng_preserved(device), torch_threads(threads):
        model = models.build(spec, input_shape, num_classes)
        seconds = estimate_fit_seconds(model, np.asarray(x_sample[:batch_size]), batch_size, 1, batch_size,
                                       device=device, augment=augment, precision=precision)
    facts = {"seconds_per_step": seconds, "model": spec, "input_shape": list(input_shape), "batch_size": batch_size,
             "threads": threads, "precision": precision, **machine}
    write_entry(entry, lambda p: p.write_text(json.dumps(facts, indent=1), encoding="utf-8"))
    return seconds


def calibrated_epoch_seconds(spec: str, data, batch_size: int, device_type: str = "cpu",
                             threads: int | None = None, augment: Augment | None = None,
                             precision: str = "fp32") -> float:
    """Seconds one training epoch of ``spec`` over all of ``data``'s training split takes on this machine:
    its steps at the calibrated step time (``calibrated_step_seconds``)."""
    steps = math.ceil(len(data.x_train) / batch_size)
    return steps * calibrated_step_seconds(spec, data.x_train, data.num_classes, batch_size, device_type, threads,
                                           augment, precision)


BF16_MIN_GAIN = 1.1  # auto: bf16 only where its calibrated step is at least this much faster
BF16_MIN_STEP_MACS = 100_000_000  # and its step this large (bench/throughput.py: mlp-small 0.8 -> 1.0 ms, ds-cnn 30 -> 42)


def training_precision(spec: str, data, batch_size: int, device_type: str, requested: str = "auto",
                       augment: Augment | None = None, student: bool = False) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, why): the precision ``spec`` trains in on this machine for ``requested``
    (``--train-precision``). ``auto`` is bf16 autocast only where it was measured to keep accuracy and is
    measured here to pay: a model with 2-D convolutions on image batches (MNIST, 60k rows, 2 epochs, same
    seed: ``cnn`` 98.46% fp32 / 98.51% bf16, ``resnet`` 99.17 / 99.15; 1.38-1.46x faster per epoch on a
    2-core EPYC with ``avx512_bf16``), on a CPU that multiplies bf16 natively, whose calibrated bf16 step is
    at least ``BF16_MIN_GAIN`` x faster than its fp32 one (a narrow model may not be). Both steps are timed
    once per machine (``calibrated_step_seconds``), so the choice, like the epoch budgets, is the same on every
    run here; a step under ``BF16_MIN_STEP_MACS`` (the digits' models) stays fp32 without a timing. CUDA: fp32
    unless asked (not measured there). A ``student`` stays fp32 under ``auto``: bf16's accuracy was measured
    for members trained on labels, and a ``vgg:0.5`` student distilled for 40 epochs on colour spectrograms
    reached 64.0% in fp32 and 57.0% in bf16 (its step only 1.13x faster)."""
    if requested != "auto":
        return requested, "asked for (--train-precision)"
    if student:
        return "fp32", "auto: students train in fp32 (bf16 measured for members only; README)"
    if device_type != "cpu":
        return "fp32", f"auto: bf16 autocast is chosen on CPUs only (not measured on {device_type})"
    if not bf16_native():
        return "fp32", "auto: this CPU has no native bf16"
    input_shape = tuple(int(v) for v in np.shape(data.x_train)[1:])
    with rng_preserved():
        model = models.build(spec, input_shape, data.num_classes)
    if not nhwc_pays(model, 1 + len(input_shape)):
        return "fp32", "auto: bf16 is used for 2-D convolutional image models only (where its accuracy was measured)"
    macs = models.count_macs(model, input_shape) * batch_size
    if macs < BF16_MIN_STEP_MACS:  # decided without a timing: a tiny step's choice never rests on a noisy one
        return "fp32", f"auto: {macs / 1e6:.0f}M MACs per step is too small to gain from bf16"
    fp32, bf16 = (calibrated_step_seconds(spec, data.x_train, data.num_classes, batch_size, device_type,
                                          augment=augment, precision=p) for p in ("fp32", "bf16"))
    if fp32 < BF16_MIN_GAIN * bf16:
        return "fp32", f"auto: bf16 steps not faster here ({1e3 * fp32:.1f} ms fp32, {1e3 * bf16:.1f} ms bf16)"
    return "bf16", f"auto: bf16 steps {fp32 / bf16:.2f}x faster here ({1e3 * fp32:.1f} ms fp32, {1e3 * bf16:.1f} ms bf16)"


def _checkpoint_seconds(trial: nn.Module, opt, schedule, folder: Path) -> float:
    """Seconds of one checkpoint write (fit's ``checkpoint_state``, with its checksum) in a
    temporary folder inside ``folder`` (same disk as the real checkpoints), removed afterwards. The second of
    two writes to one entry: after the first epoch fit replaces its checkpoint (the old digest is read and
    the checksum file written twice), which on the digits cost 5 ms an epoch against 0.4 ms for a new one."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        state = checkpoint_state(trial, opt, schedule, [0.0], torch.Generator(), next(trial.parameters()).device)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".estimate-") as tmp:
            times = []
            for _ in range(2):
                started = time.perf_counter()
                write_entry(Path(tmp) / "probe.pt", lambda p: torch.save(state, str(p)))
                times.append(time.perf_counter() - started)
            return times[-1]
    except OSError:  # a folder that cannot be written: the run warns about it itself
        return 0.0


def format_duration(seconds: float) -> str:
    """``~1m40s``-style: the unit a reader needs (``45s``, ``6m05s``, ``2h03m``)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def step_macs(spec: str, input_shape: tuple[int, ...], num_classes: int, batch_size: int) -> int:
    """Forward multiply-accumulates of one training step of the built-in model ``spec`` (per sample x
    batch size). Building it draws initial weights, so the generators are preserved."""
    with rng_preserved():
        return models.count_macs(models.build(spec, input_shape, num_classes), input_shape) * batch_size


@dataclass(frozen=True)
class ThreadPlan:
    """Training threads for the teacher members (None: no built-in member to train) and for the student."""

    teachers: int | None
    student: int
    reason: str

    def facts(self) -> dict:
        """For the report's ``run`` section."""
        return {"train_threads": self.student, "train_threads_teachers": self.teachers,
                "train_threads_reason": self.reason}


def plan_threads(requested: int | None, teachers: list[str], student: str, input_shape: tuple[int, ...],
                 num_classes: int, *, student_batch: int, teacher_batch: int = 64,
                 cpus: Cpus | None = None) -> ThreadPlan:
    """Threads for this run's training: ``requested`` (``--train-threads``) for both, else the measured rule
    (``compress.core.threads.choose_threads``) per stage: the student's own size, and the largest built-in
    member for the teachers' stage (members given as files are not trained here)."""
    cpus = cpus or allowed_cpus()
    student_threads, why = choose_threads(step_macs(student, input_shape, num_classes, student_batch), requested, cpus)
    reason = f"student {student}: {student_threads} ({why})"
    built_in = [s.split("?", 1)[0] for s in teachers if models.is_known(s.split("?", 1)[0])]
    if not built_in:
        return ThreadPlan(None, student_threads, reason)
    largest, macs = max(((s, step_macs(s, input_shape, num_classes, teacher_batch)) for s in built_in),
                        key=lambda pair: pair[1])
    teacher_threads, why = choose_threads(macs, requested, cpus)
    return ThreadPlan(teacher_threads, student_threads,
                      f"{reason}; teachers (largest {largest}): {teacher_threads} ({why})")
