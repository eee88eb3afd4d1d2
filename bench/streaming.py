"""Streaming keyword spotting on FSDD (issue 26): the teacher ensemble vs the streaming student, per runtime.

Scenarios (each run through the CLI as a user would: ``compress distill-and-export --task keyword-spotting``):

  wake-word     one keyword (``3``); the other nine digits are ``_unknown_``.
  commands      five keywords (``0,1,2,3,4``); the other five digits are ``_unknown_``.
  wake-word-unseen-speaker  the wake word with one speaker held out entirely (``split = "speaker=theo"``): a
                voice the models never heard, the phone's everyday case.

One run per scenario, target and scheme measures both conditions (test streams with generated pink background
at 10 dB and 20 dB SNR, ``--test-snr 10,20``); the report's ``by_condition`` gives a row per SNR. Targets:
ONNX Runtime, LiteRT, the Core ML MIL reference evaluator; schemes: fp32 and ``--quantize int8`` (what each
target's streaming files take: ONNX static int8, calibrated on real hops; LiteRT and Core ML int8 weights).
The hours of non-keyword audio per condition come from re-mixing the test split's clips (``--stream-hours``:
new order, gaps and noise each pass) over generated background: FSDD's test split holds a few minutes of
speech, and no other real speech or background recordings are available here, so false accepts are
measured on FSDD's words and generated noise only (said in every row). No speech synthesizer is used. The
Core ML evaluator runs the program op by op in numpy (milliseconds per hop), so its rows use
``--coreml-hours`` (default 0.25 h per condition; said in the row).

Printed and written to ``bench/results/streaming.json``: for the teacher ensemble on sliding windows and the
streaming student in each runtime, FRR at <= 1 FA/h on the test DET curve (each with its FA/h interval),
the shipped threshold's FRR and FA/h, per-hop p50 latency, MACs per second of audio, and the student's MACs/s
relative to the ensemble's and to the same student on sliding windows. Goals (each row says met or not):
student FRR at 1 FA/h within 2 points of the ensemble's; MACs/s >= 20x lower than the sliding-window
student and >= 500x lower than the ensemble; streaming vs sliding-window outputs within tolerance.

``--ablation`` measures what each training augmentation adds (``--ablation-scenario``, by default the wake word
with a speaker held out: generalising to a voice never heard is what augmentation is for; ONNX fp32,
``--ablation-hours`` per condition; teachers and student both trained with it): none, time shift,
+ background noise (the task's ``auto``), + gain, + speed. Written to ``bench/results/streaming-ablation.json``.

    python bench/streaming.py [--hours 2] [--coreml-hours 0.25] [--targets onnx tflite coreml]
                              [--schemes none int8] [--scenarios wake-word commands wake-word-unseen-speaker]
                              [--cache DIR] [--merge] [--student NAME]
                              [--ablation [--ablation-hours 0.5] [--ablation-scenario NAME]] [--quick]

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
# the ablation's steps, each adding one augmentation to the one before (the task's "auto" is shift + gain + noise)
ABLATION = {"none": "none", "shift": "shift=100", "shift+noise": "shift=100,noise=0:20",
            "+gain (auto)": "shift=100,noise=0:20,gain=-6:6", "+speed": "shift=100,noise=0:20,gain=-6:6,speed=0.9:1.1"}
GOALS = {"frr_points_vs_ensemble": 2.0, "sliding_over_streaming": 20.0, "ensemble_over_streaming": 500.0}
HOURS_MADE_OF = ("each condition's streams re-mix the test split's clips (new order, gaps of generated pink "
                 "background, new noise each pass) until they hold the hours; FSDD words and generated noise "
                 "only: no other real speech or background audio is available here, and no speech synthesizer")


def run_one(scenario: str, target: str, scheme: str, hours: float, args, cache: Path, out: Path,
            augment: str | None = None, tag: str = "") -> dict:
    """One CLI run (both SNR conditions); its report's streaming section and wall time."""
    from compress.export.registry import TARGETS

    spec = SCENARIOS[scenario]
    if scheme == "int8" and "int8" not in TARGETS[target].streaming_schemes:
        scheme = "int8-weights"  # the target's int8 streaming file (its static int8 is said in its folder)
    name = f"{scenario}-{target}-{scheme}{tag}" + (f"-{args.student.replace(':', '-')}" if args.student else "")
    cmd = [sys.executable, "-m", "compress.cli", "distill-and-export", "--data", str(args.data), "--task",
           "keyword-spotting", "--keywords", spec["keywords"], "--target", target, "--quantize", scheme,
           "--test-snr", ",".join(f"{v:g}" for v in args.snr), "--stream-hours", f"{hours:g}", "--out", str(out),
           "--name", name, "--json", "--quiet"]
    if augment:
        cmd += ["--augment", augment]
    if args.student:
        cmd += ["--student", args.student]
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
    student = next((r["model"] for r in report["rows"] if r["role"] == "student"), None)
    return {"streaming": report["streaming"], "student": student, "student_spec": args.student or "default",
            "wall_s": wall, "hours_asked": hours, "augment": report["run"].get("augment")}


