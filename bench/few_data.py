"""Few-data distillation on FSDD (issue 14): Hinton, Vinyals & Dean (2015) §6 on spoken digits.

The paper's claim: trained on 3% of the data, a model fitted to hard labels overfits badly, while the same
model fitted to the soft targets of an ensemble trained on ALL the data generalizes almost as well as one
trained on everything (their speech model, Table 5: 44.5% test frame accuracy with hard targets on 3%,
57.0% with soft targets on 3%, 58.9% with hard targets on 100%). The soft targets carry what the ensemble
learned from the data the small model never sees.

What this measures, with the FSDD sample's recipe (``samples/fsdd_speech/compress.toml``, read from the
file so the two cannot drift apart): the 3-teacher ensemble (``speech-cnn``, ``speech-resnet``,
``speech-wide-cnn``, the sample's teacher epochs, trained once on the FULL training split and cached), its
soft targets on the full training split at the sample's T (cached), then, for every fraction of the
training clips (a stratified, seeded subset; the same clips for every arm), the sample's ``ds-cnn`` student
trained three ways from the same initial weights and seed:

  hard    cross-entropy on the true labels only (the paper's baseline)
  pseudo  cross-entropy on the ensemble's argmax (the label-only / black-box teacher: what it costs to get
          only the teacher's answer, not its distribution)
  soft    ``compress.distill.losses.hinton_loss`` with the ensemble's soft targets, the sample's T and alpha, exactly
          the pipeline's per-batch loss

Every student and the ensemble are scored on the full test split (300 clips, takes 0-4). When the
ensemble's argmax equals the true label on every clip of a subset (on FSDD it does: the ensemble fits its
training split), the pseudo arm is the hard arm's run exactly (same labels, init, order and steps; checked
with ``--quick``: identical accuracies), so its result is reused and marked ``=hard``, not retrained.

Epochs: ``--epochs`` (default: the sample's 40) is the budget at 100%. A subset of n clips gets
``round(epochs * ceil(N / batch) / ceil(n / batch))`` epochs, so every arm at every fraction takes about
the same number of optimizer steps (40 x 43 = 1,720 at batch 64) and the cosine schedule decays over the
same number of updates: a small subset is not handicapped by fewer updates, and it gets every chance to
overfit. Training runs for the whole budget (no early stopping: the paper early-stopped its 3% baseline);
the final weights are scored. ``--quick`` uses 4 epochs at 100% for a smoke run.

    python bench/few_data.py [--fractions 0.03 0.1 1.0] [--epochs 40] [--quick] [--seed 0]
                             [--data ../shared/datasets/fsdd] [--out bench/results/few_data.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from compress import models, recipe  # noqa: E402
from compress.core.cache import content_key  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.distill.losses import LOSSES  # noqa: E402
from compress.teachers.ensemble import ensemble_probs  # noqa: E402
from compress.teachers.soft_targets import soft_targets  # noqa: E402
from compress.teachers import load_teachers  # noqa: E402
from compress.distill.train import fit, predict_logits, seed_everything  # noqa: E402

RECIPE = ROOT / "samples" / "fsdd_speech" / "compress.toml"
ARMS = ("hard", "pseudo", "soft")
QUICK_EPOCHS = 4


@dataclass
class Setup:
    """The sample's settings this benchmark uses (from its recipe); ``epochs`` is the budget at 100%."""

    data: str
    data_format: str
    data_options: dict
    teachers: list
    teacher_epochs: int
    student: str
    temperature: float
    alpha: float
    epochs: int
    lr: float
    batch_size: int
    seed: int
    loss: str = "hinton"


def sample_setup(data: str | None, epochs: int | None, seed: int | None) -> Setup:
    """Read the FSDD sample's recipe, so the benchmark runs what the sample runs (its data path is relative
    to the repository root); flags override the student epochs, the seed and the data folder."""
    r = recipe.load(RECIPE)
    return Setup(data=data or str(ROOT / r["data"]), data_format=r["data_format"], data_options=r["data_options"],
                 teachers=list(r["teachers"]), teacher_epochs=r["teacher_epochs"], student=r["student"],
                 temperature=float(r["temperature"]), alpha=float(r["alpha"]),
                 epochs=epochs or r["epochs"], lr=float(r["lr"]), batch_size=r["batch_size"],
                 seed=r["seed"] if seed is None else seed)


