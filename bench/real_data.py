"""Real data on default settings (issue 15): what a new user gets from ``compress distill-and-export --data``.

Two data sets, each run through the CLI exactly as a user would (a subprocess, no flags but the data, the
output folder and ``--json``; the defaults choose teachers, student and epochs for the data), each from an
EMPTY cache (a fresh ``COMPRESS_CACHE_DIR``), on this machine:

  mnist         the original MNIST IDX files from ``../shared/datasets/mnist`` (60,000 train / 10,000 test,
                28x28 grayscale, 8-bit). Goal (issue 27): <= 300 s wall time on a quiet machine, student >= 98.5% in
                its runtime.
  colour-mnist  a colour image set made here from MNIST: every digit resized to 32x32 and painted with a
                random foreground and background colour (different per image, contrast kept), written as
                RGB PNGs in class-per-folder ``train/`` and ``test/`` trees (``--colour-train`` /
                ``--colour-test`` images, stratified by MNIST's order) and read by the image-folder loader.
                Goal: teacher ensemble >= 97%, student >= 96% in ONNX Runtime.
  colour-speech another data set, coloured another way, at another size (issue 27: a colour set the defaults
                were not tuned on): every Free Spoken Digit clip from ``../shared/datasets/fsdd`` (padded or
                cut to 1 s) as its log-mel spectrogram (the toolkit's ``LogMel``: 40 mels, 61 frames),
                resized to 40x40 and painted through a random three-colour ramp per image; labels the
                spoken digit; test split the usual one (file index 0-4: 300 clips), 2,700 training images.

On the colour sets the bench also trains an ordinary small CNN written by hand (``bench/plain_cnn.py``: three
VGG blocks of 16/32/64 channels, batch norm, AdamW, one-cycle, flip + shift, per-image standardization) on the
same split for the same seconds the defaults' whole run took, and prints both (issue 27's colour goal: the
defaults' student at least the plain CNN's test accuracy, in <= 600 s end to end); and the same CNN narrowed
to about the student's parameter count, for the same seconds: what distillation adds at the student's size.

Reported per set: wall time of the whole command, what the defaults picked (the line the run prints),
the teacher ensemble's and every member's accuracy, the student's accuracy in the exported runtime, its
params/MACs, the early-stopping epochs of each member, the model input (raw 8-bit pixels inside the
model), and each stage's measured seconds beside the estimate the run printed for it (``run.stages``). A
table is printed and everything goes to ``bench/results/real_data.json``.

``--repeat`` runs each set a second time from another empty cache and compares every cached teacher,
student and soft-target entry bit for bit (issue 27: same settings and seed -> the same models), with the
student's test accuracy of both runs.

    python bench/real_data.py [--sets mnist colour-mnist colour-speech] [--data ../shared/datasets/mnist]
                              [--fsdd ../shared/datasets/fsdd] [--colour-train 20000] [--colour-test 4000]
                              [--target onnx] [--repeat] [--no-baseline] [--quick]
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

GOALS = {"mnist": {"wall_s": 300.0, "student": 98.5},
         "colour-mnist": {"wall_s": 600.0, "ensemble": 97.0, "student": 96.0},
         "colour-speech": {"wall_s": 600.0}}
COLOUR_SETS = ("colour-mnist", "colour-speech")


def make_colour_mnist(mnist: Path, dest: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """MNIST digits as 32x32 RGB PNGs with a random foreground and background colour per image."""
    from PIL import Image

    from compress.data import read_idx

    rng = np.random.default_rng(seed)
    for split, prefix, count in (("train", "train", n_train), ("test", "t10k", n_test)):
        (images,) = [p for p in mnist.iterdir() if p.name.startswith(f"{prefix}-images")]
        (labels,) = [p for p in mnist.iterdir() if p.name.startswith(f"{prefix}-labels")]
        x, y = read_idx(images)[:count], read_idx(labels)[:count]
        for i, (img, label) in enumerate(zip(x, y)):
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            while np.abs(fg.astype(int) - bg.astype(int)).sum() < 160:  # keep the digit visible
                fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            gray = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32) / 255
            rgb = (bg[None, None] * (1 - gray[..., None]) + fg[None, None] * gray[..., None]).round().astype(np.uint8)
            folder = dest / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, "RGB").save(folder / f"{i:05d}.png")
    return dest


def _colour_ramp(rng: np.random.Generator) -> np.ndarray:
    """A (256, 3) colour map through three random colours (dark end, middle, bright end)."""
    stops = rng.integers(0, 256, (3, 3)).astype(np.float32)
    while np.abs(stops[2] - stops[0]).sum() < 200:  # keep the ends apart, or the picture is flat
        stops = rng.integers(0, 256, (3, 3)).astype(np.float32)
    t = np.linspace(0, 2, 256)[:, None]
    return np.where(t < 1, stops[0] + (stops[1] - stops[0]) * t, stops[1] + (stops[2] - stops[1]) * (t - 1))


def make_colour_speech(fsdd: Path, dest: Path, size: int = 40, seed: int = 0, limit: int | None = None) -> Path:
    """FSDD clips as ``size`` x ``size`` RGB PNGs of their log-mel spectrograms, each through a random
    three-colour ramp; ``train/`` and ``test/`` class-per-folder trees (test: file index 0-4)."""
    import torch
    from PIL import Image

    from compress.data.audio import fit_length, read_clip
    from compress.models.frontend import LogMel

    rng = np.random.default_rng(seed)
    frontend = LogMel(sample_rate=8000, n_fft=256, hop=128, n_mels=40)
    files = sorted((fsdd / "recordings").glob("*.wav"))
    if limit:
        files = [files[i] for i in rng.permutation(len(files))[:limit]]
    for path in files:
        digit, speaker, index = path.stem.split("_")
        clip = fit_length(read_clip(path, 8000), 8000)
        with torch.no_grad():
            mel = frontend(torch.from_numpy(clip)[None])[0, 0].numpy()[::-1]  # low frequencies at the bottom
        level = np.clip((mel - (mel.max() - 12.0)) / 12.0, 0, 1)  # the top 12 nats (~52 dB) of each clip
        image = Image.fromarray((level * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        rgb = _colour_ramp(rng)[np.asarray(image)].round().astype(np.uint8)
        folder = dest / ("test" if int(index) < 5 else "train") / digit
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb, "RGB").save(folder / f"{speaker}_{index}.png")
    return dest


def plain_cnn_row(folder: Path, seconds: float, student_params: int | None = None) -> dict:
    """The hand-written CNN (``bench/plain_cnn.py``) trained for ``seconds`` on the folder's own split; with
    ``student_params``, narrowed to about that many parameters (the student's size)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_cnn import train_for, widths_for

    from compress.data import load_data

    data = load_data(str(folder))
    widths = (16, 32, 64) if student_params is None else widths_for(student_params, data.x_train.shape[1],
                                                                     data.num_classes)
    return train_for(seconds, data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, widths=widths)


def run_cli(data: Path, work: Path, target: str, extra: list[str]) -> dict:
    """``compress distill-and-export --data DATA`` from an empty cache; the report and the wall time."""
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(work / "cache")}
    cmd = [sys.executable, "-m", "compress.cli", "distill-and-export", "--data", str(data), "--target", target,
           "--out", str(work / "dist"), "--name", "bench", "--json", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    picked = [line for line in proc.stderr.splitlines() if line.startswith("defaults for this data")]
    return {"report": report, "wall_s": wall, "defaults_line": picked[0] if picked else None,
            "exit_code": proc.returncode, "log_lines": len(proc.stderr.splitlines())}


def compare_caches(first: Path, second: Path) -> dict:
    """Whether two runs from empty caches trained the same models: every cached teacher and student entry
    (weights, optimizer state, curves) and every soft-target array compared bit for bit, by file name
    (the names are content keys, so the same settings give the same names)."""
    import torch

    def same(a, b) -> bool:
        if torch.is_tensor(a):
            return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
        return a == b

    def entry(path: Path):
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path))
        entry = torch.load(path, weights_only=True)
        if isinstance(entry, dict) and isinstance(entry.get("curve"), dict):
            entry = {**entry, "curve": {k: v for k, v in entry["curve"].items() if k != "seconds"}}  # a timing
        return entry

    names = sorted(str(p.relative_to(first)) for folder in ("teachers", "students", "soft-targets")
                   for p in (first / folder).glob("*") if p.suffix in (".pt", ".npy"))
    differing = [n for n in names if not (second / n).is_file() or not same(entry(first / n), entry(second / n))]
    return {"entries": len(names), "differing": differing, "identical": bool(names) and not differing}


