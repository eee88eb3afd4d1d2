"""``distill-and-export``: data -> teacher ensemble -> cached soft targets -> student -> export -> validate.

Each stage is a plain function call; this module only wires them together, shows progress and writes
``<out>/<name>/`` atomically (everything goes to a temporary folder that replaces the old one at the end).
"""

from __future__ import annotations

import contextlib
import copy
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from compress import __version__, models
from compress.atomic import replace_path
from compress.bias_correction import parse_correction, shift_class_bias
from compress.cache import cache_dir, content_key, file_sha256, path_size
from compress.data import Dataset, load_data
from compress.errors import InputError
from compress.losses import LOSSES
from compress.quantize import NEEDS_CALIBRATION, export_options, variant_name
from compress.teachers import Teacher, ensemble_probs, load_teachers, soft_targets, softmax
from compress.train import fit, pick_device, predict_logits, seed_everything
from devices import validation
from devices.runner import Runner
from devices.io_spec import IO_DESCRIBERS
from devices.runners import RUNNERS
from export import TARGETS
from export.common import ModelInfo


@dataclass
class RunConfig:
    """Everything one run needs; every field is a CLI option (and later a recipe key)."""

    target: str = "onnx"
    quantize: str = "none"
    precision: str | None = None  # coreml compute precision (fp16 default there)
    deployment_target: str | None = None  # coreml minimum deployment target (iOS16 default there)
    min_runtime: str | None = None  # tflite: oldest LiteRT/TFLite runtime the app ships (e.g. "2.14")
    calibration_samples: int = 300
    data: str | None = None  # None / "digits" = the embedded default
    data_format: str | None = None
    data_options: dict = field(default_factory=dict)  # loader options (split, sample_rate, label_pattern, ...)
    teachers: list[str] = field(default_factory=lambda: list(models.DEFAULT_TEACHERS))
    student: str = models.DEFAULT_STUDENT
    loss: str = "hinton"
    temperature: float = 2.0
    alpha: float = 0.1
    epochs: int = 100
    teacher_epochs: int = 10
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64
    seed: int = 0
    threads: int | None = None  # None: the device profile's, else 1
    latency_runs: int = 100
    out: str = "dist"
    name: str | None = None
    device: str | None = None
    unlabelled: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    jitter: int = 0
    int8_budget: float | None = None  # int8 (every target): accuracy-drop budget in points; worst layers stay float
    qat: bool = False  # quantization-aware distillation before int8 conversion (tflite int8)
    qat_epochs: int = 3
    bias_correction: str | None = None  # "LABEL=DELTA": raise one class's output bias after distillation
    profile: str | None = None  # device profile name or .toml path: threads and budgets
    max_accuracy_drop: float | None = None  # budgets (points, ms, kB, MB); a breach fails the run (exit 1)
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    max_peak_memory_mb: float | None = None
    recipe_path: str | None = None  # the recipe file this run came from (its hash goes into the manifest)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"--target {self.target!r}: unknown; expected one of {sorted(TARGETS)}")
        from compress.train import OPTIMIZERS

        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer {self.optimizer!r}: unknown; expected one of {sorted(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss {self.loss!r}: unknown; expected one of {sorted(LOSSES)}")
        if self.student not in models.MODELS:
            raise InputError(f"--student {self.student!r}: unknown; expected one of {sorted(models.MODELS)}")
        if not self.temperature > 0:
            raise InputError(f"--temperature {self.temperature}: expected a number > 0")
        if not 0 <= self.alpha <= 1:
            raise InputError(f"--alpha {self.alpha}: expected a number in [0, 1]")
        for opt in ("epochs", "batch_size", "threads", "latency_runs"):
            if getattr(self, opt) is not None and getattr(self, opt) < 1:
                raise InputError(f"--{opt.replace('_', '-')} {getattr(self, opt)}: expected an integer >= 1")
        export_options(self.target, self.quantize, self.precision, self.deployment_target)  # unsupported combinations fail here
        if self.qat and (self.target, self.quantize) != ("tflite", "int8"):
            raise InputError(f"--qat: quantization-aware distillation is available for --target tflite --quantize int8, "
                             f"not --target {self.target} --quantize {self.quantize}")
        if self.int8_budget is not None and self.quantize != "int8":
            raise InputError(f"--int8-budget: the float fallback applies to --quantize int8, "
                             f"not --quantize {self.quantize}")
        if self.int8_budget is not None and self.qat:
            raise InputError("--int8-budget with --qat: choose one (the fallback re-quantizes the float student)")
        if self.int8_budget is not None and self.int8_budget < 0:
            raise InputError(f"--int8-budget {self.int8_budget}: expected an accuracy drop in points >= 0")
        if self.min_runtime is not None and self.target != "tflite":
            raise InputError(f"--min-runtime {self.min_runtime!r}: only the tflite target has a runtime-version check")
        if self.teacher_epochs < 1:
            raise InputError(f"--teacher-epochs {self.teacher_epochs}: expected an integer >= 1")


def _progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet, transient=False)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "compress": __version__}
    for pkg in ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "coremltools", "ai-edge-litert", "litert-torch"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def member_target(target: str) -> str:
    """Where teacher members are exported and timed: the student's runtime when it runs here, else ONNX."""
    return target if target in ("onnx", "tflite") else "onnx"


