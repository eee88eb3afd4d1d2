"""Static int8 within an accuracy budget, for every target: one loop, the targets only convert and rank.

``quantize_with_fallback`` quantizes to static int8, measures the accuracy drop on held-out samples and,
while the drop exceeds the budget, ranks the layers with the target's ``layer_errors`` and keeps the worst
one in float (with the quantized chain that feeds it when its input already arrives damaged), one step at
a time. A target supplies two hooks (``compress.export.backend.Int8Fallback``): the float reference
export, and "convert keeping these layers in float"; the layer names are the ``node`` of its
``layer_errors`` rows (ONNX node names, torch module names for TFLite, MIL op names for Core ML).

The folder below the targets knows no target: callers pass the ``Backend`` (``compress.export.registry``
finds it by name or, in ``layer_errors_for``, by file suffix).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from compress.core import metrics
from compress.core.atomic import atomic_path
from compress.core.errors import InputError
from compress.export.backend import Backend, ConversionFailed
from compress.export.common.sqnr import DAMAGED_INPUT_DB


def _covered(name: str, kept: list[str]) -> bool:
    """Whether ``name`` is kept already, itself or inside a kept parent (torch module names nest)."""
    return any(name == k or name.startswith(k + ".") for k in kept)


def fallback_group(worst: dict, ranking: list[dict], kept: list[str]) -> list[str]:
    """What to keep in float for the worst-ranked layer: the layer, plus every quantized layer upstream of
    it (its row's ``upstream``) when its input SQNR is already below ``DAMAGED_INPUT_DB``.

    Why: a layer whose input arrives damaged adds the most error only because it amplifies what its
    producers lost (a speech front-end's log of int8 mel energies is the typical case). Keeping only that
    layer in float fixes nothing; keeping the chain that feeds it does.
    """
    group = [worst["node"]]
    if worst.get("input_sqnr_db") is None or worst["input_sqnr_db"] >= DAMAGED_INPUT_DB:
        return group
    ranked = {r["node"] for r in ranking}
    group += [n for n in worst.get("upstream", []) if n in ranked and n not in kept and n not in group]
    return group


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _try(convert: Callable, layers: list[str], path: Path, attempts: list[dict]) -> dict | None:
    """One conversion; a rejected mix is recorded as an attempt with its error and returns None."""
    try:
        return convert(layers, path)
    except ConversionFailed as exc:
        attempts.append({"excluded": list(layers), "accuracy": None, "drop": None, "error": _first_line(exc.__cause__ or exc)})
        return None


def _first_conversion(convert: Callable, work: Path, attempts: list[dict], candidates: list[str]) -> dict:
    """Full int8; when the converter rejects it, the first of ``candidates`` kept in float that converts."""
    done = _try(convert, [], work / "int8-0", attempts)
    for name in ([] if done else candidates):
        done = _try(convert, [name], work / f"int8-{len(attempts)}", attempts)
        if done:
            break
    if done is None:
        raise InputError(f"int8: the converter rejects the model and every single layer kept in float "
                         f"({attempts[0]['error']})")
    return done


def quantize_with_fallback(backend: Backend, model, example, reference: Path, out_path: Path, info,
                           calibration: np.ndarray, eval_fn: Callable[[Path], float], budget: float,
                           max_steps: int = 3, options: dict | None = None) -> dict:
    """Write ``backend``'s static int8 export of ``model`` to ``out_path`` within ``budget`` (a fraction).

    ``reference``: the float export the drop is measured against; ``eval_fn(path) -> accuracy`` on
    held-out samples (never the calibration samples). At most ``max_steps`` fallback steps. The most
    accurate try (the first within budget, where one is) is written.

    Returns ``fp32_accuracy`` (of the reference), ``int8_accuracy`` (full int8; None when it does not
    convert), ``accuracy`` and ``drop`` of what was written, ``budget``, ``within_budget``,
    ``kept_in_float``, ``attempts`` (``excluded``, ``accuracy``, ``drop``, and the target's facts) and
    ``layer_errors`` (the first ranking).
    """
    if budget < 0:
        raise InputError(f"budget: {budget} must be >= 0 (an accuracy drop, e.g. 0.01)")
    hooks = backend.int8_fallback
    options = dict(options or {})

    def convert(layers: list[str], path: Path) -> dict:
        return hooks.convert(model, example, reference, path.with_suffix(backend.suffix), info, calibration,
                             layers, options)

    reference_acc = float(eval_fn(reference))
    attempts: list[dict] = []
    first_ranking: list[dict] | None = None
    with tempfile.TemporaryDirectory(prefix=f"quant-fallback-{backend.name}-") as work:
        work = Path(work)
        children = [name for name, _ in model.named_children()] if model is not None else []
        done = _first_conversion(convert, work, attempts, children)
        kept, tried, best = list(done["float_layers"]), set(done["float_layers"]), None
        modules: dict[str, str | None] = {}
        fresh, ranking = True, []
        while True:
            if fresh:  # a new conversion: measure it
                acc = float(eval_fn(done["path"]))
                facts = {k: v for k, v in done.items() if k not in ("path", "float_layers")}
                attempts.append({"excluded": list(kept), **facts, "accuracy": acc, "drop": reference_acc - acc})
                if best is None or acc > best[0]:
                    best = (acc, done["path"], list(kept))
                steps = sum(1 for a in attempts if a["accuracy"] is not None) - 1
                if reference_acc - acc <= budget or steps >= max_steps:
                    break
                ranking = backend.layer_errors(reference, done["path"], calibration, model=model)
                first_ranking = first_ranking or ranking
                modules.update({r["node"]: r["module"] for r in ranking if "module" in r})
            remaining = [r for r in ranking if r.get("keepable", True) and r["node"] not in tried
                         and not _covered(r["node"], kept)]
            if not remaining:
                break
            group = fallback_group(remaining[0], ranking, kept)
            tried.update(group)
            step = _try(convert, kept + group, work / f"int8-{len(attempts)}", attempts)
            fresh = step is not None
            if fresh:
                done, kept = step, list(step["float_layers"])
        result = _ship_best(best, out_path, reference_acc, budget, attempts, first_ranking)
    first_ok = next(a for a in attempts if a["accuracy"] is not None)
    result.update(int8_error=attempts[0].get("error"), first_converted_accuracy=first_ok["accuracy"])
    if modules:  # the torch module each kept layer holds, where the target knows it
        result["kept_modules"] = [modules.get(k) for k in result["kept_in_float"]]
    return result


def _ship_best(best: tuple[float, Path, list[str]], out_path: Path, reference_acc: float, budget: float,
               attempts: list[dict], first_ranking: list[dict] | None) -> dict:
    """Copy the most accurate try to ``out_path`` (atomically) and describe the fallback's result."""
    acc, chosen, kept = best
    with atomic_path(out_path) as tmp:
        if chosen.is_dir():  # a package folder (.mlpackage)
            shutil.copytree(chosen, tmp)
        else:
            shutil.copyfile(chosen, tmp)
    return {
        "fp32_accuracy": reference_acc,
        "int8_accuracy": attempts[0]["accuracy"],
        "accuracy": acc,
        "drop": reference_acc - acc,
        "budget": budget,
        "within_budget": reference_acc - acc <= budget,
        "kept_in_float": kept,
        "attempts": attempts,
        "layer_errors": first_ranking or [],
    }


def int8_with_fallback(backend: Backend, student, example, artifact: Path, info, calibration: np.ndarray,
                       x_eval: np.ndarray, y_eval: np.ndarray | None, budget_points: float, work_dir: Path,
                       options: dict | None = None, max_excluded: int = 3) -> dict:
    """``backend``'s static int8 export of ``student`` at ``artifact`` within ``budget_points`` (accuracy points).

    ``calibration``: transfer-set samples that calibrate int8 (and rank the layers). ``x_eval``/``y_eval``:
    held-out samples that measure the drop (never the test split; ``y_eval=None``: the float reference's
    own predictions are the labels, i.e. the drop is agreement lost). ``options``: the target's export
    options (``compress.export.registry.export_options``). ``work_dir`` is created and removed.

    Returns the keys of ``quantize_with_fallback`` plus ``target``, ``eval_samples`` and ``reference``
    (the variant of the float export the drop is measured against).
    """
    if backend.int8_fallback is None:
        raise InputError(f"target {backend.name!r}: has no int8 float fallback (Backend.int8_fallback)")
    if budget_points < 0:
        raise InputError(f"--int8-budget {budget_points}: must be >= 0 (accuracy points)")
    options = {k: v for k, v in (options or {}).items() if k != "calibration"}
    if options.get("scheme", "int8") != "int8":
        raise InputError(f"int8 fallback needs static int8 (--quantize int8), not {options['scheme']!r}")
    calibration = np.asarray(calibration, dtype=np.float32)
    x_eval = np.asarray(x_eval, dtype=np.float32)
    if len(calibration) == 0 or len(x_eval) == 0:
        raise InputError("int8 fallback needs calibration samples and held-out evaluation samples")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        reference = backend.int8_fallback.reference(student, example, work_dir / f"reference{backend.suffix}",
                                                    info, options)
        labels = y_eval
        if labels is None:
            labels = np.argmax(metrics.batched(backend.open(reference).predict, x_eval), axis=1)

        def eval_fn(path: Path) -> float:
            return metrics.accuracy(metrics.batched(backend.open(path).predict, x_eval), labels)

        result = quantize_with_fallback(backend, student, example, reference, artifact, info, calibration, eval_fn,
                                        budget_points / 100, max_excluded, options)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    result.update(target=backend.name, reference=backend.int8_fallback.reference_variant, eval_samples=int(len(x_eval)))
    return result
