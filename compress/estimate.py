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
import math
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
from compress.core.cache import write_entry
from compress.core.threads import Cpus, allowed_cpus, choose_threads
from compress.distill.train import OPTIMIZERS, nhwc_pays


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
                         steps: int = 3, optimizer: str = "adam", device: torch.device | None = None,
                         checkpoint_dir: Path | None = None, channels_last: bool = True) -> float:
    """Seconds ``compress.distill.train.fit`` will take for ``epochs`` over ``n_samples`` samples.

    Times one warm-up step (allocations, kernel selection) and then ``steps`` real training steps (forward,
    ``loss``, backward, an ``optimizer`` step) of a deep copy of ``model`` on ``device`` (default: where the
    model is), on one batch of ``batch_size`` rows of ``x_sample`` (repeated when fewer); the median step
    is extrapolated to every step of every epoch. With ``checkpoint_dir`` (fit's ``checkpoint`` folder), one
    checkpoint-sized cache write there is timed too and counted once per epoch (for a tiny student it costs
    more than the epoch's steps). A few real steps, not a
    FLOP count: on a CPU the small models this tool trains are bound by per-operation overhead, which only
    a measurement sees. ``channels_last`` times the layout ``fit(..., channels_last=True)`` trains in.

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
    xb = torch.as_tensor(np.asarray(x_sample)[idx], dtype=torch.float32, device=device)
    times = []
    with rng_preserved(device):
        trial = copy.deepcopy(model).to(device).train()
        if channels_last and nhwc_pays(trial, xb.dim()):  # the layout fit trains in
            trial, xb = trial.to(memory_format=torch.channels_last), xb.contiguous(memory_format=torch.channels_last)
        opt = OPTIMIZERS[optimizer](trial.parameters(), 1e-3, 0.0)
        for i in range(steps + 1):
            started = time.perf_counter()
            value = loss(trial(xb), idx)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:  # the first step warms up
                times.append(time.perf_counter() - started)
        per_epoch = 0.0 if checkpoint_dir is None else _checkpoint_seconds(trial, opt, checkpoint_dir)
    per_step = sorted(times)[len(times) // 2]
    return epochs * (math.ceil(n_samples / batch_size) * per_step + per_epoch)


def _checkpoint_seconds(trial: nn.Module, opt, folder: Path) -> float:
    """Seconds of one checkpoint-sized cache write (weights and optimizer state, with its checksum) in a
    temporary folder inside ``folder`` (same disk as the real checkpoints), removed afterwards."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".estimate-") as tmp:
            started = time.perf_counter()
            write_entry(Path(tmp) / "probe.pt", lambda p: torch.save({"model": trial.state_dict(),
                                                                      "optimizer": opt.state_dict()}, str(p)))
            return time.perf_counter() - started
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