def teacher_ensemble(s: Setup, console: Console):
    """Data, members and cached soft targets, as the pipeline builds them: the student is built first
    (``pipeline.initial_student``) so a from-scratch teacher run sees the seeded RNGs in the same state as
    ``compress distill-and-export`` and fills the same cache entries."""
    data = load_data(s.data, s.data_format, seed=s.seed, **s.data_options)
    seed_everything(s.seed)
    models.build(s.student, data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    console.print(f"teachers {', '.join(s.teachers)} ({s.teacher_epochs} epochs; trained once on all "
                  f"{len(data.x_train)} training clips, then cached)...", highlight=False)
    members = load_teachers(s.teachers, data, epochs=s.teacher_epochs, seed=s.seed)
    targets, cached = soft_targets(members, data.x_train, s.temperature,
                                   content_key(data.fingerprint(), len(data.x_train)))
    console.print(f"teachers ready in {time.perf_counter() - t0:.0f} s "
                  f"({sum(m.cached for m in members)}/{len(members)} from the cache, soft targets "
                  f"{'from the cache' if cached else 'computed'})", highlight=False)
    return data, members, np.asarray(targets)


def stratified_subset(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of the clips of every class (at least one each), drawn with ``seed``:
    every class keeps its share, so a 3% subset is not missing a digit by chance. 1.0 keeps every clip in
    its original order (that arm then is exactly the sample's student)."""
    if fraction >= 1:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:max(1, round(fraction * int(np.sum(y == c))))]
              for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def scaled_epochs(base_epochs: int, n_full: int, n_subset: int, batch_size: int) -> int:
    """Epochs that give a subset about as many optimizer steps as ``base_epochs`` on the full split."""
    return max(1, round(base_epochs * math.ceil(n_full / batch_size) / math.ceil(n_subset / batch_size)))


def train_arm(s: Setup, data, idx: np.ndarray, arm: str, soft: np.ndarray, pseudo: np.ndarray,
              epochs: int) -> dict:
    """One student on the clips ``idx`` with the project's ``fit``: same initial weights (seeded as the
    pipeline seeds them), data order and budget for every arm; only the per-batch loss differs."""
    x = data.x_train[idx]
    labels = torch.as_tensor(data.y_train[idx])
    teacher_labels = torch.as_tensor(pseudo[idx])
    probs = soft[idx]
    loss_fn = LOSSES[s.loss]

    def batch_loss(logits: torch.Tensor, b: np.ndarray) -> torch.Tensor:
        if arm == "hard":
            return F.cross_entropy(logits, labels[b].to(logits.device))
        if arm == "pseudo":
            return F.cross_entropy(logits, teacher_labels[b].to(logits.device))
        target = torch.as_tensor(probs[b], device=logits.device)  # as pipeline.distill_student's batch_loss
        return loss_fn(logits, target, labels[b].to(logits.device), s.temperature, s.alpha)

    seed_everything(s.seed)
    student = models.build(s.student, data.input_shape, data.num_classes)
    t0 = time.perf_counter()
    history = fit(student, x, batch_loss, epochs=epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed)
    seconds = time.perf_counter() - t0
    train_acc = float(np.mean(predict_logits(student, x).argmax(1) == data.y_train[idx]))
    test_acc = float(np.mean(predict_logits(student, data.x_test).argmax(1) == data.y_test))
    return {"test_accuracy": test_acc, "train_accuracy": train_acc, "seconds": round(seconds, 1),
            "final_loss": history[-1]}


def run_fraction(s: Setup, data, soft: np.ndarray, pseudo: np.ndarray, fraction: float,
                 console: Console) -> dict:
    """The three arms on one stratified subset; epochs scaled to the subset (see the module docstring)."""
    idx = stratified_subset(data.y_train, fraction, s.seed)
    epochs = scaled_epochs(s.epochs, len(data.y_train), len(idx), s.batch_size)
    steps = epochs * math.ceil(len(idx) / s.batch_size)
    row = {"fraction": fraction, "clips": int(len(idx)), "epochs": epochs, "steps": steps,
           "clips_per_class": np.bincount(data.y_train[idx], minlength=data.num_classes).tolist(),
           "pseudo_labels_wrong": int(np.sum(pseudo[idx] != data.y_train[idx]))}
    for arm in ARMS:
        if arm == "pseudo" and row["pseudo_labels_wrong"] == 0:
            # the ensemble's argmax IS the label on every clip: the run would be the hard arm's, step for step
            row[arm] = {**row["hard"], "seconds": None, "same_as_hard": True}
            console.print(f"  {fraction:g} pseudo: the ensemble's argmax equals the label on all {len(idx)} clips, "
                          "so this is the hard-label run (reused, not retrained)", highlight=False)
            continue
        row[arm] = train_arm(s, data, idx, arm, soft, pseudo, epochs)
        console.print(f"  {fraction:g} ({len(idx)} clips, {epochs} epochs, {steps} steps) {arm}: "
                      f"test {100 * row[arm]['test_accuracy']:.2f}%, train {100 * row[arm]['train_accuracy']:.2f}%, "
                      f"{row[arm]['seconds']:.0f} s", highlight=False)
    return row


def render(s: Setup, rows: list[dict], ensemble_acc: float, n_test: int) -> Table:
    """The result table: one row per fraction, accuracy of each arm on the full test split."""
    t = Table(title=f"Few-data distillation on FSDD ({n_test} test clips): {s.student} student, "
                    f"{len(s.teachers)}-teacher ensemble trained on all clips, T={s.temperature:g}, "
                    f"alpha={s.alpha:g}, seed {s.seed}", title_justify="left")
    for col in ("fraction", "clips", "epochs (steps)", "hard-label acc", "pseudo-label acc", "soft-target acc",
                "ensemble acc", "train s (hard/pseudo/soft)"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(f"{100 * r['fraction']:g}%", str(r["clips"]), f"{r['epochs']} ({r['steps']})",
                  *(f"{100 * r[a]['test_accuracy']:.2f}%" for a in ARMS), f"{100 * ensemble_acc:.2f}%",
                  " / ".join("=hard" if r[a].get("same_as_hard") else f"{r[a]['seconds']:.0f}" for a in ARMS))
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.03, 0.1, 1.0])
    ap.add_argument("--epochs", type=int, default=None, help="student epochs at 100%% (default: the sample's)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs at 100%% (a smoke run)")
    ap.add_argument("--seed", type=int, default=None, help="default: the sample's")
    ap.add_argument("--data", default=None, help="default: the sample's ../shared/datasets/fsdd")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "few_data.json"))
    args = ap.parse_args()
    console = Console(width=200)
    if any(not 0 < f <= 1 for f in args.fractions):
        ap.error("--fractions: every fraction must be in (0, 1]")
    s = sample_setup(args.data, args.epochs or (QUICK_EPOCHS if args.quick else None), args.seed)
    if not Path(s.data).is_dir():
        console.print(f"skipped: FSDD not found at {s.data} (expected the Free Spoken Digit Dataset there; "
                      "pass --data)", highlight=False)
        return 0
    started = time.perf_counter()
    data, members, soft = teacher_ensemble(s, console)
    ens_train = ensemble_probs(members, data.x_train)  # T = 1: the ensemble's answer, as evaluate scores it
    pseudo = ens_train.argmax(1)
    ensemble_acc = float(np.mean(ensemble_probs(members, data.x_test).argmax(1) == data.y_test))
    members_acc = {m.name: float(np.mean(m.logits(data.x_test).argmax(1) == data.y_test)) for m in members}
    rows = [run_fraction(s, data, soft, pseudo, f, console) for f in args.fractions]
    wall = time.perf_counter() - started
    console.print(render(s, rows, ensemble_acc, len(data.y_test)))
    console.print("ensemble members (test): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in members_acc.items())
                  + f"; ensemble argmax on the training clips differs from the label on {int(np.sum(pseudo != data.y_train))}"
                  f" of {len(pseudo)}", highlight=False)
    console.print(f"wall time {wall:.0f} s (torch threads {torch.get_num_threads()})", highlight=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "few_data", "recipe": str(RECIPE.relative_to(ROOT)),
                               "settings": vars(s), "quick": args.quick, "epoch_scaling": "equal optimizer steps",
                               "ensemble_test_accuracy": ensemble_acc, "members_test_accuracy": members_acc,
                               "test_clips": int(len(data.y_test)), "train_clips": int(len(data.y_train)),
                               "rows": rows, "wall_time_s": round(wall, 1),
                               "torch_threads": torch.get_num_threads()}, indent=2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
