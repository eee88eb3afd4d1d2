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
for _noisy in ("coremltools", "torch.utils._pytree", "torch._export", "torch.onnx", "torchao"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

import typer
from rich.console import Console

from compress.cli_output import err, fail, print_failures
from compress.errors import InputError, ValidationFailed

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Distill a teacher ensemble into a compact student, export it, and check it in its runtime.")


@app.callback()
def main() -> None:
    """compress: distillation, quantization and export for on-device models."""


def _given(**flags) -> dict:
    """The flags the user actually typed (typer leaves the others None), keyed by RunConfig field."""
    return {k: v for k, v in flags.items() if v is not None}


def _run_configs(recipe_path: Optional[str], flags: dict) -> list:
    """defaults <- recipe (given, or ./compress.toml when present) <- CLI flags; one RunConfig per target."""
    from dataclasses import asdict
    from pathlib import Path

    from compress import recipe
    from compress.pipeline import RunConfig

    path = recipe_path or (recipe.RECIPE_FILE if Path(recipe.RECIPE_FILE).is_file() else None)
    from_recipe = recipe.load(path) if path else {}
    merged = recipe.merge({**asdict(RunConfig()), "targets": ["onnx"]}, from_recipe, flags)
    if "target" in flags:  # --target picks one target over the recipe's list
        merged["targets"] = [flags["target"]]
    targets = merged.pop("targets")
    if not targets:
        raise InputError(f"{path}: [export] targets is empty; expected at least one of onnx, tflite, coreml")
    configs = []
    for t in targets:
        cfg = RunConfig(**{**merged, "target": t, "recipe_path": path})
        if cfg.name and len(targets) > 1:
            cfg.name = f"{cfg.name}-{t}"
        configs.append(cfg)
    return configs


@app.command("distill-and-export")
def distill_and_export(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe file (default: ./compress.toml when present). Flags override it."),
    target: Optional[str] = typer.Option(None, help="Export target: onnx, tflite or coreml (default onnx; a recipe may list several)."),
    quantize: Optional[str] = typer.Option(None, help="none, fp16, int8-weights, int8, palettize-4/6/8 (what each target supports: see README)."),
    precision: Optional[str] = typer.Option(None, help="Core ML compute precision: fp16 (default) or fp32."),
    deployment_target: Optional[str] = typer.Option(None, help="Core ML minimum deployment target (default iOS16; int8 activations need iOS17+)."),
    min_runtime: Optional[str] = typer.Option(None, help="TFLite: fail validation unless the model loads in this runtime version (e.g. 2.14)."),
    calibration_samples: Optional[int] = typer.Option(None, help="Transfer-set samples used to calibrate static int8 (default 300)."),
    data: Optional[str] = typer.Option(None, help="Data: a folder of IDX files, a class-per-folder image tree, a labelled audio folder, or an .npz. Default: scikit-learn's bundled digits."),
    data_format: Optional[str] = typer.Option(None, help="Force a loader: digits, idx, image-folder, npz, audio-folder."),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="A teacher member (repeat): a built-in model name, a .ts/.pt TorchScript, a .pt2, an .onnx, or module:function=weights.pt. Default: mlp-1200, cnn, resnet."),
    student: Optional[str] = typer.Option(None, help="Student architecture from the model registry (default mlp-small)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-T", help="Distillation temperature T (default 2)."),
    alpha: Optional[float] = typer.Option(None, help="Weight of the hard-label loss; the soft loss gets 1 - alpha (default 0.1)."),
    epochs: Optional[int] = typer.Option(None, help="Student distillation epochs (default 100; checkpointed every epoch)."),
    teacher_epochs: Optional[int] = typer.Option(None, help="Epochs for built-in teacher members (cached; default 10)."),
    optimizer: Optional[str] = typer.Option(None, help="adam (default), adamw or sgd."),
    lr: Optional[float] = typer.Option(None, help="Student peak learning rate, cosine schedule (default 3e-3)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default 64)."),
    seed: Optional[int] = typer.Option(None, help="Random seed: same settings + seed give the same result (default 0)."),
    device: Optional[str] = typer.Option(None, "--device", help="Device profile (compress devices list) or a profile .toml: threads and budgets."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads for validation and latency (default: the profile's, else 1)."),
    latency_runs: Optional[int] = typer.Option(None, help="Timed batch-1 runs per model after warm-up (default 100)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="Budget: largest accuracy drop vs the teacher ensemble, points."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Budget: largest student p50 batch-1 latency, ms (measured on this host)."),
    max_size_kb: Optional[float] = typer.Option(None, help="Budget: largest artifact size, kB."),
    max_peak_memory_mb: Optional[float] = typer.Option(None, help="Budget: largest peak memory loading and running the model, MB."),
    out: Optional[str] = typer.Option(None, help="Output root; artifacts go to <out>/<name>/ (default dist)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: <data>-<student>-<target>)."),
    train_device: Optional[str] = typer.Option(None, help="Torch device for training (default: cuda if available, else cpu)."),
    unlabelled: Optional[bool] = typer.Option(None, "--unlabelled", help="Ignore training labels: distill from soft targets only."),
    limit_train: Optional[int] = typer.Option(None, help="Use only the first N training samples."),
    limit_test: Optional[int] = typer.Option(None, help="Use only the first N test samples."),
    jitter: Optional[int] = typer.Option(None, help="Random shift of up to N pixels when training built-in teachers."),
    int8_budget: Optional[float] = typer.Option(None, help="int8: largest accepted accuracy drop in points; the worst layers stay in float until it fits."),
    qat: Optional[bool] = typer.Option(None, "--qat", help="Quantization-aware distillation before int8 conversion (tflite --quantize int8)."),
    qat_epochs: Optional[int] = typer.Option(None, help="Epochs of quantization-aware distillation (default 3)."),
    bias_correction: Optional[str] = typer.Option(None, help="LABEL=DELTA: raise one class's output bias after distillation (e.g. 3=+3.5 when 3s were left out of the transfer set)."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train/load the teacher ensemble, distill the student, export it and validate it in its runtime.

    Exit codes: 0 passed, 1 a check or budget failed, 2 bad input, 130 interrupted (run again to resume).
    """
    import json as json_lib

    from compress.pipeline import run
    from devices.report import print_report, to_json

    flags = _given(target=target, quantize=quantize, precision=precision, deployment_target=deployment_target,
                   min_runtime=min_runtime, calibration_samples=calibration_samples, data=data,
                   data_format=data_format, teachers=list(teacher) if teacher else None, student=student,
                   temperature=temperature, alpha=alpha, epochs=epochs, teacher_epochs=teacher_epochs,
                   optimizer=optimizer, lr=lr, batch_size=batch_size, seed=seed, profile=device, threads=threads,
                   latency_runs=latency_runs, max_accuracy_drop=max_accuracy_drop, max_latency_ms=max_latency_ms,
                   max_size_kb=max_size_kb, max_peak_memory_mb=max_peak_memory_mb, out=out, name=name,
                   device=train_device, unlabelled=unlabelled, limit_train=limit_train, limit_test=limit_test,
                   jitter=jitter, int8_budget=int8_budget, qat=qat, qat_epochs=qat_epochs,
                   bias_correction=bias_correction)
    reports = []
    try:
        configs = _run_configs(recipe, flags)
        for cfg in configs:
            cfg.validate()  # every target's settings are checked before the first one trains
        for cfg in configs:
            report = run(cfg, console=err, quiet=quiet or json_output or not sys.stderr.isatty())
            if report is not None:  # None: a non-zero torchrun rank, which only trains
                reports.append(report)
    except InputError as exc:
        fail(str(exc), 2)
    except ValidationFailed as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        fail("interrupted; the student is checkpointed after every epoch: run the same command to resume", 130)
    if not reports:
        return
    if json_output:
        typer.echo(to_json(reports[0]) if len(reports) == 1 else json_lib.dumps(reports, indent=2))
    else:
        for report in reports:
            print_report(report, Console() if sys.stdout.isatty() else Console(width=160))
    failed = [r for r in reports if not r["passed"]]
    if failed:
        count = print_failures(failed)
        fail(f"{count} check(s) failed (see {failed[0]['run']['out_dir']}/report.json)", 1)


@app.command("init")
def init(
    path: str = typer.Argument("compress.toml", help="Where to write the recipe."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Write a commented recipe with every key and its default."""
    from dataclasses import asdict
    from pathlib import Path

    from compress import recipe
    from compress.atomic import atomic_path
    from compress.pipeline import RunConfig

    dest = Path(path)
    if dest.exists() and not force:
        fail(f"{dest}: already exists; expected a new path (or pass --force to overwrite)", 2)
    text = recipe.render({**asdict(RunConfig()), "targets": ["onnx"]})
    recipe.parse(text, str(dest))  # what init writes must load back
    try:
        with atomic_path(dest) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        fail(f"{dest}: cannot write there ({exc.strerror or exc})", 2)
    typer.echo(f"wrote {dest}: edit it, then run `compress distill-and-export` in this folder")


@app.command("debug-quant")
def debug_quant(
    quantized: str = typer.Argument(..., help="The int8 model: .onnx, .tflite or .mlpackage (e.g. dist/<name>/model.tflite from --quantize int8)."),
    fp32: str = typer.Option(..., help="The float model of the same target it was quantized from."),
    data: Optional[str] = typer.Option(None, help="Data for calibration samples (default: the digits)."),
    data_format: Optional[str] = typer.Option(None, help="Force a loader: digits, idx, image-folder, npz, audio-folder."),
    samples: int = typer.Option(256, help="Transfer-set samples to compare activations on."),
    top: int = typer.Option(10, help="Show the N worst layers."),
    seed: int = typer.Option(0, help="Seed of the sample choice."),
    json_output: bool = typer.Option(False, "--json", help="Print the layer list as JSON."),
) -> None:
    """List the layers where int8 adds the most error (signal-to-quantization-noise, worst first).

    ONNX: ONNX Runtime's QDQ debugging helpers; TFLite: LiteRT's preserved intermediates; Core ML: the MIL
    reference evaluator's intermediates. Each row names what --int8-budget would keep in float.
    """
    import json as json_lib
    from pathlib import Path

    import numpy as np

    from compress.data import load_data
    from compress.int8_fallback import layer_errors_for
    from devices.quant_debug import format_table

    try:
        for path in (quantized, fp32):
            if not Path(path).exists():
                raise InputError(f"{path}: not found; expected an .onnx, .tflite or .mlpackage model")
        ds = load_data(data, data_format, seed=seed)
        pick = np.random.default_rng(seed).permutation(len(ds.x_train))[:samples]
        rows = layer_errors_for(fp32, quantized, ds.x_train[np.sort(pick)])
    except InputError as exc:
        fail(str(exc), 2)
    if json_output:
        typer.echo(json_lib.dumps(rows, indent=2))
    else:
        (Console() if sys.stdout.isatty() else Console(width=200)).print(format_table(rows, top=top))


from compress.cli_devices import devices_app, validate_command  # noqa: E402

app.add_typer(devices_app, name="devices")
app.command("validate")(validate_command)

if __name__ == "__main__":
    app()
