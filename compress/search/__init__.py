"""``compress search``: pick the student for the device under accuracy, latency and size budgets.

The teachers and their soft targets are loaded (or computed) once, as ``distill-and-export`` does; then
every trial of the space (``compress.search.space``: architecture x T x alpha, cheapest MACs first) is

1. probed: the *untrained* student exported in every scheme and timed/sized in the target runtime (the
   graph, hence latency and size, does not depend on the weights). A scheme whose probe already breaks the
   latency or size budget, or cannot beat the fastest candidate that meets every budget so far, is not
   trained: the budget goes to candidates that can still win;
2. distilled from the cached soft targets on the training split minus a validation split (the same rows the
   built-in teachers held out for their early stopping), checkpointed every epoch. After each epoch the
   best validation accuracy so far is reported to an optuna trial (the best, not the last: at a high
   learning rate one epoch's accuracy swings by points); optuna's ``ThresholdPruner`` stops a candidate
   whose accuracy, from half-way through, is further than ``prune_margin`` points below the accuracy budget;
3. exported in each scheme and measured as ``distill-and-export`` measures (``compress.stages.evaluate.
   student_rows``: parity with torch, accuracy in the runtime, size, batch-1 p50 with the profile's threads,
   peak memory when a budget asks for it) -- on the validation split, never the test split.

The optuna study lives in the cache (a journal file keyed by everything that changes the numbers): a rerun
after Ctrl-C or a spent budget re-trains nothing already measured and continues with the rest. The
candidates near the fastest are timed again, interleaved (``_retime_finalists``), and the chosen one is the
fastest meeting every budget, latencies within the timing noise counting as a tie broken by accuracy, then
size (``compress.search.choice``); it is written as a normal
``<out>/<name>/`` folder by ``compress.pipeline.run`` (distilled on the whole training split, as
``distill-and-export`` would), validated once on the test split, with ``search.json`` beside it.

This module runs the loop; ``compress.search.space`` says what to try, ``compress.search.measure`` probes,
measures and judges a candidate, ``compress.search.choice`` chooses and writes ``search.json``'s dict.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from compress import __version__, defaults
from compress.core.atomic import write_text
from compress.core.cache import cache_dir, content_key, discard, one_line
from compress.core.errors import InputError
from compress.core.threads import torch_threads
from compress.export.registry import TARGETS
from compress.config import RunConfig, check_name
from compress.pipeline import (_resolve_profile, _train_threads, distill_student,
                               initial_student, load_run_data, output_folder, run, safe_name, stage,
                               teacher_recipe, teachers_and_soft_targets)
from compress.progress import is_interactive, make_progress
from compress.search.choice import best_feasible, summarize
from compress.search.measure import (FINALIST_ROUNDS, Context, accuracy_floor, candidate_row, finalists, judge,
                                     measure_trial, model_info, note_int8_vs_float, placeholder_rows, probe, probe_verdict,
                                     scratch_folder, time_interleaved, trial_config, worth_probing)
from compress.search.space import SearchOptions, SearchSpace, Trial, schemes as space_schemes, trials as space_trials
from compress.stages.export import export_student
from compress.stages.specialists import specialist_targets
from compress.stages.streaming import is_keyword_task, keyword_task
from compress.stages.measure import open_artifact
from compress.teachers.training import TeacherRecipe, validation_split
from compress.devices.budgets import gather
from compress.teachers.precomputed import lacks_test_outputs
from compress.teachers import ensemble_probs
from compress.distill.train import predict_logits
from compress.devices import search_report

SEARCH_VERSION = 4  # bump when what a stored measurement means changes (invalidates resumable state)


clock = time.monotonic  # tests replace it to spend the time budget without waiting


class OutOfTime(Exception):
    """Raised after an epoch when the time budget is spent; the trial's checkpoint stays for a rerun."""


