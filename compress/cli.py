"""The ``compress`` command line (typer). Exit codes: 0 success, 1 a check failed, 2 bad input."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

# The converters' C++ logging (TensorFlow Lite, absl/glog) is noise for users; our own errors say what failed.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TORCH_LOGS", "-onnx,-export")  # torch's exporter warnings (e.g. "torchvision is not installed")  # coremltools pass-by-pass bars; we show our own progress
for _noisy in ("coremltools", "torch.utils._pytree", "torch._export", "torch.onnx"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

import typer
from rich.console import Console

from compress.errors import InputError, ValidationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distill a teacher ensemble into a compact student, export it, and check it in its runtime.")
err = Console(stderr=True)


def fail(message: str, code: int) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def main() -> None:
    """compress: distillation, quantization and export for on-device models."""


@app.command("distill-and-export")
def distill_and_export(
    target: str = typer.Option("onnx", help="Export target: onnx, tflite or coreml."),
    quantize: str = typer.Option("none", help="none, fp16, int8-weights, int8, palettize-4/6/8 (what each target supports: see README)."),
    precision: Optional[str] = typer.Option(None, help="Core ML compute precision: fp16 (default) or fp32."),
    deployment_target: Optional[str] = typer.Option(None, help="Core ML minimum deployment target (default iOS16; int8 activations need iOS17+)."),
    min_runtime: Optional[str] = typer.Option(None, help="TFLite: fail validation unless the model loads in this runtime version (e.g. 2.14)."),
    calibration_samples: int = typer.Option(300, help="Transfer-set samples used to calibrate static int8."),
    data: Optional[str] = typer.Option(None, help="Data: a folder of IDX files, a class-per-folder image tree, a labelled audio folder, or an .npz. Default: scikit-learn's bundled digits."),
    data_format: Optional[str] = typer.Option(None, help="Force a loader: digits, idx, image-folder, npz, audio-folder."),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="A teacher member (repeat): a built-in model name, a .ts/.pt TorchScript, a .pt2, an .onnx, or module:function=weights.pt. Default: mlp-1200, cnn, resnet."),
    student: str = typer.Option("mlp-small", help="Student architecture from the model registry."),
    temperature: float = typer.Option(2.0, "--temperature", "-T", help="Distillation temperature T."),
    alpha: float = typer.Option(0.1, help="Weight of the hard-label loss; the soft loss gets 1 - alpha."),
    epochs: int = typer.Option(100, help="Student distillation epochs."),
    teacher_epochs: int = typer.Option(10, help="Epochs for built-in teacher members (cached)."),
    lr: float = typer.Option(3e-3, help="Student learning rate (Adam, cosine schedule)."),
    batch_size: int = typer.Option(64, help="Training batch size."),
    seed: int = typer.Option(0, help="Random seed: same settings + seed give the same result."),
    threads: int = typer.Option(1, help="Runtime threads for validation and latency."),
    latency_runs: int = typer.Option(100, help="Timed batch-1 runs per model after warm-up."),
    out: str = typer.Option("dist", help="Output root; artifacts go to <out>/<name>/."),
    name: Optional[str] = typer.Option(None, help="Run name (default: <data>-<student>-<target>)."),
    device: Optional[str] = typer.Option(None, help="Torch device for training (default: cuda if available, else cpu)."),
    unlabelled: bool = typer.Option(False, help="Ignore training labels: distill from soft targets only."),
    limit_train: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
    limit_test: Optional[int] = typer.Option(None, help="Use only the first N test samples."),
    jitter: int = typer.Option(0, help="Random shift of up to N pixels when training built-in teachers."),
    int8_budget: Optional[float] = typer.Option(None, help="ONNX int8: largest accepted accuracy drop in points; the worst layers stay in float until it fits."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware distillation before int8 conversion (tflite --quantize int8)."),
    qat_epochs: int = typer.Option(3, help="Epochs of quantization-aware distillation."),
    bias_correction: Optional[str] = typer.Option(None, help="LABEL=DELTA: raise one class's output bias after distillation (e.g. 3=+3.5 when 3s were left out of the transfer set)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train/load the teacher ensemble, distill the student, export it and validate it in its runtime."""
    from compress.pipeline import RunConfig, run
    from devices.report import print_report, to_json

    cfg = RunConfig(target=target, quantize=quantize, precision=precision, deployment_target=deployment_target, min_runtime=min_runtime, calibration_samples=calibration_samples, data=data, data_format=data_format, student=student, temperature=temperature,
                    alpha=alpha, epochs=epochs, teacher_epochs=teacher_epochs, lr=lr, batch_size=batch_size,
                    seed=seed, threads=threads, latency_runs=latency_runs, out=out, name=name, device=device,
                    int8_budget=int8_budget, qat=qat, qat_epochs=qat_epochs, bias_correction=bias_correction, unlabelled=unlabelled, limit_train=limit_train, limit_test=limit_test, jitter=jitter)
    if teacher:
        cfg.teachers = list(teacher)
    try:
        report = run(cfg, console=err, quiet=quiet or json_output or not sys.stderr.isatty())
    except InputError as exc:
        fail(str(exc), 2)
    except ValidationFailed as exc:
        fail(str(exc), 1)
    if json_output:
        typer.echo(to_json(report))
    else:
        print_report(report, Console() if sys.stdout.isatty() else Console(width=160))
    if not report["passed"]:
        failed = "; ".join(c["name"] for c in report["checks"] if not c["passed"])
        fail(f"validation failed: {failed} (see {report['run']['out_dir']}/report.json)", 1)


@app.command("debug-quant")
def debug_quant(
    quantized: str = typer.Argument(..., help="The quantized ONNX model (e.g. dist/<name>/model.onnx from --quantize int8)."),
    fp32: str = typer.Option(..., help="The float ONNX model it was quantized from."),
    data: Optional[str] = typer.Option(None, help="Data for calibration samples (default: the digits)."),
    data_format: Optional[str] = typer.Option(None, help="Force a loader: digits, idx, image-folder, npz, audio-folder."),
    samples: int = typer.Option(256, help="Transfer-set samples to compare activations on."),
    top: int = typer.Option(10, help="Show the N worst layers."),
    seed: int = typer.Option(0, help="Seed of the sample choice."),
    json_output: bool = typer.Option(False, "--json", help="Print the layer list as JSON."),
) -> None:
    """List the layers where int8 adds the most error (signal-to-quantization-noise, worst first)."""
    import json as json_lib
    from pathlib import Path

    import numpy as np

    from compress.data import load_data
    from devices.quant_debug import format_table, layer_errors

    try:
        for path in (quantized, fp32):
            if not Path(path).is_file():
                raise InputError(f"{path}: file not found; expected an ONNX model")
        ds = load_data(data, data_format, seed=seed)
        pick = np.random.default_rng(seed).permutation(len(ds.x_train))[:samples]
        rows = layer_errors(fp32, quantized, ds.x_train[np.sort(pick)])
    except InputError as exc:
        fail(str(exc), 2)
    if json_output:
        typer.echo(json_lib.dumps(rows, indent=2))
    else:
        Console().print(format_table(rows, top=top))


if __name__ == "__main__":
    app()
