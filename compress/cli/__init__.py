"""The ``compress`` command line (typer). Exit codes: 0 success, 1 a check failed, 2 bad input.

This module holds the app, ``distill-and-export`` and ``init``; each other command lives in its own module
(``devices``: ``devices`` and ``validate``; ``teachers``: ``soft-targets``; ``search``), its flags generated
where they can be (``options``: the targets' own options) and its output and exit codes in one place
(``output``). Heavy modules (torch, the pipeline) are imported inside the commands so ``--help`` and bad
flags answer at once; the package itself imports nothing above the configuration."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer
from rich.console import Console

from compress.cli.devices import devices_app, validate_command
from compress.cli.options import run_option, typed_flags, with_settings, with_target_options
from compress.cli.output import err, fail, guarded, help_markup_mode, print_failures
from compress.cli.search import search_command
from compress.cli.teachers import soft_targets_command
from compress.core.errors import InputError
from compress.export import registry
from compress.recipe import section_fields
from compress.export.registry import TARGETS, suffixes

TARGET_NAMES = ", ".join(TARGETS)
MODEL_FILES = ", ".join(suffixes())

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=help_markup_mode(),
                  help="Distill a teacher ensemble into a compact student, export it, and check it in its runtime.")


def _print_version(value: bool) -> None:
    if value:
        from compress import __version__

        typer.echo(f"compress {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the version and exit."),
         verbose: bool = typer.Option(False, "--verbose", help="Keep the libraries' own stderr lines (absl, "
                                      "TFLite's delegate notice, ONNX Runtime's hints), which are dropped by default.")) -> None:
    """compress: distillation, quantization and export for on-device models."""
    if verbose:
        from compress.core.noise import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()


def quiet_libraries() -> None:
    """The converters' C++ logging (TensorFlow Lite, absl/glog), torch's exporter warnings and
    coremltools' pass-by-pass bars are noise for users: our own errors say what failed and we show our
    own progress. Set for the command-line process only (when a command runs), never on import.

    Also OpenMP waiting that does not spin (``compress.core.threads.WAIT_ENV``): libgomp reads it once, when
    torch loads it, and no command has imported torch yet when this callback runs. ``setdefault``: a value
    the user exported wins (``OMP_WAIT_POLICY=ACTIVE`` brings back spinning for a dedicated machine)."""
    from compress.core.threads import WAIT_ENV

    for key, value in {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "TQDM_DISABLE": "1",
                       "TORCH_LOGS": "-onnx,-export", **WAIT_ENV}.items():
        os.environ.setdefault(key, value)
    for noisy in ("coremltools", "torch.utils._pytree", "torch._export", "torch.onnx", "torchao"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from compress.core.noise import quiet_python

    quiet_python(p for backend in TARGETS.values() for p in backend.stderr_noise)  # what each target declares


def _run_configs(recipe_path: Optional[str], flags: dict) -> list:
    """defaults <- recipe (given, or ./compress.toml when present) <- CLI flags; one RunConfig per target."""
    from compress import recipe
    from compress.config import RunConfig

    path, merged = recipe.resolve(recipe_path, flags, {**RunConfig().settings(), "targets": [RunConfig().export.target]})
    for key in recipe.SEARCH_FIELDS:  # the [search] section is compress search's
        merged.pop(key, None)
    if "target" in flags:  # --target picks one target over the recipe's list
        merged["targets"] = [flags["target"]]
    targets = merged.pop("targets")
    if not targets:
        raise InputError(f"{path}: [export] targets is empty; expected at least one of {TARGET_NAMES}")
    options = merged.pop("target_options")
    if len(targets) > 1:  # each target takes its own options; one that no listed target takes is refused
        for name, value in options.items():
            if not any(registry.options_for(t, {name: value}) for t in targets if t in TARGETS):
                registry.check_option(targets[0], name, value)
    configs = []
    for t in targets:
        own = registry.options_for(t, options) if len(targets) > 1 and t in TARGETS else options
        name = f"{merged['name']}-{t}" if merged.get("name") and len(targets) > 1 else merged.get("name")
        configs.append(RunConfig.from_settings(**{**merged, "name": name, "target": t, "target_options": own,
                                                  "recipe_path": path}))
    return configs


@app.command("distill-and-export")
@with_target_options
@with_settings(section_fields("streaming") + section_fields("budgets", "max_false") + ["max_macs_per_second"]
               + section_fields("specialists"))
def distill_and_export(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe file (default: ./compress.toml when present). Flags override it."),
    target: Optional[str] = typer.Option(None, help=f"Export target: {TARGET_NAMES} (default onnx; a recipe may list several)."),
    quantize: Optional[str] = typer.Option(None, help="generated from each target's schemes (compress.cli.options)"),
    calibration_samples: Optional[int] = typer.Option(None, help="Transfer-set samples used to calibrate static int8 (default 300)."),
    data: Optional[str] = run_option("data"),
    data_format: Optional[str] = run_option("data_format"),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="A teacher member (repeat): a built-in model name, a .ts/.pt TorchScript, a .pt2, an .onnx, a dist/<name> folder, a .npz of outputs computed elsewhere, or module:function=weights.pt; append its input contract as SPEC?key=value&... (e.g. 'm.onnx?scale=1/16&shape=64'). Default: chosen for the data's kind and size (said when the run starts)."),
    strict: Optional[bool] = run_option("strict"),
    student: Optional[str] = run_option("student"),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-T", help="Distillation temperature T (default 2)."),
    alpha: Optional[float] = typer.Option(None, help="Weight of the hard-label loss; the soft loss gets 1 - alpha (default 0.1)."),
    epochs: Optional[int] = typer.Option(None, help="Student distillation epochs (default: chosen for the data size, 100 for the digits; checkpointed every epoch)."),
    teacher_epochs: Optional[int] = typer.Option(None, help="Most epochs for built-in teacher members; early stopping on a validation split usually ends sooner (cached; default: chosen for the data size, 10 for the digits)."),
    optimizer: Optional[str] = typer.Option(None, help="adam (default), adamw or sgd."),
    lr: Optional[float] = typer.Option(None, help="Student peak learning rate, cosine schedule (default 3e-3)."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default 64)."),
    seed: Optional[int] = typer.Option(None, help="Random seed: same settings + seed give the same result (default 0)."),
    device: Optional[str] = run_option("device"),
    threads: Optional[int] = typer.Option(None, help="Runtime threads for validation and latency (default: the profile's, else 1)."),
    train_threads: Optional[int] = run_option("train_threads"),
    train_precision: Optional[str] = run_option("train_precision"),
    latency_runs: Optional[int] = typer.Option(None, help="Timed batch-1 runs per model after warm-up (default 100)."),
    max_accuracy_drop: Optional[float] = run_option("max_accuracy_drop"),
    max_latency_ms: Optional[float] = run_option("max_latency_ms"),
    max_size_kb: Optional[float] = run_option("max_size_kb"),
    max_peak_memory_mb: Optional[float] = run_option("max_peak_memory_mb"),
    out: Optional[str] = typer.Option(None, help="Output root; artifacts go to <out>/<name>/ (default dist)."),
    name: Optional[str] = typer.Option(None, help="Run name (default: <data>-<student>-<target>)."),
    train_device: Optional[str] = run_option("train_device"),
    unlabelled: Optional[bool] = run_option("unlabelled"),
    limit_train: Optional[int] = run_option("limit_train"),
    limit_test: Optional[int] = run_option("limit_test"),
    jitter: Optional[int] = run_option("jitter"),
    augment: Optional[str] = run_option("augment"),
    student_augment: Optional[str] = run_option("student_augment"),
    image_size: Optional[str] = run_option("image_size"),
    model_input: Optional[str] = typer.Option(None, help="raw (default): 8-bit images go into the exported model as is (uint8; a Core ML image) and it normalizes in its first op; normalized: float32 input the app normalizes."),
    teacher_patience: Optional[int] = run_option("teacher_patience"),
    int8_budget: Optional[float] = run_option("int8_budget"),
    qat: Optional[bool] = typer.Option(None, "--qat", help="Quantization-aware distillation before int8 conversion (--quantize int8, targets with QAT: "
                              + ", ".join(n for n, b in TARGETS.items() if b.qat) + ")."),
    qat_epochs: Optional[int] = typer.Option(None, help="Epochs of quantization-aware distillation (default 3)."),
    bias_correction: Optional[str] = run_option("bias_correction"),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    quiet: bool = typer.Option(False, help="No progress: no bars on a terminal, no progress lines in a log."),
    target_options: Optional[dict] = None,  # the target's own flags (generated from export/<target>/: with_target_options)
    setting_flags: Optional[dict] = None,  # the keyword task's flags (generated from [streaming]: with_settings)
) -> None:
    """Train/load the teacher ensemble, distill the student, export it and validate it in its runtime.

    With --task keyword-spotting --keywords WORD[,WORD...] the student is a streaming keyword spotter: a
    streaming file (audio hop + state in, probabilities + state out) is written beside the clip model, its
    threshold chosen on validation streams, and it is measured hop by hop on test streams in its runtime.

    Exit codes: 0 passed, 1 a check or budget failed, 2 bad input, 130 interrupted (run again to resume).
    """
    params = dict(locals())  # first: locals() holds exactly the command's parameters here
    from compress.pipeline import run

    reports = []
    with guarded("the student is checkpointed after every epoch: run the same command to resume",
                 "distill-and-export"):
        configs = _run_configs(recipe, typed_flags(params))
        for cfg in configs:
            cfg.validate()  # every target's settings are checked before the first one trains
        from compress import STARTED

        for i, cfg in enumerate(configs):  # the first target's wall time counts from the command's start
            report = run(cfg, console=err, quiet=quiet, started=STARTED if i == 0 else None)  # progress on stderr
            if report is not None:  # None: a non-zero torchrun rank, which only trains
                reports.append(report)
    if not reports:
        return
    _print_reports(reports, json_output)
    failed = [r for r in reports if not r["passed"]]
    if failed:
        count = print_failures(failed)
        fail(f"{count} check(s) failed (see {failed[0]['run']['out_dir']}/report.json)", 1)


def _print_reports(reports: list[dict], json_output: bool) -> None:
    """The reports on stdout (JSON or tables), under the exit-code contract: the artifacts and report.json
    are written by now, so a failure here is an internal error (exit 3, one line), never a traceback."""
    import json as json_lib

    from compress.devices.report import print_report, to_json

    with guarded("the artifacts and report.json are written", "report"):
        if json_output:
            typer.echo(to_json(reports[0]) if len(reports) == 1 else json_lib.dumps(reports, indent=2))
        else:
            for report in reports:
                print_report(report, Console() if sys.stdout.isatty() else Console(width=160))


@app.command("init")
def init(
    path: str = typer.Argument("compress.toml", help="Where to write the recipe."),
    force: bool = typer.Option(False, help="Overwrite an existing file."),
) -> None:
    """Write a commented recipe with every key and its default."""
    from pathlib import Path

    from compress import recipe
    from compress.core.atomic import atomic_path, require_file_output
    from compress.config import RunConfig

    dest = Path(path)
    try:  # --force overwrites a recipe file, never a folder (a project) with its files
        require_file_output(dest, "compress init")
    except InputError as exc:
        fail(f"{exc} (e.g. {dest / 'compress.toml'})", 2)
    if dest.exists() and not force:
        fail(f"{dest}: already exists; expected a new path (or pass --force to overwrite)", 2)
    text = recipe.render({**RunConfig().settings(), "targets": [RunConfig().export.target]})
    recipe.parse(text, str(dest))  # what init writes must load back
    try:
        with atomic_path(dest) as tmp:
            tmp.write_text(text)
    except (OSError, InputError) as exc:
        fail(f"{dest}: cannot write there ({getattr(exc, 'strerror', None) or exc})", 2)
    typer.echo(f"wrote {dest}: edit it, then run `compress distill-and-export` in this folder")


@app.command("debug-quant")
def debug_quant(
    quantized: str = typer.Argument(..., help=f"The int8 model: {MODEL_FILES} (e.g. dist/<name>/model.<suffix> from --quantize int8)."),
    fp32: str = typer.Option(..., help="The float model of the same target it was quantized from."),
    data: Optional[str] = run_option("data"),
    data_format: Optional[str] = run_option("data_format"),
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
    from compress.export.registry import layer_errors_for
    from compress.export.common.sqnr import format_table

    with guarded("nothing was written", "debug-quant"):
        for path in (quantized, fp32):
            if not Path(path).exists():
                raise InputError(f"{path}: not found; expected a {MODEL_FILES} model")
        ds = load_data(data, data_format, seed=seed)
        pick = np.random.default_rng(seed).permutation(len(ds.x_train))[:samples]
        rows = layer_errors_for(fp32, quantized, ds.x_train[np.sort(pick)])
    if json_output:
        typer.echo(json_lib.dumps(rows, indent=2))
    else:
        (Console() if sys.stdout.isatty() else Console(width=200)).print(format_table(rows, top=top))


app.add_typer(devices_app, name="devices")
app.command("validate")(validate_command)
app.command("soft-targets")(soft_targets_command)
app.command("search")(search_command)