def summarize(scenario: str, target: str, scheme: str, result: dict) -> list[dict]:
    """The bench's rows (one per SNR condition): the numbers the issue asks for, and which goals were met."""
    if "error" in result:
        return [{"scenario": scenario, "target": target, "scheme": scheme, "snr_db": None, **result}]
    s = result["streaming"]
    cost = s["cost"]
    ratios = cost["ratios"]
    rows = []
    for condition in s["by_condition"]:
        at = condition["at_budget_on_test_det"]
        student, teacher, shipped = at["student"], at["teacher_ensemble"], condition["shipped"]
        gap = 100 * (student["frr"] - teacher["frr"])
        rows.append({
            "scenario": scenario, "student": result["student"], "student_spec": result["student_spec"],
            "target": target, "scheme": s["scheme"], "asked": scheme, "scheme_attempts": s.get("scheme_attempts"),
            "snr_db": condition["snr_db"], "runtime": s["runtime"],
            "non_keyword_hours": shipped["non_keyword_hours"], "keyword_spans": shipped["spans"],
            "ensemble_frr_at_1fa": teacher["frr"], "ensemble_fa_per_hour": teacher["fa_per_hour"],
            "ensemble_fa_per_hour_95": teacher["fa_per_hour_95"],
            "student_frr_at_1fa": student["frr"], "student_fa_per_hour": student["fa_per_hour"],
            "student_fa_per_hour_95": student["fa_per_hour_95"], "frr_points_vs_ensemble": gap,
            "shipped_threshold": s["threshold"]["value"], "shipped": shipped,
            "hop_p50_ms": (cost["streaming_student"]["latency_ms_per_hop"] or {}).get("p50"),
            "macs_per_second": cost["streaming_student"]["macs_per_second"],
            "ensemble_macs_per_second": cost["ensemble"]["macs_per_second"],
            "sliding_over_streaming": ratios["sliding_over_streaming"],
            "ensemble_over_streaming": ratios["ensemble_over_streaming"],
            "parity": {k: s["parity"].get(k) for k in ("max_abs_diff", "top1_agreement", "tolerance", "bounds",
                                                        "passed")},
            "goals": {"frr_within_2_points": gap <= GOALS["frr_points_vs_ensemble"],
                      "20x_below_sliding": ratios["sliding_over_streaming"] >= GOALS["sliding_over_streaming"],
                      "500x_below_ensemble": (ratios["ensemble_over_streaming"] or 0) >= GOALS["ensemble_over_streaming"],
                      "parity": s["parity"]["passed"]},
            "background": s["background"], "notes": s["notes"], "wall_s": result["wall_s"],
            "augment": result["augment"],  # what the models trained with
        })
    return rows


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for head in ("scenario", "student", "target", "scheme (asked -> shipped)", "SNR", "h", "ensemble FRR", "student FRR", "gap pts",
                 "shipped FRR / FA/h", "hop p50 ms", "MACs/s", "x sliding", "x ensemble", "parity", "goals met"):
        table.add_column(head)
    for r in rows:
        if "error" in r:
            table.add_row(r["scenario"], r.get("student_spec", "default"), r["target"], r["scheme"], "—", *["—"] * 10, f"error: {r['error'][:60]}")
            continue
        shipped = r["shipped"]
        scheme = r["scheme"] if r.get("asked", r["scheme"]) == r["scheme"] else f"{r['asked']} -> {r['scheme']}"
        table.add_row(r["scenario"], r.get("student_spec", "default"), r["target"], scheme, f"{r['snr_db']:g}", f"{r['non_keyword_hours']:.2f}",
                      f"{100 * r['ensemble_frr_at_1fa']:.1f}%", f"{100 * r['student_frr_at_1fa']:.1f}%",
                      f"{r['frr_points_vs_ensemble']:+.1f}",
                      f"{100 * shipped['frr']:.1f}% / {shipped['fa_per_hour']:.2f}",
                      "not timed" if r["hop_p50_ms"] is None else f"{r['hop_p50_ms']:.3f}",
                      f"{r['macs_per_second'] / 1e6:.2f}M", f"{r['sliding_over_streaming']:.0f}",
                      f"{r['ensemble_over_streaming'] or 0:.0f}", "ok" if r["parity"]["passed"] else "FAIL",
                      ", ".join(k for k, v in r["goals"].items() if v) or "none")
    Console(width=230).print(table)


