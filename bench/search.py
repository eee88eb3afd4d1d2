"""``compress search`` on real data: FSDD speech and MNIST, with the budgets stated here.

FSDD: the sample's 3-member speech ensemble (cached by bench/fsdd.py or the sample), the DS-CNN family at
every default width/depth x {none, int8} on ONNX Runtime, budget: at most 0.5 points below the ensemble
on the validation split. Goal: within 0.5 pt of the ensemble (test split) at >= 50x fewer MACs, found in
<= 20 minutes with cached teachers.

MNIST: the hand-picked sample (samples/mnist_hinton: mlp-1200 + cnn teachers, T = 20, 2x800 student) as the
baseline. Step 1 measures the baseline ``mlp:1`` (= ``mlp-800``) through the search itself, so it is
measured exactly like every candidate; step 2 searches the image families (the MLP grid plus two wider
MLPs, mlp:1.25 and mlp:1.5, which int8 may make faster than the float 2x800) with budgets taken from it:
validation accuracy at least the baseline's and p50 latency below it. Goal: a student at least as accurate
as mlp-800 at lower latency (test split, same runtime and threads). Step 2 reuses step 1's measurement from
the search state (it re-trains nothing).

    python bench/search.py [--sets fsdd mnist] [--budget-min 20] [--out bench/results/search.json]
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

from compress.pipeline import RunConfig  # noqa: E402
from compress.search import SearchOptions, search  # noqa: E402
from compress.search.space import SearchSpace  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
FSDD = dict(data=str(SHARED / "fsdd"), teachers=["speech-cnn", "speech-resnet", "speech-wide-cnn"], teacher_epochs=15,
            epochs=40, lr=1e-2, temperature=4.0, alpha=0.1, batch_size=64, seed=0)  # = bench/fsdd.py's settings
MNIST = dict(data=str(SHARED / "mnist"), data_format="idx", limit_train=55000, teachers=["mlp-1200", "cnn"],
             teacher_epochs=12, jitter=2, temperature=20.0, alpha=0.1, epochs=20, lr=1e-3, batch_size=128,
             seed=0)  # = samples/mnist_hinton/compress.toml
FRONT_END_MACS = 2_352_000  # the log-mel front-end every speech model carries (compress.models.frontend.LogMel, 1 s at 8 kHz)


def _final(result: dict) -> dict:
    """The chosen folder's test-split report: ensemble and student rows, comparison."""
    report = json.loads((Path(result["output"]) / "report.json").read_text())
    ens = next(r for r in report["rows"] if r["role"] == "teacher")
    student = report["rows"][-1]
    return {"ensemble": ens, "student": student, "comparison": report["comparison"], "passed": report["passed"]}


def fsdd(budget_min: float, dist: str, console: Console) -> dict:
    cfg = RunConfig.from_settings(target="onnx", out=dist, name="bench-search-fsdd", max_accuracy_drop=0.5, **FSDD)
    t0 = time.perf_counter()
    result = search(cfg, SearchSpace(families=["ds-cnn"], schemes=["none", "int8"]),
                    SearchOptions(time_budget_min=budget_min), console=Console(stderr=True), quiet=True)
    wall = time.perf_counter() - t0
    row = {"set": "fsdd", "wall_s": round(wall, 1), "budgets": result["budgets"], "chosen": result["chosen"],
           "trained": result["trained"], "resumed": result["resumed"], "pruned": result["pruned"],
           "skipped": result["skipped"], "not_reached": result["not_reached"], "why": result["why"]}
    if result["chosen"]:
        f = _final(result)
        e, s = f["ensemble"], f["student"]
        row.update(ensemble_accuracy=e["accuracy"], student_accuracy=s["accuracy"],
                   gap_points=100 * (e["accuracy"] - s["accuracy"]), ensemble_macs=e["macs"], student_macs=s["macs"],
                   mac_ratio=e["macs"] / s["macs"],
                   network_mac_ratio=(e["macs"] - 3 * FRONT_END_MACS) / (s["macs"] - FRONT_END_MACS),
                   latency_ratio=f["comparison"]["latency_ratio_p50"], timing=f["comparison"]["timing_note"],
                   student_p50_ms=s["latency_ms"]["p50"], ensemble_p50_ms=e["latency_ms"]["p50"] if e["latency_ms"] else None)
        row["goals"] = {"gap <= 0.5 pt": row["gap_points"] <= 0.5, "MACs >= 50x fewer": row["mac_ratio"] >= 50,
                        "network MACs (front-end excluded) >= 50x fewer": row["network_mac_ratio"] >= 50,
                        "search <= 20 min": wall <= 20 * 60}
    console.print(f"[dim]fsdd: {wall:.0f} s[/dim]", highlight=False)
    return row


def side_by_side(artifacts: dict[str, Path], samples, rounds: int = 5, runs: int = 200) -> dict[str, float]:
    """Batch-1 p50 (ms) of each artifact timed in turns, in one process, same runtime and 1 thread: the
    median over ``rounds`` of each round's p50, so load that comes and goes hits every model alike."""
    import numpy as np

    from compress.core.metrics import measure_latency
    from compress.export.registry import by_suffix

    runners = {name: by_suffix(path).open(path, 1) for name, path in artifacts.items()}
    p50s: dict[str, list[float]] = {name: [] for name in artifacts}
    for _ in range(rounds):
        for name, runner in runners.items():
            p50s[name].append(measure_latency(runner.predict, samples, runs=runs)["p50"])
    return {name: float(np.median(values)) for name, values in p50s.items()}


