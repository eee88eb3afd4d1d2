"""How fast the default families train, against what this machine's matrix multiply can do (issue 27).

A 60k-image run spends most of its minutes in training steps, so before changing how training runs we
need to know how far each family is from the machine's limit. This bench measures, in one invocation:

* **the matrix-multiply rate**: torch's own ``mm`` at the sizes the models use (a batch of 64-256 rows
  through 784/1200-wide layers, im2col-shaped products of a small CNN, and one large square product for
  the peak), in fp32 and, where the CPU has native bf16 (``avx512_bf16`` / AMX), in bf16; at 1 thread and
  at every allowed CPU;
* **the training rate of every default teacher and student family** (``compress.defaults.SETS``): forward
  + backward + Adam step, exactly the step ``compress.distill.train.fit`` runs, on MNIST-shaped (1x28x28)
  batches for the image and feature families, 3x36x36 colour batches for the colour defaults, and
  FSDD-shaped (8,000 samples of 8 kHz PCM) batches for the speech families, at the batch size and thread
  count a run uses (``compress.core.threads.choose_threads``). The rate is counted MACs (forward x 3:
  forward, input and weight gradients) per second, printed as a fraction of the fp32 matrix-multiply peak
  at the same thread count.

``--variants`` also times candidate ways to train (each a change to the same step): ``bf16`` (autocast,
fp32 master weights), ``channels-last`` (4-D activations in NHWC), ``compile`` (``torch.compile``), so a
change is measured here before a run uses it. ``--label`` names the run; the results file keeps one entry
per label (``before`` / ``after``), so a change is shown by two runs of this bench. Where CUDA is present
the same table is measured on the GPU too.

Machine-load sensitive: run it on a quiet machine (what else ran is not controlled here; the load average
is written with the numbers).

    python bench/throughput.py [--label NAME] [--variants fp32 bf16 channels-last compile]
                               [--families NAME ...] [--seconds 1.0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compress import models  # noqa: E402
from compress.core.threads import allowed_cpus, choose_threads, torch_threads  # noqa: E402
from compress.defaults import SETS  # noqa: E402
from compress.distill.train import OPTIMIZERS, bf16_native  # noqa: E402

SHAPES = {"mnist": (1, 28, 28), "colour": (3, 36, 36), "fsdd": (8000,)}
KIND_SHAPE = {"image": "mnist", "features": "mnist", "audio": "fsdd", "keyword-spotting": "fsdd"}
# (rows, inner, columns) of the products the default families run: a batch through an MLP layer, a CNN
# layer as im2col (batch x positions, kernel x channels in, channels out), and the square peak
MATMUL_SIZES = [(64, 784, 1200), (64, 1200, 1200), (256, 1200, 1200), (64 * 26 * 26, 9, 32),
                (64 * 13 * 13, 288, 64), (1024, 1024, 1024)]
BATCH = 64  # TeacherRecipe.batch_size and DistillConfig.batch_size


def _timed(step, seconds: float, device: torch.device, min_steps: int = 3) -> float:
    """Median seconds of ``step()`` over at least ``min_steps`` runs and ``seconds`` of wall time, after
    two warm-up runs (allocation, kernel choice)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    sync()
    times, started = [], time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(rows: int, inner: int, cols: int, dtype: torch.dtype, device: torch.device, seconds: float) -> float:
    """FLOP/s (2 per multiply-accumulate) of ``torch.mm`` of (rows x inner) by (inner x cols)."""
    a = torch.randn(rows, inner, device=device).to(dtype)
    b = torch.randn(inner, cols, device=device).to(dtype)
    return 2 * rows * inner * cols / _timed(lambda: torch.mm(a, b), seconds, device)


def families() -> dict[str, str]:
    """Every default teacher and student, with the batch shape it trains on (its kind's data)."""
    out: dict[str, str] = {}
    for (kind, size), (teachers, student) in SETS.items():
        shape = "colour" if size == "large-colour" else KIND_SHAPE[kind]
        for name in [*teachers, student]:
            out.setdefault(f"{name}@{shape}", shape)
    return out


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, variant: str):
    """One step as ``fit`` runs it (forward, cross-entropy, backward, Adam), changed by ``variant``."""
    opt = OPTIMIZERS["adam"](model.parameters(), 1e-3, 0.0)
    autocast = variant == "bf16"

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    return step


