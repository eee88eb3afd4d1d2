"""``compress validate``: check an exported model in its runtime against a device profile's budgets.

``validate(path, ...)`` takes either

  * a folder written by ``compress distill-and-export`` (``manifest.json`` names the artifact and target,
    and the recipe's data, data_format, teachers, teacher_epochs, seed, limit_train, limit_test, unlabelled
    and jitter): the same data split and teacher ensemble are rebuilt (built-in teachers come from the
    cache when present), so the accuracy drop is against the teacher the model was distilled from; or
  * a user's own ``.onnx`` / ``.tflite`` / ``.mlpackage`` plus ``data`` (any ``compress.data.load_data``
    spec, normalized the same way). ``reference`` (one or more teacher specs accepted by
    ``compress.teachers.load_teachers``: an .onnx, a TorchScript file, a built-in name ...) gives the
    accuracy drop and agreement; without one only the absolute accuracy is reported, and an explicit
    ``max_accuracy_drop`` is an InputError.

and returns a report in the ``compress.report/1`` schema (``rows``, ``checks``, ``passed``) plus
``budgets`` (``devices.budgets.check_budgets``), ``latency`` (host measurement and the device estimate)
and ``peak_memory`` (``devices.peak_memory``). ``passed`` is true when every check and budget passed.

Parity: a parity bound compares the same model in two runtimes. The reference here is a teacher (a
different model), so against it ``validate`` reports agreement, not parity. In a folder, the artifact's
parity with the torch student was measured at export time: ``validate`` carries that result from
``report.json`` as a check, verifies the artifact's sha256 against the manifest, and checks that the
accuracy recorded in ``report.json`` is reproduced in the same runtime.

Latency is measured on this host with the profile's threads and labelled so ("measured on this host
(x86_64), 4 threads"); a device latency is estimated only when the profile's ``[estimate]`` table gives a
factor with its basis, and is labelled as an estimate; otherwise it is "not estimated".
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from compress.errors import InputError
from devices import validation
from devices.budgets import FLAGS, check_budgets, gather

SUFFIX_TARGETS = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml"}
NOT_MEASURED_COREML = ("the Core ML runtime only runs on macOS; the MIL reference evaluator's speed and "
                       "memory say nothing about a device")


def _host() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def _resolve(path: Path) -> tuple[str, Path, str, dict | None]:
    """(mode, artifact, target, manifest): mode "folder" or "file"."""
    if not path.exists():
        raise InputError(f"{path}: not found; expected a folder written by compress distill-and-export "
                         f"or an .onnx/.tflite/.mlpackage model")
    if path.is_dir() and path.suffix != ".mlpackage":
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise InputError(f"{path}: no manifest.json; expected a folder written by compress distill-and-export "
                             f"or an .onnx/.tflite/.mlpackage model file")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            artifact, target = path / manifest["artifact"], manifest["target"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{mpath}: not a compress manifest ({exc})") from None
        if target not in set(SUFFIX_TARGETS.values()):
            raise InputError(f"{mpath}: target {target!r} is not one of {sorted(set(SUFFIX_TARGETS.values()))}")
        if not artifact.exists():
            raise InputError(f"{artifact}: the manifest's artifact is missing")
        return "folder", artifact, target, manifest
    target = SUFFIX_TARGETS.get(path.suffix.lower())
    if target is None:
        raise InputError(f"{path}: unknown model format {path.suffix!r}; expected one of {sorted(SUFFIX_TARGETS)} "
                         f"or a folder written by compress distill-and-export")
    return "file", path, target, None


def _open(target: str, artifact: Path, threads: int, profile: dict | None):
    from devices.runners import RUNNERS

    if target == "tflite" and profile and profile.get("delegate"):
        from devices.tflite_runner import open_tflite

        return open_tflite(artifact, threads, xnnpack=profile["delegate"] == "xnnpack")
    return RUNNERS[target](artifact, threads)


def _artifact_precision(recipe: dict) -> str:
    q = recipe.get("quantize", "none")
    if q == "none":
        return (recipe.get("precision") or "fp16") if recipe.get("target") == "coreml" else "fp32"
    return "fp16" if q == "fp16" else "int8" if q.startswith("int8") else q


def _same_normalization(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        if isinstance(a[k], (int, float)) and isinstance(b[k], (int, float)):
            if not np.isclose(a[k], b[k], rtol=1e-6, atol=1e-9):
                return False
        elif a[k] != b[k]:
            return False
    return True


def _arm64_check(artifact: Path, target: str, x: np.ndarray, threads: int, samples: int, checks: list) -> dict:
    """Run the artifact in the aarch64 wheels under QEMU and compare with the host run of the same file.

    Correctness only (emulation is ~400x slower than native). Passes when the outputs are bit-exact, or
    every top-1 agrees and no logit differs by more than 1e-4 (ORT's aarch64 conv kernels sum in another
    order than x86's: ~4e-6 seen on a small fp32 CNN).
    """
    from devices import arm64_emu

    if target not in ("onnx", "tflite"):
        raise InputError(f"--arm64-emulator: runs .onnx and .tflite models, not {artifact.name}")
    if arm64_emu.status() is None:
        raise InputError("--arm64-emulator: the emulator is not built; expected `compress devices setup arm64-emu` first")
    n = max(1, min(int(samples), len(x)))
    try:
        result = arm64_emu.compare_with_host(artifact, x[:n], threads)
    except (RuntimeError, arm64_emu.EmulatorUnavailable) as exc:
        checks.append({"name": "arm64 emulator reproduces host outputs", "passed": False, "detail": str(exc)})
        return {"error": str(exc)}
    ok = result["bit_exact"] or (result["top1_agreement"] == 1.0 and result["max_abs_diff"] <= 1e-4)
    checks.append({"name": "arm64 emulator reproduces host outputs", "passed": bool(ok),
                   "detail": f"{'bit-exact' if result['bit_exact'] else 'not bit-exact'}, max abs diff "
                             f"{result['max_abs_diff']:.3g}, top-1 agreement {100 * result['top1_agreement']:.2f}% on "
                             f"{result['samples']} real test samples; {result['engine']} vs {result['host_engine']}"})
    return result


def validate(path, *, profile=None, data=None, data_format=None, reference=None, threads=None,
             max_accuracy_drop=None, max_latency_ms=None, max_size_kb=None, max_peak_memory_mb=None,
             min_runtime=None, latency_runs=100, limit_test=None, arm64_samples=None) -> dict:
    """Validate an artifact folder or model file in its runtime; see the module docstring. InputError on bad input."""
    from compress import __version__
    from compress.cache import file_sha256, path_size
    from compress.data import load_data
    from compress.pipeline import versions
    from compress.teachers import ensemble_probs, load_teachers
    from devices import peak_memory
    from devices.profiles import load_profile

    path = Path(path)
    mode, artifact, target, manifest = _resolve(path)
    prof = None
    if profile is not None:
        prof = profile if isinstance(profile, dict) else load_profile(profile)
        if prof["runtime"] != target:
            raise InputError(f"--device {prof['name']}: the profile runs {prof['runtime']}, but {artifact.name} is "
                             f"a {target} model")
    threads = int(threads if threads is not None else (prof["threads"] if prof else 1))
    if threads < 1:
        raise InputError(f"--threads {threads}: expected an integer >= 1")
    if int(latency_runs) < 1:
        raise InputError(f"--latency-runs {latency_runs}: expected an integer >= 1")
    explicit = {"max_accuracy_drop": max_accuracy_drop, "latency_ms": max_latency_ms, "size_kb": max_size_kb,
                "peak_memory_mb": max_peak_memory_mb}
    for key, value in explicit.items():
        if value is not None and not value >= 0:
            raise InputError(f"{FLAGS[key]} {value}: expected a number >= 0")
    if min_runtime is not None and target != "tflite":
        raise InputError(f"--min-runtime {min_runtime!r}: only TFLite models have a runtime-version check "
                         f"({artifact.name} is {target})")
    if isinstance(reference, str):
        reference = [reference]
    reference = list(reference) if reference else None

    notes: list[str] = []
    recipe = (manifest or {}).get("recipe", {})
    if mode == "folder":
        data_spec, fmt = (data, data_format) if data is not None else (recipe.get("data"), recipe.get("data_format"))
        if data is not None:
            notes.append(f"data {data!r} given: evaluated on it instead of the recipe's data")
        specs = reference or list(recipe.get("teachers") or [])
        lt = limit_test if limit_test is not None else recipe.get("limit_test")
        ds = load_data(data_spec, fmt, limit_train=recipe.get("limit_train"), limit_test=lt,
                       unlabelled=bool(recipe.get("unlabelled")), seed=int(recipe.get("seed", 0)))
    else:
        if data is None:
            raise InputError(f"{path}: a model file needs --data (the labelled data to evaluate it on); "
                             f"or give a folder written by compress distill-and-export")
        if max_accuracy_drop is not None and not reference:
            raise InputError("--max-accuracy-drop: an accuracy drop needs a reference; give --reference "
                             "(a teacher: .onnx, TorchScript, .pt2 or a built-in name) or validate the folder "
                             "compress wrote (its manifest names the teachers)")
        specs = reference or []
        ds = load_data(data, data_format, limit_test=limit_test, seed=0)
    if not specs and max_accuracy_drop is not None:
        raise InputError("--max-accuracy-drop: the manifest names no teachers and no --reference was given")
    x, y = ds.x_test, ds.y_test

    # the artifact in its runtime
    runner = _open(target, artifact, threads, prof)
    try:
        logits = validation.batched(runner.predict, x)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{artifact.name}: does not run on the data's inputs of shape {tuple(x.shape[1:])} "
                         f"({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
    if logits.ndim != 2 or logits.shape[1] != ds.num_classes:
        raise InputError(f"{artifact.name}: outputs shape {tuple(logits.shape)}, but the data has "
                         f"{ds.num_classes} classes")
    accuracy = validation.accuracy(logits, y)

    rows, checks = [], []
    members, ref_pred, ref_acc = [], None, None
    if specs:
        recipe_like = mode == "folder" and not reference
        members = load_teachers(specs, ds, epochs=int(recipe.get("teacher_epochs", 10)) if recipe_like else 10,
                                seed=int(recipe.get("seed", 0)) if recipe_like else 0,
                                jitter_pixels=int(recipe.get("jitter", 0)) if recipe_like else 0)
        probs = ensemble_probs(members, x)
        ref_pred = np.argmax(probs, axis=1)
        ref_acc = validation.accuracy(probs, y)
        kinds = {"ONNX Runtime" if m.kind == "onnx" else "torch" for m in members}
        params = [m.params for m in members]
        rows.append({"model": "reference (teacher ensemble)" if len(members) > 1 else f"reference {members[0].name}",
                     "role": "teacher", "runtime": kinds.pop() if len(kinds) == 1 else "mixed runtimes",
                     "accuracy": ref_acc, "agreement_with_teacher": 1.0,
                     "params": None if any(p is None for p in params) else int(sum(params)), "macs": None,
                     "size_bytes": None, "latency_ms": None, "parity": None})

    emulator = _arm64_check(artifact, target, x, threads, arm64_samples, checks) if arm64_samples else None

    # host latency, device estimate, size, peak memory
    host = _host()
    host_label = (f"measured on this host ({host['machine']}), {threads} thread{'s' if threads != 1 else ''}"
                  + (f" (the host has {host['cpus']} CPUs)" if host["cpus"] and threads > host["cpus"] else ""))
    mem_note = None
    if runner.measured:
        lat = validation.measure_latency(runner.predict, x, runs=latency_runs)
        latency = {"host": {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "runs": lat["runs"], "threads": threads,
                            "batch": 1, "label": host_label}}
        mem = peak_memory.measure(artifact, target, x, threads=threads,
                                  xnnpack=not (prof and prof.get("delegate") == "none"))
        if mem.get("peak_memory_mb") is None:
            mem_note = mem.get("note")
    else:
        lat = None
        latency = {"host": {"p50_ms": None, "label": f"not measured here: {NOT_MEASURED_COREML}"}}
        mem = {"peak_memory_mb": None, "note": NOT_MEASURED_COREML}
        mem_note = NOT_MEASURED_COREML
    est = (prof or {}).get("estimate")
    if lat is not None and est:
        factor = float(est["host_to_device_latency_factor"])
        latency["device_estimate"] = {"p50_ms": lat["p50"] * factor, "factor": factor, "basis": est["basis"],
                                      "label": f"estimate for {prof['name']}: host p50 x {factor:g} ({est['basis']})"}
    else:
        why = ("no host measurement" if lat is None else
               f"profile {prof['name']} gives no host_to_device_latency_factor with a basis" if prof else "no device profile")
        latency["device_estimate"] = {"p50_ms": None, "label": f"not estimated ({why})"}
    size_bytes = path_size(artifact)

    params = macs = None
    if manifest:
        params, macs = manifest.get("student", {}).get("params"), manifest.get("student", {}).get("macs")
    rows.append({"model": f"{artifact.name} ({target})", "role": "student", "runtime": runner.engine,
                 "accuracy": accuracy,
                 "agreement_with_teacher": None if ref_pred is None else validation.agreement(logits, ref_pred),
                 "params": params, "macs": macs, "size_bytes": size_bytes,
                 "latency_ms": None if lat is None else {**lat, "threads": threads, "where": host_label},
                 "parity": None})

    # checks carried from / compared with what compress recorded for this folder
    if manifest:
        entry = manifest.get("files", {}).get(artifact.name)
        if entry:
            ok = file_sha256(artifact) == entry.get("sha256")
            checks.append({"name": "artifact matches manifest.json", "passed": ok,
                           "detail": f"sha256 of {artifact.name} {'matches' if ok else 'DIFFERS from'} the manifest"})
        if data is None and not _same_normalization(ds.normalization, manifest.get("normalization", {})):
            checks.append({"name": "data matches the manifest", "passed": False,
                           "detail": "the recipe's data now normalizes differently from the manifest "
                                     "(the data changed since export)"})
        report_path = path / "report.json"
        recorded = None
        if report_path.is_file():
            try:
                recorded = json.loads(report_path.read_text(encoding="utf-8"))
            except ValueError:
                notes.append("report.json is not valid JSON: export-time checks not carried")
        exported = [r for r in (recorded or {}).get("rows", []) if r.get("role") == "student" and r.get("size_bytes")]
        if exported:
            rec = exported[-1]
            if rec.get("parity"):
                rows[-1]["parity"] = rec["parity"]
                checks.append({"name": f"parity vs torch student (recorded at export, {rec['runtime']})",
                               "passed": bool(rec["parity"]["passed"]),
                               "detail": validation.describe_parity(rec["parity"]) + " (from report.json)"})
            same_engine = str(rec.get("runtime", "")).split(" (")[0] == runner.engine.split(" (")[0]
            same_data = data is None and lt == recipe.get("limit_test")
            if same_engine and same_data and rec.get("accuracy") is not None:
                diff = abs(accuracy - rec["accuracy"])
                ok = diff <= 1.0 / len(y) + 1e-9
                checks.append({"name": "accuracy reproduces report.json", "passed": ok,
                               "detail": f"{100 * accuracy:.2f}% now vs {100 * rec['accuracy']:.2f}% recorded on "
                                         f"{len(y)} test samples ({runner.engine})"})
        if prof and prof["precision"] != _artifact_precision(recipe):
            notes.append(f"profile {prof['name']} expects {prof['precision']}, the artifact is "
                         f"{_artifact_precision(recipe)}")

    compatibility = None
    if target == "tflite":
        from devices.tflite_compat import compatibility_report

        compatibility = compatibility_report(artifact, min_runtime, checks)

    # budgets: the profile's, overridden by explicit limits
    budgets = gather(prof, explicit)
    measured = {"accuracy_drop": None if ref_acc is None else 100 * (ref_acc - accuracy),
                "latency_ms": None if lat is None else lat["p50"],
                "size_kb": size_bytes / 1024, "peak_memory_mb": mem.get("peak_memory_mb")}
    why = {"accuracy_drop": "no reference: pass --reference", "latency_ms": NOT_MEASURED_COREML,
           "peak_memory_mb": mem_note}
    budget_checks = check_budgets(measured, budgets, notes=why)

    run = {"name": path.name, "out_dir": str(path), "mode": mode, "artifact": str(artifact), "target": target,
           "threads": threads, "latency_runs": int(latency_runs), "data": ds.describe(),
           "reference": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint} for m in members],
           "host": host,
           "profile": None if prof is None else {k: prof.get(k) for k in (
               "name", "description", "runtime", "precision", "threads", "cpu", "emulator_cpu", "delegate",
               "budgets", "estimate", "source")}}
    passed = all(c["passed"] for c in checks) and all(b["passed"] for b in budget_checks)
    return {"schema": "compress.report/1", "kind": "validate", "tool": {"name": "compress", "version": __version__},
            "versions": versions(), "run": run, "rows": rows, "comparison": None, "compatibility": compatibility,
            "checks": checks, "budgets": budget_checks, "measured": measured, "latency": latency,
            "peak_memory": mem, "arm64_emulator": emulator, "size": {"bytes": size_bytes, "kb": size_bytes / 1024, "kb_unit": "1024 bytes"},
            "notes": notes, "passed": passed}
