"""Streaming keyword spotting on FSDD (issue 26): the teacher ensemble vs the streaming student, per runtime.

Scenarios (each run through the CLI as a user would: ``compress distill-and-export --task keyword-spotting``):

  wake-word     one keyword (``3``); the other nine digits are ``_unknown_``.
  commands      five keywords (``0,1,2,3,4``); the other five digits are ``_unknown_``.
  wake-word-unseen-speaker  the wake word with one speaker held out entirely (``split = "speaker=..."``): a
                voice the models never heard, the phone's everyday case.

Each scenario is measured per condition (test streams with generated pink background at 10 dB and 20 dB SNR)
and per target (ONNX Runtime, LiteRT, the Core ML MIL reference evaluator; fp32 streaming files). The hours
of non-keyword audio per condition come from re-mixing the test split's clips (``--stream-hours``: new
order, gaps and noise each pass) over generated background: FSDD's test split holds a few minutes of speech,
and no other real speech or background recordings are available here, so false accepts are measured on
FSDD's words and generated noise only (said in every row). No speech synthesizer is used.

Printed and written to ``bench/results/streaming.json``: for the teacher ensemble on sliding windows and the
streaming student in each runtime, FRR at <= 1 FA/h on the test DET curve (each with its FA/h interval),
the shipped threshold's FRR and FA/h, per-hop p50 latency, MACs per second of audio, and the student's MACs/s
relative to the ensemble's and to the same student on sliding windows. Goals (each row says met or not):
student FRR at 1 FA/h within 2 points of the ensemble's; MACs/s >= 20x lower than the sliding-window
student and >= 500x lower than the ensemble; streaming vs sliding-window outputs within tolerance.

    python bench/streaming.py [--hours 2] [--targets onnx tflite coreml] [--scenarios wake-word commands
                               wake-word-unseen-speaker] [--snr 10 20] [--quick]

``--quick`` (a smoke run of the bench itself: 0 extra hours, small slices, 2 epochs) is not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "datasets" / "fsdd"
SCENARIOS = {
    "wake-word": {"keywords": "3"},
    "commands": {"keywords": "0,1,2,3,4"},
    "wake-word-unseen-speaker": {"keywords": "3", "split": "speaker=theo"},
}
GOALS = {"frr_points_vs_ensemble": 2.0, "sliding_over_streaming": 20.0, "ensemble_over_streaming": 500.0}


def run_one(scenario: str, target: str, snr: float, args, cache: Path, out: Path) -> dict:
    """One CLI run; its report's streaming section and wall time."""
    spec = SCENARIOS[scenario]
    cmd = [sys.executable, "-m", "compress.cli", "distill-and-export", "--data", str(args.data), "--task",
           "keyword-spotting", "--keywords", spec["keywords"], "--target", target, "--test-snr", f"{snr:g}",
           "--stream-hours", f"{args.hours:g}", "--out", str(out), "--name", f"{scenario}-{target}-{snr:g}db",
           "--json", "--quiet"]
    if "split" in spec:
        recipe = out / f"{scenario}.toml"
        recipe.write_text(f'[data]\noptions = {{ split = "{spec["split"]}" }}\n')
        cmd += ["--recipe", str(recipe)]
    if args.quick:
        cmd += ["--limit-train", "600", "--limit-test", "100", "--teacher", "speech-cnn", "--teacher-epochs", "2",
                "--epochs", "2"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COMPRESS_CACHE_DIR": str(cache)})
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    report = json.loads(proc.stdout)
    return {"streaming": report["streaming"], "rows": report["rows"], "wall_s": wall}


def summarize(scenario: str, target: str, snr: float, result: dict) -> dict:
    """The bench's row: the numbers the issue asks for, and which goals were met."""
    if "error" in result:
        return {"scenario": scenario, "target": target, "snr_db": snr, **result}
    s = result["streaming"]
    cost, at = s["cost"], s["at_budget_on_test_det"]
    student, teacher = at["student"], at["teacher_ensemble"]
    ratios = cost["ratios"]
    gap = 100 * (student["frr"] - teacher["frr"])
    return {
        "scenario": scenario, "target": target, "snr_db": snr, "runtime": s["runtime"],
        "non_keyword_hours": s["test"]["all"]["non_keyword_hours"], "keyword_spans": s["test"]["all"]["spans"],
        "ensemble_frr_at_1fa": teacher["frr"], "ensemble_fa_per_hour": teacher["fa_per_hour"],
        "ensemble_fa_per_hour_95": teacher["fa_per_hour_95"],
        "student_frr_at_1fa": student["frr"], "student_fa_per_hour": student["fa_per_hour"],
        "student_fa_per_hour_95": student["fa_per_hour_95"],
        "shipped_threshold": s["threshold"]["value"], "shipped": s["test"]["all"],
        "hop_p50_ms": (cost["streaming_student"]["latency_ms_per_hop"] or {}).get("p50"),
        "macs_per_second": cost["streaming_student"]["macs_per_second"],
        "sliding_over_streaming": ratios["sliding_over_streaming"],
        "ensemble_over_streaming": ratios["ensemble_over_streaming"],
        "parity_max_abs_diff": s["parity"]["max_abs_diff"], "parity_passed": s["parity"]["passed"],
        "goals": {"frr_within_2_points": gap <= GOALS["frr_points_vs_ensemble"],
                  "20x_below_sliding": ratios["sliding_over_streaming"] >= GOALS["sliding_over_streaming"],
                  "500x_below_ensemble": (ratios["ensemble_over_streaming"] or 0) >= GOALS["ensemble_over_streaming"],
                  "parity": s["parity"]["passed"]},
        "background": s["background"], "notes": s["notes"], "wall_s": result["wall_s"],
    }


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="streaming keyword spotting on FSDD (FRR at <= 1 FA/h on the test DET curve)")
    for head in ("scenario", "target", "SNR", "h", "ensemble FRR", "student FRR", "shipped FRR / FA/h", "hop p50 ms",
                 "MACs/s", "x sliding", "x ensemble", "parity", "goals met"):
        table.add_column(head)
    for r in rows:
        if "error" in r:
            table.add_row(r["scenario"], r["target"], f"{r['snr_db']:g}", *["—"] * 9, f"error: {r['error'][:60]}")
            continue
        shipped = r["shipped"]
        table.add_row(r["scenario"], r["target"], f"{r['snr_db']:g}", f"{r['non_keyword_hours']:.2f}",
                      f"{100 * r['ensemble_frr_at_1fa']:.1f}%", f"{100 * r['student_frr_at_1fa']:.1f}%",
                      f"{100 * shipped['frr']:.1f}% / {shipped['fa_per_hour']:.2f}",
                      "not timed" if r["hop_p50_ms"] is None else f"{r['hop_p50_ms']:.3f}",
                      f"{r['macs_per_second'] / 1e6:.2f}M", f"{r['sliding_over_streaming']:.0f}",
                      f"{r['ensemble_over_streaming'] or 0:.0f}", "ok" if r["parity_passed"] else "FAIL",
                      ", ".join(k for k, v in r["goals"].items() if v) or "none")
    Console(width=220).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--hours", type=float, default=2.0, help="hours of test (and validation) audio per condition")
    parser.add_argument("--targets", nargs="+", default=["onnx", "tflite", "coreml"])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--snr", nargs="+", type=float, default=[10.0, 20.0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of the bench (not a result)")
    args = parser.parse_args()
    if args.quick:
        args.hours = 0.0
    if not (args.data / "recordings").is_dir():
        sys.exit(f"{args.data}: FSDD not found (expected recordings/*.wav)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        out.mkdir()
        for scenario in args.scenarios:
            for target in args.targets:
                for snr in args.snr:
                    rows.append(summarize(scenario, target, snr, run_one(scenario, target, snr, args, cache, out)))
                    print(json.dumps({k: rows[-1].get(k) for k in ("scenario", "target", "snr_db", "wall_s")}),
                          flush=True)
    print_table(rows)
    dest = ROOT / "bench" / "results" / ("streaming-quick.json" if args.quick else "streaming.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"quick": args.quick, "hours_per_condition": args.hours, "rows": rows}, indent=2))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