def _member_artifact(member: Teacher, data: Dataset, target: str) -> tuple[Path, str] | None:
    """The member as a file for ``target`` (fp32, cached by content), so it is timed like the student.

    Returns (path, target it runs in). A member given as an ONNX file has no torch module to convert, so
    it stays in ONNX Runtime; None when the member cannot be exported (it is then timed in torch).
    """
    if member.onnx_path is not None and (target == "onnx" or member.module is None):
        return member.onnx_path, "onnx"
    if member.module is None:
        return None
    export_fn, file_name = TARGETS[target]
    path = cache_dir(f"teacher-{target}") / f"{member.fingerprint[:32]}{Path(file_name).suffix}"
    if not path.is_file():
        info = ModelInfo(name=member.name, labels=data.labels, normalization=data.normalization,
                         description=f"teacher member {member.name}")
        try:
            export_fn(member.module, torch.as_tensor(data.x_test[:1]), path, info, **export_options(target, "none"))
        except InputError:
            return None
    return path, target


def _row(model: str, role: str, runtime: str, logits: np.ndarray | None, data: Dataset, teacher_pred: np.ndarray,
         params, macs, size, latency, threads, parity=None) -> dict:
    return {
        "model": model, "role": role, "runtime": runtime,
        "accuracy": None if logits is None else validation.accuracy(logits, data.y_test),
        "agreement_with_teacher": None if logits is None else validation.agreement(logits, teacher_pred),
        "params": params, "macs": macs, "size_bytes": size,
        "latency_ms": None if latency is None else {**latency, "threads": threads},
        "parity": parity,
    }


def _epochs_done(checkpoint: Path) -> int:
    if not checkpoint.is_file():
        return 0
    return len(torch.load(str(checkpoint), map_location="cpu", weights_only=False)["history"])


def _resolve_profile(cfg: RunConfig) -> dict | None:
    """Load the device profile; its threads apply when none were given, its budgets fill unset ones."""
    if cfg.profile is None:
        cfg.threads = cfg.threads or 1
        return None
    from devices.profiles import load_profile

    profile = load_profile(cfg.profile)
    if profile["runtime"] != cfg.target:
        raise InputError(f"--device {profile['name']!r}: the profile runs {profile['runtime']}, "
                         f"but the target is {cfg.target}; expected a {cfg.target} profile")
    cfg.threads = cfg.threads or int(profile.get("threads") or 1)
    return profile


def _init_distributed() -> tuple[int, int]:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on GPUs)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    from compress.train import distributed

    return distributed()


