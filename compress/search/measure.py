"""How ``compress search`` measures one candidate, and what it records of it.

``probe``: the untrained student exported in every scheme, timed and sized in the target runtime (latency
and size depend on the graph, not the weights), so a scheme that cannot win is never trained.
``measure_trial``: a distilled student exported and measured as ``distill-and-export`` measures it
(``compress.stages.evaluate.student_rows``), on the validation split. ``judge``: a measurement against the
budgets of *this* run (stored measurements are judged again, so a rerun with other budgets re-chooses).
``candidate_row`` is the one shape every candidate of ``search.json`` has.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from compress import __version__
from compress.config import RunConfig
from compress.core import metrics
from compress.core.atomic import temp_prefix
from compress.core.cache import cache_dir, path_size
from compress.core.errors import InputError
from compress.devices.budgets import check_budgets
from compress.export.common import ModelInfo
from compress.pipeline import initial_student, safe_name
from compress.search.space import SearchOptions, Trial
from compress.stages.evaluate import student_rows
from compress.stages.export import export_student, model_preprocessing
from compress.stages.measure import host_latency, open_artifact, peak_memory


INT8_SLOWER = "for a model this small the quantize/dequantize steps cost more than int8 saves"
PROBE_SLACK = 1.2  # a probe is skipped only when its latency is this far over a limit (timing noise)


@dataclass
class Context:
    """What every trial shares: the run settings, the split data, the teachers' view of the validation
    split, the budgets, and when this invocation started."""

    cfg: RunConfig
    data: object  # the full data set (test split only for the final run)
    split: object  # training rows minus validation as x_train, validation rows as x_test
    train_rows: np.ndarray
    members: list
    targets: dict  # temperature -> soft targets of the training rows
    teacher_pred: np.ndarray  # the ensemble's class on each validation row
    reference_acc: float
    budgets: dict
    profile: dict | None
    schemes: list[str]
    options: SearchOptions
    started: float
    progress: object = None
    console: object = None
    epochs: dict | None = None  # trial key -> epochs
    targets_keys: dict | None = None  # temperature -> content key of targets that are not the ensemble's (specialists)


def scratch_folder() -> tempfile.TemporaryDirectory:
    """A scratch folder for one candidate's exports, under the cache (not the system temp folder), named as
    ``compress.core.atomic`` names temporaries: a killed search's leftovers are removed by the next command
    that writes there (``clean_stale``), never by a live search."""
    return tempfile.TemporaryDirectory(prefix=temp_prefix("scratch"), suffix=".tmp", dir=cache_dir("search"))


def worth_probing(ctx: Context, best: dict | None) -> bool:
    """A probe can only skip work when a latency or size limit (or a better candidate) exists."""
    return best is not None or any(k in ctx.budgets for k in ("latency_ms", "size_kb"))


def probe(ctx: Context, trial: Trial, schemes: list[str]) -> dict:
    """Latency and size of the untrained student in each scheme (same export, runtime and threads)."""
    student = initial_student(trial_config(ctx, trial), ctx.split).eval()
    out = {}
    with scratch_folder() as folder:
        for scheme in schemes:
            cfg = trial_config(ctx, trial, scheme)
            exported = export_student(cfg.export, cfg.quantize, cfg.distill, ctx.split, student, None,
                                      model_info(ctx, trial), Path(folder) / scheme)
            runner = open_artifact(ctx.cfg.export.target, exported.artifact, ctx.cfg.device.threads, ctx.profile)
            latency = (host_latency(runner, ctx.split.x_test, ctx.cfg.device.latency_runs) or {}).get("p50")
            out[scheme] = {"latency_ms": latency, "size_kb": path_size(exported.artifact) / 1024}
    return out


def probe_verdict(ctx: Context, probe: dict | None, best: dict | None) -> str | None:
    """Why a scheme is not worth training (None: it is): its untrained export breaks a budget, or cannot
    be faster (smaller, where latency is not measured here) than the best candidate meeting every budget."""
    if probe is None:
        return None
    latency, size = probe["latency_ms"], probe["size_kb"]
    limit_ms, limit_kb = budget_limit(ctx, "latency_ms"), budget_limit(ctx, "size_kb")
    if limit_kb is not None and size > limit_kb:
        return f"untrained export is {size:.1f} kB, over the size budget of {limit_kb:g} kB"
    if limit_ms is not None and latency is not None and latency > PROBE_SLACK * limit_ms:
        return f"untrained export times {latency:.3f} ms, over the latency budget of {limit_ms:.3g} ms"
    if best is not None:
        if latency is not None and best["latency_ms"] is not None and latency > PROBE_SLACK * best["latency_ms"]:
            return (f"untrained export times {latency:.3f} ms: cannot beat {best['id']} "
                    f"({best['latency_ms']:.3f} ms), which meets every budget")
        if latency is None and size > best["size_kb"]:
            return f"untrained export is {size:.1f} kB: cannot beat {best['id']} ({best['size_kb']:.1f} kB)"
    return None


def trial_config(ctx: Context, trial: Trial, scheme: str = "none") -> RunConfig:
    """The run settings of one candidate: the search's, with this trial's student, T, alpha and epochs and
    ``scheme`` (what ``distill-and-export`` would be given for it)."""
    return ctx.cfg.with_settings(student=trial.student, temperature=trial.temperature, alpha=trial.alpha,
                   epochs=ctx.epochs[trial.key], quantize=scheme)


def model_info(ctx: Context, trial: Trial) -> ModelInfo:
    return ModelInfo(name=safe_name(trial.student), labels=ctx.data.labels, normalization=ctx.data.normalization,
                     input_kind=ctx.data.input_kind, preprocessing=model_preprocessing(ctx.cfg.export, ctx.data),
                     description=f"{trial.student} (compress search candidate)", version=__version__)


def measure_trial(ctx: Context, trial: Trial, scheme: str, student, epochs: int) -> dict:
    """One candidate measured as ``distill-and-export`` measures (on the validation split)."""
    cfg = trial_config(ctx, trial, scheme)
    with scratch_folder() as folder:
        try:
            exported = export_student(cfg.export, cfg.quantize, cfg.distill, ctx.split, student,
                                      ctx.targets[trial.temperature], model_info(ctx, trial),
                                      Path(folder))
            _, row, runner, _, parity = student_rows(cfg.export, cfg.device, ctx.split, student, exported,
                                                     ctx.teacher_pred, ctx.profile)
        except InputError as exc:
            return candidate_row(ctx, trial, scheme, "failed", f"export or runtime: {exc}", epochs=epochs)
        memory = None
        if "peak_memory_mb" in ctx.budgets and runner.measured:
            memory = peak_memory(cfg.export.target, exported.artifact, ctx.split.x_test[:20], cfg.device.threads,
                                 ctx.profile).get("peak_memory_mb")
    measured = {"val_accuracy": row["accuracy"], "accuracy_drop": 100 * (ctx.reference_acc - row["accuracy"]),
                "size_kb": row["size_bytes"] / 1024, "latency_ms": None if row["latency_ms"] is None else
                row["latency_ms"]["p50"], "peak_memory_mb": memory}
    out = candidate_row(ctx, trial, scheme, "measured", None, epochs=epochs, **measured)
    out.update(runtime=runner.engine, parity_passed=bool(parity["passed"]),
               parity_max_abs_diff=parity.get("max_abs_diff"))
    return out


FINALIST_ROUNDS = 5  # rounds in which every finalist is timed in turn (a load spike then hits them alike)
FINALIST_SPAN = 1.5  # feasible candidates within this factor of the fastest p50 are re-timed together
MAX_FINALISTS = 4


def finalists(rows: list[dict]) -> list[dict]:
    """The candidates worth timing again side by side: those meeting every budget whose p50 is within
    ``FINALIST_SPAN`` of the fastest (at most ``MAX_FINALISTS``, fastest first). One alone needs no
    comparison; where latency is not measured here there is nothing to re-time."""
    ok = sorted((r for r in rows if r["status"] == "measured" and r["meets_budgets"] and r["latency_ms"] is not None),
                key=lambda r: r["latency_ms"])
    if not ok:
        return []
    near = [r for r in ok if r["latency_ms"] <= FINALIST_SPAN * ok[0]["latency_ms"]][:MAX_FINALISTS]
    return near if len(near) > 1 else []


def time_interleaved(predicts: dict[str, Callable], x: np.ndarray, runs: int, rounds: int = FINALIST_ROUNDS,
                     time_one: Callable | None = None) -> dict[str, dict]:
    """Each model timed ``rounds`` times, the models in turn within a round (alternating direction), so that
    whatever else the machine does lands on all of them alike; id -> {p50: the median of the rounds' p50s,
    low/high: the fastest and slowest round}. ``time_one(predict) -> p50 ms`` defaults to
    ``metrics.measure_latency`` with ``runs / rounds`` timed runs (tests pass a fake timer)."""
    time_one = time_one or (lambda predict: metrics.measure_latency(predict, x, runs=max(runs // rounds, 10))["p50"])
    seen: dict[str, list[float]] = {key: [] for key in predicts}
    for r in range(rounds):
        for key in (list(predicts) if r % 2 == 0 else list(reversed(predicts))):
            seen[key].append(float(time_one(predicts[key])))
    return {key: {"p50": float(np.median(v)), "low": min(v), "high": max(v), "rounds": rounds} for key, v in seen.items()}


def judge(ctx: Context, row: dict) -> dict:
    """A measured candidate against this run's budgets (and the device estimate): done for stored
    measurements too, so a rerun with other budgets re-chooses without measuring again."""
    if row["status"] != "measured":
        return row
    measured = {k: row[k] for k in ("accuracy_drop", "latency_ms", "size_kb", "peak_memory_mb")}
    checks = check_budgets(measured, ctx.budgets, notes={"latency_ms": f"{row.get('runtime')} does not run here",
                                                          "peak_memory_mb": "not measured here"})
    row["breaks"] = [c["detail"] for c in checks if not c["passed"]]
    if not row.get("parity_passed", True):
        row["breaks"].append(f"parity with the torch student failed (max |diff| {row.get('parity_max_abs_diff'):.3g})")
    row["meets_budgets"] = not row["breaks"]
    factor = device_factor(ctx)
    row["device_latency_ms"] = (row["latency_ms"] * factor["factor"] if factor and row["latency_ms"] is not None
                                else None)
    return row


def device_factor(ctx: Context) -> dict | None:
    est = (ctx.profile or {}).get("estimate")
    if not est:
        return None
    return {"factor": float(est["host_to_device_latency_factor"]), "basis": est["basis"],
            "profile": ctx.profile["name"]}


def candidate_row(ctx: Context, trial: Trial, scheme: str, status: str, note: str | None, *, epochs=None,
                  probe=None, **measured) -> dict:
    """One candidate's entry of ``search.json`` (values not measured stay None)."""
    row = {"id": trial.candidate_id(scheme), "student": trial.student, "scheme": scheme,
           "temperature": trial.temperature, "alpha": trial.alpha, "macs": trial.macs, "params": trial.params,
           "macs_per_second": trial.macs_per_second,
           "status": status, "note": note, "epochs_trained": epochs, "val_accuracy": None, "accuracy_drop": None,
           "size_kb": None, "latency_ms": None, "device_latency_ms": None, "peak_memory_mb": None,
           "meets_budgets": None, "breaks": [], "pareto": False}
    if probe:
        row["probe"] = probe  # the untrained export's latency and size (why it was skipped)
    row.update(measured)
    return row


def placeholder_rows(ctx: Context, trial: Trial, status: str, note: str) -> list[dict]:
    return [candidate_row(ctx, trial, s, status, note) for s in ctx.schemes]


def note_int8_vs_float(rows: list[dict]) -> None:
    """Say so where an int8 export timed slower than the float one here (tiny models: the quantize and
    dequantize steps cost more than the int8 arithmetic saves)."""
    by_scheme = {r["scheme"]: r for r in rows if r["status"] == "measured" and r["latency_ms"] is not None}
    base = by_scheme.get("none")
    for scheme in ("int8", "int8-weights"):
        r = by_scheme.get(scheme)
        if base and r and r["latency_ms"] > base["latency_ms"]:
            r["note"] = (f"{scheme} timed {r['latency_ms']:.3f} ms, slower than float's {base['latency_ms']:.3f} ms on "
                         f"this host: {INT8_SLOWER}")


def accuracy_floor(ctx: Context) -> float | None:
    spec = ctx.budgets.get("max_accuracy_drop")
    return None if spec is None else ctx.reference_acc - float(spec["limit"]) / 100


def budget_limit(ctx: Context, key: str) -> float | None:
    spec = ctx.budgets.get(key)
    return None if spec is None else float(spec["limit"])
