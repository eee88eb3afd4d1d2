"""``compress search``: the command line of ``compress.search`` (flags, recipe ``[search]``, table, exit codes)."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from compress.cli.options import run_option, typed_flags, with_settings, with_target_options
from compress.cli.output import err, fail, guarded
from compress.core.errors import InputError
from compress.export.registry import TARGETS
from compress.recipe import section_fields

TARGET_NAMES = ", ".join(TARGETS)
LIST_FLAGS = {"widths": "search_widths", "depths": "search_depths", "frames": "search_frames",
              "temperatures": "search_temperatures", "alphas": "search_alphas"}


def _numbers(flag: str, text: str) -> list[float]:
    """``"0.25,0.5"`` -> [0.25, 0.5]; anything else is a one-line error naming the flag."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--{flag} {text!r}: expected comma-separated numbers, e.g. 0.25,0.5,1") from None
    if not values:
        raise InputError(f"--{flag} {text!r}: expected at least one number")
    return values


def _configs(recipe_path: Optional[str], flags: dict, search_flags: dict):
    """(RunConfig, SearchSpace, SearchOptions): defaults <- recipe (its [search] section too) <- flags."""
    from compress import recipe
    from compress.config import RunConfig
    from compress.search import SearchOptions
    from compress.search.space import SearchSpace

    defaults = {**RunConfig().settings(), "targets": [RunConfig().export.target],
                **{f: None for f in recipe.SEARCH_FIELDS}}
    path, merged = recipe.resolve(recipe_path, {**flags, **search_flags}, defaults)
    targets = [flags["target"]] if "target" in flags else merged["targets"]
    if len(targets) != 1:
        raise InputError(f"{path}: [export] targets lists {', '.join(targets) or 'nothing'}; compress search picks the "
                         f"student for one target: expected --target, one of {TARGET_NAMES}")
    merged.pop("targets")
    search = {k: merged.pop(k) for k in recipe.SEARCH_FIELDS}
    space = SearchSpace(families=search["search_families"], widths=search["search_widths"],
                        depths=search["search_depths"], frames=search["search_frames"], schemes=search["search_schemes"],
                        temperatures=search["search_temperatures"], alphas=search["search_alphas"])
    options = SearchOptions(**{k: v for k, v in (("time_budget_min", search["search_time_budget"]),
                                                 ("prune_margin", search["search_prune_margin"])) if v is not None})
    return RunConfig.from_settings(**{**merged, "target": targets[0], "recipe_path": path}), space, options


@with_target_options
@with_settings(section_fields("streaming") + section_fields("budgets", "max_false") + ["max_macs_per_second"]
               + section_fields("specialists"))