def results_file(name: str) -> Path:
    return ROOT / "bench" / "results" / name


def earlier_results(name: str) -> dict:
    """The results file ``name`` as a previous invocation wrote it (``{}`` when there is none)."""
    path = results_file(name)
    return json.loads(path.read_text()) if path.is_file() else {}


def merged(earlier_rows: list[dict], rows: list[dict]) -> list[dict]:
    """``rows`` with the earlier rows of the other (scenario, student, target, scheme) runs kept (``--merge``:
    a bench run in parts, one invocation each)."""
    key = lambda r: (r["scenario"], r.get("student_spec", "default"), r["target"],  # noqa: E731
                     r.get("asked", r["scheme"]))
    ran = {key(r) for r in rows}
    return [r for r in earlier_rows if key(r) not in ran] + rows


def write(name: str, payload: dict) -> None:
    dest = results_file(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(payload, indent=2))
    print(f"wrote {dest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=FSDD)
    parser.add_argument("--hours", type=float, default=2.0, help="hours of test (and validation) audio per condition")
    parser.add_argument("--coreml-hours", type=float, default=0.25,
                        help="hours per condition for the Core ML evaluator (a numpy reference, ms per hop)")
    parser.add_argument("--targets", nargs="+", default=["onnx", "tflite", "coreml"])
    parser.add_argument("--schemes", nargs="+", default=["none", "int8"])
    parser.add_argument("--student", help="the streaming student (default: the task's, ds-cnn-stream)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--snr", nargs="+", type=float, default=[10.0, 20.0])
    parser.add_argument("--cache", type=Path, help="keep the cache here (teachers, students, ensemble outputs)")
    parser.add_argument("--ablation", action="store_true", help="only the augmentation ablation")
    parser.add_argument("--ablation-hours", type=float, default=0.5)
    parser.add_argument("--ablation-steps", nargs="+", help=f"only these steps (default all: {', '.join(ABLATION)}); "
                        "with --merge the file keeps the other steps' rows")
    parser.add_argument("--ablation-scenario", default="wake-word-unseen-speaker", choices=list(SCENARIOS))
    parser.add_argument("--merge", action="store_true",
                        help="keep the results file's rows of the scenarios/targets/schemes not run now")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the bench (not a result)")
    args = parser.parse_args()
    if args.quick:
        args.hours = args.coreml_hours = args.ablation_hours = 0.0
    if not (args.data / "recordings").is_dir():
        sys.exit(f"{args.data}: FSDD not found (expected recordings/*.wav)")
    suffix = "-quick" if args.quick else ""
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        cache, out = args.cache or Path(tmp) / "cache", Path(tmp) / "out"
        out.mkdir()
        if args.ablation:
            run_ablation(args, cache, out, suffix)
            return
        rows = []
        for scenario in args.scenarios:
            for target in args.targets:
                for scheme in args.schemes:
                    hours = args.coreml_hours if target == "coreml" else args.hours
                    result = run_one(scenario, target, scheme, hours, args, cache, out)
                    rows += [{**r, "hours_asked": hours} for r in summarize(scenario, target, scheme, result)]
                    print(json.dumps({"scenario": scenario, "target": target, "scheme": scheme,
                                      "wall_s": result["wall_s"]}), flush=True)
                    written = write_rows(rows, args, suffix)  # after every run: a long bench stopped keeps its rows
    print_table(written, "streaming keyword spotting on FSDD (FRR at <= 1 FA/h on each condition's test DET curve)")


def write_rows(rows: list[dict], args, suffix: str) -> list[dict]:
    """Write the rows measured so far (with ``--merge``, beside the file's other rows); returns what was written."""
    earlier = earlier_results(f"streaming{suffix}.json") if args.merge else {}
    extra = {"superseded": earlier["superseded"]} if "superseded" in earlier else {}  # rows kept aside
    if args.merge:
        rows = merged(earlier.get("rows", []), rows)
    write(f"streaming{suffix}.json", {"quick": args.quick, "hours_per_condition": args.hours,
                                      "coreml_hours_per_condition": args.coreml_hours, "hours_made_of": HOURS_MADE_OF,
                                      "goals": GOALS, "rows": rows, **extra})
    return rows


def _earlier_ablation_rows(suffix: str, rerun: list[str]) -> list[dict]:
    """``--merge``: the results file's rows of the steps not run now (labelled by today's step names)."""
    names = {spec: step for step, spec in ABLATION.items()}
    return [{**r, "augment": names[r["augment_spec"]]}
            for r in earlier_results(f"streaming-ablation{suffix}.json").get("rows", [])
            if r.get("augment_spec") in names and r["augment_spec"] not in rerun]


def run_ablation(args, cache: Path, out: Path, suffix: str) -> None:
    """The augmentation ablation's steps in order, the results file rewritten after each (a stopped run keeps
    the steps it finished: ``steps_done``)."""
    scenario, steps = args.ablation_scenario, args.ablation_steps or list(ABLATION)
    unknown = [step for step in steps if step not in ABLATION]
    if unknown:
        raise SystemExit(f"--ablation-steps {' '.join(unknown)}: expected some of {', '.join(ABLATION)}")
    kept = _earlier_ablation_rows(suffix, [ABLATION[step] for step in steps]) if args.merge else []
    rows: list[dict] = []
    for i, step in enumerate(steps):
        augment = ABLATION[step]
        result = run_one(scenario, "onnx", "none", args.ablation_hours, args, cache, out, augment=augment,
                         tag=f"-ablation{list(ABLATION).index(step)}")
        rows += [{**r, "augment": step, "augment_spec": augment} for r in summarize(scenario, "onnx", "none", result)]
        print(json.dumps({"augment": step, "wall_s": result["wall_s"]}), flush=True)
        done = sorted(kept + rows, key=lambda r: list(ABLATION.values()).index(r["augment_spec"]))
        write(f"streaming-ablation{suffix}.json", {"quick": args.quick, "scenario": scenario,
                                                   "hours_per_condition": args.ablation_hours,
                                                   "hours_made_of": HOURS_MADE_OF, "steps": ABLATION,
                                                   "steps_done": len({r["augment_spec"] for r in done}),
                                                   "rows": done})
    print_table([{**r, "scenario": r["augment"]} for r in rows], f"augmentation ablation: {scenario}, ONNX fp32")


if __name__ == "__main__":
    main()