def search(cfg: RunConfig, space: SearchSpace, options: SearchOptions, console=None, quiet: bool = False) -> dict:
    """Run the search and write the chosen folder; returns ``search.json``'s dict (with ``output``: the
    folder, and ``final``: the test-split report's verdict), or with ``chosen`` None when nothing fits."""
    from rich.console import Console

    console = console or Console(stderr=True)
    started = clock()
    cfg.validate()
    with make_progress(console, quiet=quiet, interactive=is_interactive(console)) as progress:
        ctx, plan, name = _prepare(cfg, space, options, progress, console, started)
        with _study(ctx) as study:
            rows, counts = _run_trials(ctx, plan, study)
        _retime_finalists(ctx, plan, rows)
    result = summarize(ctx, plan, rows, counts, space, clock() - started)
    if result["chosen"] is None:
        _write_failed(ctx.cfg, name, result)
        return result
    report = _write_chosen(ctx, plan, result, name, console, quiet)
    result["output"] = report["run"]["out_dir"]
    result["final"] = {"passed": report["passed"], "test_accuracy": report["rows"][-1]["accuracy"],
                       "accuracy_gap_points": 100 * report["comparison"]["accuracy_gap"],
                       "budgets": report.get("budgets", [])}
    return result


def _prepare(cfg: RunConfig, space: SearchSpace, options: SearchOptions, progress, console, started: float):
    """Data, teachers, soft targets per temperature, the validation split and the trials."""
    with stage("setup"):
        cfg, profile = _resolve_profile(cfg)
    with stage("data"):
        data = load_run_data(cfg)
        if data.y_train is None:
            raise InputError("--unlabelled: compress search measures each candidate's accuracy on a validation "
                             "split of the labelled training data; expected labelled training data")
        keyword = is_keyword_task(cfg)  # the task's classes; the streaming families; streams in the final run
        data = keyword_task(cfg, data).data if keyword else data
        plan = space_trials(space, data.input_shape, data.num_classes, cfg.streaming.task if keyword else data.input_kind,
                            cfg.distill.temperature, cfg.distill.alpha,
                            cfg.budgets.max_macs_per_second if keyword else None)
        user_epochs = cfg.distill.epochs  # the defaults' teacher choice and epochs do not depend on the student
        cfg, picked = defaults.choose(cfg.with_settings(student=plan[-1].student), data,
                                      "cpu" if cfg.distill.train_device in (None, "cpu") else "cuda")
        schemes = space_schemes(space, TARGETS[cfg.export.target].schemes, cfg.export.target)
        for scheme in schemes:  # every scheme's options checked before any training
            cfg.with_settings(quantize=scheme).validate()
        name = check_name(cfg.name) if cfg.name else safe_name(f"{data.name}-search-{cfg.export.target}")
        output_folder(cfg.with_settings(name=name), data, 0)
    epochs = {t.key: user_epochs or _trial_epochs(t.student, data, cfg) for t in plan}
    progress.note(f"search: {len(plan)} students x {len(schemes)} schemes ({', '.join(schemes)}) on "
                  f"{cfg.export.target}, cheapest first; teachers {', '.join(cfg.teachers.members)}"
                  + ("" if "teachers" not in picked else " (default for this data)")
                  + f"; time budget {options.time_budget_min:g} min" + "".join(f"; {n}" for n in space.notes))
    threads = _train_threads(cfg, data)
    targets, targets_keys = {}, {}
    with stage("teachers"), torch_threads(threads.teachers or threads.student):
        for t in sorted({tr.temperature for tr in plan}):
            at_t = cfg.with_settings(temperature=t)
            members, soft, _ = teachers_and_soft_targets(at_t, data, progress, 0, 1)
            if cfg.specialists.enabled:  # the students learn from generalist + specialists (compress.stages.specialists)
                soft, section, _, _ = specialist_targets(at_t, data, members, teacher_recipe(at_t, data), progress)
                targets_keys[t] = section["targets_key"]
            targets[t] = soft
    recipe = TeacherRecipe()
    train_rows, val_rows = validation_split(data.y_train, recipe.val_fraction, cfg.distill.seed, recipe.val_max)
    if not len(val_rows):
        raise InputError(f"data {cfg.data.path or 'digits'}: a class has under 2 training samples; compress search "
                         "needs a validation split of the training data (expected at least 2 samples per class)")
    split = replace(data, x_train=data.x_train[train_rows], y_train=data.y_train[train_rows],
                    x_test=data.x_train[val_rows], y_test=data.y_train[val_rows])
    targets = {t: np.asarray(soft[train_rows]) for t, soft in targets.items()}
    teacher_pred, reference_acc = _reference(members, split)

    b = cfg.budgets
    budgets = gather(profile, {"max_accuracy_drop": b.max_accuracy_drop, "latency_ms": b.max_latency_ms,
                               "size_kb": b.max_size_kb, "peak_memory_mb": b.max_peak_memory_mb})
    ctx = Context(cfg, data, split, train_rows, members, targets, teacher_pred, reference_acc, budgets, profile,
                  schemes, options, started, progress, console, epochs, targets_keys)
    return ctx, plan, name


