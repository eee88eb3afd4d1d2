"""Validation of an exported model in its runtime, on the real held-out data.

Three questions, each answered with measured numbers only:
  parity   does the runtime compute what the torch model computes? (max abs logit difference, top-1)
  quality  accuracy on the test labels and top-1 agreement with the teacher ensemble
  speed    batch-1 latency: warm-up, then >= 100 timed runs on real test samples (p50 / p90)
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

# an fp32 artifact vs its torch source: max abs logit difference over max(1, max |torch logit|) (``max_rel``).
# Relative, because rounding grows with the logits: a `vgg:0.5` student on colour spectrograms (logits up to 4.9)
# differed by 1.5e-4 in ONNX Runtime with every graph optimization off, while torch fp32 was 4.9e-6 from fp64
FP32_PARITY_TOLERANCE = 1e-4


def _finite_rows(logits: np.ndarray) -> np.ndarray:
    return np.isfinite(logits).all(axis=1)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; a row with a NaN or infinite score counts as wrong (argmax of NaN is not a class)."""
    return float(np.mean((np.argmax(logits, axis=1) == labels) & _finite_rows(logits)))


def agreement(logits: np.ndarray, reference_pred: np.ndarray) -> float:
    """Fraction of samples where top-1 matches the reference's top-1 (non-finite rows never agree)."""
    return float(np.mean((np.argmax(logits, axis=1) == reference_pred) & _finite_rows(logits)))


def paired_difference(before: np.ndarray, after: np.ndarray, confidence: float = 0.95) -> dict:
    """How much ``after`` (one bool per test row: right or not) beats ``before`` on the same rows, in
    accuracy points, with a normal-approximation ``confidence`` interval of the paired difference. Two
    models on a few hundred or thousand rows differ by noise of a point or more; a change whose interval
    holds 0 is not evidence of a gain (``verdict``: "better", "worse" or "within noise")."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    rows = int(len(before))
    fixed, broken = int((after & ~before).sum()), int((before & ~after).sum())
    diff = (fixed - broken) / rows if rows else 0.0
    spread = z * float(np.sqrt(max(fixed + broken - rows * diff ** 2, 0.0))) / rows if rows else 0.0
    low, high = diff - spread, diff + spread
    verdict = "better" if low > 0 else "worse" if high < 0 else "within noise"
    return {"points": round(100 * diff, 2), "low": round(100 * low, 2), "high": round(100 * high, 2),
            "confidence": confidence, "rows": rows, "fixed": fixed, "broken": broken,
            "verdict": verdict}


def parity(reference: np.ndarray, candidate: np.ndarray, tolerance: float | dict = FP32_PARITY_TOLERANCE) -> dict:
    """Compare a runtime's outputs with the torch model's on the same inputs, against ``tolerance``."""
    spec = {"max_abs": tolerance} if not isinstance(tolerance, dict) else dict(tolerance)
    if reference.shape != candidate.shape:
        return {"max_abs_diff": None, "top1_agreement": None, "tolerance": spec, "passed": False,
                "detail": f"output shape {candidate.shape} differs from the torch model's {reference.shape}"}
    bad = int(np.size(candidate) - np.isfinite(candidate).sum()) + int(np.size(reference) - np.isfinite(reference).sum())
    if bad:  # NaN compares as neither close nor far: never report agreement on it
        return {"max_abs_diff": None, "top1_agreement": None, "tolerance": spec, "passed": False,
                "detail": f"{bad} non-finite (NaN or infinite) output value(s): nothing to compare"}
    ref = reference.astype(np.float64)
    diff = np.abs(ref - candidate.astype(np.float64))
    largest = float(np.abs(ref).max())
    measured = {
        "max_abs_diff": float(diff.max()),
        "p99_abs_diff": float(np.percentile(diff, 99)),
        "max_rel_diff": float(diff.max() / max(1.0, largest)),
        "max_abs_reference": largest,
        "top1_agreement": agreement(candidate, np.argmax(reference, axis=1)),
    }
    bounds = {"max_abs": "max_abs_diff", "p99_abs": "p99_abs_diff", "max_rel": "max_rel_diff"}
    ok = all(np.isfinite(v) for v in measured.values())
    for key, field in bounds.items():
        if spec.get(key) is not None:
            ok &= measured[field] <= spec[key]
    if spec.get("top1") is not None:
        ok &= measured["top1_agreement"] >= spec["top1"]
    return {**measured, "tolerance": spec, "passed": bool(ok)}


def describe_parity(p: dict) -> str:
    """One line for people: what was measured against which bound."""
    if p.get("max_abs_diff") is None:
        return p.get("detail", "no outputs to compare")
    spec = p["tolerance"]
    parts = [f"max abs logit diff {p['max_abs_diff']:.2e}" + (f" (bound {spec['max_abs']:.0e})" if spec.get("max_abs") else "")]
    if spec.get("p99_abs") is not None:
        parts.append(f"p99 {p['p99_abs_diff']:.2e} (bound {spec['p99_abs']:g})")
    if spec.get("max_rel") is not None:  # reports before max_abs_reference was kept: the bound as given
        scale = max(1.0, p.get("max_abs_reference", 1.0))
        parts[0] += f" (bound {spec['max_rel'] * scale:.1e} = {spec['max_rel']:g} x max(1, max |logit| {scale:.3g}))"
    parts.append(f"top-1 agreement {100 * p['top1_agreement']:.2f}%" + (f" (min {100 * spec['top1']:g}%)" if spec.get("top1") else ""))
    return ", ".join(parts)


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
