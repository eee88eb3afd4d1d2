"""Core ML runner: the real Core ML runtime on macOS, the numpy MIL reference evaluator elsewhere.

``open_coreml(path, threads=1) -> Runner``. ``predict(x)`` takes a float32 batch in the model's
normalized input space (or, for a package that records raw-pixel preprocessing, also uint8 pixels as an
app has them; normalized input is turned back into those pixels, and an image input gets them as a PIL
image on macOS) and returns float32 ``(n, num_classes)`` scores comparable with torch's logits:
for a classifier export that is the ``classLabel_probs`` dictionary read in label order (Core ML's
classifier head applies no softmax, so these are the logits), otherwise the ``logits`` output.

Off macOS the Core ML runtime does not exist (coremltools issue #2658), so the runner evaluates the
saved package with ``compress.export.coreml.mil.evaluator`` and is marked ``measured=False``: its timings are the
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

from compress.core.errors import InputError
from compress.core.runner import Runner

ENGINE_MACOS = "Core ML (macOS)"
ENGINE_REFERENCE = "MIL reference (Linux)"
# An fp16 program's numbers are the evaluator's fp16: every op's output rounded to float16, float32 sums inside
# an op. Apple's GPU/Neural Engine may keep float32 accumulators across fused ops, so the label says which it is.
ENGINE_REFERENCE_FP16 = "MIL reference (Linux, fp16 rounded after every op: not Apple's GPU/ANE arithmetic)"

from compress.export.coreml.tolerances import MIN_TOP1, MIN_TOP1_AGREEMENT, TOLERANCE_REASONS, TOLERANCES  # noqa: F401


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


def pil_image(row: np.ndarray, image_input: dict):
    """One (1, C, H, W) row of pixel values as the PIL image ``MLModel.predict`` takes for an image input."""
    from PIL import Image

    pixels = np.clip(np.rint(row[0]), 0, 255).astype(np.uint8)
    if image_input["color_space"] == "GRAYSCALE":
        return Image.fromarray(pixels[0])  # (H, W) uint8: mode "L"
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))  # (H, W, 3) uint8: mode "RGB"


def _open_macos(path: Path, threads: int) -> Runner:
    import coremltools as ct

    from compress.export.coreml.mil.evaluator import load_program

    program = load_program(path)  # for the input name, labels and output names
    try:
        mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.ALL)
    except Exception as exc:
        raise InputError(f"{path}: not a loadable Core ML model ({str(exc).splitlines()[0]})") from None
    (input_name,) = program.inputs
    shape = program.inputs[input_name][1]
    labels = program.labels

    def predict(x: np.ndarray) -> np.ndarray:
        x = program.model_input(x)  # pixel values 0..255 for a raw-pixel package
        if shape is not None and shape[0] == 1 and x.shape[0] != 1:
            rows = [x[i : i + 1] for i in range(x.shape[0])]
        else:
            rows = [x]
        outs = []
        for row in rows:
            out = mlmodel.predict({input_name: pil_image(row, program.image_input) if program.image_input else row})
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
    from compress.export.coreml.mil.evaluator import load_program

    program = load_program(path)

    def predict(x: np.ndarray) -> np.ndarray:
        return program.scores(np.asarray(x))  # normalized float32, or uint8 pixels for a raw-pixel package

    engine = ENGINE_REFERENCE_FP16 if program.precision == "fp16" else ENGINE_REFERENCE
    return Runner(engine=engine, predict=predict, threads=int(threads), measured=False)


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