def summarize(name: str, result: dict) -> dict:
    """The numbers this bench reports, read from the run's report.json."""
    report = result["report"]
    rows = {r["model"]: r for r in report["rows"]}
    student = report["rows"][-1]
    members = [r for r in report["rows"] if r["role"] == "member"]
    run = report["run"]
    summary = {
        "set": name, "wall_s": round(result["wall_s"], 1), "exit_code": result["exit_code"],
        "train": run["data"]["train"], "test": run["data"]["test"], "input_shape": run["data"]["input_shape"],
        "defaults": run.get("defaults_chosen"), "augment": run.get("augment"),
        "student_augment": run.get("student_augment"), "model_input": run.get("model_input"),
        "ensemble_accuracy": 100 * rows["teacher ensemble"]["accuracy"],
        "members": {m["model"]: 100 * m["accuracy"] for m in members},
        "member_epochs": {t["name"]: (t.get("training") or {}).get("epochs_run") for t in run["teachers"]},
        "member_seconds": {t["name"]: (t.get("training") or {}).get("seconds") for t in run["teachers"]},
        "student": run["student"], "student_runtime": student["runtime"],
        "student_accuracy": 100 * student["accuracy"], "student_params": student["params"],
        "student_macs": student["macs"], "checks_passed": report["passed"],
        "stages": run.get("stages") or [],  # each stage's measured seconds beside the run's own estimate
    }
    goals = GOALS.get(name, {})
    summary["goals"] = {
        "every check passed (exit 0)": summary["exit_code"] == 0,  # exit 1: a failed check or breached budget
        **({"wall_s <= %g" % goals["wall_s"]: summary["wall_s"] <= goals["wall_s"]} if "wall_s" in goals else {}),
        **({"ensemble >= %g%%" % goals["ensemble"]: summary["ensemble_accuracy"] >= goals["ensemble"]} if "ensemble" in goals else {}),
        **({"student >= %g%%" % goals["student"]: summary["student_accuracy"] >= goals["student"]} if "student" in goals else {}),
    }
    return summary


