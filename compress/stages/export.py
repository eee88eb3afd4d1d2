"""The quantize/export stage: the distilled student -> one artifact in the target's format.

Plain int8, quantization-aware int8 (where the target has QAT hooks) or int8 within an accuracy budget
(the one fallback loop of ``compress.export.common.fallback``); every path asks the target's ``Backend``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress.config import DistillSection, ExportSection, QuantizeSection
from compress.distill.qat import qat_distill
from compress.export.common import ModelInfo
from compress.export.common.fallback import int8_with_fallback
from compress.export.registry import TARGETS, variant_name


@dataclass
class Exported:
    """What the export stage wrote and what the artifact must be checked against."""

    artifact: Path
    variant: str  # the numeric form written ("fp32", "int8", ...), "-qat" appended for a QAT graph
    source: torch.nn.Module  # the torch model the artifact came from (the student, or its QAT int8 graph)
    options: dict  # the target's export options
    fallback: dict | None = None  # what the int8 float fallback kept, when asked for


def model_preprocessing(export: ExportSection, data) -> dict:
    """What the exported model computes itself so the app feeds raw 8-bit pixels (``{}``: the app feeds
    normalized float32): the data's ``preprocessing`` unless ``model_input`` is ``normalized``."""
    return data.preprocessing if export.input == "raw" else {}


def calibration_indices(quantize: QuantizeSection, seed: int, n_train: int) -> np.ndarray:
    """Transfer-set rows that calibrate static int8 (never random data, never the test split)."""
    return np.sort(np.random.default_rng(seed).permutation(n_train)[:quantize.calibration_samples])


def export_student(export: ExportSection, quantize: QuantizeSection, distill: DistillSection, data,
                   student: torch.nn.Module, soft_targets, info: ModelInfo, folder: Path,
                   on_status=lambda text: None) -> Exported:
    """Write the student to ``folder/model<suffix>`` as the run's export and quantize sections ask (the distill
    section for quantization-aware distillation); see the module docstring."""
    backend = TARGETS[export.target]
    artifact = folder / backend.file_name
    options = export.export_options(quantize.scheme)
    calibration_idx = None
    if quantize.scheme in backend.calibrated_schemes:
        calibration_idx = calibration_indices(quantize, distill.seed, len(data.x_train))
        options["calibration"] = data.x_train[calibration_idx]
    example = torch.as_tensor(data.x_test[:1])
    variant = variant_name(export.target, options)
    if quantize.qat:
        on_status(f"quantization-aware distillation ({quantize.qat_epochs} epochs)")
        source = qat_distill(copy.deepcopy(student), data.x_train, soft_targets, data.y_train,
                             temperature=distill.temperature, alpha=distill.alpha, epochs=quantize.qat_epochs, lr=distill.lr / 10,
                             seed=distill.seed, calibration=options["calibration"], qat=backend.qat)
        backend.qat.export(source, example, artifact, info)
        return Exported(artifact, variant + "-qat", source, options)
    if quantize.int8_budget is not None:
        fallback = _int8_with_fallback(export.target, quantize.int8_budget, data, student, example, artifact, info,
                                       calibration_idx, options, folder)
        return Exported(artifact, variant, student, options, fallback)
    backend.export(student, example, artifact, info, **options)
    return Exported(artifact, variant, student, options)


def _int8_with_fallback(target: str, budget: float, data, student, example, artifact: Path, info: ModelInfo, calibration_idx: np.ndarray,
                        options: dict, folder: Path) -> dict:
    """Static int8 within an accuracy budget: the worst layers stay in float until the drop fits.

    The drop is measured on training samples that were not used for calibration (the test split is never
    used to choose the model); the student saw them in training, so this measures quantization damage,
    not generalization.
    """
    rest = np.setdiff1d(np.arange(len(data.x_train)), calibration_idx)
    held = rest[-min(len(rest), 1000):]
    y_eval = None if data.y_train is None else data.y_train[held]
    return int8_with_fallback(TARGETS[target], student, example, artifact, info, data.x_train[calibration_idx],
                              data.x_train[held], y_eval, budget, folder / ".fallback", options,
                              max_excluded=4)


def fallback_check(fallback: dict, budget: float) -> dict:
    """The report's check line for the int8 float fallback."""
    return {"name": f"int8 accuracy drop within {budget:g} points", "passed": fallback["within_budget"],
            "detail": f"drop {100 * fallback['drop']:.2f} points on {fallback['eval_samples']} held-out training "
                      f"samples; kept in float: {', '.join(fallback['kept_in_float']) or 'nothing'}"}
