"""Distillation epoch time: cached (memory-mapped) soft targets vs running the ensemble every step.

Same data, teachers, student, seed and epochs for both; the ratio is measured in one run on this machine.
Goal (issue 2): cached >= 3x faster per epoch. Prints a table and writes JSON.

    python bench/distill_speed.py [--data PATH] [--epochs 20] [--out bench/results/distill_speed.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import models  # noqa: E402
from compress.core.cache import content_key  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.distill.losses import hinton_loss  # noqa: E402
from compress.teachers import load_teachers  # noqa: E402
from compress.teachers.soft_targets import soft_targets  # noqa: E402
from compress.distill.train import fit, predict_logits, seed_everything  # noqa: E402


def distill(data, members, epochs, temperature, alpha, seed, live: bool):
    """Train the default student; soft targets from the cache, or from the ensemble at every step."""
    seed_everything(seed)
    student = models.build(models.DEFAULT_STUDENT, data.input_shape, data.num_classes)
    labels = torch.as_tensor(data.y_train)
    x_train = torch.as_tensor(data.x_train)
    if live:
        teacher_modules = [m.module.eval() for m in members]

        def targets(idx):
            with torch.no_grad():
                return torch.stack([torch.softmax(t(x_train[idx]) / temperature, -1) for t in teacher_modules]).mean(0)
    else:
        cached, _ = soft_targets(members, data.x_train, temperature, content_key(data.fingerprint(), len(data.x_train)))

        def targets(idx):
            return torch.as_tensor(np.asarray(cached[idx]))

    times = []
    last = [time.perf_counter()]

    def on_epoch(epoch, loss):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    fit(student, data.x_train, lambda z, idx: hinton_loss(z, targets(idx), labels[idx], temperature, alpha),
        epochs=epochs, lr=3e-3, seed=seed, on_epoch=on_epoch)
    acc = float(np.mean(predict_logits(student, data.x_test).argmax(1) == data.y_test))
    return times, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/distill_speed.json")
    args = parser.parse_args()
    console = Console()
    data = load_data(args.data, seed=args.seed)
    members = load_teachers(list(models.DEFAULT_TEACHERS), data, epochs=args.teacher_epochs, seed=args.seed)
    # warm the soft-target cache so the cached run measures reuse, as every epoch after the first sees it
    soft_targets(members, data.x_train, args.temperature, content_key(data.fingerprint(), len(data.x_train)))
    results = {}
    for mode, live in (("cached soft targets", False), ("ensemble every step", True)):
        times, acc = distill(data, members, args.epochs, args.temperature, args.alpha, args.seed, live)
        results[mode] = {"epoch_s_mean": float(np.mean(times)), "epoch_s_median": float(np.median(times)),
                         "epochs": len(times), "test_accuracy": acc}
    ratio = results["ensemble every step"]["epoch_s_median"] / results["cached soft targets"]["epoch_s_median"]
    table = Table(title=f"distillation epoch time on {data.name} ({len(data.x_train)} train samples, "
                        f"{len(members)} teachers, torch threads {torch.get_num_threads()})")
    for col in ("mode", "median epoch s", "mean epoch s", "epochs", "student test accuracy"):
        table.add_column(col)
    for mode, r in results.items():
        table.add_row(mode, f"{r['epoch_s_median']:.3f}", f"{r['epoch_s_mean']:.3f}", str(r["epochs"]),
                      f"{100 * r['test_accuracy']:.2f}%")
    console.print(table)
    console.print(f"speed-up from cached soft targets: {ratio:.1f}x (goal >= 3x)")
    out = {"benchmark": "distill_speed", "data": data.name, "teachers": [m.name for m in members],
           "student": models.DEFAULT_STUDENT, "results": results, "speedup": ratio, "goal": 3.0,
           "torch_threads": torch.get_num_threads()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
