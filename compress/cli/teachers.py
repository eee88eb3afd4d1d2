"""``compress soft-targets``: a teacher member's outputs on the data, written for ``--teacher FILE.npz``.

For members too big to run where the student is distilled: run this where the member fits (a GPU machine),
copy the file, and give it as ``--teacher FILE.npz`` (format: ``compress.teachers.precomputed``). ``--inputs-only``
writes just the inputs and their hashes, for a model this tool cannot run: add its outputs to the file.
``--specialist a+b`` writes a specialist's outputs instead (``compress.specialists.outputs``), the ``--teacher``
member its generalist, for a run's ``--specialist-outputs``.

Registered in ``compress.cli`` with ``app.command("soft-targets")(soft_targets_command)``. Exit codes as
everywhere: 0 written, 2 bad input (one ``error: ...`` line, nothing written), 3 internal error, 130/143
interrupted (nothing written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from compress.cli.options import run_option
from compress.cli.output import err, guarded
from compress.core.errors import InputError


def _run_config(recipe_path: Optional[str], flags: dict):
    """The run's data settings: defaults <- recipe (given, or ./compress.toml when present) <- flags, exactly
    as ``distill-and-export`` resolves them (so the inputs, and their hashes, are the run's)."""
    from compress import recipe
    from compress.config import RunConfig

    _, merged = recipe.resolve(recipe_path, flags, RunConfig().settings())
    merged.pop("targets", None)
    return RunConfig.from_settings(**merged)


def _load_member(cfg, teacher: str, dataset, quiet: bool):
    """The member, loaded as the run would load it. Training a built-in one can take a while: its epochs
    are shown (bars on a terminal, lines on stderr in a log); a file member loads at once, silently."""
    from compress import models
    from compress.pipeline import teacher_recipe
    from compress.progress import is_interactive, make_progress
    from compress.teachers import load_teachers

    trains = models.is_known(teacher.split("?", 1)[0])
    with make_progress(err, quiet=quiet or not trains, interactive=is_interactive(err)) as progress:
        task = progress.add_task(f"teacher {teacher}", total=cfg.teachers.epochs, unit="epoch")
        done = [0]

        def on_epoch(spec: str, epoch: int, val_accuracy: float | None) -> None:
            done[0] = epoch + 1
            progress.update(task, completed=epoch + 1)

        (member,) = load_teachers([teacher], dataset, epochs=cfg.teachers.epochs, seed=cfg.distill.seed,
                                  device=cfg.distill.train_device,
                                  contracts=cfg.teachers.contract, recipe=teacher_recipe(cfg, dataset), on_epoch=on_epoch)
        if done[0]:
            progress.update(task, total=done[0], completed=done[0])  # early stopping ends before the budget
        else:
            progress.update(task, total=1, completed=1, unit="", description=f"teacher {teacher} (from the cache)")
    return member


def _train_specialist(cfg, member, classes: str, arch: str | None, dataset, quiet: bool):
    """The specialist for ``classes`` (names joined by +) with ``member`` as its generalist, trained (or read
    from the cache) exactly as a run with that member as ``--generalist`` would: same start, recipe and seed."""
    from compress.pipeline import teacher_recipe
    from compress.progress import is_interactive, make_progress
    from compress.specialists import check_given, specialist_seed, train_specialist
    from compress.stages.specialists import pick_generalist

    (subset,) = check_given([classes.split("+")], dataset.labels)
    cfg = cfg.with_settings(specialist_subsets=[classes], specialist_arch=arch, generalist=member.name)
    generalist = pick_generalist(cfg, [member])
    recipe = teacher_recipe(cfg, dataset)
    with make_progress(err, quiet=quiet, interactive=is_interactive(err)) as progress:
        task = progress.add_task(f"specialist {classes}", total=recipe.epochs, unit="epoch")
        return train_specialist(subset, dataset, arch=generalist.arch, generalist=generalist.start,
                                generalist_key=generalist.fingerprint, recipe=recipe,
                                seed=specialist_seed(cfg.distill.seed, subset), device=cfg.distill.train_device,
                                view=generalist.view, on_epoch=lambda e, *_: progress.update(task, completed=e + 1))


def soft_targets_command(
    teacher: Optional[str] = typer.Option(None, "--teacher", help="The member: a built-in model name (trained with --seed and --teacher-epochs, cached), a .ts/.pt TorchScript, a .pt2, an .onnx, or module:function=weights.pt; SPEC?key=value&... for its input contract."),
    out_file: str = typer.Option(..., "-o", "--output-file", help="The .npz to write (replaced atomically)."),
    output: Optional[str] = typer.Option(None, "--output", help="What to store: logits, probs or label (class indices). Default: what the member outputs."),
    inputs_only: bool = typer.Option(False, "--inputs-only", help="Write only the inputs (x_train, x_test) and their hashes, for a model run elsewhere: add train/test/output arrays to the file."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe whose data settings to use (default: ./compress.toml when present). Flags override it."),
    data: Optional[str] = typer.Option(None, help="Data, as for distill-and-export (default: scikit-learn's digits)."),
    data_format: Optional[str] = run_option("data_format"),
    limit_train: Optional[int] = typer.Option(None, help="Use only the first N training samples (as the run will)."),
    limit_test: Optional[int] = typer.Option(None, help="Use only the first N test samples (as the run will)."),
    seed: Optional[int] = typer.Option(None, help="Data split seed and a built-in member's training seed (default 0; the run trains member i with seed + i)."),
    teacher_epochs: Optional[int] = typer.Option(None, help="Epochs for a built-in member (default 10)."),
    jitter: Optional[int] = typer.Option(None, help="Random shift of up to N pixels when training a built-in member."),
    train_device: Optional[str] = typer.Option(None, help="Torch device for a built-in member's training (default: cuda if available)."),
    specialist: Optional[str] = typer.Option(None, "--specialist", help="Write a specialist's outputs instead (Hinton et al. 2015 section 5): its classes joined by + (e.g. cat+dog), trained as a run would from the --teacher member as generalist; give the file to a run as --specialist-outputs."),
    specialist_arch: Optional[str] = typer.Option(None, "--specialist-arch", help="With --specialist: its architecture (default: the --teacher member's own, started from its weights)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress: no bar on a terminal, no progress lines in a log."),
) -> None:
    """Run one teacher member on the data's transfer set and test split and write its outputs to an .npz,
    with the hashes of the inputs they were computed from (use it with --teacher FILE.npz)."""
    from compress.teachers import precomputed
    from compress.core.atomic import clean_stale, require_file_output
    from compress.specialists.outputs import specialist_arrays
    from compress.pipeline import load_run_data, resolve_defaults

    flags = {"data": data, "data_format": data_format, "limit_train": limit_train, "limit_test": limit_test,
             "seed": seed, "teacher_epochs": teacher_epochs, "jitter": jitter, "device": train_device}
    with guarded("nothing was written", "soft-targets"):
        cfg = _run_config(recipe, flags)
        dest = Path(out_file)
        if dest.suffix.lower() != ".npz":
            raise InputError(f"-o {out_file!r}: expected a path ending in .npz (--teacher recognizes the file by it)")
        require_file_output(dest, "-o")
        clean_stale(dest.parent)  # temporaries of writers killed here earlier (kill -9 leaves no chance to clean)
        if inputs_only and (teacher or output):
            raise InputError("--inputs-only: writes the inputs for a model run elsewhere; expected no --teacher or "
                             "--output with it")
        if not inputs_only and not teacher:
            raise InputError("--teacher: a member to run is needed; expected a model spec (or --inputs-only)")
        if specialist is not None and (inputs_only or output):
            raise InputError("--specialist: writes the specialist's logits; expected no --inputs-only or --output with it")
        if output is not None and output not in precomputed.OUTPUTS:
            raise InputError(f"--output {output!r}: unknown; expected one of {', '.join(precomputed.OUTPUTS)}")
        dataset = load_run_data(cfg)
        if inputs_only:
            arrays = {**precomputed.input_arrays(dataset), "x_train": dataset.x_train, "x_test": dataset.x_test}
        else:
            cfg, _ = resolve_defaults(cfg.with_settings(teachers=[teacher]), dataset, None)  # trained as the run would
            member = _load_member(cfg, teacher, dataset, quiet)
            if specialist is not None:
                member = _train_specialist(cfg, member, specialist, specialist_arch, dataset, quiet)
                arrays = specialist_arrays(member, dataset)
            else:
                arrays = precomputed.output_arrays(member, dataset, output)
        precomputed.write(dest, arrays)
    what = ("inputs" if inputs_only else f"logits of the specialist for {specialist!r} on the" if specialist
            else f"{arrays['output']} of {member.name!r} on the")
    typer.echo(f"wrote {dest}: {what} {len(dataset.x_train)} transfer-set and {len(dataset.x_test)} test samples "
               f"({dataset.num_classes} classes)")
