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
``budgets`` (``compress.devices.budgets.check_budgets``), ``latency`` (host measurement and the device estimate)
and ``peak_memory`` (``compress.devices.peak_memory``). ``passed`` is true when every check and budget passed.

Parity is measured, never recalled. With one reference model ``validate`` runs it on the same real test
inputs and says what it is to the artifact (``report["reference"]``): the "identical file" (same sha256), the
"float twin" (a model file or folder whose verified compress manifest records the same distilled student,
target and training settings as the artifact's, in a float variant), a "different model" (e.g. a teacher, or a
file not shown to be the twin) or the "teacher"/"teacher ensemble" a folder's manifest names. The artifact's
output parity with it (max and p99 abs, relative difference, top-1 agreement) becomes the row's ``parity`` and
a check, bounded by ``max_logit_diff`` when given, else by ``tolerance_for(target, variant)`` for an
identical file (fp32 bound) or a float twin (the artifact's variant, from its manifest); against a different
model only agreement is reported. In a folder, the sha256 of the artifact is checked against the manifest (a
missing entry fails), and what ``report.json`` recorded at export is shown in ``report["recorded"]`` (and
as a check named "... (recorded at export ...)" when it describes this very file), never in a row.

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

from compress.config import SETTINGS, RunConfig
from compress.core import metrics as validation
from compress.core.cache import file_sha256, path_size
from compress.core.errors import InputError
from compress.data import load_data
from compress.devices import arm64_emu
from compress.devices.budgets import FLAGS, check_budgets, gather
from compress.devices.profiles import load_profile
from compress.export.registry import by_suffix, check_option, recorded_options, suffixes, TARGETS, tolerance_for, variant_name
from compress.pipeline import load_run_data, teacher_recipe
from compress.stages.evaluate import report_skeleton
from compress.stages.measure import host_latency, open_artifact, peak_memory
from compress.stages.streaming import is_keyword_task, keyword_task, remeasure_streaming, streaming_measured
from compress.teachers import Teacher, check_members, load_teachers, teacher_format, ensemble_probs


def _not_measured(backend) -> str:
    return (f"the {backend.runtime} runtime does not run on this host; its reference evaluator's speed and "
            "memory say nothing about a device")


def _host() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version()}