def _member_cost(row: dict, name: str) -> str:
    """``4 ep, 107 s``: a member's epochs and training seconds (older results have no seconds)."""
    seconds = (row.get("member_seconds") or {}).get(name)
    return f"{row['member_epochs'].get(name)} ep" + ("" if seconds is None else f", {seconds:.0f} s")


def table(rows: list[dict]) -> Table:
    t = Table(title="real data on default settings, empty cache, this machine")
    for col in ("set", "train/test", "wall", "defaults", "members (acc, epochs, s)", "ensemble", "student",
                "plain CNN, same seconds", "plain CNN at the student's size", "goals"):
        t.add_column(col)
    for r in rows:
        members = ", ".join(f"{k.removeprefix('member ')} {v:.2f}% ({_member_cost(r, k.removeprefix('member '))})"
                            for k, v in r["members"].items())
        picked = r["defaults"] or {}
        t.add_row(r["set"], f"{r['train']}/{r['test']}", f"{r['wall_s']:.0f} s",
                  f"student {picked.get('student', r['student'])}, {picked.get('epochs', '?')} ep",
                  members, f"{r['ensemble_accuracy']:.2f}%",
                  f"{r['student']} {r['student_accuracy']:.2f}% ({r['student_runtime']})",
                  _baseline_cell(r.get("plain_cnn")), _baseline_cell(r.get("plain_cnn_student_size")),
                  ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in r["goals"].items()))
    return t


