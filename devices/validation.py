"""Validation of an exported model in its runtime, on the real held-out data.

Three questions, each answered with measured numbers only:
  parity   does the runtime compute what the torch model computes? (max abs logit difference, top-1)
  quality  accuracy on the test labels and top-1 agreement with the teacher ensemble
  speed    batch-1 latency: warm-up, then >= 100 timed runs on real test samples (p50 / p90)
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

FP32_PARITY_TOLERANCE = 1e-4  # max abs logit difference for an fp32 artifact vs its torch source


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def agreement(logits: np.ndarray, reference_pred: np.ndarray) -> float:
    """Fraction of samples where top-1 matches the reference's top-1."""
    return float(np.mean(np.argmax(logits, axis=1) == reference_pred))


def parity(reference: np.ndarray, candidate: np.ndarray, tolerance: float = FP32_PARITY_TOLERANCE) -> dict:
    """Compare a runtime's outputs with the torch model's on the same inputs."""
    if reference.shape != candidate.shape:
        return {"max_abs_diff": None, "top1_agreement": None, "tolerance": tolerance, "passed": False,
                "detail": f"output shape {candidate.shape} differs from the torch model's {reference.shape}"}
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))
    top1 = agreement(candidate, np.argmax(reference, axis=1))
    ok = bool(np.isfinite(diff) and diff <= tolerance)
    return {"max_abs_diff": diff, "top1_agreement": top1, "tolerance": tolerance, "passed": ok}


def batched(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def measure_latency(predict: Callable[[np.ndarray], np.ndarray], samples: np.ndarray, *, runs: int = 100,
                    warmup: int = 10) -> dict:
    """Batch-1 latency in milliseconds over ``runs`` timed calls cycling through real ``samples``."""
    runs = max(int(runs), 1)
    for i in range(warmup):
        predict(samples[i % len(samples)][None])
    times = np.empty(runs)
    for i in range(runs):
        x = samples[i % len(samples)][None]
        start = time.perf_counter()
        predict(x)
        times[i] = time.perf_counter() - start
    return {"p50": float(np.percentile(times, 50) * 1e3), "p90": float(np.percentile(times, 90) * 1e3),
            "runs": runs, "warmup": warmup, "batch": 1}
