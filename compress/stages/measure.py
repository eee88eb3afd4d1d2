"""Measuring an artifact in its runtime: the one way ``distill-and-export``, ``compress validate`` and
``compress search`` open a model file, time it and read its peak memory.

Each goes through here so that a device profile means the same thing to all three: its runner options
(``Backend.runner_options``, e.g. ``delegate = "none"`` for LiteRT's builtin kernels) apply to the
artifact, to the teacher members exported into the same runtime (the comparison is in the same runtime,
threads and batch), and to the peak-memory child.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.core import metrics
from compress.core.runner import Runner
from compress.export.registry import TARGETS


def open_artifact(target: str, path: Path, threads: int, profile: dict | None = None) -> Runner:
    """The target's runner for ``path`` with ``threads`` and the profile's runner options."""
    backend = TARGETS[target]
    return backend.open(path, threads, **backend.runner_options(profile))


def host_latency(runner: Runner, x: np.ndarray, runs: int) -> dict | None:
    """Batch-1 latency over real inputs (``core.metrics.measure_latency``), or None where the runner's
    numbers come from a reference evaluator (its speed is not a device's)."""
    return metrics.measure_latency(runner.predict, x, runs=runs) if runner.measured else None


def peak_memory(target: str, path: Path, x: np.ndarray, threads: int, profile: dict | None = None) -> dict:
    """Peak memory of loading and running ``path`` in a child process, with the profile's runner options
    (``compress.devices.peak_memory``)."""
    from compress.devices import peak_memory as child

    return child.measure(path, target, x, threads=threads, runner_options=TARGETS[target].runner_options(profile))