def mnist(budget_min: float, dist: str, console: Console) -> dict:
    quiet_console = Console(stderr=True)
    t0 = time.perf_counter()
    base_cfg = RunConfig.from_settings(target="onnx", out=dist, name="bench-search-mnist-mlp800", **MNIST)
    base = search(base_cfg, SearchSpace(families=["mlp"], widths=[1.0], depths=[1.0], schemes=["none"]),
                  SearchOptions(time_budget_min=budget_min), console=quiet_console, quiet=True)
    base_row = next(r for r in base["candidates"] if r["id"] == base["chosen"])
    base_wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    cfg = RunConfig.from_settings(target="onnx", out=dist, name="bench-search-mnist", **MNIST,
                    max_accuracy_drop=max(0.0, base_row["accuracy_drop"]), max_latency_ms=base_row["latency_ms"])
    space = SearchSpace(families=["mlp", "mlp:1.25", "mlp:1.5", "cnn-small", "cnn", "mobilenet"], schemes=["none", "int8"])
    result = search(cfg, space,
                    SearchOptions(time_budget_min=budget_min), console=quiet_console, quiet=True)
    wall = time.perf_counter() - t1
    row = {"set": "mnist", "wall_s": round(wall, 1), "baseline_wall_s": round(base_wall, 1),
           "budgets": result["budgets"], "chosen": result["chosen"], "trained": result["trained"],
           "resumed": result["resumed"], "pruned": result["pruned"], "skipped": result["skipped"],
           "not_reached": result["not_reached"], "why": result["why"], "closest": result["closest"],
           "baseline_validation": {k: base_row[k] for k in ("id", "val_accuracy", "latency_ms", "size_kb", "macs")}}
    b = _final(base)
    row.update(baseline_test_accuracy=b["student"]["accuracy"], baseline_p50_ms=b["student"]["latency_ms"]["p50"],
               baseline_macs=b["student"]["macs"], ensemble_accuracy=b["ensemble"]["accuracy"])
    if result["chosen"]:
        f = _final(result)
        s = f["student"]
        row.update(student_accuracy=s["accuracy"], student_p50_ms=s["latency_ms"]["p50"], student_macs=s["macs"],
                   gap_points=100 * (f["ensemble"]["accuracy"] - s["accuracy"]),
                   mac_ratio=f["ensemble"]["macs"] / s["macs"], latency_ratio=f["comparison"]["latency_ratio_p50"],
                   timing=f["comparison"]["timing_note"])
        from compress.data import load_data

        x = load_data(MNIST["data"], "idx", limit_test=500).x_test
        timed = side_by_side({"mlp-800": Path(base["output"]) / "model.onnx",
                              "chosen": Path(result["output"]) / "model.onnx"}, x)
        row.update(side_by_side_p50_ms=timed, side_by_side_latency_ratio=timed["mlp-800"] / timed["chosen"])
        row["goals"] = {"test accuracy >= mlp-800's": s["accuracy"] >= row["baseline_test_accuracy"],
                        "p50 < mlp-800's (timed in turns, same runtime and thread)": timed["chosen"] < timed["mlp-800"]}
    console.print(f"[dim]mnist: {wall:.0f} s (+ {base_wall:.0f} s for the baseline)[/dim]", highlight=False)
    return row


def _table(rows: list[dict]) -> Table:
    t = Table(title="compress search on real data (ONNX Runtime, batch 1, 1 thread; test split)", title_justify="left")
    for col in ("set", "chosen", "trained", "search s", "ensemble acc", "student acc", "gap pt", "MACs ratio",
                "latency ratio", "student p50 ms", "goals"):
        t.add_column(col, justify="left" if col in ("set", "chosen", "goals") else "right")
    pct = lambda v: "—" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    num = lambda v, f="{:.1f}": "—" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        goals = "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in (r.get("goals") or {}).items())
        t.add_row(r["set"], r["chosen"] or "none", str(r["trained"]), f"{r['wall_s']:.0f}", pct(r.get("ensemble_accuracy")),
                  pct(r.get("student_accuracy")), num(r.get("gap_points"), "{:+.2f}"), num(r.get("mac_ratio")),
                  num(r.get("latency_ratio")), num(r.get("student_p50_ms"), "{:.4f}"), goals)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["fsdd", "mnist"], choices=["fsdd", "mnist"])
    ap.add_argument("--budget-min", type=float, default=20.0, help="time budget of each search, minutes")
    ap.add_argument("--dist", default="dist")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "search.json"))
    args = ap.parse_args()
    console = Console(width=220)
    rows = [{"fsdd": fsdd, "mnist": mnist}[name](args.budget_min, args.dist, console) for name in args.sets]
    console.print(_table(rows))
    for r in rows:
        console.print(f"{r['set']}: {r['why']}", highlight=False)
        if r.get("side_by_side_p50_ms"):
            t = r["side_by_side_p50_ms"]
            console.print(f"{r['set']}: timed in turns (ONNX Runtime, 1 thread, batch 1, median of 5 rounds x 200 runs): "
                          f"mlp-800 {t['mlp-800']:.4f} ms, chosen {t['chosen']:.4f} ms "
                          f"({r['side_by_side_latency_ratio']:.2f}x); test accuracy mlp-800 "
                          f"{100 * r['baseline_test_accuracy']:.2f}%, chosen {100 * r['student_accuracy']:.2f}%",
                          highlight=False)
        if r.get("network_mac_ratio"):
            console.print(f"{r['set']}: MACs ratio without the log-mel front-ends ({FRONT_END_MACS:,} MACs each): "
                          f"{r['network_mac_ratio']:.1f}x", highlight=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "budget_min": args.budget_min, "cpus": os.cpu_count()}, indent=2))
    console.print(f"wrote {out}")
    return 0 if all(all((r.get("goals") or {"chosen": False}).values()) for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
