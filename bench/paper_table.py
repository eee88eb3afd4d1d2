"""Hinton, Vinyals & Dean (2015) §3 on MNIST, with this toolkit, beside the paper's numbers.

  teacher        2x1200 ReLU + dropout, ±2-pixel jitter (here: with CNN members, "or a stronger ensemble")
  baseline       2x800 ReLU on hard labels, no regularization                      (paper: 146 errors)
  distilled      the same 2x800 distilled at T=20                                  (paper: 74 errors)
  omitted 3      distilled with every 3 removed from the transfer set              (paper: 206 / 133 on 3s)
  + bias         the 3's output bias raised by 3.5 (and by a value fitted on held-out training data)
                                                                                   (paper: 109 / 14 on 3s)
Teacher soft targets are computed once per (teachers, transfer set, T) and cached, as in `distill-and-export`;
the transfer set is the training set plus jittered copies of it (``--jitter-copies``).

    python bench/paper_table.py --quick        # CPU, minutes
    python bench/paper_table.py                # full budget (use a GPU: it trains on CUDA when present)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compress import models  # noqa: E402
from compress.distill.bias_correction import fit_class_bias  # noqa: E402
from compress.core.cache import content_key  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.distill.losses import hinton_loss  # noqa: E402
from compress.teachers import ensemble_probs, train_builtin  # noqa: E402
from compress.teachers.soft_targets import soft_targets  # noqa: E402
from compress.distill.train import fit, jitter, pick_device, predict_logits, seed_everything  # noqa: E402

PAPER = {"teacher": 67, "baseline": 146, "distilled": 74, "omitted3": (206, 133), "omitted3_bias": (109, 14)}

BUDGETS = {
    "smoke": {"teachers": [("mlp-1200", 1), ("cnn-small", 1)], "baseline_epochs": 1, "student_epochs": 1,
              "jitter_copies": 1, "limit_train": 4000},
    "quick": {"teachers": [("mlp-1200", 10), ("cnn", 3)], "baseline_epochs": 10, "student_epochs": 10,
              "jitter_copies": 0},
    # the full budget's teachers (reused from the cache when present) with a CPU-sized student budget
    "medium": {"teachers": [("mlp-1200", 40), ("cnn", 12)], "baseline_epochs": 20, "student_epochs": 20,
               "jitter_copies": 1},
    "full": {"teachers": [("mlp-1200", 40), ("cnn", 12)], "baseline_epochs": 40, "student_epochs": 40,
             "jitter_copies": 2},
}


def errors(logits: np.ndarray, y: np.ndarray, cls: int | None = None) -> int:
    wrong = logits.argmax(1) != y
    return int(wrong[y == cls].sum()) if cls is not None else int(wrong.sum())


def train_student(x, soft, labels, *, temperature, alpha, epochs, seed, device, batch_size, lr):
    """The 2x800 student, distilled (``soft`` given) or on hard labels only (``soft`` None)."""
    seed_everything(seed)
    student = models.build("mlp-800", x.shape[1:], 10)
    y = torch.as_tensor(labels, device=device)
    if soft is None:
        loss = lambda z, idx: torch.nn.functional.cross_entropy(z, y[idx])  # noqa: E731
    else:
        soft_t = torch.as_tensor(np.array(soft), device=device)  # small enough to live beside the data
        loss = lambda z, idx: hinton_loss(z, soft_t[idx], y[idx], temperature, alpha)  # noqa: E731
    fit(student, x, loss, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device)
    return student


def main() -> None:
    parser = argparse.ArgumentParser(description="Hinton et al. 2015 MNIST table")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "mnist"))
    parser.add_argument("--quick", action="store_true", help="small epoch budget (CPU-friendly)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on a slice (checks the script)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), help="pick a budget by name (overrides --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=int, default=5000, help="held-out training samples for the bias fit")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "paper_table.json"))
    args = parser.parse_args()
    mode = args.budget or ("smoke" if args.smoke else "quick" if args.quick else "full")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[mode]
    console = Console()
    device = pick_device()
    started = time.perf_counter()
    data = load_data(args.data, seed=args.seed, limit_train=budget.get("limit_train"))
    x_te, y_te = data.x_test, data.y_test
    three = data.labels.index("3")
    if budget.get("limit_train"):
        args.validation = min(args.validation, len(data.x_train) // 5)
    results: dict = {"mode": mode, "device": str(device), "budget": budget,
                     "temperature": args.temperature, "alpha": args.alpha, "rows": {}}

    def log(msg):
        console.print(f"[{time.perf_counter() - started:7.1f}s] {msg}")

    def record(name: str, row: dict) -> None:
        """Keep the row, say it now and save the JSON so far: long runs that stop early keep their results."""
        results["rows"][name] = row
        log(f"  {name}: {row}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    # teachers: trained on all training data with jitter, cached by content
    members = []
    for i, (name, epochs) in enumerate(budget["teachers"]):
        log(f"teacher {name} ({epochs} epochs, jitter 2, {device})")
        m = train_builtin(name, data, epochs=epochs, seed=args.seed + i, device=str(device), jitter_pixels=2)
        m.module.to(device)
        m.name = f"{name}#{i + 1}"
        members.append(m)
        record(f"teacher member {m.name}", {"errors": errors(m.logits(x_te), y_te)})
    ens = ensemble_probs(members, x_te)
    record("teacher ensemble", {"errors": errors(ens, y_te), "paper": PAPER["teacher"]})

    # the transfer set: training samples minus a validation slice, plus jittered copies
    n_fit = len(data.x_train) - args.validation
    x_fit, y_fit = data.x_train[:n_fit], data.y_train[:n_fit]
    x_val, y_val = data.x_train[n_fit:], data.y_train[n_fit:]
    gen = torch.Generator().manual_seed(args.seed)
    copies = [x_fit] + [jitter(torch.as_tensor(x_fit), 2, gen).numpy() for _ in range(budget["jitter_copies"])]
    x_transfer, y_transfer = np.concatenate(copies), np.tile(y_fit, len(copies))
    log(f"soft targets at T={args.temperature:g} for {len(x_transfer)} transfer samples")
    soft, cached = soft_targets(members, x_transfer, args.temperature, content_key(
        "paper-table", data.fingerprint(), n_fit, budget["jitter_copies"], args.seed))
    results["soft_targets_cached"] = cached
    common = dict(temperature=args.temperature, alpha=args.alpha, seed=args.seed, device=device,
                  batch_size=args.batch_size, lr=args.lr)

    log(f"baseline 2x800 on hard labels ({budget['baseline_epochs']} epochs)")
    base = train_student(x_fit, None, y_fit, epochs=budget["baseline_epochs"], **common)
    record("baseline 2x800, hard labels", {"errors": errors(predict_logits(base, x_te), y_te), "paper": PAPER["baseline"]})

    log(f"distilled 2x800 at T={args.temperature:g} ({budget['student_epochs']} epochs)")
    dist = train_student(x_transfer, soft, y_transfer, epochs=budget["student_epochs"], **common)
    record(f"distilled 2x800, T={args.temperature:g}", {"errors": errors(predict_logits(dist, x_te), y_te),
                                                        "paper": PAPER["distilled"]})

    log("omitted 3: distilled without any 3 in the transfer set")
    keep = y_transfer != three
    omit = train_student(x_transfer[keep], np.asarray(soft)[keep], y_transfer[keep],
                         epochs=budget["student_epochs"], **common)
    z = predict_logits(omit, x_te)
    record("omitted 3, distilled", {"errors": errors(z, y_te), "errors_on_3": errors(z, y_te, three),
                                    "paper": PAPER["omitted3"][0], "paper_on_3": PAPER["omitted3"][1]})
    for label, delta in (("paper's +3.5", 3.5),
                         ("fitted on held-out train", fit_class_bias(predict_logits(omit, x_val), y_val, three))):
        zz = z.copy()
        zz[:, three] += delta
        record(f"omitted 3, bias {label} ({delta:+.2f})", {
            "errors": errors(zz, y_te), "errors_on_3": errors(zz, y_te, three), "bias_delta": delta,
            "paper": PAPER["omitted3_bias"][0], "paper_on_3": PAPER["omitted3_bias"][1]})
    results["wall_time_s"] = round(time.perf_counter() - started, 1)

    table = Table(title=f"MNIST test errors (of {len(y_te)}; {int((y_te == three).sum())} are 3s), "
                        f"{results['mode']} budget on {device}, {results['wall_time_s']} s")
    for col in ("model", "ours: errors", "ours: on 3s", "paper: errors", "paper: on 3s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
    for name, r in results["rows"].items():
        table.add_row(name, fmt(r["errors"]), fmt(r.get("errors_on_3")), fmt(r.get("paper")), fmt(r.get("paper_on_3")))
    console.print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
