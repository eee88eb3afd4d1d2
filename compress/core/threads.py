"""Training threads that survive a busy machine: how many, and OpenMP waiting that does not spin.

Why: torch's CPU build runs its intra-op parallel regions on GNU OpenMP (``libgomp``). By default a
libgomp worker that has finished its share *spins* (busy-waits, up to ``GOMP_SPINCOUNT`` = 300,000 turns)
for the next region instead of sleeping. On an idle machine that saves a wake-up; on a loaded one (a CI
runner with load 5-7 on 2 cores) the spinning workers burn the time slices the working thread needs, and
the default digits run took 336-478 s instead of ~18 s with ~10x the CPU time. Three measures:

1. ``WAIT_ENV``: ``OMP_WAIT_POLICY=PASSIVE`` (workers sleep on a futex as soon as they are idle). libgomp
   reads it once, when torch loads it, so the CLI sets it (``setdefault``: a user's own value wins) in its
   callback, before torch is imported; importing ``compress`` never changes the environment.
2. ``allowed_cpus``: the CPUs this process may actually use, the affinity mask and a cgroup CPU quota
   (``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us`` on v1), not the host's core count.
3. ``choose_threads``: one thread for models too small to gain from more (``SMALL_STEP_MACS``, measured
   beside it), else the allowed CPUs. The choice depends only on the allowed CPUs and the model, never on
   the current load, so the same run on the same machine trains with the same threads (same numbers).

``PASSIVE`` alone, not ``GOMP_SPINCOUNT=0`` too: in libgomp PASSIVE already means a spin count of 0, and an
explicit ``GOMP_SPINCOUNT`` would override a user's ``OMP_WAIT_POLICY=ACTIVE``. Measured here with 2
threads and two busy processes (ms per step, mlp-1200 / cnn / resnet on the digits): default spinning
545 / 450 / 454, ``GOMP_SPINCOUNT=10000`` 101 / 120 / 196, ``=1000`` 50 / 39 / 93, PASSIVE 36 / 29 / 38.
Inter-op threads are left alone: training runs no inter-op work, and torch allows setting them only once.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

# One training step's forward multiply-accumulates (MACs per sample x batch size) below which 1 thread is
# faster than 2. Measured on this project's 2-core VM (torch 2.13 CPU, OMP_WAIT_POLICY=PASSIVE, batch 64,
# Adam; ms per step, 1 thread / 2 threads; "idle": min of 4 runs; "1 busy": another process using one
# core; "2 busy": two `while True: pass` processes, mean of 3 interleaved runs):
#
#   step MACs  model             idle         1 busy       2 busy
#     0.3M     mlp-small (64)    0.21 / 0.33  0.23 / 0.38  0.82 / 1.49
#    24M       mlp-1200 x16      6.1 / 5.8
#    40M       cnn (16x16)       5.4 / 5.9
#    96M       cnn (8x8)         5.3 / 7.1    5.4 / 8.8    24.0 / 29.1
#    98M       mlp-1200 (64)    11.5 / 10.5  15.3 / 16.6   49.7 / 35.6
#   123M       cnn (28x28)      14.7 / 11.5  19.9 / 31.5   63.7 / 48.0
#   306M       mlp-1200 (784)   23.3 / 18.2
#   342M       resnet (8x8)     14.3 / 13.1  15.0 / 29.3   56.1 / 38.2
#   391M       mlp-1200 x256    30.4 / 22.5
#
# Below ~100M a second thread never paid (waking a sleeping worker costs more than it saves); from ~100M
# it gains 1.1-1.35x idle and 1.3-1.5x under heavy load (each thread gets its own share of the CPUs).
# Against one other busy process it loses (the parallel regions wait for the thread that shares a core),
# but the rule does not look at the load: repeat runs must train with the same threads. With the default
# spinning waits, 2 threads were 1.6x faster idle but 15-70x slower with one or two busy processes.
SMALL_STEP_MACS = 100_000_000

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """The cgroup's CPU quota in CPUs (1.5 = one and a half), or None when there is none or it cannot be
    read. cgroup v2: ``cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``; cgroup v1:
    ``cpu/cpu.cfs_quota_us`` (-1 = none) over ``cpu/cpu.cfs_period_us``. Unreadable text counts as none."""
    root = CGROUP_ROOT if root is None else root
    candidates = [(root / "cpu.max", None)]
    for folder in ("cpu", "cpu,cpuacct"):
        candidates.append((root / folder / "cpu.cfs_quota_us", root / folder / "cpu.cfs_period_us"))
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, _, period = quota_file.read_text().strip().partition(" ")
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
        except (OSError, UnicodeDecodeError):
            continue
        try:
            quota_us, period_us = float(quota), float(period)
        except ValueError:  # "max": no quota
            return None
        if quota_us <= 0 or period_us <= 0:  # v1's -1: no quota
            return None
        return quota_us / period_us
    return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Cpus:
    """How many CPUs this process may use, and why (for the report)."""

    count: int
    reason: str


def allowed_cpus(affinity: Callable[[], int] | None = None, cgroup_root: Path | None = None) -> Cpus:
    """The CPUs this process may use: the affinity mask, capped by a cgroup quota (rounded down, at least
    1: running more threads than the quota allows only gets them throttled), and split between the
    ``torchrun`` processes on this machine."""
    count = max(1, int((affinity or _affinity)()))
    reason = f"{count} CPU(s) in the affinity mask"
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        reason += f", cgroup quota {quota:g} CPU(s)"
        count = max(1, min(count, math.floor(quota)))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:  # torchrun: the processes on this machine share them
        count = max(1, count // local)
        reason += f", shared by {local} torchrun processes"
    return Cpus(count, reason)


def choose_threads(step_macs: int, requested: int | None = None, cpus: Cpus | None = None) -> tuple[int, str]:
    """(threads, why) for training a model whose one step does ``step_macs`` forward MACs (per sample x
    batch size). ``requested`` (``--train-threads``) wins; a step below ``SMALL_STEP_MACS`` gets 1 thread
    (a parallel region costs more than it saves there); a bigger one gets every allowed CPU."""
    if requested is not None:
        return requested, f"--train-threads {requested}"
    cpus = cpus or allowed_cpus()
    size = f"{step_macs / 1e6:.3g}M MACs per step"
    if cpus.count == 1:
        return 1, f"{size}; {cpus.reason}"
    if step_macs < SMALL_STEP_MACS:
        return 1, f"{size} < {SMALL_STEP_MACS / 1e6:g}M: 1 thread is fastest ({cpus.reason})"
    return cpus.count, f"{size} >= {SMALL_STEP_MACS / 1e6:g}M: {cpus.reason}"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous number (the process
    may go on to time exported models, which set their own runtime threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