def _student_checkpoint(cfg: RunConfig, data: Dataset, members: list[Teacher], world: int) -> Path:
    """Where this run's student is checkpointed every epoch: keyed by everything that changes training."""
    key = content_key("student-checkpoint", 1, cfg.student, data.fingerprint(), len(data.x_train),
                      data.y_train is not None, [m.fingerprint for m in members], cfg.loss, float(cfg.temperature),
                      float(cfg.alpha), cfg.epochs, float(cfg.lr), cfg.optimizer, float(cfg.weight_decay),
                      cfg.batch_size, cfg.seed, world)
    return cache_dir("students") / f"{cfg.student}-{key[:24]}.pt"


def run(cfg: RunConfig, console: Console | None = None, quiet: bool = False) -> dict | None:
    """Run the whole pipeline; returns the report (also written to ``<out>/<name>/report.json``).

    Under ``torchrun`` every process trains its share; only rank 0 exports, validates and returns the
    report (the others return None).
    """
    cfg.validate()
    console = console or Console(stderr=True)
    started = time.perf_counter()
    profile = _resolve_profile(cfg)
    rank, world = _init_distributed()
    data = load_data(cfg.data, cfg.data_format, limit_train=cfg.limit_train, limit_test=cfg.limit_test,
                     unlabelled=cfg.unlabelled, seed=cfg.seed, **cfg.data_options)
    name = cfg.name or f"{data.name}-{cfg.student}-{cfg.target}" + ("" if cfg.quantize == "none" else f"-{cfg.quantize}")
    out_root = Path(cfg.out)
    final_dir = out_root / name
    if rank == 0:
        try:
            out_root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=out_root, prefix=".write-test-")
            probe.close()
        except OSError as exc:
            raise InputError(f"--out {str(out_root)!r}: cannot write there ({exc.strerror or exc}); "
                             "expected a folder this user can create and write in") from None
        if final_dir.exists() and not final_dir.is_dir():
            raise InputError(f"--out {str(final_dir)!r}: exists and is not a folder; expected a folder name for "
                             "the run's artifacts (or pass another --name)")
    seed_everything(cfg.seed)  # the student's initial weights depend only on the seed
    student = models.build(cfg.student, data.input_shape, data.num_classes)
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())

    with _progress(console, quiet or rank != 0) as progress:
        # 1. teachers, then 2. soft targets once per (teacher, transfer set, T): rank 0 computes and caches
        # them; the other processes wait, then read the same cache files (read-only memmap).
        if rank != 0:
            torch.distributed.barrier()
        task = progress.add_task("teacher members", total=len(cfg.teachers))
        members = load_teachers(cfg.teachers, data, epochs=cfg.teacher_epochs, seed=cfg.seed, device=cfg.device,
                                jitter_pixels=cfg.jitter,
                                on_member=lambda i, spec, fmt: progress.update(task, completed=i, description=f"teacher {spec}"))
        progress.update(task, completed=len(members), description="teacher members")
        targets, targets_cached = soft_targets(members, data.x_train, cfg.temperature,
                                               content_key(data.fingerprint(), len(data.x_train)))
        if rank == 0 and world > 1:
            torch.distributed.barrier()
        # 3. distillation, checkpointed every epoch (an interrupted run resumes from the last one)
        loss_fn = LOSSES[cfg.loss]
        labels = None if data.y_train is None else torch.as_tensor(data.y_train)
        checkpoint = _student_checkpoint(cfg, data, members, world)
        done = _epochs_done(checkpoint)
        if done and rank == 0:
            console.print(f"{'student already trained' if done >= cfg.epochs else f'resuming from epoch {done}/{cfg.epochs}'}"
                          f" (checkpoint {checkpoint})", highlight=False, soft_wrap=True, markup=False)
        task = progress.add_task(f"distilling {cfg.student} (T={cfg.temperature:g})", total=cfg.epochs, completed=done)

        def batch_loss(logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            soft = torch.as_tensor(np.asarray(targets[idx]), device=logits.device)
            hard = None if labels is None else labels[idx].to(logits.device)
            return loss_fn(logits, soft, hard, cfg.temperature, cfg.alpha)

        history = fit(student, data.x_train, batch_loss, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                      optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, seed=cfg.seed, device=device,
                      checkpoint=checkpoint, data_parallel=world > 1, on_epoch=lambda e, l: progress.update(task, completed=e + 1))
        if world > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            if rank != 0:
                return None
        student = student.cpu().eval()
        if cfg.bias_correction:
            shift_class_bias(student, *parse_correction(cfg.bias_correction, data.labels))

        # 4. export into a temporary folder
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_root))
        try:
            task = progress.add_task(f"exporting to {cfg.target}", total=1)
            export_fn, file_name = TARGETS[cfg.target]
            info = ModelInfo(name=name, labels=data.labels, normalization=data.normalization,
                             input_kind=data.input_kind, description=f"{cfg.student} distilled from {len(members)} teachers on {data.name}",
                             version=__version__)
            artifact = tmp_dir / file_name
            options = export_options(cfg.target, cfg.quantize, cfg.precision, cfg.deployment_target)
            if (cfg.target, cfg.quantize) in NEEDS_CALIBRATION:
                calibration_idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(data.x_train))[:cfg.calibration_samples])
                options["calibration"] = data.x_train[calibration_idx]
            example = torch.as_tensor(data.x_test[:1])
            source = student  # the torch model the artifact is checked against
            fallback = None  # what the int8 float fallback kept, when asked for
            if cfg.qat:
                from compress.qat import export_tflite, qat_distill

                progress.update(task, description=f"quantization-aware distillation ({cfg.qat_epochs} epochs)")
                source = qat_distill(copy.deepcopy(student), data.x_train, targets, data.y_train,
                                     temperature=cfg.temperature, alpha=cfg.alpha, epochs=cfg.qat_epochs,
                                     lr=cfg.lr / 10, seed=cfg.seed, calibration=options["calibration"])
                export_tflite(source, example, artifact, info)
            elif cfg.int8_budget is not None:
                fallback = _int8_with_fallback(cfg, student, example, artifact, info, calibration_idx, data,
                                               options, tmp_dir)
            else:
                export_fn(student, example, artifact, info, **options)
            (tmp_dir / "labels.txt").write_text("\n".join(data.labels) + "\n")
            progress.update(task, completed=1)

            # 5. validate and time, teacher and student in the same runtime
            task = progress.add_task("validating and timing", total=len(members) + 3)
            variant = variant_name(cfg.target, options) + ("-qat" if cfg.qat else "")
            report = _validate(cfg, data, members, student, artifact, variant, progress, task, source)
            if fallback is not None:
                report["quantization_fallback"] = fallback
                report["checks"].append({
                    "name": f"int8 accuracy drop within {cfg.int8_budget:g} points", "passed": fallback["within_budget"],
                    "detail": f"drop {100 * fallback['drop']:.2f} points on {fallback['eval_samples']} held-out training "
                              f"samples; kept in float: {', '.join(fallback['kept_in_float']) or 'nothing'}"})
                report["passed"] = all(c["passed"] for c in report["checks"])
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise

    report["budgets"] = _check_budgets(cfg, profile, report, artifact, data)
    report["passed"] = report["passed"] and all(b["passed"] for b in report["budgets"])
    report["run"].update({
        "name": name, "out_dir": str(final_dir), "target": cfg.target, "threads": cfg.threads,
        "data": data.describe(), "teachers": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint,
                                               "cached": m.cached} for m in members],
        "student": cfg.student, "loss": cfg.loss, "temperature": cfg.temperature, "alpha": cfg.alpha,
        "epochs": cfg.epochs, "teacher_epochs": cfg.teacher_epochs, "seed": cfg.seed, "device": str(device),
        "world_size": world, "optimizer": cfg.optimizer, "profile": None if profile is None else {k: profile.get(k) for k in (
            "name", "description", "runtime", "precision", "threads", "cpu", "budgets", "source")},
        "soft_targets_cached": targets_cached, "final_train_loss": history[-1] if history else None,
        "wall_time_s": round(time.perf_counter() - started, 2),
    })
    try:
        (tmp_dir / "report.json").write_text(json.dumps(report, indent=2))
        from devices import html_report

        html_report.write(report, tmp_dir / "report.html")
        manifest = _manifest(cfg, data, members, student, tmp_dir, file_name, name)
        (tmp_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        replace_path(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return report


def _validate(cfg: RunConfig, data: Dataset, members: list[Teacher], student: torch.nn.Module, artifact: Path,
              variant: str, progress: Progress, task, source: torch.nn.Module) -> dict:
    """Measure every row; ``source`` is the torch model the artifact was converted from (the student, or
    its quantization-aware int8 graph), the reference for parity."""
    threads, runs = cfg.threads, cfg.latency_runs
    x, shape = data.x_test, data.input_shape
    teacher_probs = ensemble_probs(members, x)
    teacher_pred = np.argmax(teacher_probs, axis=1)
    rows, checks = [], []

    # members, each exported (fp32) to the student's runtime and timed there like the student
    m_target = member_target(cfg.target)
    member_runners: list[Runner] = []
    member_targets: list[str] = []
    member_rows = []
    for m in members:
        torch_logits = m.logits(x)
        exported = _member_artifact(m, data, m_target)
        macs = models.count_macs(m.module, shape) if m.module is not None and m.kind != "pt2" else None
        if exported is None:
            with torch_threads(threads):
                lat = validation.measure_latency(lambda b: m.logits(b), x, runs=runs)
            member_rows.append(_row(f"member {m.name}", "member", f"torch {torch.__version__}", torch_logits, data,
                                    teacher_pred, m.params, macs, None, lat, threads))
        else:
            member_path, runs_in = exported
            runner = RUNNERS[runs_in](member_path, threads)
            member_runners.append(runner)
            member_targets.append(runs_in)
            logits = validation.batched(runner.predict, x)
            par = None if m.kind == "onnx" else validation.parity(torch_logits, logits)
            member_rows.append(_row(f"member {m.name}", "member", runner.engine, logits, data, teacher_pred,
                                    m.params, macs, path_size(member_path),
                                    validation.measure_latency(runner.predict, x, runs=runs), threads, par))
        progress.advance(task)

    same_runtime = len(member_runners) == len(members)
    params = [r["params"] for r in member_rows]
    macs = [r["macs"] for r in member_rows]
    sizes = [r["size_bytes"] for r in member_rows]
    total = lambda vals: None if any(v is None for v in vals) else int(sum(vals))  # noqa: E731
    if same_runtime:
        def ensemble_predict(b: np.ndarray) -> np.ndarray:
            return np.log(np.mean([softmax(r.predict(b)) for r in member_runners], axis=0))

        ens_logits = validation.batched(ensemble_predict, x)
        ens_lat = validation.measure_latency(ensemble_predict, x, runs=runs)
        engines = {r.engine for r in member_runners}
        ens_runtime = engines.pop() if len(engines) == 1 else "mixed runtimes"
    else:
        ens_logits, ens_lat, ens_runtime = np.log(teacher_probs), None, "mixed (not timed)"
    rows.append(_row("teacher ensemble", "teacher", ens_runtime, ens_logits, data, teacher_pred,
                     total(params), total(macs), total(sizes), ens_lat, threads))
    rows.extend(member_rows)
    progress.advance(task)

    # student in torch, then in the target runtime
    s_params, s_macs = models.count_params(student), models.count_macs(student, shape)
    s_logits = predict_logits(student, x)
    with torch_threads(threads), torch.inference_mode():
        torch_lat = validation.measure_latency(lambda b: student(torch.from_numpy(b)), x, runs=runs)
    rows.append(_row("student", "student", f"torch {torch.__version__}", s_logits, data, teacher_pred,
                     s_params, s_macs, None, torch_lat, threads))
    progress.advance(task)
    runner = RUNNERS[cfg.target](artifact, threads)
    r_logits = validation.batched(runner.predict, x)
    if source is student:
        ref_logits, tolerance = s_logits, validation.tolerance_for(cfg.target, variant)
    else:  # a QAT int8 graph: the converter should reproduce its int8 arithmetic closely
        from compress.qat import predict

        ref_logits, tolerance = predict(source, x), validation.tolerance_for(cfg.target, variant.removesuffix("-qat"))
    par = validation.parity(ref_logits, r_logits, tolerance)
    r_lat = validation.measure_latency(runner.predict, x, runs=runs) if runner.measured else None
    student_row = _row(f"student ({cfg.target} {variant})", "student", runner.engine, r_logits, data, teacher_pred, s_params,
                       s_macs, path_size(artifact), r_lat, threads, par)
    rows.append(student_row)
    progress.advance(task)

    reference_name = "torch student" if source is student else "torch QAT int8 graph"
    checks.append({"name": f"{cfg.target} {variant} parity vs {reference_name}", "passed": par["passed"],
                   "detail": f"{validation.describe_parity(par)} on {len(x)} real test samples, engine {runner.engine}"})
    for r in member_rows:
        if r["parity"] is not None:
            checks.append({"name": f"{r['model']} parity vs torch ({r['runtime']})", "passed": r["parity"]["passed"],
                           "detail": validation.describe_parity(r["parity"])})
    compatibility = None
    if cfg.target == "tflite":
        from devices.tflite_compat import compatibility_report

        compatibility = compatibility_report(artifact, cfg.min_runtime, checks)
    ens_params = rows[0]["params"]
    comparable = same_runtime and set(member_targets) == {cfg.target} and runner.measured
    comparison = {
        "param_ratio": (ens_params / s_params) if ens_params else None,
        "mac_ratio": (rows[0]["macs"] / s_macs) if rows[0]["macs"] and s_macs else None,
        "latency_ratio_p50": (ens_lat["p50"] / r_lat["p50"]) if ens_lat and r_lat and comparable else None,
        "accuracy_gap": rows[0]["accuracy"] - student_row["accuracy"],
        "same_runtime": comparable,
        "timing_note": (f"both exported to {cfg.target} and timed in {runner.engine}, {threads} thread(s), batch 1, "
                        f"{runs} runs after warm-up" if comparable else
                        f"NOT compared: the student runs in {runner.engine}"
                        + ("" if runner.measured else " (no latency measured here)")
                        + f", the teachers in {member_runners[0].engine if member_runners else 'torch'}"),
    }
    from sklearn.metrics import confusion_matrix

    confusion = {"reference": "teacher ensemble", "candidate": student_row["model"], "labels": data.labels,
                 "matrix": confusion_matrix(teacher_pred, np.argmax(r_logits, axis=1),
                                            labels=list(range(data.num_classes))).tolist()}
    return {"schema": "compress.report/1", "tool": {"name": "compress", "version": __version__},
            "versions": versions(), "run": {}, "rows": rows, "comparison": comparison,
            "compatibility": compatibility, "confusion": confusion, "checks": checks,
            "passed": all(c["passed"] for c in checks)}


def _check_budgets(cfg: RunConfig, profile: dict | None, report: dict, artifact: Path, data: Dataset) -> list[dict]:
    """The device profile's budgets and the --max-* options against what this run measured."""
    from devices.budgets import check_budgets, gather

    budgets = gather(profile, {"max_accuracy_drop": cfg.max_accuracy_drop, "latency_ms": cfg.max_latency_ms,
                               "size_kb": cfg.max_size_kb, "peak_memory_mb": cfg.max_peak_memory_mb})
    if not budgets:
        return []
    student = report["rows"][-1]
    measured = {"accuracy_drop": 100 * report["comparison"]["accuracy_gap"],
                "latency_ms": None if student["latency_ms"] is None else student["latency_ms"]["p50"],
                "size_kb": path_size(artifact) / 1024, "peak_memory_mb": None}
    notes = {"latency_ms": f"{student['runtime']} does not run on this machine"}
    if "peak_memory_mb" in budgets and student["latency_ms"] is not None:
        from devices import peak_memory

        mem = peak_memory.measure(artifact, cfg.target, data.x_test[:20], threads=cfg.threads)
        measured["peak_memory_mb"] = mem.get("peak_memory_mb")
        notes["peak_memory_mb"] = mem.get("note")
        report["peak_memory"] = mem
    else:
        notes["peak_memory_mb"] = notes["latency_ms"]
    return check_budgets(measured, budgets, notes=notes)


def _int8_with_fallback(cfg: RunConfig, student, example, artifact: Path, info: ModelInfo,
                        calibration_idx: np.ndarray, data: Dataset, options: dict, tmp_dir: Path) -> dict:
    """Static int8 within an accuracy budget: the worst layers stay in float until the drop fits.

    The drop is measured on training samples that were not used for calibration (the test split is never
    used to choose the model); the student saw them in training, so this measures quantization damage,
    not generalization.
    """
    from compress.int8_fallback import int8_with_fallback

    rest = np.setdiff1d(np.arange(len(data.x_train)), calibration_idx)
    held = rest[-min(len(rest), 1000):]
    y_eval = None if data.y_train is None else data.y_train[held]
    export_kw = {k: v for k, v in options.items() if k != "calibration"}
    result = int8_with_fallback(cfg.target, student, example, artifact, info, data.x_train[calibration_idx],
                                data.x_train[held], y_eval, cfg.int8_budget, tmp_dir / ".fallback", export_kw,
                                max_excluded=4)
    result.pop("path", None)
    return result


def _front_end(student: torch.nn.Module) -> dict | None:
    """The audio front-end the exported model computes itself (so the app feeds raw PCM), or None."""
    from compress.frontend import LogMel

    for module in student.modules():
        if isinstance(module, LogMel):
            return {"kind": "log-mel", "inside_model": True, "sample_rate": module.sample_rate,
                    "n_fft": module.n_fft, "hop": module.hop, "n_mels": module.n_mels, "fmin": module.fmin,
                    "fmax": module.fmax, "log_epsilon": module.eps}
    return None


def _manifest(cfg: RunConfig, data: Dataset, members: list[Teacher], student: torch.nn.Module, folder: Path,
              file_name: str, name: str) -> dict:
    recipe = asdict(cfg)
    files = {p.name: {"sha256": file_sha256(p), "bytes": path_size(p)} for p in sorted(folder.iterdir())}
    return {
        "schema": "compress.manifest/1",
        "name": name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": {"name": "compress", "version": __version__},
        "versions": versions(),
        "target": cfg.target,
        "artifact": file_name,
        "input_kind": data.input_kind,
        **IO_DESCRIBERS[cfg.target](folder / file_name),
        "output_meaning": "unnormalized class scores (logits) in labels.txt order; softmax gives probabilities",
        "normalization": data.normalization,
        "front_end": _front_end(student),
        "labels": data.labels,
        "labels_file": "labels.txt",
        "student": {"arch": cfg.student, "params": models.count_params(student),
                    "macs": models.count_macs(student, data.input_shape)},
        "teachers": [{"name": m.name, "kind": m.kind, "fingerprint": m.fingerprint} for m in members],
        "data": data.describe(),
        "recipe": recipe,
        "recipe_sha256": content_key(recipe),
        "recipe_file": None if not cfg.recipe_path else {"path": str(cfg.recipe_path),
                                                          "sha256": file_sha256(Path(cfg.recipe_path))},
        "files": files,
    }