def _resolve(path: Path) -> tuple[str, Path, str, dict | None]:
    """(mode, artifact, target, manifest): mode "folder" or "file"."""
    models = "/".join(suffixes())
    if not path.exists():
        raise InputError(f"{path}: not found; expected a folder written by compress distill-and-export "
                         f"or an {models} model")
    if path.is_dir() and by_suffix(path) is None:
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise InputError(f"{path}: no manifest.json; expected a folder written by compress distill-and-export "
                             f"or an {models} model file")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            artifact, target = path / manifest["artifact"], manifest["target"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{mpath}: not a compress manifest ({exc})") from None
        if target not in TARGETS:
            raise InputError(f"{mpath}: target {target!r} is not one of {sorted(TARGETS)}")
        if not artifact.resolve().is_relative_to(path.resolve()) or artifact.resolve() == path.resolve():
            raise InputError(f"{mpath}: artifact {manifest['artifact']!r} lies outside the folder; expected the "
                             "folder's own model file (a manifest names a file inside its folder)")
        if not artifact.exists():
            raise InputError(f"{artifact}: the manifest's artifact is missing")
        return "folder", artifact, target, manifest
    backend = by_suffix(path)
    if backend is None:
        raise InputError(f"{path}: unknown model format {path.suffix!r}; expected one of {sorted(suffixes())} "
                         f"or a folder written by compress distill-and-export")
    return "file", path, backend.name, None


def _artifact_precision(recipe: dict) -> str:
    q = recipe.get("quantize", "none")
    target = recipe.get("target")
    if q == "none" and target in TARGETS:
        return variant_name(target, {**recorded_options(target, recipe), "scheme": "none"})
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
    if TARGETS[target].emulated_runner is None:
        runs = " and ".join(b.suffix for b in TARGETS.values() if b.emulated_runner is not None)
        raise InputError(f"--arm64-emulator: runs {runs} models, not {artifact.name}")
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


def _check_arguments(target: str, artifact: Path, prof: dict | None, threads, latency_runs, explicit: dict,
                     target_options: dict, max_logit_diff=None) -> int:
    """Every option checked before any work; returns the thread count."""
    if prof is not None and prof["runtime"] != target:
        raise InputError(f"--device {prof['name']}: the profile runs {prof['runtime']}, but {artifact.name} is "
                         f"a {target} model")
    threads = int(threads if threads is not None else (prof["threads"] if prof else 1))
    if threads < 1:
        raise InputError(f"--threads {threads}: expected an integer >= 1")
    if int(latency_runs) < 1:
        raise InputError(f"--latency-runs {latency_runs}: expected an integer >= 1")
    for key, value in explicit.items():
        if value is not None and not value >= 0:
            raise InputError(f"{FLAGS[key]} {value}: expected a number >= 0")
    if max_logit_diff is not None and not max_logit_diff >= 0:
        raise InputError(f"--max-logit-diff {max_logit_diff:g}: expected a number >= 0 (max abs logit difference)")
    for name, value in target_options.items():  # the flags are the targets' checks: this one's, of the right type
        check_option(target, name, value)
    return threads


def _evaluation_data(mode: str, path: Path, recipe: dict, data, data_format, reference, limit_test,
                     max_accuracy_drop, notes: list[str]):
    """(data set, teacher specs, limit_test used, (run configuration, keyword task) of a folder or None): the
    recipe's for a folder, the user's for a bare file."""
    if mode == "folder":
        data_spec, fmt = (data, data_format) if data is not None else (recipe.get("data"), recipe.get("data_format"))
        if data is not None:
            notes.append(f"data {data!r} given: evaluated on it instead of the recipe's data")
        specs = reference or list(recipe.get("teachers") or [])
        lt = limit_test if limit_test is not None else recipe.get("limit_test")
        cfg = recorded_config(recipe).with_settings(data=data_spec, data_format=fmt, limit_test=lt)
        ds = load_run_data(cfg)  # the run's own split, loader options and image size
        task = keyword_task(cfg, ds) if is_keyword_task(cfg) else None
        ds, keyword = (ds if task is None else task.data), (cfg, task)
    else:
        if data is None:
            raise InputError(f"{path}: a model file needs --data (the labelled data to evaluate it on: a path, "
                             "or --data digits for scikit-learn's digits); or give a folder written by compress "
                             "distill-and-export (it records its data)")
        if max_accuracy_drop is not None and not reference:
            raise InputError("--max-accuracy-drop: an accuracy drop needs a reference; give --reference "
                             "(a teacher: .onnx, TorchScript, .pt2 or a built-in name) or validate the folder "
                             "compress wrote (its manifest names the teachers)")
        specs, lt, keyword = reference or [], limit_test, None
        ds = load_data(data, data_format, limit_test=limit_test, seed=0)
    if not specs and max_accuracy_drop is not None:
        raise InputError("--max-accuracy-drop: the manifest names no teachers and no --reference was given")
    return ds, specs, lt, keyword


def recorded_config(recipe: dict) -> RunConfig:
    """The run configuration a folder's manifest recorded (settings this version does not know are left out)."""
    return RunConfig.from_settings(**{k: v for k, v in recipe.items() if k in SETTINGS})


def _declared_sample_shape(backend, artifact: Path) -> tuple | None:
    """The artifact's first input shape without the batch axis, as the file declares it (None entries:
    dynamic); None when the file declares none (or ``describe_io`` cannot read it)."""
    try:
        shape = backend.describe_io(artifact)["inputs"][0].get("shape")
    except Exception:  # a file that does not describe itself is caught when it runs
        return None
    if not shape:
        return None
    return tuple(d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape[1:])


def _sequence_samples(backend, artifact: Path, ds, notes: list[str]) -> None:
    """Feed a sequence model its (T, F) samples: ``compress.data`` reads a 3-D array (n, T, F) as grayscale
    images and adds a channel axis, (n, 1, T, F); when the artifact declares a per-sample input of exactly
    (T, F), that added axis is dropped (its one-channel normalization is a single mean and std, so the
    values are unchanged), for the artifact and the reference alike."""
    declared = _declared_sample_shape(backend, artifact)
    data = tuple(ds.x_test.shape[1:])
    if (declared is None or len(data) != 3 or data[0] != 1 or len(declared) != len(data) - 1
            or any(d is not None and d != s for d, s in zip(declared, data[1:]))):
        return
    ds.x_test = ds.x_test[:, 0]
    ds.x_train = ds.x_train[:, 0]
    ds.input_kind = "features"
    notes.append(f"{artifact.name} takes samples of shape {data[1:]} (a sequence): the data's (n, 1, "
                 f"{', '.join(map(str, data[1:]))}) arrays were fed without their one-channel axis")


def _run_artifact(runner, artifact: Path, ds) -> np.ndarray:
    """The artifact's outputs on the test split; a model that does not fit the data is an InputError."""
    x = ds.x_test
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
    return logits


def _reference_members(specs: list, ds, recipe: dict, recipe_like: bool) -> list:
    """The reference model(s): teacher specs via ``load_teachers``; one model file of any registered target
    (e.g. a .tflite or .mlpackage float twin) in that target's runner."""
    if len(specs) == 1 and by_suffix(specs[0]) is not None and Path(specs[0]).exists():
        try:
            teacher_format(specs[0])
        except InputError:
            path, backend = Path(specs[0]), by_suffix(specs[0])
            runner = backend.open(path, 1)
            member = Teacher(path.name, backend.name, lambda x: validation.batched(runner.predict, x),
                             file_sha256(path))
            check_members([member], ds.x_test[:8], ds.num_classes)
            return [member]
    return load_teachers(specs, ds, epochs=int(recipe.get("teacher_epochs") or 10) if recipe_like else 10,
                         seed=int(recipe.get("seed", 0)) if recipe_like else 0,
                         recipe=_teacher_recipe(recipe, ds) if recipe_like else None)


def _teacher_recipe(recipe: dict, ds):
    """How the run trained its built-in members (augmentation, patience, epochs), from its recorded recipe,
    so the same members come out of the cache instead of being trained differently."""
    config = recorded_config(recipe)
    return teacher_recipe(config.with_settings(teacher_epochs=config.teachers.epochs or 10), ds)


def _member_runtime(m) -> str:
    if m.module is not None:
        return "torch"
    backend = TARGETS.get(m.kind) or (by_suffix(m.artifact) if m.artifact is not None else None)
    return backend.runtime if backend is not None else m.kind


def _reference_row(specs: list, ds, recipe: dict, recipe_like: bool):
    """The reference model(s) on the same test split: (members, row, predictions, accuracy)."""
    members = _reference_members(specs, ds, recipe, recipe_like)
    probs = ensemble_probs(members, ds.x_test)
    ref_pred, ref_acc = np.argmax(probs, axis=1), validation.accuracy(probs, ds.y_test)
    kinds = {_member_runtime(m) for m in members}
    params = [m.params for m in members]
    row = {"model": "reference (teacher ensemble)" if len(members) > 1 else f"reference {members[0].name}",
           "role": "teacher", "runtime": kinds.pop() if len(kinds) == 1 else "mixed runtimes",
           "accuracy": ref_acc, "agreement_with_teacher": 1.0,
           "params": None if any(p is None for p in params) else int(sum(params)), "macs": None,
           "size_bytes": None, "latency_ms": None, "parity": None}
    return members, row, ref_pred, ref_acc


# recipe keys that, with the manifest's student, teachers and data, identify one distilled student
_SAME_STUDENT_KEYS = ("student", "loss", "temperature", "alpha", "epochs", "lr", "optimizer", "weight_decay",
                      "batch_size", "seed", "unlabelled", "limit_train", "jitter", "bias_correction", "qat")


def _reference_specs(reference: list | None) -> list | None:
    """``--reference`` values with a folder written by compress replaced by its artifact's path."""
    if not reference:
        return reference
    specs = []
    for spec in reference:
        folder = Path(spec)
        if folder.is_dir() and by_suffix(folder) is None and (folder / "manifest.json").is_file():
            try:
                spec = str(folder / json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["artifact"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"--reference {folder}: manifest.json names no artifact ({exc})") from None
        specs.append(spec)
    return specs


def _verified_manifest(model: Path) -> dict | None:
    """The compress manifest beside ``model`` that names it as the artifact with its current sha256, or None."""
    try:
        manifest = json.loads((model.parent / "manifest.json").read_text(encoding="utf-8"))
        entry = manifest["files"][model.name] if manifest["artifact"] == model.name else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest if entry and entry.get("sha256") == file_sha256(model) else None


def _variant(manifest: dict) -> str | None:
    """The numeric form the manifest's recipe exported ("fp32", "fp16", "int8", ...), or None."""
    recipe, backend = manifest.get("recipe") or {}, TARGETS.get(manifest.get("target"))
    if backend is None:
        return None
    options = {**recorded_options(backend.name, recipe), "scheme": recipe.get("quantize") or "none"}
    try:
        return variant_name(backend.name, options)
    except (KeyError, ValueError, TypeError):
        return None


def _relation(specs: list, artifact: Path, target: str, from_manifest: bool) -> tuple[str, str, str | None]:
    """(relation, why, variant whose bound applies): what the reference is to the artifact."""
    if from_manifest:
        return ("teacher" if len(specs) == 1 else "teacher ensemble",
                "the teacher(s) manifest.json names: a different model", None)
    if len(specs) != 1:
        return "teacher ensemble", f"an ensemble of {len(specs)} reference models", None
    ref = Path(specs[0])
    if by_suffix(ref) is None or by_suffix(ref).name != target or not ref.exists():
        return "different model", f"{ref.name} is not a model file of target {target!r}", None
    own = _verified_manifest(artifact)
    own_variant = _variant(own) if own else None
    if file_sha256(ref) == file_sha256(artifact):
        return "identical file", f"{ref} has the artifact's sha256 (the same file)", "fp32"
    theirs = _verified_manifest(ref)
    backend = TARGETS[target]
    floats = {"fp32", backend.int8_fallback.reference_variant if backend.int8_fallback else "fp32"}
    if own and theirs and own_variant and _variant(theirs) in floats and all(
            own.get(k) == theirs.get(k) for k in ("target", "student", "teachers", "data")) and all(
            (own.get("recipe") or {}).get(k) == (theirs.get("recipe") or {}).get(k) for k in _SAME_STUDENT_KEYS):
        return ("float twin", f"{ref} is the {_variant(theirs)} export of the same distilled student as this "
                              f"{own_variant} artifact (both manifests verified by sha256)", own_variant)
    return ("different model", f"{ref.name} is not shown to be this artifact's float twin (that needs the same "
                               f"file, or both exported by compress from the same student)", None)


def _reference_relation(specs: list, artifact: Path, target: str, from_manifest: bool, max_logit_diff) -> dict:
    """``report["reference"]``: what the reference is, and which parity bound applies (None: agreement only)."""
    if max_logit_diff is not None and len(specs) != 1:
        raise InputError("--max-logit-diff: compares the artifact's logits with one reference model; "
                         + (f"the reference is an ensemble of {len(specs)}; give one --reference" if specs else
                            "give --reference (the float export of this model, or a teacher .onnx)"))
    relation, why, variant = _relation(specs, artifact, target, from_manifest)
    bound, source = None, ("none: agreement only" + (" (give --max-logit-diff to bound the logit difference)"
                                                     if len(specs) == 1 else ""))
    if max_logit_diff is not None:
        bound, source = {"max_abs": float(max_logit_diff)}, "--max-logit-diff"
    elif variant is not None:
        try:
            bound = tolerance_for(target, variant)
            source = f"default for {target} {variant} (compress.export.registry.tolerance_for)"
        except KeyError:
            source = f"none: no parity tolerance for {target} {variant} (give --max-logit-diff)"
    return {"specs": list(specs), "relation": relation, "why": why, "variant": variant, "bound": bound,
            "bound_source": source}


def _reference_parity(relation: dict, members: list, ds, logits: np.ndarray, checks: list) -> dict | None:
    """The artifact's output parity with the one reference on the same test inputs (None: no bound applies)."""
    if relation["bound"] is None:
        return None
    par = validation.parity(members[0].logits(ds.x_test), logits, relation["bound"])
    par.update(reference=members[0].name, relation=relation["relation"], bound_source=relation["bound_source"])
    checks.append({"name": f"output parity vs reference {members[0].name} ({relation['relation']})",
                   "passed": par["passed"],
                   "detail": f"{validation.describe_parity(par)} on {len(ds.x_test)} real test samples; "
                             f"bound: {relation['bound_source']}"})
    return par


def _latency_and_memory(backend, runner, artifact: Path, x: np.ndarray, threads: int, latency_runs: int,
                        prof: dict | None) -> tuple[dict | None, dict, dict, str | None]:
    """Host latency, the device estimate, and peak memory: (lat, latency section, memory, memory note)."""
    host = _host()
    host_label = (f"measured on this host ({host['machine']}), {threads} thread{'s' if threads != 1 else ''}"
                  + (f" (the host has {host['cpus']} CPUs)" if host["cpus"] and threads > host["cpus"] else ""))
    mem_note = None
    if runner.measured:
        lat = host_latency(runner, x, latency_runs)
        latency = {"host": {"p50_ms": lat["p50"], "p90_ms": lat["p90"], "runs": lat["runs"], "threads": threads,
                            "batch": 1, "label": host_label}}
        mem = peak_memory(backend.name, artifact, x, threads, prof)
        if mem.get("peak_memory_mb") is None:
            mem_note = mem.get("note")
    else:
        lat = None
        latency = {"host": {"p50_ms": None, "label": f"not measured here: {_not_measured(backend)}"}}
        mem = {"peak_memory_mb": None, "note": _not_measured(backend)}
        mem_note = _not_measured(backend)
    est = (prof or {}).get("estimate")
    if lat is not None and est:
        factor = float(est["host_to_device_latency_factor"])
        latency["device_estimate"] = {"p50_ms": lat["p50"] * factor, "factor": factor, "basis": est["basis"],
                                      "label": f"estimate for {prof['name']}: host p50 x {factor:g} ({est['basis']})"}
    else:
        why = ("no host measurement" if lat is None else
               f"profile {prof['name']} gives no host_to_device_latency_factor with a basis" if prof else "no device profile")
        latency["device_estimate"] = {"p50_ms": None, "label": f"not estimated ({why})"}
    latency["host_label"] = host_label
    return lat, latency, mem, mem_note


def _manifest_checks(artifact: Path, manifest: dict, ds, data, checks: list) -> bool:
    """The artifact's sha256 against the manifest (a missing entry fails) and the data's normalization;
    returns whether the artifact is the file the manifest describes."""
    files = manifest.get("files")
    entry = files.get(artifact.name) if isinstance(files, dict) else None
    recorded = entry.get("sha256") if isinstance(entry, dict) else None
    ok = recorded is not None and file_sha256(artifact) == recorded
    checks.append({"name": "artifact matches manifest.json", "passed": ok,
                   "detail": f"manifest has no sha256 for {artifact.name}" if recorded is None else
                             f"sha256 of {artifact.name} {'matches' if ok else 'DIFFERS from'} the manifest"})
    if data is None and not _same_normalization(ds.normalization, manifest.get("normalization", {})):
        checks.append({"name": "data matches the manifest", "passed": False,
                       "detail": "the recipe's data now normalizes differently from the manifest "
                                 "(the data changed since export)"})
    return ok


def _recorded_checks(path: Path, artifact: Path, manifest: dict, ds, data, lt, recipe: dict, accuracy: float,
                     runner, checks: list, notes: list, prof: dict | None) -> dict | None:
    """Checks against what compress recorded for this folder; returns ``report["recorded"]``: the values
    report.json holds from export time, labelled as recorded (never copied into a measured row)."""
    same_file = _manifest_checks(artifact, manifest, ds, data, checks)
    recorded = None
    if (path / "report.json").is_file():
        try:
            recorded = json.loads((path / "report.json").read_text(encoding="utf-8"))
        except ValueError:
            notes.append("report.json is not valid JSON: export-time checks not carried")
    exported = [r for r in (recorded or {}).get("rows", []) if r.get("role") == "student" and r.get("size_bytes")]
    section = None
    if exported:
        rec = exported[-1]
        section = {"source": "report.json", "note": "recorded when the artifact was exported, not measured by this "
                   "run", "describes_this_file": same_file, "model": rec.get("model"), "runtime": rec.get("runtime"),
                   "accuracy": rec.get("accuracy"), "parity": rec.get("parity")}
        if rec.get("parity") and same_file:
            checks.append({"name": f"parity vs torch student (recorded at export, {rec['runtime']})",
                           "passed": bool(rec["parity"]["passed"]),
                           "detail": validation.describe_parity(rec["parity"]) + " (from report.json)"})
        elif rec.get("parity"):
            notes.append(f"report.json's export-time parity is not carried: it describes another file than this "
                         f"{artifact.name} (see the sha256 check); it is under 'recorded' only")
        same_engine = str(rec.get("runtime", "")).split(" (")[0] == runner.engine.split(" (")[0]
        same_data = data is None and lt == recipe.get("limit_test")
        if same_engine and same_data and rec.get("accuracy") is not None:
            diff = abs(accuracy - rec["accuracy"])
            ok = diff <= 1.0 / len(ds.y_test) + 1e-9
            checks.append({"name": "accuracy reproduces report.json", "passed": ok,
                           "detail": f"{100 * accuracy:.2f}% now vs {100 * rec['accuracy']:.2f}% recorded on "
                                     f"{len(ds.y_test)} test samples ({runner.engine})"})
    if prof and prof["precision"] != _artifact_precision(recipe):
        notes.append(f"profile {prof['name']} expects {prof['precision']}, the artifact is "
                     f"{_artifact_precision(recipe)}")
    return section


def _student_row(artifact: Path, target: str, runner, logits: np.ndarray, ds, ref_pred, student: dict,
                 size_bytes: int, lat: dict | None, threads: int, host_label: str, parity: dict | None) -> dict:
    """The artifact's row: every value measured by this run (``parity`` too: vs the reference, or None)."""
    return {"model": f"{artifact.name} ({target})", "role": "student", "runtime": runner.engine,
            "accuracy": validation.accuracy(logits, ds.y_test),
            "agreement_with_teacher": None if ref_pred is None else validation.agreement(logits, ref_pred),
            "params": student.get("params"), "macs": student.get("macs"), "size_bytes": size_bytes,
            "latency_ms": None if lat is None else {**lat, "threads": threads, "where": host_label},
            "parity": parity}


def validate(path, *, profile=None, data=None, data_format=None, reference=None, threads=None,
             max_accuracy_drop=None, max_latency_ms=None, max_size_kb=None, max_peak_memory_mb=None,
             target_options=None, latency_runs=100, limit_test=None, arm64_samples=None, max_logit_diff=None,
             max_false_accepts_per_hour=None, max_false_reject_rate=None, max_macs_per_second=None) -> dict:
    """Validate an artifact folder or model file in its runtime; see the module docstring. InputError on bad input."""
    path = Path(path)
    mode, artifact, target, manifest = _resolve(path)
    backend = TARGETS[target]
    prof = None if profile is None else profile if isinstance(profile, dict) else load_profile(profile)
    explicit = {"max_accuracy_drop": max_accuracy_drop, "latency_ms": max_latency_ms, "size_kb": max_size_kb,
                "peak_memory_mb": max_peak_memory_mb, "max_false_accepts_per_hour": max_false_accepts_per_hour,
                "max_false_reject_rate": max_false_reject_rate, "max_macs_per_second": max_macs_per_second}
    threads = _check_arguments(target, artifact, prof, threads, latency_runs, explicit, target_options or {},
                               max_logit_diff)
    reference = _reference_specs([reference] if isinstance(reference, str) else list(reference) if reference else None)
    notes: list[str] = []
    recipe = (manifest or {}).get("recipe", {})
    ds, specs, lt, keyword = _evaluation_data(mode, path, recipe, data, data_format, reference, limit_test, max_accuracy_drop,
                                     notes)
    relation = (_reference_relation(specs, artifact, target, mode == "folder" and not reference, max_logit_diff)
                if specs or max_logit_diff is not None else None)
    _sequence_samples(backend, artifact, ds, notes)
    runner = open_artifact(target, artifact, threads, prof)
    logits = _run_artifact(runner, artifact, ds)
    rows, checks, members, ref_pred, ref_acc, parity = [], [], [], None, None, None
    if specs:
        members, ref_row, ref_pred, ref_acc = _reference_row(specs, ds, recipe, mode == "folder" and not reference)
        rows.append(ref_row)
        parity = _reference_parity(relation, members, ds, logits, checks)
        notes.append(f"reference {', '.join(m.name for m in members)}: {relation['relation']} ({relation['why']}); "
                     f"parity bound: {relation['bound_source']}")
    emulator = _arm64_check(artifact, target, ds.x_test, threads, arm64_samples, checks) if arm64_samples else None
    lat, latency, mem, mem_note = _latency_and_memory(backend, runner, artifact, ds.x_test, threads, latency_runs, prof)
    size_bytes = path_size(artifact)
    rows.append(_student_row(artifact, target, runner, logits, ds, ref_pred, (manifest or {}).get("student", {}),
                             size_bytes, lat, threads, latency.pop("host_label"), parity))
    accuracy = rows[-1]["accuracy"]
    recorded = (None if not manifest else
                _recorded_checks(path, artifact, manifest, ds, data, lt, recipe, accuracy, runner, checks, notes, prof))
    compatibility = (None if backend.check_artifact is None else
                     backend.check_artifact(artifact, {**backend.defaults, **(target_options or {})}, checks))
    streaming = _streaming_section(path, manifest, keyword, threads, arm64_samples, checks)
    keyword_measured, keyword_why = streaming_measured({"streaming": streaming})
    measured = {"accuracy_drop": None if ref_acc is None else 100 * (ref_acc - accuracy),
                "latency_ms": None if lat is None else lat["p50"],
                "size_kb": size_bytes / 1024, "peak_memory_mb": mem.get("peak_memory_mb"), **keyword_measured}
    why = {"accuracy_drop": "no reference: pass --reference", "latency_ms": _not_measured(backend),
           "peak_memory_mb": mem_note, **keyword_why}
    budget_checks = check_budgets(measured, gather(prof, explicit), notes=why)
    report = report_skeleton(rows, None, compatibility, checks, kind="validate", budgets=budget_checks,
                             measured=measured, latency=latency, peak_memory=mem, arm64_emulator=emulator,
                             size={"bytes": size_bytes, "kb": size_bytes / 1024, "kb_unit": "1024 bytes"},
                             reference=relation, recorded=recorded, notes=notes,
                             **({"streaming": streaming} if streaming else {}))
    report["run"] = _run_section(path, mode, artifact, target, threads, latency_runs, ds, members, prof)
    report["passed"] = report["passed"] and all(b["passed"] for b in budget_checks)
    return report


def _streaming_section(path: Path, manifest: dict | None, keyword, threads: int, arm64_samples, checks: list) -> dict | None:
    """A keyword folder's streaming file re-measured on the rebuilt test streams (``remeasure_streaming``)."""
    entry = (manifest or {}).get("streaming")
    if not entry or keyword is None or keyword[1] is None:
        return None
    recorded = json.loads((path / "report.json").read_text()).get("streaming") if (path / "report.json").is_file() else None
    section, stream_checks = remeasure_streaming(keyword[0], keyword[1], path / entry["file"], recorded, threads,
                                                 arm64_hops=max(200, int(arm64_samples)) if arm64_samples else None)
    checks.extend(stream_checks)
    return section


def _run_section(path: Path, mode: str, artifact: Path, target: str, threads: int, latency_runs: int, ds,
                 members: list, prof: dict | None) -> dict:
    return {"name": path.name, "out_dir": str(path), "mode": mode, "artifact": str(artifact), "target": target,
            "threads": threads, "latency_runs": int(latency_runs), "data": ds.describe(),
            "reference": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint} for m in members],
            "host": _host(),
            "profile": None if prof is None else {k: prof.get(k) for k in (
                "name", "description", "runtime", "precision", "threads", "cpu", "emulator_cpu",
                *TARGETS[prof["runtime"]].profile_keys, "budgets", "estimate", "source")}}