def _baseline_cell(baseline: dict | None) -> str:
    if baseline is None:
        return "-"
    size = f", {baseline['params']:,} params" if "params" in baseline else ""
    return f"{baseline['accuracy']:.2f}% ({baseline['epochs']} ep, {baseline['seconds']:.0f} s{size})"


def stage_table(row: dict) -> Table:
    """Where one run's minutes went, stage by stage, and how far each estimate the run printed was off."""
    t = Table(title=f"{row['set']}: stages (measured vs the run's estimate; {row['wall_s']:.0f} s end to end)")
    for col in ("stage", "measured", "estimate", "measured / estimate"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for stage in row["stages"]:
        estimate, ratio = stage["estimate_s"], stage["measured_over_estimate"]
        t.add_row(stage["stage"], f"{stage['seconds']:.1f} s", "-" if estimate is None else f"{estimate:.1f} s",
                  "-" if ratio is None else f"{ratio:.2f}")
    return t


def make_set(name: str, args, work: Path) -> Path:
    """The data folder (or IDX folder) of one named set, made in ``work`` where it is generated here."""
    mnist, quick = Path(args.data), args.quick
    if name == "mnist":
        return mnist
    if name == "colour-mnist":
        return make_colour_mnist(mnist, work / name, *((2000, 500) if quick else (args.colour_train, args.colour_test)))
    fsdd = Path(args.fsdd)
    if not (fsdd / "recordings").is_dir():
        raise SystemExit(f"{fsdd}: FSDD folder with recordings/ not found (expected ../shared/datasets/fsdd)")
    return make_colour_speech(fsdd, work / name, limit=600 if quick else None)


def with_baseline(row: dict, data: Path, quick: bool) -> dict:
    """The row with the plain CNN trained for the defaults' wall time beside it, and the goal comparing them;
    and, for what distillation itself adds, the plain CNN at the student's size for the same seconds (no goal)."""
    seconds = 20.0 if quick else row["wall_s"]
    baseline = plain_cnn_row(data, seconds)
    row = {**row, "plain_cnn": baseline, "plain_cnn_student_size": plain_cnn_row(data, seconds, row["student_params"])}
    row["goals"] = {**row["goals"], "student >= plain CNN": row["student_accuracy"] >= baseline["accuracy"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["mnist", *COLOUR_SETS], choices=["mnist", *COLOUR_SETS])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--fsdd", default=str(ROOT.parent / "shared" / "datasets" / "fsdd"))
    parser.add_argument("--colour-train", type=int, default=20000)
    parser.add_argument("--colour-test", type=int, default=4000)
    parser.add_argument("--target", default="onnx")
    parser.add_argument("--repeat", action="store_true",
                        help="run each set twice from empty caches and compare the models bit for bit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain CNN on the colour sets")
    parser.add_argument("--quick", action="store_true", help="small slices and few epochs: checks the bench runs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "real_data.json"))
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: MNIST IDX folder not found (expected ../shared/datasets/mnist)")
    extra = ["--limit-train", "2000", "--limit-test", "500", "--epochs", "2", "--teacher-epochs", "1"] if args.quick else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="real-data-bench-") as tmp:
        for name in args.sets:
            work = Path(tmp) / name
            work.mkdir()
            data = make_set(name, args, work)
            rows.append(summarize(name, run_cli(data, work, args.target, extra)))
            if name in COLOUR_SETS and not args.no_baseline:
                rows[-1] = with_baseline(rows[-1], data, args.quick)
            if args.repeat:  # the same settings and seed from another empty cache: the same models?
                (work / "again").mkdir()
                again = summarize(name, run_cli(data, work / "again", args.target, extra))
                same = compare_caches(work / "cache", work / "again" / "cache")
                rows[-1]["repeat"] = {"student_accuracy": [rows[-1]["student_accuracy"], again["student_accuracy"]],
                                      "wall_s": again["wall_s"], **same}
                rows[-1]["goals"]["same models twice"] = (same["identical"] and
                                                          again["student_accuracy"] == rows[-1]["student_accuracy"])
            Console().print(table(rows[-1:]))
            Console().print(stage_table(rows[-1]))
    console = Console(width=200)
    console.print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