def _trial_epochs(student: str, data, cfg: RunConfig) -> int:
    """Epochs for one student when the user set none: what ``distill-and-export`` would choose for it."""
    alone, _ = defaults.choose(cfg.with_settings(student=student, epochs=None, teacher_epochs=cfg.teachers.epochs or 1),
                               data, "cpu" if cfg.distill.train_device in (None, "cpu") else "cuda")
    return alone.distill.epochs


def _reference(members: list, split) -> tuple[np.ndarray, float]:
    """The ensemble's predictions and accuracy on the validation split (the accuracy budget's reference)."""
    scored = [m for m in members if not lacks_test_outputs(m) and (m.module is not None or m.artifact is not None)]
    if not scored:
        raise InputError("teachers: compress search needs members that run here (the validation split is carved "
                         "from the training data); expected at least one model, not only precomputed outputs")
    probs = ensemble_probs(scored, split.x_test)
    pred = np.argmax(probs, axis=1)
    return pred, float((pred == split.y_test).mean())


def _state_key(ctx: Context) -> str:
    """Everything that changes a stored measurement: data, teachers, target options, training settings
    and runtime threads -- not the budgets (a rerun with other budgets re-chooses from the same
    measurements) nor the space (a wider rerun reuses the students it shares; each stored trial is named
    with its architecture, T, alpha and epochs: ``_stored_name``)."""
    c = ctx.cfg
    return content_key("search", SEARCH_VERSION, __version__, ctx.data.fingerprint(),
                       [m.fingerprint for m in ctx.members], c.export.target,
                       sorted(c.export.export_options("none").items()),  # the target's options, resolved
                       c.export.input, c.quantize.calibration_samples, c.distill.loss, float(c.distill.lr),
                       c.distill.optimizer, float(c.distill.weight_decay), c.distill.batch_size, c.distill.seed,
                       c.device.threads, c.device.latency_runs, c.teachers.augment,
                       *([sorted((ctx.targets_keys or {}).items())] if ctx.targets_keys else []))  # specialists' targets


def _stored_name(ctx: Context, trial: Trial) -> str:
    return f"{trial.key} epochs={ctx.epochs[trial.key]}"


@contextlib.contextmanager
def _study(ctx: Context):
    """The resumable optuna study in the cache (a journal file: no database server, survives Ctrl-C), held by
    this search alone: two searches with the same settings on one cache (two CI jobs) take turns on a lock
    beside the journal, and the second reuses every measurement the first stored. The lock is the
    kernel's (``flock``): a killed search releases it, and the trials it left RUNNING are marked failed by
    the next one (no live search can own them while the lock is held)."""
    key = _state_key(ctx)
    journal = cache_dir("search") / f"{key[:32]}.journal"
    with _exclusive(journal.with_name(journal.name + ".search-lock"), ctx.console):  # ".lock" is optuna's own
        yield _open_study(ctx, journal, key)


