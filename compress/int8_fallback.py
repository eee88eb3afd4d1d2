"""Static int8 within an accuracy budget, and per-layer int8 errors, for every target that has int8.

``int8_with_fallback(target, ...)`` exports the student's float reference for ``target``, quantizes it to
static int8, measures the accuracy drop on held-out samples and, while the drop exceeds the budget, keeps
the worst layer (ranked by ``layer_errors_for``) in float and re-validates:

  target   per-layer errors                          kept in float by
  onnx     ORT QDQ debug helpers (devices.quant_debug)    ``nodes_to_exclude`` (ONNX node names)
  tflite   LiteRT intermediates (devices.quant_debug_tflite) PT2E leaves torch modules unannotated
                                                          (``export.tflite.export(float_layers=...)``)
  coreml   MIL reference evaluator (devices.quant_debug_coreml) coremltools ``op_name_configs={op: None}``
                                                          (``export.coreml.export(float_ops=...)``)

``layer_errors_for(fp32_path, quantized_path, x)`` picks the per-layer error finder by file suffix
(``.onnx``, ``.tflite``, ``.mlpackage``) for ``compress debug-quant``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from compress.errors import InputError
from devices import validation

INT8_TARGETS = ("onnx", "tflite", "coreml")
SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml"}


def layer_errors_for(fp32_path: Path | str, quantized_path: Path | str, x: np.ndarray,
                     model: torch.nn.Module | None = None) -> list[dict]:
    """Per-layer int8 error rows (worst first) for an ONNX, TFLite or Core ML pair of files.

    ``x``: real float32 model inputs (transfer-set or held-out samples, never random). ``model``: the
    torch model both files came from (TFLite/Core ML only: names the torch module of each row).
    Every row has ``node`` (what the target's fallback takes), ``op_type``, ``tensor``, ``sqnr_db``,
    ``input_sqnr_db``, ``error_added_db``, ``weight_sqnr_db``; TFLite and Core ML rows also ``module`` and
    ``layer_sqnr_db`` (the noise the layer adds by itself, as an SQNR: what they are sorted by).
    """
    fp32_path, quantized_path = Path(fp32_path), Path(quantized_path)
    kinds = {SUFFIXES.get(p.suffix) for p in (fp32_path, quantized_path)}
    if len(kinds) != 1 or None in kinds:
        raise InputError(f"{quantized_path.name} vs {fp32_path.name}: expected two files of one target "
                         f"({', '.join(SUFFIXES)})")
    (kind,) = kinds
    if kind == "onnx":
        from devices.quant_debug import layer_errors

        return layer_errors(fp32_path, quantized_path, x)
    if kind == "tflite":
        from devices.quant_debug_tflite import layer_errors

        return layer_errors(fp32_path, quantized_path, x, model=model)
    from devices.quant_debug_coreml import layer_errors

    return layer_errors(fp32_path, quantized_path, x, model=model)


def int8_with_fallback(target: str, student: torch.nn.Module, example: torch.Tensor, artifact: Path, info,
                       calibration: np.ndarray, x_eval: np.ndarray, y_eval: np.ndarray | None,
                       budget_points: float, work_dir: Path, options: dict | None = None,
                       max_excluded: int = 3) -> dict:
    """Write ``target``'s static int8 export of ``student`` to ``artifact`` within ``budget_points``.

    ``calibration``: transfer-set samples that calibrate int8 (and rank the layers). ``x_eval``/``y_eval``:
    held-out samples that measure the drop (never the test split; ``y_eval=None``: the float reference's
    own predictions are the labels, i.e. the drop is agreement lost). ``options``: the target's export
    options from ``compress.quantize.export_options(target, "int8", ...)`` (Core ML: precision/deployment
    target). ``work_dir`` is created and removed.

    Returns the keys of ``devices.quant_debug.quantize_with_fallback`` (``fp32_accuracy``,
    ``int8_accuracy``, ``accuracy``, ``drop``, ``budget``, ``within_budget``, ``kept_in_float``,
    ``attempts``, ``layer_errors``) plus ``target``, ``eval_samples`` and ``reference`` (the float export
    the drop is measured against: fp32, or fp16 for Core ML, whose int8 builds on an fp16 program).
    """
    from devices.runners import RUNNERS

    if target not in INT8_TARGETS:
        raise InputError(f"target {target!r}: int8 float fallback is available for {', '.join(INT8_TARGETS)}")
    if budget_points < 0:
        raise InputError(f"--int8-budget {budget_points}: must be >= 0 (accuracy points)")
    options = dict(options or {})
    scheme = options.get("quantize") or options.get("variant") or options.get("compression")
    if scheme not in (None, "int8"):
        raise InputError(f"int8 fallback needs static int8 (--quantize int8), not {scheme!r}")
    calibration = np.asarray(calibration, dtype=np.float32)
    x_eval = np.asarray(x_eval, dtype=np.float32)
    if len(calibration) == 0 or len(x_eval) == 0:
        raise InputError("int8 fallback needs calibration samples and held-out evaluation samples")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    budget = budget_points / 100
    try:
        if target == "onnx":
            from devices.quant_debug import quantize_with_fallback
            from export.onnx import export

            reference = export(student, example, work_dir / "fp32.onnx", info)
        elif target == "tflite":
            from export.tflite import export

            reference = export(student, example, work_dir / "fp32.tflite", info)
        else:
            from export.coreml import export

            deployment = options.get("minimum_deployment_target") or "iOS17"
            reference = export(student, example, work_dir / "fp16.mlpackage", info, precision="fp16",
                               minimum_deployment_target=deployment)
        labels = y_eval
        if labels is None:
            labels = np.argmax(validation.batched(RUNNERS[target](reference).predict, x_eval), axis=1)

        def eval_fn(path: Path) -> float:
            return validation.accuracy(validation.batched(RUNNERS[target](path).predict, x_eval), labels)

        if target == "onnx":
            result = quantize_with_fallback(reference, artifact, calibration, eval_fn, budget, max_excluded)
        elif target == "tflite":
            from devices.quant_debug_tflite import quantize_with_fallback as tflite_fallback

            result = tflite_fallback(student, example, reference, artifact, info, calibration, eval_fn, budget,
                                     max_excluded)
        else:
            from devices.quant_debug_coreml import quantize_with_fallback as coreml_fallback

            result = coreml_fallback(student, example, reference, artifact, info, calibration, eval_fn, budget,
                                     max_excluded, compression="int8", minimum_deployment_target=deployment)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    result.pop("path", None)
    result["target"] = target
    result["reference"] = "fp16" if target == "coreml" else "fp32"
    result["eval_samples"] = int(len(x_eval))
    return result
