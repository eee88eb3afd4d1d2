"""FSDD speech sample as a benchmark: teacher ensemble vs DS-CNN student, exported to every target.

Runs the sample's pipeline (``compress.pipeline.run``, the same code as ``compress distill-and-export``) once
per target with the sample's settings (``samples/fsdd_speech/README.md``), then prints one table: accuracy,
params, MACs, size and batch-1 latency of the ensemble and the student per target, and the ratios. Teachers
and soft targets are trained/computed once and reused from the cache by the later targets.

    python bench/fsdd.py [--data ../shared/datasets/fsdd] [--targets onnx tflite coreml] [--out bench/results/fsdd.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from compress.devices.report import format_count, format_size  # noqa: E402
from compress.pipeline import RunConfig, run  # noqa: E402

# The sample's recipe (samples/fsdd_speech/README.md); keep the two in step.
TEACHERS = ["speech-cnn", "speech-resnet", "speech-wide-cnn"]
STUDENT = "ds-cnn"
SETTINGS = dict(teacher_epochs=15, epochs=40, lr=1e-2, temperature=4.0, alpha=0.1, batch_size=64, seed=0)
TARGET_OPTIONS = {"coreml": dict(precision="fp32")}


def _ms(row):
    lat = row.get("latency_ms")
    return "—" if not lat else f"{lat['p50']:.3f}"


def summarize(target: str, report: dict) -> dict:
    rows = report["rows"]
    ens = next(r for r in rows if r["role"] == "teacher")
    student = rows[-1]  # the exported student, in the target runtime
    torch_student = next(r for r in rows if r["model"] == "student")
    cmp_ = report["comparison"]
    return {
        "target": target,
        "runtime": student["runtime"],
        "ensemble": {k: ens[k] for k in ("runtime", "accuracy", "params", "macs", "size_bytes", "latency_ms")},
        "members": [{k: r[k] for k in ("model", "runtime", "accuracy", "params", "macs", "size_bytes", "latency_ms")}
                    for r in rows if r["role"] == "member"],
        "student_torch_accuracy": torch_student["accuracy"],
        "student": {k: student[k] for k in ("model", "runtime", "accuracy", "agreement_with_teacher", "params",
                                            "macs", "size_bytes", "latency_ms", "parity")},
        "comparison": cmp_,
        "checks_passed": report["passed"],
        "wall_time_s": report["run"]["wall_time_s"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "fsdd"))
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite", "coreml"])
    ap.add_argument("--dist", default="dist", help="where the runs write their artifacts")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fsdd.json"))
    args = ap.parse_args()
    console = Console(width=200)
    started = time.perf_counter()
    results = []
    for target in args.targets:
        cfg = RunConfig.from_settings(target=target, data=args.data, teachers=list(TEACHERS), student=STUDENT, out=args.dist,
                        **SETTINGS, target_options=TARGET_OPTIONS.get(target, {}))
        t0 = time.perf_counter()
        report = run(cfg, console=Console(stderr=True), quiet=True)
        results.append(summarize(target, report))
        console.print(f"[dim]{target}: {time.perf_counter() - t0:.0f} s[/dim]", highlight=False)
    wall = time.perf_counter() - started

    t = Table(title=f"FSDD (300 test clips, 8 kHz, 1 s): {len(TEACHERS)}-teacher ensemble vs {STUDENT} student, "
                    "batch 1, 1 thread", title_justify="left")
    for col in ("target", "model", "runtime", "accuracy", "params", "MACs", "size", "p50 ms", "parity max|Δ|"):
        t.add_column(col, justify="left" if col in ("target", "model", "runtime") else "right")
    for r in results:
        e, s = r["ensemble"], r["student"]
        par = s["parity"]
        t.add_row(r["target"], "teacher ensemble", e["runtime"], f"{100 * e['accuracy']:.2f}%", format_count(e["params"]),
                  format_count(e["macs"]), format_size(e["size_bytes"]), _ms(e), "—")
        t.add_row("", s["model"], s["runtime"], f"{100 * s['accuracy']:.2f}%", format_count(s["params"]),
                  format_count(s["macs"]), format_size(s["size_bytes"]), _ms(s),
                  f"{par['max_abs_diff']:.1e} {'ok' if par['passed'] else 'FAIL'}")
    console.print(t)
    for r in results:
        c = r["comparison"]
        lat = f"{c['latency_ratio_p50']:.1f}x lower p50 latency" if c.get("latency_ratio_p50") else "latency not compared"
        console.print(f"{r['target']}: accuracy gap {100 * c['accuracy_gap']:+.2f} points (ensemble - student), "
                      f"{c['param_ratio']:.1f}x fewer params, {c['mac_ratio']:.1f}x fewer MACs, {lat} "
                      f"({c['timing_note']}); checks {'passed' if r['checks_passed'] else 'FAILED'}", highlight=False)
    console.print(f"wall time {wall:.0f} s (all targets; teachers trained once, then cached)", highlight=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"teachers": TEACHERS, "student": STUDENT, "settings": SETTINGS,
                               "target_options": TARGET_OPTIONS, "data": args.data, "wall_time_s": round(wall, 1),
                               "results": results}, indent=2))
    console.print(f"wrote {out}")
    return 0 if all(r["checks_passed"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