@contextlib.contextmanager
def _exclusive(lock: Path, console):
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            console.print(f"search: waiting for another compress search with the same settings on this cache "
                          f"(lock {lock}); its measurements will be reused", highlight=False, soft_wrap=True,
                          markup=False)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _open_study(ctx: Context, journal: Path, key: str):
    """The study from ``journal``; a journal that does not replay (a damaged line, a non-UTF-8 byte) is
    discarded with one warning naming it and the search starts a new one, as any damaged cache entry."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    floor = accuracy_floor(ctx)
    half = -(-min(ctx.epochs.values()) // 2)  # no stop before half of the shortest training is done
    pruner = (optuna.pruners.NopPruner() if floor is None else
              optuna.pruners.ThresholdPruner(lower=floor - ctx.options.prune_margin / 100, n_warmup_steps=half - 1))
    for attempt in (1, 2):
        try:
            storage = JournalStorage(JournalFileBackend(str(journal)))
            study = optuna.create_study(study_name=key[:32], storage=storage, direction="maximize", pruner=pruner,
                                        load_if_exists=True)
            _stored_rows(study)  # replays every stored trial: a damaged one fails here, not half-way
            return study
        except Exception as exc:  # noqa: BLE001 - whatever the damage, the journal is only a cache
            if attempt == 2:
                raise
            discard(journal, f"the search journal does not load: {one_line(exc)}")


def _stored_rows(study) -> dict[str, dict[str, dict]]:
    """Stored name -> scheme -> row, over every finished trial: a later trial of the same student adds the
    schemes a wider rerun asked for. Rows skipped by a probe are not kept (other budgets may want them)."""
    import optuna

    done: dict[str, dict[str, dict]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        kept = {r["scheme"]: dict(r) for r in t.user_attrs.get("rows", []) if r["status"] != "skipped"}
        done.setdefault(t.user_attrs.get("candidate"), {}).update(kept)
    return done


def _run_trials(ctx: Context, plan: list[Trial], study) -> tuple[dict, dict]:
    """Every trial in MAC order, until the time budget is spent: (trial key -> candidate rows, counts)."""
    import optuna

    done = _stored_rows(study)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left running by a killed process
    rows: dict[str, list[dict]] = {}
    counts = {"trained": 0, "resumed": 0, "pruned": 0, "skipped": 0, "not_reached": 0}
    task = ctx.progress.add_task("search", total=len(plan), unit="student")
    for i, trial in enumerate(plan):
        stored = done.get(_stored_name(ctx, trial), {})
        pruned = next((r for r in stored.values() if r["status"] == "pruned"), None)
        missing = [s for s in ctx.schemes if s not in stored]
        if stored and (pruned or not missing):  # a pruned student is pruned in every scheme
            rows[trial.key] = [stored.get(s) or {**pruned, "scheme": s, "id": trial.candidate_id(s)} for s in ctx.schemes]
            counts["resumed"] += 1
        elif _measured_any(rows) and _spent(ctx):
            rows[trial.key] = placeholder_rows(ctx, trial, "not reached", "time budget spent before this student")
            counts["not_reached"] += 1
        else:
            new = {r["scheme"]: r for r in _one_trial(ctx, trial, study, rows, counts, missing)}
            rows[trial.key] = [stored.get(s) or new[s] for s in ctx.schemes]
        rows[trial.key] = [judge(ctx, r) for r in rows[trial.key]]
        ctx.progress.update(task, completed=i + 1, description=f"search ({i + 1}/{len(plan)}: {trial.student})")
    return rows, counts


def _measured_any(rows: dict) -> bool:
    """Something was measured already (so a spent time budget may stop the search: the first never stops)."""
    return any(r["status"] == "measured" for trial_rows in rows.values() for r in trial_rows)


def _spent(ctx: Context) -> bool:
    return clock() - ctx.started >= 60 * ctx.options.time_budget_min


def _one_trial(ctx: Context, trial: Trial, study, rows: dict, counts: dict, schemes: list[str]) -> list[dict]:
    """Probe, distill and measure one trial in ``schemes`` inside an optuna trial; its rows are stored in the
    study. A student whose checkpoint is complete is loaded, not trained (counted as resumed)."""
    import optuna

    best = best_feasible([r for rs in rows.values() for r in rs])
    probes = probe(ctx, trial, schemes) if worth_probing(ctx, best) else {}
    alive = [s for s in schemes if probe_verdict(ctx, probes.get(s), best) is None]
    if not alive:
        counts["skipped"] += 1
        return [candidate_row(ctx, trial, s, "skipped", probe_verdict(ctx, probes.get(s), best), probe=probes.get(s))
                for s in schemes]
    handle = study.ask()  # the order is ours (cheapest first), so the trial samples nothing: it records
    handle.set_user_attr("candidate", _stored_name(ctx, trial))  # what a rerun looks up
    try:
        student, epochs_run, trained = _distill(ctx, trial, handle, _measured_any(rows))
    except optuna.TrialPruned as pruned:
        out = [candidate_row(ctx, trial, s, "pruned", str(pruned), epochs=handle.user_attrs.get("epochs")) for s in schemes]
        handle.set_user_attr("rows", out)
        study.tell(handle, state=optuna.trial.TrialState.PRUNED)
        counts["pruned"] += 1
        return out
    except OutOfTime:
        study.tell(handle, state=optuna.trial.TrialState.FAIL)  # not stored as done: a rerun continues it
        counts["not_reached"] += 1
        return placeholder_rows(ctx, trial, "not reached", "time budget spent while training (checkpoint kept)")
    except BaseException:
        study.tell(handle, state=optuna.trial.TrialState.FAIL)
        raise
    out = [measure_trial(ctx, trial, s, student, epochs_run) if s in alive else
           candidate_row(ctx, trial, s, "skipped", probe_verdict(ctx, probes.get(s), best), probe=probes.get(s))
           for s in schemes]
    note_int8_vs_float(out)
    handle.set_user_attr("rows", out)
    accuracies = [r["val_accuracy"] for r in out if r["val_accuracy"] is not None]
    study.tell(handle, max(accuracies) if accuracies else 0.0)
    counts["trained" if trained else "resumed"] += 1
    return out


def _distill(ctx: Context, trial: Trial, handle, may_stop: bool):
    """Distill one student (resuming its checkpoint), reporting validation accuracy to optuna each epoch.
    With ``may_stop`` (something was measured already) a spent time budget stops it after an epoch.
    Returns (student, its epochs, whether any epoch was trained here)."""
    import optuna


    cfg = trial_config(ctx, trial)
    student = initial_student(cfg, ctx.split)
    best = [0.0]
    ran = []

    def after_epoch(epoch: int) -> None:
        ran.append(epoch)
        accuracy = float((predict_logits(student, ctx.split.x_test).argmax(1) == ctx.split.y_test).mean())
        student.train()
        best[0] = max(best[0], accuracy)  # the best so far: one noisy epoch at a high learning rate stops nothing
        handle.report(best[0], epoch)
        handle.set_user_attr("epochs", epoch + 1)
        if handle.should_prune():
            floor = accuracy_floor(ctx)
            raise optuna.TrialPruned(f"best validation accuracy {100 * best[0]:.2f}% after {epoch + 1} of {cfg.distill.epochs} "
                                     f"epochs, over {ctx.options.prune_margin:g} points below the accuracy budget's "
                                     f"{100 * floor:.2f}%")
        if may_stop and epoch + 1 < cfg.distill.epochs and _spent(ctx):
            raise OutOfTime()

    threads = _train_threads(cfg, ctx.split)
    with torch_threads(threads.student):
        student, history, _ = distill_student(cfg, ctx.split, student, ctx.members, ctx.targets[trial.temperature],
                                              ctx.progress, ctx.console, 0, 1, after_epoch=after_epoch,
                                              targets_key=(ctx.targets_keys or {}).get(trial.temperature))
    return student, len(history), bool(ran)


def _retime_finalists(ctx: Context, plan: list[Trial], rows: dict, time_one=None) -> None:
    """A latency difference is a measurement with noise: the candidates near the fastest (``finalists``) are
    exported again from their checkpoints and timed interleaved over several rounds; their rows get the
    median p50 and the rounds' range (``latency_interval_ms``), and are judged again, so that the choice
    (``best_feasible``) compares like with like and treats overlapping intervals as a tie."""
    chosen = finalists([r for trial_rows in rows.values() for r in trial_rows])
    if not chosen:
        return
    ctx.progress.note(f"search: timing the {len(chosen)} fastest candidates again, interleaved over "
                      f"{FINALIST_ROUNDS} rounds: {', '.join(r['id'] for r in chosen)}")
    by_id = {t.candidate_id(s): (t, s) for t in plan for s in ctx.schemes}
    with scratch_folder() as folder:
        predicts = {}
        for row in chosen:
            trial, scheme = by_id[row["id"]]
            trained, cfg = trial_config(ctx, trial), trial_config(ctx, trial, scheme)
            with torch_threads(_train_threads(trained, ctx.split).student):  # loads the finished checkpoint
                student, _, _ = distill_student(trained, ctx.split, initial_student(trained, ctx.split), ctx.members,
                                                ctx.targets[trial.temperature], ctx.progress, ctx.console, 0, 1,
                                                targets_key=(ctx.targets_keys or {}).get(trial.temperature))
            exported = export_student(cfg.export, cfg.quantize, cfg.distill, ctx.split, student,
                                      ctx.targets[trial.temperature], model_info(ctx, trial),
                                      Path(folder) / row["id"].replace("/", "-"))
            predicts[row["id"]] = open_artifact(cfg.export.target, exported.artifact, cfg.device.threads, ctx.profile).predict
        timed = time_interleaved(predicts, ctx.split.x_test, ctx.cfg.device.latency_runs, time_one=time_one)
    for row in chosen:
        t = timed[row["id"]]
        row.update(latency_ms=t["p50"], latency_interval_ms=[t["low"], t["high"]], retimed_rounds=t["rounds"])
        judge(ctx, row)


def _chosen_trial(plan: list[Trial], result: dict) -> tuple[Trial, str]:
    row = next(r for r in result["candidates"] if r["id"] == result["chosen"])
    trial = next(t for t in plan if t.candidate_id(row["scheme"]) == row["id"])
    return trial, row["scheme"]


def _write_chosen(ctx: Context, plan: list[Trial], result: dict, name: str, console, quiet: bool) -> dict:
    """The chosen candidate as a normal ``<out>/<name>/`` folder: ``distill-and-export`` with its settings,
    i.e. distilled on the whole training split (the validation rows were held out only to choose; like a
    refit after a hyper-parameter search), exported, and validated once on the test split against the
    ensemble in the same runtime. Its training is checkpointed like any run: a rerun trains nothing."""
    trial, scheme = _chosen_trial(plan, result)
    return run(trial_config(ctx, trial, scheme).with_settings(name=name), console=console, quiet=quiet, search=result)


def _write_failed(cfg: RunConfig, name: str, result: dict) -> None:
    """No candidate fits: ``<out>/<name>.search.json`` and ``.search.html`` (no model folder is written, and
    a good earlier folder of the same name stays as it was)."""
    import json


    out = Path(cfg.out)
    json_path = write_text(out / f"{name}.search.json", json.dumps(result, indent=2))
    search_report.write(result, out / f"{name}.search.html")
    result["output"] = str(json_path)