def search_command(
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe file (default: ./compress.toml when present); its [search] section sets the space. Flags override it."),
    target: Optional[str] = typer.Option(None, help=f"Export target to search for: {TARGET_NAMES} (default onnx)."),
    family: Optional[list[str]] = typer.Option(None, "--family", help="A student family to try (repeat): mlp, cnn-small, cnn, mobilenet, ds-cnn, or one with fixed multipliers, e.g. mlp:1.25 (default: chosen for the data's kind)."),
    widths: Optional[str] = typer.Option(None, help="Width multipliers, comma-separated (default: per family)."),
    depths: Optional[str] = typer.Option(None, help="Depth multipliers, comma-separated, for families that take one."),
    frames: Optional[str] = typer.Option(None, help="Frame multipliers, comma-separated, for the streaming families (front-end frame and hop; default 1)."),
    schemes: Optional[str] = typer.Option(None, help="Quantization schemes to measure, comma-separated (default: none,int8-weights,int8 where the target has them)."),
    temperatures: Optional[str] = typer.Option(None, help="Temperatures to try, comma-separated (default: --temperature)."),
    alphas: Optional[str] = typer.Option(None, help="Alphas to try, comma-separated (default: --alpha)."),
    time_budget: Optional[float] = typer.Option(None, help="Minutes to spend (default 20); the first student always finishes; a rerun continues."),
    prune_margin: Optional[float] = typer.Option(None, help="Stop a half-trained student this many points below the accuracy budget (default 3)."),
    data: Optional[str] = run_option("data"),
    data_format: Optional[str] = run_option("data_format"),
    teacher: Optional[list[str]] = typer.Option(None, "--teacher", help="A teacher member (repeat), as distill-and-export."),
    teacher_epochs: Optional[int] = typer.Option(None, help="Most epochs for built-in teacher members (cached; default: chosen for the data size)."),
    device: Optional[str] = run_option("device"),
    threads: Optional[int] = typer.Option(None, help="Runtime threads for latency (default: the profile's, else 1)."),
    latency_runs: Optional[int] = typer.Option(None, help="Timed batch-1 runs per candidate (default 100)."),
    max_accuracy_drop: Optional[float] = run_option("max_accuracy_drop", help="Largest accepted accuracy drop vs the teacher ensemble, in points, on the validation split."),
    max_latency_ms: Optional[float] = run_option("max_latency_ms"),
    max_size_kb: Optional[float] = run_option("max_size_kb"),
    max_peak_memory_mb: Optional[float] = run_option("max_peak_memory_mb"),
    epochs: Optional[int] = typer.Option(None, help="Epochs per student (default: what distill-and-export would choose for each)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "-T", help="Distillation temperature (default 2)."),
    alpha: Optional[float] = typer.Option(None, help="Hard-label weight (default 0.1)."),
    lr: Optional[float] = typer.Option(None, help="Student peak learning rate (default 3e-3)."),
    optimizer: Optional[str] = typer.Option(None, help="adam (default), adamw or sgd."),
    calibration_samples: Optional[int] = typer.Option(None, help="Transfer-set samples that calibrate static int8 (default 300)."),
    image_size: Optional[str] = run_option("image_size"),
    model_input: Optional[str] = typer.Option(None, help="raw (default): 8-bit images go into the model as is; normalized: float32 input."),
    batch_size: Optional[int] = typer.Option(None, help="Training batch size (default 64)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    limit_train: Optional[int] = run_option("limit_train"),
    limit_test: Optional[int] = run_option("limit_test"),
    out: Optional[str] = typer.Option(None, help="Output root (default dist)."),
    name: Optional[str] = typer.Option(None, help="Folder name of the chosen student (default: <data>-search-<target>)."),
    train_device: Optional[str] = run_option("train_device"),
    json_output: bool = typer.Option(False, "--json", help="Print search.json's content instead of tables."),
    quiet: bool = typer.Option(False, help="No progress."),
    target_options: Optional[dict] = None,  # the target's own flags (generated from export/<target>/: with_target_options)
    setting_flags: Optional[dict] = None,  # the keyword task's flags (generated from [streaming]: with_settings)
) -> None:
    """Search students x quantization schemes for the fastest one meeting the budgets; write it to <out>/<name>/.

    Exit codes: 0 a candidate meets the budgets (and passed on the test split), 1 none does (the closest is
    named) or the chosen one failed a check on the test split, 2 bad input, 130 interrupted (rerun to continue).

    With --task keyword-spotting the streaming families are searched (clip accuracy, latency and size on the
    validation split); the chosen one's run measures the streams and gates the keyword budgets.
    """
    params = dict(locals())  # first: exactly the command's parameters
    search_flags = {"search_families": list(family) if family else None,
                    "search_schemes": [s.strip() for s in schemes.split(",") if s.strip()] if schemes else None,
                    "search_time_budget": time_budget, "search_prune_margin": prune_margin}
    with guarded("measured candidates are kept in the cache: run the same command to continue", "search"):
        for flag, field in LIST_FLAGS.items():
            if params[flag] is not None:
                search_flags[field] = _numbers(flag, params[flag])
        flags = typed_flags({k: v for k, v in params.items()
                        if k not in {"family", "schemes", "time_budget", "prune_margin", *LIST_FLAGS}})
        cfg, space, options = _configs(recipe, flags, {k: v for k, v in search_flags.items() if v is not None})
        from compress.search import search

        result = search(cfg, space, options, console=err, quiet=quiet)
    _print(result, json_output)
    _exit(result)


def _print(result: dict, json_output: bool) -> None:
    import json

    if json_output:
        typer.echo(json.dumps(result, indent=2))
        return
    from pathlib import Path

    from compress.devices.report import print_report

    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(candidates_table(result))
    console.print(result["why"], highlight=False, soft_wrap=True, markup=False)
    if result["chosen"] is not None:  # the chosen folder's own report: test split, against the ensemble
        print_report(json.loads((Path(result["output"]) / "report.json").read_text()), console)


def candidates_table(result: dict) -> Table:
    """Every candidate, cheapest first: what was measured, which budgets it breaks, the chosen one marked."""
    table = Table(title=f"compress search: {result['target']} ({result['latency_label']})", title_justify="left")
    for col in ("candidate", "MACs", "status", "val acc", "drop (pt)", "size kB", "p50 ms", "budgets"):
        table.add_column(col, justify="right" if col not in ("candidate", "status", "budgets") else "left")
    fmt = lambda v, f: "—" if v is None else f.format(v)  # noqa: E731
    for r in result["candidates"]:
        mark = "→ " if r["id"] == result["chosen"] else ("* " if r["pareto"] else "  ")
        verdict = ("meets all" if r["meets_budgets"] else "; ".join(r["breaks"])) if r["status"] == "measured" else (r["note"] or "")
        table.add_row(mark + r["id"], f"{r['macs']:,}", r["status"], fmt(r["val_accuracy"] and 100 * r["val_accuracy"], "{:.2f}%"),
                      fmt(r["accuracy_drop"], "{:.2f}"), fmt(r["size_kb"], "{:.1f}"), fmt(r["latency_ms"], "{:.3f}"),
                      verdict)
    table.caption = (f"→ chosen, * on the Pareto front; {result['trained']} trained, {result['resumed']} from the cache, "
                     f"{result['pruned']} pruned, {result['skipped']} skipped by their untrained export, "
                     f"{result['not_reached']} not reached; {result['elapsed_s']:.0f} s of {60 * result['time_budget_min']:.0f} s")
    return table


def _exit(result: dict) -> None:
    if result["chosen"] is None:
        closest = result.get("closest")
        what = (f"closest: {closest['id']} ({'; '.join(closest['breaks'])})" if closest else "nothing was measured")
        fail(f"no candidate meets the budgets; {what}; see {result.get('output')}", 1)
    final = result.get("final") or {}
    if not final.get("passed", True):
        broken = [b["detail"] for b in final.get("budgets", []) if not b["passed"]]
        fail(f"the chosen {result['chosen']} failed on the test split ({'; '.join(broken) or 'a check failed'}); "
             f"see {result['output']}/report.json", 1)