def train_rate(key: str, shape_name: str, variant: str, device: torch.device, seconds: float) -> dict:
    """Counted training MACs per second of one family on one batch shape, and the threads it ran with."""
    name = key.split("@")[0]
    shape = SHAPES[shape_name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = models.build(name, shape, 10)
    macs = models.count_macs(model, shape)
    threads, why = choose_threads(macs * BATCH)
    x = torch.randn(BATCH, *shape)
    y = torch.randint(0, 10, (BATCH,))
    model, x, y = model.to(device).train(), x.to(device), y.to(device)
    if variant == "channels-last":
        if x.dim() != 4 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return {"skipped": "no 2-D convolution on a 4-D input"}
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if variant == "compile":
        model = torch.compile(model)
    with torch_threads(threads if device.type == "cpu" else torch.get_num_threads()):
        step_s = _timed(train_step(model, x, y, variant), seconds, device)
    return {"forward_macs_per_sample": macs, "threads": threads, "threads_why": why, "step_ms": 1e3 * step_s,
            "train_macs_per_s": 3 * macs * BATCH / step_s, "samples_per_s": BATCH / step_s}


def matmul_table(device: torch.device, seconds: float, threads: list[int]) -> list[dict]:
    dtypes = [torch.float32] + ([torch.bfloat16] if device.type == "cuda" or bf16_native() else [])
    rows = []
    for count in threads:
        with torch_threads(count):
            for dtype in dtypes:
                for size in MATMUL_SIZES:
                    rows.append({"threads": count, "dtype": str(dtype).replace("torch.", ""), "size": list(size),
                                 "flops_per_s": matmul_rate(*size, dtype, device, seconds)})
    return rows


def peak(matmuls: list[dict], threads: int, dtype: str = "float32") -> float:
    return max(r["flops_per_s"] for r in matmuls if r["threads"] == threads and r["dtype"] == dtype)


def measure(device: torch.device, args) -> dict:
    cpus = allowed_cpus()
    thread_counts = sorted({1, cpus.count}) if device.type == "cpu" else [torch.get_num_threads()]
    matmuls = matmul_table(device, args.seconds, thread_counts)
    rows = []
    for key, shape_name in families().items():
        if args.families and key.split("@")[0] not in args.families:
            continue
        for variant in args.variants:
            if variant == "bf16" and device.type == "cpu" and not bf16_native():
                rows.append({"family": key, "variant": variant, "skipped": "no native bf16 on this CPU"})
                continue
            result = train_rate(key, shape_name, variant, device, args.seconds)
            if "skipped" not in result:
                mm = peak(matmuls, result["threads"] if device.type == "cpu" else thread_counts[0])
                # MACs vs FLOPs: a MAC is 2 FLOPs
                result["fraction_of_fp32_matmul"] = 2 * result["train_macs_per_s"] / mm
            rows.append({"family": key, "variant": variant, **result})
            print(json.dumps({k: rows[-1].get(k) for k in ("family", "variant", "threads", "step_ms")}), flush=True)
    return {"device": str(device), "cpus": cpus.reason, "matmul": matmuls, "training": rows}


def print_tables(result: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    mm = Table(title=f"{title}: matrix multiply ({result['device']}, {result['cpus']})")
    for head in ("threads", "dtype", "rows x inner x cols", "G FLOP/s"):
        mm.add_column(head)
    for r in result["matmul"]:
        mm.add_row(str(r["threads"]), r["dtype"], "x".join(map(str, r["size"])), f"{r['flops_per_s'] / 1e9:.1f}")
    console.print(mm)
    tr = Table(title=f"{title}: training step (batch {BATCH}, forward + backward + Adam)")
    for head in ("family@shape", "variant", "threads", "M MACs/sample", "step ms", "samples/s", "G MAC/s",
                 "x fp32 matmul peak"):
        tr.add_column(head)
    for r in result["training"]:
        if "skipped" in r:
            tr.add_row(r["family"], r["variant"], *["—"] * 5, r["skipped"])
            continue
        tr.add_row(r["family"], r["variant"], str(r["threads"]), f"{r['forward_macs_per_sample'] / 1e6:.2f}",
                   f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.0f}", f"{r['train_macs_per_s'] / 1e9:.1f}",
                   f"{r['fraction_of_fp32_matmul']:.2f}")
    console.print(tr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="current", help="the name of this run in the results file")
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=["fp32", "bf16", "channels-last", "compile"])
    parser.add_argument("--families", nargs="+", help="only these families (default: every default one)")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per measurement (at least)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "throughput.json")
    parser.add_argument("--quick", action="store_true", help="a smoke run of the bench (not a result)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.families = 0.0, args.families or ["mlp-small", "ds-cnn"]
        args.out = args.out.with_name(args.out.stem + "-quick.json")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    run = {"label": args.label, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "load_average": os.getloadavg(), "bf16_native": bf16_native(), "variants": args.variants,
           "results": [measure(device, args) for device in devices]}
    for result in run["results"]:
        print_tables(result, args.label)
    runs = json.loads(args.out.read_text())["runs"] if args.out.is_file() else {}
    runs[args.label] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2))
    print(f"wrote {args.out} (runs: {', '.join(runs)})")


if __name__ == "__main__":
    main()
