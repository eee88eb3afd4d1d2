"""Core ML runner: the real Core ML runtime on macOS, the numpy MIL reference evaluator elsewhere.

``open_coreml(path, threads=1) -> Runner``. ``predict(x)`` takes a float32 batch in the model's
normalized input space and returns float32 ``(n, num_classes)`` scores comparable with torch's logits:
for a classifier export that is the ``classLabel_probs`` dictionary read in label order (Core ML's
classifier head applies no softmax, so these are the logits), otherwise the ``logits`` output.

Off macOS the Core ML runtime does not exist (coremltools issue #2658), so the runner evaluates the
saved package with ``devices.mil_reference`` and is marked ``measured=False``: its timings are the
evaluator's, not the device's, and reports must not present them as latency.

``TOLERANCES`` are the parity bounds for Core ML artifacts per export variant, as
``parity_error(torch_logits, coreml_scores)``: the largest absolute logit difference divided by
``max(1, largest |torch logit|)`` (so the bound is absolute for logits of magnitude <= 1 and relative to
the logit scale above that). ``TOLERANCE_REASONS`` says why each bound is what it is. Compressed
variants must also agree with torch's top-1 class on at least ``MIN_TOP1_AGREEMENT`` of the inputs.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from compress.errors import InputError
from devices.runner import Runner

ENGINE_MACOS = "Core ML (macOS)"
ENGINE_REFERENCE = "MIL reference (Linux)"

TOLERANCES: dict[str, float] = {
    "fp32": 1e-4,
    "fp16": 5e-3,
    "int8-weights": 3e-2,
    "palettize-8": 3e-2,
    "palettize-6": 1e-1,
    "palettize-4": 3e-1,
    "int8": 3e-1,
}

TOLERANCE_REASONS: dict[str, str] = {
    "fp32": "same float32 arithmetic, only summation order differs (digits MLP/CNN: 2.0e-7, 2.0e-7)",
    "fp16": "input, weights and every intermediate tensor stored in float16 (relative step 4.9e-4) "
    "through ~10 ops, and Core ML GPU/ANE kernels may round differently in the last bit "
    "(digits MLP/CNN: 5.7e-4, 5.7e-4)",
    "int8-weights": "per-channel symmetric int8 weights, each off by up to max|w|/254, plus fp16 "
    "(digits MLP/CNN: 3.9e-3, 3.7e-3)",
    "palettize-8": "256-entry k-means lookup table per weight tensor, plus fp16 (digits MLP/CNN: 3.3e-3, 2.9e-3)",
    "palettize-6": "64-entry k-means lookup table per weight tensor, plus fp16 (digits MLP/CNN: 1.2e-2, 9.0e-3)",
    "palettize-4": "16-entry k-means lookup table per weight tensor: coarse weights move logits by "
    "several percent (digits MLP/CNN: 6.1e-2, 5.1e-2); top-1 agreement is the meaningful check",
    "int8": "int8 activations (calibrated ranges, values outside them clipped) plus int8 weights "
    "(digits MLP/CNN: 3.6e-2, 6.2e-2); top-1 agreement is the meaningful check",
}

MIN_TOP1_AGREEMENT = 0.99

# Variants whose top-1 bound differs from MIN_TOP1_AGREEMENT, with the reason.
MIN_TOP1 = {
    "palettize-4": 0.98,  # 16 weight levels per tensor: on a ~5k-parameter student about 1% of borderline
    # digits flip (observed 98.9% agreement with a 97.5% -> 96.9% accuracy change on the digits test split)
}


def parity_error(reference: np.ndarray, scores: np.ndarray) -> float:
    """max |scores - reference| / max(1, max |reference|): the quantity ``TOLERANCES`` bounds."""
    reference = np.asarray(reference, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if reference.shape != scores.shape:
        raise InputError(f"scores: shape {scores.shape} does not match the reference logits {reference.shape}")
    return float(np.abs(scores - reference).max() / max(1.0, float(np.abs(reference).max())))


def top1_agreement(reference: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of rows where ``scores`` and ``reference`` pick the same class."""
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(scores, axis=-1)))


def _open_macos(path: Path, threads: int) -> Runner:
    import coremltools as ct

    from devices.mil_reference import load_program

    program = load_program(path)  # for the input name, labels and output names
    try:
        mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    except Exception as exc:
        raise InputError(f"{path}: not a loadable Core ML model ({str(exc).splitlines()[0]})") from None
    (input_name,) = program.inputs
    shape = program.inputs[input_name][1]
    labels = program.labels

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if shape is not None and shape[0] == 1 and x.shape[0] != 1:
            rows = [x[i : i + 1] for i in range(x.shape[0])]
        else:
            rows = [x]
        outs = []
        for row in rows:
            out = mlmodel.predict({input_name: row})
            if labels is not None and program.probabilities_name in out:
                probs = out[program.probabilities_name]
                keyed = {str(k): v for k, v in probs.items()}
                outs.append(np.array([[keyed[str(label)] for label in labels]], dtype=np.float32))
            else:
                name = "logits" if "logits" in out else next(iter(out))
                y = np.asarray(out[name], dtype=np.float32)
                outs.append(y.reshape(row.shape[0], -1))
        return np.concatenate(outs, axis=0)

    return Runner(engine=ENGINE_MACOS, predict=predict, threads=int(threads), measured=True)


def _open_reference(path: Path, threads: int) -> Runner:
    from devices.mil_reference import load_program

    program = load_program(path)

    def predict(x: np.ndarray) -> np.ndarray:
        return program.scores(np.ascontiguousarray(x, dtype=np.float32))

    return Runner(engine=ENGINE_REFERENCE, predict=predict, threads=int(threads), measured=False)


def open_coreml(path: Path | str, threads: int = 1) -> Runner:
    """Open the ``.mlpackage`` at ``path``: Core ML on macOS, the MIL reference evaluator elsewhere.

    ``threads`` is recorded only (Core ML chooses its own threads; the reference evaluator is numpy).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: Core ML model not found (expected a .mlpackage folder)")
    if platform.system() == "Darwin":
        return _open_macos(path, threads)
    return _open_reference(path, threads)
