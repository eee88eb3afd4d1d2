"""Quantization across targets: accuracy, drop vs fp32, size and batch-1 latency of every scheme, PTQ vs QAT.

Per data set (the default digits, MNIST from ``../shared/datasets/mnist`` and the FSDD spoken digits from
``../shared/datasets/fsdd`` when present) a student is distilled from cached teacher soft targets exactly as
``compress.pipeline.run`` does, then exported to:

  ONNX    fp32, fp16, int8-weights (dynamic), int8 (static QDQ)     compress.export.onnx.convert + compress.export.onnx.quantize
  TFLite  fp32, fp16, int8-dynamic, int8 (PTQ), int8 (QAT)          compress.export.tflite.convert + compress.export.tflite.qat
  Core ML fp16, int8-weights, palettize-4, int8 (iOS17)              compress.export.coreml.convert (MIL reference on Linux)

plus one "PTQ+fallback" row per target: static int8 within a 0.5-point budget (``--int8-budget 0.5``,
``compress.export.common.fallback``): the drop is measured on held-out training samples, the worst layers are kept in
float until it fits, the row lists what was kept and its accuracy on the test split.

Students: a registered name, or ``cnn:16,32`` for the registered ``cnn`` family with those channels (the
MNIST CNN student: ``cnn-small``'s two strided 8/16-channel convs into global pooling stop at ~84%).
FSDD uses the sample's recipe (``bench/fsdd.py``: speech teachers, ``ds-cnn``, T=4, lr 1e-2, 40 epochs).

Every file runs in its own runtime on the full test split (Core ML: the MIL reference evaluator, no latency:
"not measured on Linux"); latency is batch 1, 1 thread, through each target's runner (``compress.export.TARGETS[t].open``) and
``compress.core.metrics.measure_latency``. Prints one table and writes JSON.

    python bench/quant.py [--quick] [--skip digits mnist fsdd] [--mnist-train 20000] [--students mlp-small cnn-small]
                          [--out bench/results/quant.json]

bench/results/quant.json was written by ``python bench/quant.py --mnist-epochs 10 --mnist-qat-epochs 1`` (the
MNIST CNN's 20 epochs + 3 QAT epochs did not fit the time box on a 2-core machine). ``--quick`` is a smoke run
(minutes); a row that fails (e.g. a converter error) is reported as "failed" and the run goes on. Rows so far
are written to ``<out>.partial.json`` after each data set/student.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import models  # noqa: E402
from compress.core.cache import content_key, path_size  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.distill.losses import hinton_loss  # noqa: E402
from compress.export.registry import export_options, tolerance_for, variant_name  # noqa: E402
from compress.teachers import load_teachers  # noqa: E402
from compress.teachers.soft_targets import soft_targets  # noqa: E402
from compress.distill.train import fit, predict_logits, seed_everything  # noqa: E402
from compress.core import metrics as validation  # noqa: E402
from compress.export import TARGETS  # noqa: E402
from compress.export.common import ModelInfo  # noqa: E402

MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist"
FSDD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fsdd"
FSDD_TEACHERS = ["speech-cnn", "speech-resnet", "speech-wide-cnn"]  # bench/fsdd.py, samples/fsdd_speech
CPU = torch.device("cpu")
BUDGET_POINTS = 0.5
FALLBACK_EVAL = {"onnx": 1000, "tflite": 1000, "coreml": 500}  # held-out training samples (Core ML: numpy)


def build_student(spec: str, input_shape, num_classes):
    """A registered student, or ``cnn:16,32`` (the registered ``cnn`` family with those channels)."""
    if ":" in spec:
        family, channels = spec.split(":", 1)
        if family != "cnn":
            raise SystemExit(f"student {spec!r}: only 'cnn:<channels>' takes channels")
        return models.cnn(input_shape, num_classes, channels=tuple(int(c) for c in channels.split(",")))
    return models.build(spec, input_shape, num_classes)


def tolerance(target: str, variant: str) -> dict:
    if target == "onnx" and variant == "fp32":  # the bench holds ONNX fp32 to its whole table row
        return TARGETS["onnx"].tolerance(variant)
    return tolerance_for(target, variant.removesuffix("-qat"))


def distilled_student(data, student_name: str, teachers: list[str], teacher_epochs: int, epochs: int, seed: int,
                      temperature: float = 2.0, alpha: float = 0.1, lr: float = 3e-3):
    """Teachers (cached), their soft targets (cached) and the distilled student, as in pipeline.run."""
    members = load_teachers(teachers, data, epochs=teacher_epochs, seed=seed)
    targets, _ = soft_targets(members, data.x_train, temperature, content_key(data.fingerprint(), len(data.x_train)))
    seed_everything(seed)
    student = build_student(student_name, data.input_shape, data.num_classes)
    labels = torch.as_tensor(data.y_train)

    def batch_loss(logits, idx):
        return hinton_loss(logits, torch.as_tensor(np.asarray(targets[idx])), labels[idx], temperature, alpha)

    fit(student, data.x_train, batch_loss, epochs=epochs, lr=lr, seed=seed, device=CPU)
    return student.cpu().eval(), np.asarray(targets), members


def measure(target: str, path: Path, data, ref_logits: np.ndarray, variant: str, runs: int) -> dict:
    runner = TARGETS[target].open(path, 1)
    logits = validation.batched(runner.predict, data.x_test)
    par = validation.parity(ref_logits, logits, tolerance(target, variant))
    lat = validation.measure_latency(runner.predict, data.x_test, runs=runs) if runner.measured else None
    return {"engine": runner.engine, "accuracy": validation.accuracy(logits, data.y_test),
            "size_bytes": path_size(path), "latency_ms": lat, "parity": par}


def bench_one(data, student, soft, name: str, work: Path, runs: int, qat_epochs: int, seed: int,
              console: Console, temperature: float = 2.0, lr: float = 3e-3) -> list[dict]:
    from compress.export.tflite.qat import export_tflite as export_qat_tflite
    from compress.export.tflite.qat import predict as predict_qat
    from compress.distill.qat import qat_distill
    from compress.export.onnx.quantize import quantize

    info = ModelInfo(name=name, labels=data.labels, normalization=data.normalization, input_kind=data.input_kind)
    example = torch.as_tensor(data.x_test[:1])
    calib_idx = np.sort(np.random.default_rng(seed).permutation(len(data.x_train))[:300])
    calib = data.x_train[calib_idx]
    ref = predict_logits(student, data.x_test)
    rows: list[dict] = []

    def add(target, scheme, variant, path, method="PTQ", seconds=None, extra=None):
        t0 = time.perf_counter()
        row = {"data": data.name, "student": name, "target": target, "scheme": scheme, "method": method,
               **measure(target, path, data, ref, variant, runs), "export_s": seconds, **(extra or {})}
        rows.append(row)
        console.log(f"{data.name} {name} {target} {scheme} ({method}): acc {100 * row['accuracy']:.2f}% "
                    f"({time.perf_counter() - t0:.1f}s to validate)")

    # ONNX
    t0 = time.perf_counter()
    fp32 = TARGETS["onnx"].export(student, example, work / "model.onnx", info)
    add("onnx", "fp32", "fp32", fp32, "-", time.perf_counter() - t0)
    for scheme in ("fp16", "int8-weights", "int8"):
        t0 = time.perf_counter()
        out = quantize(fp32, work / f"model-{scheme}.onnx", scheme, calibration=calib)
        add("onnx", scheme, scheme, out, "-" if scheme == "fp16" else "PTQ", time.perf_counter() - t0)

    # TFLite (PTQ through compress.export.tflite.convert, QAT through compress.export.tflite.qat)
    for scheme in ("none", "fp16", "int8-weights", "int8"):
        options = export_options("tflite", scheme)
        if scheme == "int8":
            options["calibration"] = calib
        t0 = time.perf_counter()
        label = "fp32" if scheme == "none" else scheme
        try:
            out = TARGETS["tflite"].export(student, example, work / f"model-{scheme}.tflite", info, **options)
        except Exception as exc:  # report, keep benchmarking the rest
            rows.append({"data": data.name, "student": name, "target": "tflite", "scheme": label,
                         "method": "-" if scheme in ("none", "fp16") else "PTQ",
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})
            continue
        add("tflite", label, variant_name("tflite", options), out,
            "-" if scheme in ("none", "fp16") else "PTQ", time.perf_counter() - t0)
    t0 = time.perf_counter()
    qat = qat_distill(copy.deepcopy(student), data.x_train, soft, data.y_train, temperature=temperature, alpha=0.1,
                      epochs=qat_epochs, lr=lr / 10, seed=seed, calibration=calib,
                      qat=TARGETS["tflite"].qat)
    qat_train_s = time.perf_counter() - t0
    qat_torch_acc = validation.accuracy(predict_qat(qat, data.x_test), data.y_test)
    try:
        out = export_qat_tflite(qat, example, work / "model-int8-qat.tflite", info)
        add("tflite", "int8", "int8-qat", out, "QAT", time.perf_counter() - t0,
            {"qat_epochs": qat_epochs, "qat_train_s": qat_train_s, "qat_torch_sim_accuracy": qat_torch_acc})
    except Exception as exc:  # report, keep benchmarking the rest
        rows.append({"data": data.name, "student": name, "target": "tflite", "scheme": "int8", "method": "QAT",
                     "qat_torch_sim_accuracy": qat_torch_acc,
                     "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"})

    # Core ML (MIL reference evaluator on Linux: accuracy and parity, no latency)
    for scheme in ("fp16", "int8-weights", "palettize-4", "int8"):
        options = export_options("coreml", scheme, deployment_target="iOS17" if scheme == "int8" else None)
        if scheme == "int8":
            options["calibration"] = calib
        t0 = time.perf_counter()
        try:
            out = TARGETS["coreml"].export(student, example, work / f"model-{scheme}.mlpackage", info, **options)
        except Exception as exc:  # report, keep benchmarking the rest
            rows.append({"data": data.name, "student": name, "target": "coreml", "scheme": scheme, "method": "-",
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        add("coreml", scheme, variant_name("coreml", options), out,
            "-" if scheme == "fp16" else "PTQ", time.perf_counter() - t0)

    # static int8 with float fallback within BUDGET_POINTS, per target (compress.export.common.fallback)
    from compress.export.common.fallback import int8_with_fallback

    rest = np.setdiff1d(np.arange(len(data.x_train)), calib_idx)
    for target in ("onnx", "tflite", "coreml"):
        held = rest[-min(len(rest), FALLBACK_EVAL[target]):]
        options = export_options(target, "int8", deployment_target="iOS17" if target == "coreml" else None)
        out = work / f"model-int8-fallback{TARGETS[target].suffix}"
        t0 = time.perf_counter()
        try:
            fb = int8_with_fallback(TARGETS[target], student, example, out, info, calib, data.x_train[held],
                                    None if data.y_train is None else data.y_train[held], BUDGET_POINTS,
                                    work / f"fallback-{target}", options)
        except Exception as exc:  # report, keep benchmarking the rest
            rows.append({"data": data.name, "student": name, "target": target, "scheme": "int8",
                         "method": "PTQ+fallback",
                         "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            continue
        worst = [{k: r.get(k) for k in ("node", "module", "op_type", "error_added_db", "layer_sqnr_db", "sqnr_db")}
                 for r in fb["layer_errors"][:3]]
        add(target, "int8", "int8", out, "PTQ+fallback", time.perf_counter() - t0, {
            "kept_in_float": fb["kept_in_float"], "kept_modules": fb.get("kept_modules"),
            "fallback_budget_points": BUDGET_POINTS, "fallback_within_budget": fb["within_budget"],
            "fallback_eval_samples": fb["eval_samples"], "fallback_eval_drop": fb["drop"],
            "fallback_eval_int8_drop": None if fb["int8_accuracy"] is None else fb["fp32_accuracy"] - fb["int8_accuracy"],
            "fallback_int8_error": fb.get("int8_error"), "fallback_reference": fb["reference"],
            "fallback_attempts": fb["attempts"], "worst_layers": worst})

    # drop vs each target's fp32 (Core ML has no fp32 row here: vs the torch student), int8 slower than fp32?
    torch_acc = validation.accuracy(ref, data.y_test)
    fp32_rows = {r["target"]: r for r in rows if r.get("scheme") == "fp32"}
    for r in rows:
        if "accuracy" not in r:
            continue
        base = fp32_rows.get(r["target"])
        r["fp32_accuracy"] = base["accuracy"] if base else torch_acc
        r["drop"] = r["fp32_accuracy"] - r["accuracy"]
        r["torch_accuracy"] = torch_acc
        if base and r["latency_ms"] and base["latency_ms"] and r is not base:
            r["speedup_vs_fp32"] = base["latency_ms"]["p50"] / r["latency_ms"]["p50"]
            r["slower_than_fp32"] = r["latency_ms"]["p50"] > base["latency_ms"]["p50"]
    return rows


def recommendations(rows: list[dict]) -> list[str]:
    out = []
    for target in ("onnx", "tflite"):
        slow = [r for r in rows if r["target"] == target and r.get("slower_than_fp32") and "int8" in r["scheme"]]
        for r in slow:
            out.append(f"{target} {r['scheme']} ({r['method']}) is {1 / r['speedup_vs_fp32']:.2f}x SLOWER than fp32 "
                       f"for {r['student']} on {r['data']} ({r['latency_ms']['p50'] * 1e3:.1f} vs "
                       f"{r['latency_ms']['p50'] * r['speedup_vs_fp32'] * 1e3:.1f} us)")
    if any(r["target"] == "onnx" and r["scheme"] == "int8-weights" and r.get("slower_than_fp32") for r in rows):
        out.append("recommendation (ONNX): int8-weights (dynamic) quantizes every activation at run time; on models "
                   "this small that overhead exceeds the int8 matmul savings. Use it for size only; for speed ship "
                   "fp32, or static int8 where it is measured faster on the device.")
    if any(r["target"] == "onnx" and r["scheme"] == "int8" and r.get("slower_than_fp32") for r in rows):
        out.append("recommendation (ONNX): static int8 (QDQ) pays Quantize/Dequantize at the graph boundary and "
                   "between unfused ops; on tiny students fp32 is as fast or faster: choose int8 for size, and "
                   "measure on the target device before choosing it for speed.")
    if any(r["target"] == "tflite" and r["scheme"] == "int8" and r.get("slower_than_fp32") for r in rows):
        out.append("recommendation (TFLite): full int8 has int8 input/output; the measured time includes quantizing "
                   "the float input and dequantizing the logits (numpy, in compress.export.tflite.runner), which an app "
                   "must also do. For students this small XNNPACK fp32 is faster: ship int8 for size, or for "
                   "integer-only accelerators (Edge TPU, NPUs); prefer fp16/int8-dynamic weights on CPU.")
    qat = {(r["data"], r["student"]): r for r in rows if r.get("method") == "QAT"}
    for (d, s), q in qat.items():
        ptq = next((r for r in rows if r["data"] == d and r["student"] == s and r["target"] == "tflite"
                    and r["scheme"] == "int8" and r["method"] == "PTQ"), None)
        if ptq:
            out.append(f"{d} {s}: TFLite int8 QAT {100 * q['accuracy']:.2f}% vs PTQ {100 * ptq['accuracy']:.2f}% "
                       f"(fp32 {100 * q['fp32_accuracy']:.2f}%)")
    return out


def fmt_size(n: int) -> str:
    return f"{n / 1e3:.1f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def render_table(rows: list[dict], runs: int) -> Table:
    """The result table of ``rows`` (also for ``--render`` of a saved JSON)."""
    table = Table(title=f"quantization per target and scheme (batch 1, 1 thread, {runs} timed runs; "
                        f"full test splits; Core ML via the MIL reference evaluator)")
    for col in ("data", "student", "target", "scheme", "method", "accuracy", "drop vs fp32", "size",
                "p50 ms", "vs fp32", "int8 slower?", "parity p99|Δ|", "parity", "kept in float"):
        table.add_column(col, justify="right" if col not in ("data", "student", "target", "scheme", "method",
                                                             "kept in float") else "left")
    for r in rows:
        if "error" in r:
            table.add_row(r["data"], r["student"], r["target"], r["scheme"], r["method"], "failed", r["error"][:40],
                          *[""] * 7)
            continue
        kept = ""
        if r.get("method") == "PTQ+fallback":
            names = [m or k for k, m in zip(r["kept_in_float"], r.get("kept_modules") or r["kept_in_float"])]
            kept = (", ".join(names) or "nothing") + f" (held-out drop {100 * r['fallback_eval_drop']:+.2f}" + \
                ("" if r["fallback_within_budget"] else ", OVER budget") + \
                ("; full int8 did not convert" if r.get("fallback_int8_error") else "") + ")"
        lat = r["latency_ms"]
        slower = "" if "int8" not in r["scheme"] or "slower_than_fp32" not in r else ("YES" if r["slower_than_fp32"] else "no")
        table.add_row(
            r["data"], r["student"], r["target"], r["scheme"], r["method"],
            f"{100 * r['accuracy']:.2f}%", f"{100 * r['drop']:+.2f}", fmt_size(r["size_bytes"]),
            f"{lat['p50']:.3f}" if lat else "not measured on Linux",
            f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else "",
            slower, f"{r['parity']['p99_abs_diff']:.2e}", "ok" if r["parity"]["passed"] else "FAIL", kept,
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="+", default=["mlp-small", "cnn-small"])
    parser.add_argument("--mnist", default=str(MNIST))
    parser.add_argument("--mnist-train", type=int, default=20000, help="train subset for MNIST (full test set)")
    parser.add_argument("--mnist-students", nargs="+", default=["mlp-small", "cnn:8,16,32"])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--mnist-epochs", type=int, default=20)
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--mnist-qat-epochs", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fsdd", default=str(FSDD))
    parser.add_argument("--fsdd-epochs", type=int, default=40)
    parser.add_argument("--fsdd-qat-epochs", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], choices=["digits", "mnist", "fsdd"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few epochs, 2000 MNIST train / 1000 test, 20 timed runs")
    parser.add_argument("--out", default="bench/results/quant.json")
    parser.add_argument("--render", metavar="JSON", help="print the table of a saved result file and exit")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        Console(width=220).print(render_table(saved["rows"], saved.get("runs", args.runs)))
        for line in saved.get("recommendations", []):
            print(line)
        print(f"wall time {saved.get('wall_time_s', 0):.0f}s")
        return
    if args.quick:
        args.epochs, args.mnist_epochs, args.fsdd_epochs = 5, 2, 3
        args.qat_epochs = args.mnist_qat_epochs = args.fsdd_qat_epochs = 1
        args.mnist_train, args.runs = 2000, 20
    console = Console(width=200)
    started = time.perf_counter()
    torch.set_num_threads(1)

    # (data, student, teachers, teacher epochs, epochs, qat epochs, temperature, lr)
    jobs = []
    if "digits" not in args.skip:
        jobs += [(load_data(None, seed=args.seed), s, list(models.DEFAULT_TEACHERS), 10, args.epochs, args.qat_epochs,
                  2.0, 3e-3) for s in args.students]
    if "fsdd" in args.skip:
        pass
    elif Path(args.fsdd).is_dir():
        fsdd = load_data(args.fsdd, "audio-folder", seed=args.seed)  # full train split: cached teachers
        fsdd.name = f"fsdd ({len(fsdd.x_train)} train)"
        jobs.append((fsdd, "ds-cnn", list(FSDD_TEACHERS), 15, args.fsdd_epochs, args.fsdd_qat_epochs, 4.0, 1e-2))
    else:
        console.print(f"[yellow]FSDD not found at {args.fsdd}: skipped[/yellow]")
    if "mnist" in args.skip:
        pass
    elif (Path(args.mnist) / "train-images-idx3-ubyte.gz").is_file():
        mnist = load_data(args.mnist, seed=args.seed, limit_train=args.mnist_train,
                          limit_test=1000 if args.quick else None)
        mnist.name = f"mnist ({len(mnist.x_train)} train)"
        jobs += [(mnist, s, ["mlp-1200"], 3, args.mnist_epochs, args.mnist_qat_epochs, 2.0, 3e-3)
                 for s in args.mnist_students]
    else:
        console.print(f"[yellow]MNIST not found at {args.mnist}: skipped[/yellow]")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        for data, student_name, teachers, teacher_epochs, epochs, qat_epochs, temperature, lr in jobs:
            t0 = time.perf_counter()
            student, soft, members = distilled_student(data, student_name, teachers, teacher_epochs, epochs, args.seed,
                                                       temperature=temperature, lr=lr)
            console.log(f"{data.name}: {student_name} distilled from {[m.name for m in members]} "
                        f"in {time.perf_counter() - t0:.1f}s")
            work = Path(tmp) / f"{data.name.split()[0]}-{student_name.replace(':', '-').replace(',', '-')}"
            work.mkdir()
            rows += bench_one(data, student, soft, student_name, work, args.runs, qat_epochs, args.seed, console,
                              temperature=temperature, lr=lr)
            partial = Path(args.out).with_suffix(".partial.json")  # what finished so far, if the run is cut short
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"benchmark": "quant", "partial": True, "rows": rows,
                                           "elapsed_s": time.perf_counter() - started}, indent=2, default=float))

    console.print(render_table(rows, args.runs))
    notes = recommendations([r for r in rows if "error" not in r])
    for line in notes:
        console.print(line)
    wall = time.perf_counter() - started
    console.print(f"wall time {wall:.0f}s")
    out = {"benchmark": "quant", "rows": rows, "recommendations": notes, "wall_time_s": wall, "runs": args.runs,
           "threads": 1, "cpu_count": os.cpu_count(),
           "notes": {"drop": "accuracy of the target's fp32 file minus the variant's (Core ML: vs the torch student)",
                     "vs fp32": "fp32 p50 / variant p50 in the same runtime (>1 = faster)",
                     "PTQ+fallback": f"static int8 within {BUDGET_POINTS} points (compress.export.common.fallback): drop "
                                     "measured on held-out training samples (not calibration, not test); worst "
                                     "layers kept in float until it fits; accuracy/drop columns are on the test split",
                     "coreml latency": "not measured on Linux (MIL reference evaluator is numpy)"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    console.print(f"wrote {args.out}")
    Path(args.out).with_suffix(".partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
