"""The validate stage of ``distill-and-export``: every model of the run measured in the same runtime.

Rows: the teacher ensemble, each member (exported to the student's runtime where it can be, so latency
and size compare like for like), the torch student and the exported student. Checks: the artifact's
parity with the torch model it came from, each exported member's parity, and the target's format checks.
Only numbers measured here are reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress import __version__, models
from compress.config import DeviceSection, ExportSection
from compress.core import metrics
from compress.core.cache import cache_dir, content_key, path_size, read_verified, write_entry
from compress.core.errors import InputError
from compress.core.runner import Runner
from compress.core.threads import torch_threads
from compress.core.versions import versions
from compress.distill.train import predict_logits
from compress.export.common import ModelInfo
from compress.export.registry import by_suffix, export_options, TARGETS, tolerance_for
from compress.stages.export import model_preprocessing
from compress.stages.measure import host_latency, open_artifact
from compress.teachers import Teacher, ensemble_probs
from compress.teachers.ensemble import output_probs, scores_from_probs
from compress.teachers.precomputed import lacks_test_outputs


def member_target(target: str) -> str:
    """Where teacher members are exported and timed: the student's runtime when it runs here, else the
    first registered target that does."""
    if TARGETS[target].runs_here:
        return target
    return next(name for name, b in TARGETS.items() if b.runs_here)


def member_artifact(member: Teacher, data, target: str, preprocessing: dict | None = None) -> tuple[Path, str] | str:
    """The member as a file for ``target`` (fp32, cached by content), so it is timed like the student.

    Returns (path, target it runs in). A member given as a model file has no torch module to convert, so
    it stays in that file's runtime. Where the member cannot be exported (a format the converter does not
    take, an op it lacks), returns the reason: the member is then timed in torch and the report says why.
    ``preprocessing`` (the student's in-model input preprocessing) is given to a member fed the data as
    the student sees it, so both take the same raw input and are timed alike.
    """
    if member.artifact is not None:
        own = by_suffix(member.artifact).name
        if own == target or member.module is None:
            return member.artifact, own
    if member.module is None:
        return f"{member.kind} member: no model to run here"
    backend = TARGETS[target]
    preprocessing = (preprocessing or {}) if member.view is None else {}
    key = member.fingerprint[:32] + ("" if not preprocessing else "-" + content_key(preprocessing)[:8])
    path = cache_dir(f"teacher-{target}") / f"{key}{backend.suffix}"
    if read_verified(path, lambda p: p) is None:  # missing, or damaged (discarded with a warning): export it
        info = ModelInfo(name=member.name, labels=data.labels, normalization=data.normalization,
                         preprocessing=preprocessing, description=f"teacher member {member.name}")
        example = torch.as_tensor(member.own_input(data.x_test[:1]))
        try:
            written = write_entry(path, lambda tmp: backend.export(member.module, example, tmp, info,
                                                                   **export_options(target, "none")))
        except Exception as exc:  # this member's format or ops do not convert: time it in torch instead
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return f"a {member.kind} member does not convert to {target} ({first})"
        if not written:
            return "the cache could not hold its export"
    return path, target


def row(model: str, role: str, runtime: str, logits: np.ndarray | None, y: np.ndarray | None,
        teacher_pred: np.ndarray | None, params, macs, size, latency, threads, parity=None) -> dict:
    """One row of the report's table (the ``compress.report/1`` row schema)."""
    return {
        "model": model, "role": role, "runtime": runtime,
        "accuracy": None if logits is None or y is None else metrics.accuracy(logits, y),
        "agreement_with_teacher": None if logits is None or teacher_pred is None else metrics.agreement(logits, teacher_pred),
        "params": params, "macs": macs, "size_bytes": size,
        "latency_ms": None if latency is None else {**latency, "threads": threads},
        "parity": parity,
    }


def member_rows(export: ExportSection, device: DeviceSection, data, members: list[Teacher], teacher_pred, advance,
                profile: dict | None = None) -> tuple[list[dict], list, list[str]]:
    """Each member in the student's runtime where it can be exported (else in torch, with the reason),
    fed its own input contract, timed the same way (the profile's runner options too). Returns
    (rows, [(runner, member)], targets)."""
    threads, runs, x = device.threads, device.latency_runs, data.x_test
    m_target = member_target(export.target)
    rows, runners, targets = [], [], []
    for m in members:
        if m.module is None and m.artifact is None:  # outputs computed elsewhere: listed, nothing to time here
            rows.append(_precomputed_row(m, data, teacher_pred, threads))
            advance()
            continue
        torch_logits = m.logits(x)
        exported = member_artifact(m, data, m_target, model_preprocessing(export, data))
        macs = models.count_macs(m.module, m.own_input(x[:1]).shape[1:]) if m.module is not None and m.kind != "pt2" else None
        if isinstance(exported, str):
            with torch_threads(threads):
                lat = metrics.measure_latency(lambda b: m.logits(b), x, runs=runs)
            rows.append({**row(f"member {m.name}", "member", f"torch {torch.__version__}", torch_logits, data.y_test,
                               teacher_pred, m.params, macs, None, lat, threads), "timing_note": exported})
        else:
            path, runs_in = exported
            runner = open_artifact(runs_in, path, threads, profile if runs_in == export.target else None)
            runners.append((runner, m))
            targets.append(runs_in)
            own = m.own_input(x)
            logits = metrics.batched(runner.predict, own)
            par = None if m.artifact is not None and m.module is None else metrics.parity(
                torch_logits, logits, tolerance_for(runs_in, "fp32"))  # members export in fp32
            rows.append(row(f"member {m.name}", "member", runner.engine, logits, data.y_test, teacher_pred,
                            m.params, macs, path_size(path), metrics.measure_latency(runner.predict, own, runs=runs),
                            threads, par))
        advance()
    return rows, runners, targets


def _precomputed_row(m: Teacher, data, teacher_pred, threads: int) -> dict:
    """A member given as outputs computed elsewhere: its accuracy where the file holds test outputs; no
    latency or size (no model runs here)."""
    if lacks_test_outputs(m):
        return {**row(f"member {m.name}", "member", "precomputed (no test outputs)", None, None, None, m.params, None,
                      None, None, threads), "note": f"not measured: {m.name} holds no test-split outputs"}
    return {**row(f"member {m.name}", "member", "precomputed (outputs computed elsewhere)", m.logits(data.x_test),
                  data.y_test, teacher_pred, m.params, None, None, None, threads),
            "note": "accuracy from the file's test outputs; no model runs here, so no latency or size"}


def ensemble_row(device: DeviceSection, data, teacher_probs, teacher_pred, m_rows: list[dict], runners: list) -> tuple[dict, dict | None]:
    """The ensemble as the app would run it: every member in the same runtime, probabilities averaged.
    Timed only when every member runs in that runtime."""
    x = data.x_test
    total = lambda vals: None if any(v is None for v in vals) else int(sum(vals))  # noqa: E731
    if len(runners) == len(m_rows):
        def ensemble_predict(b: np.ndarray) -> np.ndarray:  # each member fed its own input contract
            return scores_from_probs(np.mean([output_probs(m.output, r.predict(m.own_input(b))) for r, m in runners], axis=0))

        logits = metrics.batched(ensemble_predict, x)
        latency = metrics.measure_latency(ensemble_predict, x, runs=device.latency_runs)
        engines = {r.engine for r, _ in runners}
        runtime = engines.pop() if len(engines) == 1 else "mixed runtimes"
    else:
        logits, latency, runtime = scores_from_probs(teacher_probs), None, "mixed (not timed)"
    r = row("teacher ensemble", "teacher", runtime, logits, data.y_test, teacher_pred,
            total([m["params"] for m in m_rows]), total([m["macs"] for m in m_rows]),
            total([m["size_bytes"] for m in m_rows]), latency, device.threads)
    return r, latency


def student_rows(export: ExportSection, device: DeviceSection, data, student, exported, teacher_pred,
                 profile: dict | None = None) -> tuple[dict, dict, Runner, np.ndarray, dict]:
    """The torch student and the exported one (parity against the torch model the artifact came from),
    opened with the device profile's runner options."""
    threads, runs, x = device.threads, device.latency_runs, data.x_test
    s_params, s_macs = models.count_params(student), models.count_macs(student, data.input_shape)
    s_logits = predict_logits(student, x)
    with torch_threads(threads), torch.inference_mode():
        torch_lat = metrics.measure_latency(lambda b: student(torch.from_numpy(b)), x, runs=runs)
    torch_row = row("student", "student", f"torch {torch.__version__}", s_logits, data.y_test, teacher_pred,
                    s_params, s_macs, None, torch_lat, threads)
    backend = TARGETS[export.target]
    runner = open_artifact(export.target, exported.artifact, threads, profile)
    r_logits = metrics.batched(runner.predict, x)
    if exported.source is student:
        ref_logits = s_logits
    else:  # a QAT int8 graph: the converter should reproduce its int8 arithmetic closely
        ref_logits = backend.qat.predict(exported.source, x)
    par = metrics.parity(ref_logits, r_logits, tolerance_for(export.target, exported.variant.removesuffix("-qat")))
    r_lat = host_latency(runner, x, runs)
    exported_row = row(f"student ({export.target} {exported.variant})", "student", runner.engine, r_logits, data.y_test,
                       teacher_pred, s_params, s_macs, path_size(exported.artifact), r_lat, threads, par)
    return torch_row, exported_row, runner, r_logits, par


def comparison(export: ExportSection, device: DeviceSection, ens: dict, ens_lat, student_row: dict, runner: Runner, runners: list,
               member_targets: list[str], n_members: int, member_runtimes: list[str] | None = None) -> dict:
    """Student vs ensemble: ratios, and whether latency was compared in the same runtime (and why not)."""
    comparable = len(runners) == n_members and set(member_targets) == {export.target} and runner.measured
    r_lat = student_row["latency_ms"]
    s_params, s_macs = student_row["params"], student_row["macs"]
    return {
        "param_ratio": (ens["params"] / s_params) if ens["params"] else None,
        "mac_ratio": (ens["macs"] / s_macs) if ens["macs"] and s_macs else None,
        "latency_ratio_p50": (ens_lat["p50"] / r_lat["p50"]) if ens_lat and r_lat and comparable else None,
        "accuracy_gap": ens["accuracy"] - student_row["accuracy"],
        "same_runtime": comparable,
        "timing_note": (f"both exported to {export.target} and timed in {runner.engine}, {device.threads} thread(s), batch 1, "
                        f"{device.latency_runs} runs after warm-up" if comparable else
                        f"NOT compared: the student runs in {runner.engine}"
                        + ("" if runner.measured else " (no latency measured here)")
                        + f", the teachers in {_teacher_runtimes(member_runtimes or [])}"),
    }


def _teacher_runtimes(member_runtimes: list[str]) -> str:
    """Where the members ran, each runtime once with its count (a member that does not convert to the
    student's runtime is timed in torch; a file of outputs computed elsewhere runs nowhere here)."""
    n = len(member_runtimes)
    return " and ".join(f"{rt} ({member_runtimes.count(rt)} of {n})" for rt in dict.fromkeys(member_runtimes)) or "torch"


def confusion(data, teacher_pred, candidate: str, logits) -> dict:
    """Student-vs-teacher confusion matrix (rows: the ensemble's class, columns: the student's)."""
    from sklearn.metrics import confusion_matrix

    return {"reference": "teacher ensemble", "candidate": candidate, "labels": data.labels,
            "matrix": confusion_matrix(teacher_pred, np.argmax(logits, axis=1),
                                       labels=list(range(data.num_classes))).tolist()}


def evaluate(export: ExportSection, device: DeviceSection, data, members: list[Teacher], student, exported, advance=lambda: None,
             profile: dict | None = None) -> dict:
    """Measure every row and check parity; returns the report (``compress.report/1``) without run facts.
    The artifact and the members exported into its runtime run with the device profile's runner options."""
    scored = [m for m in members if not lacks_test_outputs(m)]  # members with test-split outputs
    if not scored:
        raise InputError(f"teachers: no member has test-split outputs ({', '.join(m.name for m in members)}); "
                         "expected at least one member that runs here or a file with 'test' outputs")
    teacher_probs = ensemble_probs(scored, data.x_test)
    teacher_pred = np.argmax(teacher_probs, axis=1)
    m_rows, runners, m_targets = member_rows(export, device, data, members, teacher_pred, advance, profile)
    ens, ens_lat = ensemble_row(device, data, teacher_probs, teacher_pred, m_rows, runners)
    if len(scored) < len(members):
        ens["note"] = f"averages the {len(scored)} of {len(members)} members with test-split outputs"
        ens["runtime"] += f"; {len(scored)} of {len(members)} members"
    advance()
    torch_row, s_row, runner, r_logits, par = student_rows(export, device, data, student, exported, teacher_pred, profile)
    advance()
    advance()
    reference = "torch student" if exported.source is student else "torch QAT int8 graph"
    checks = [{"name": f"{export.target} {exported.variant} parity vs {reference}", "passed": par["passed"],
               "detail": f"{metrics.describe_parity(par)} on {len(data.x_test)} real test samples, engine {runner.engine}"}]
    checks += [{"name": f"{r['model']} parity vs torch ({r['runtime']})", "passed": r["parity"]["passed"],
                "detail": metrics.describe_parity(r["parity"])} for r in m_rows if r["parity"] is not None]
    backend = TARGETS[export.target]
    compatibility = None if backend.check_artifact is None else backend.check_artifact(exported.artifact, exported.options, checks)
    return report_skeleton([ens, *m_rows, torch_row, s_row],
                           comparison(export, device, ens, ens_lat, s_row, runner, runners, m_targets, len(members),
                                      [r["runtime"] for r in m_rows]),
                           compatibility, checks, confusion=confusion(data, teacher_pred, s_row["model"], r_logits))


def report_skeleton(rows: list[dict], comparison: dict | None, compatibility: dict | None, checks: list[dict],
                    **extra) -> dict:
    """The ``compress.report/1`` dict both ``distill-and-export`` and ``validate`` write."""
    return {"schema": "compress.report/1", **({"kind": extra.pop("kind")} if "kind" in extra else {}),
            "tool": {"name": "compress", "version": __version__}, "versions": versions(), "run": {}, "rows": rows,
            "comparison": comparison, "compatibility": compatibility, **extra, "checks": checks,
            "passed": all(c["passed"] for c in checks)}
