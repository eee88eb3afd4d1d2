"""Progress in a CI log (issue 15): plain lines on stderr when it is not a terminal, with the step, the
elapsed time and the time left; nothing with --quiet; stdout stays pure JSON with --json. And the estimate
before training, which must not change anything the run computes.

The line printer takes its clock as an argument: every test here drives a fake clock (no sleeps, nothing
depends on how fast or busy the machine is).
"""

from __future__ import annotations

import io
import json
import math
import random
import re

import numpy as np
import pytest
import torch
from rich.console import Console

from compress.core.errors import InputError
from compress.progress import (BarProgress, LineProgress, clock_text, interval_from_env, make_progress,
                               one_step)

SMALL_RUN = ["--epochs", "3", "--teacher-epochs", "1", "--teacher", "mlp-1200", "--latency-runs", "5",
             "--limit-train", "300"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line_progress(interval: float = 1e9) -> tuple[LineProgress, FakeClock, io.StringIO]:
    out, clock = io.StringIO(), FakeClock()
    return LineProgress(Console(file=out, width=80), clock=clock, interval=interval), clock, out


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_long_task_prints_start_every_tenth_and_done_with_elapsed_and_eta():
    progress, clock, out = line_progress()
    with progress:
        task = progress.add_task("distilling mlp-small (T=2)", total=100, unit="epoch")
        for epoch in range(100):
            clock.now += 2
            progress.update(task, completed=epoch + 1)
    printed = lines(out)
    assert printed[0] == "[   0s] distilling mlp-small (T=2): started (100 epochs)"
    assert printed[1] == "[  20s] distilling mlp-small (T=2): epoch 10/100, elapsed 0:20, ETA 3:00"
    assert printed[5] == "[ 100s] distilling mlp-small (T=2): epoch 50/100, elapsed 1:40, ETA 1:40"
    assert printed[-1] == "[ 200s] distilling mlp-small (T=2): done, epoch 100/100 in 3:20"
    assert len(printed) == 11  # start, 10% .. 90%, done: long lines are not one per epoch


def test_periodic_lines_at_most_one_per_interval():
    progress, clock, out = line_progress(interval=10)
    with progress:
        task = progress.add_task("soft targets", total=None)
        for _ in range(35):
            clock.now += 1
            progress.advance(task)
    assert lines(out) == ["[   0s] soft targets: started", "[  10s] soft targets: 10, elapsed 0:10",
                          "[  20s] soft targets: 20, elapsed 0:20", "[  30s] soft targets: 30, elapsed 0:30"]


def test_a_resumed_task_counts_its_rate_from_where_it_started():
    progress, clock, out = line_progress()
    with progress:
        task = progress.add_task("distilling", total=100, completed=40, unit="epoch")
        clock.now += 10
        progress.update(task, completed=50)
    assert lines(out) == ["[   0s] distilling: started at epoch 40/100",
                          "[  10s] distilling: epoch 50/100, elapsed 0:10, ETA 0:50"]


def test_done_already_status_changes_and_one_step_tasks():
    progress, clock, out = line_progress()
    with progress:
        progress.add_task("distilling", total=100, completed=100, unit="epoch")
        with one_step(progress, "exporting to onnx"):
            clock.now += 3
            progress.note("estimate: distilling mlp-small ~1s (3 epochs x 300 samples)")
        task = progress.add_task("export", total=1)
        progress.update(task, description="converting")
        progress.update(task, description="converting")  # unchanged: no line
    assert lines(out) == ["[   0s] distilling: already done (epoch 100/100)",
                          "[   0s] exporting to onnx: started",
                          "[   3s] estimate: distilling mlp-small ~1s (3 epochs x 300 samples)",
                          "[   3s] exporting to onnx: done in 0:03",
                          "[   3s] export: started",
                          "[   3s] converting: elapsed 0:00"]


def test_an_interruption_says_where_each_open_task_stopped():
    progress, clock, out = line_progress()
    with pytest.raises(KeyboardInterrupt):
        with progress:
            task = progress.add_task("distilling", total=100, unit="epoch")
            clock.now += 3
            progress.update(task, completed=3)
            raise KeyboardInterrupt
    assert lines(out)[-1] == "[   3s] distilling: stopped at epoch 3/100 after 0:03 (KeyboardInterrupt)"


def test_clock_text():
    assert [clock_text(s) for s in (0, 12, 388, 3723)] == ["0:00", "0:12", "6:28", "1:02:03"]


def test_the_interval_comes_from_the_environment_and_a_bad_one_is_one_error():
    assert interval_from_env({}) == 15.0
    assert interval_from_env({"COMPRESS_PROGRESS_INTERVAL": "2.5"}) == 2.5
    for bad in ("abc", "0", "-1", "nan"):
        with pytest.raises(InputError, match="COMPRESS_PROGRESS_INTERVAL.*expected a number of seconds > 0"):
            interval_from_env({"COMPRESS_PROGRESS_INTERVAL": bad})


def test_make_progress_picks_bars_lines_or_nothing(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, width=80)
    monkeypatch.setenv("COMPRESS_PROGRESS_INTERVAL", "7")
    lines_kind = make_progress(console, quiet=False, interactive=False)
    assert isinstance(lines_kind, LineProgress) and lines_kind.interval == 7
    assert isinstance(make_progress(console, quiet=False, interactive=True), BarProgress)
    with make_progress(console, quiet=True, interactive=False) as quiet:
        task = quiet.add_task("distilling", total=3)
        quiet.update(task, completed=3)
        quiet.note("estimate: nothing to see")
    assert out.getvalue() == ""


def _invoke(args, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compress.cli import app

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # what the CLI would set: restored after the test
    return CliRunner().invoke(app, ["distill-and-export", *SMALL_RUN, "--out", str(tmp_path / "dist"), *args])


def test_a_run_outside_a_terminal_prints_progress_lines_on_stderr_and_pure_json_on_stdout(tmp_path, monkeypatch):
    result = _invoke(["--name", "lines", "--json"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # no progress line leaked into stdout
    assert report["run"]["epochs"] == 3
    err = result.stderr
    assert re.search(r"^\[ *\d+s\] teacher members: started", err, re.M), err
    started = re.search(r"^\[ *\d+s\] training teacher mlp-1200: started$", err, re.M)
    # 300 digits hold out no validation split (under 1,000 rows a class): no "(validation x%)" in the line
    first_epoch = re.search(r"^\[ *\d+s\] training teacher mlp-1200(?: \(validation [\d.]+%\))?: done, epoch 1/1", err, re.M)
    assert started and first_epoch and started.start() < first_epoch.start(), err  # the bar opens as training starts
    assert re.search(r"^\[ *\d+s\] estimate: distilling mlp-small ~\d+\w* \(3 epochs x 300 samples\)$", err, re.M), err
    assert re.search(r"^\[ *\d+s\] distilling mlp-small \(T=2\): started \(3 epochs\)$", err, re.M), err
    assert re.search(r"^\[ *\d+s\] distilling mlp-small \(T=2\): epoch 1/3, elapsed \d+:\d\d, ETA \d+:\d\d$", err,
                     re.M), err
    assert re.search(r"^\[ *\d+s\] distilling mlp-small \(T=2\): done, epoch 3/3 in \d+:\d\d$", err, re.M), err
    assert re.search(r"^\[ *\d+s\] validating and timing: done", err, re.M), err
    stages = {row["stage"]: row for row in report["run"]["stages"]}  # each stage's time beside its estimate
    assert list(stages)[:5] == ["start-up", "setup", "data", "teachers", "soft targets"]
    assert {"distillation", "export and validation"} <= set(stages)
    assert all(row["seconds"] >= 0 for row in stages.values())
    assert stages["distillation"]["estimate_s"] > 0 and stages["teachers"]["estimate_s"] > 0
    assert stages["data"]["estimate_s"] is None  # only what the run estimated has an estimate
    assert sum(row["seconds"] for row in stages.values()) <= report["run"]["wall_time_s"] + 1


def test_fit_reports_progress_from_its_first_step_and_inside_every_epoch():
    """A 60k-sample epoch takes a minute on a 2-core CPU: the bar must open when training starts and move
    inside each epoch, not first show up after epoch 1."""
    from compress.distill.train import PROGRESS_CALLS_PER_EPOCH, fit

    x = np.random.default_rng(0).normal(size=(640, 4)).astype(np.float32)
    y = torch.as_tensor((x[:, 0] > 0).astype(np.int64))
    seen, epochs_ended = [], []
    fit(torch.nn.Linear(4, 2), x, lambda logits, idx: torch.nn.functional.cross_entropy(logits, y[idx]),
        epochs=2, batch_size=8, on_progress=seen.append, on_epoch=lambda e, loss: epochs_ended.append((e, len(seen))))
    assert seen[0] == 0.0  # before the first step
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert all(0 < v % 1 < 1 for v in seen[1:])  # inside an epoch; its end is on_epoch's
    per_epoch = [sum(1 for v in seen[1:] if int(v) == e) for e in range(2)]
    assert per_epoch == [PROGRESS_CALLS_PER_EPOCH - 1] * 2  # 80 steps: every 4th, not the last
    assert epochs_ended == [(0, 1 + per_epoch[0]), (1, 1 + sum(per_epoch))]


def test_quiet_prints_no_progress(tmp_path, monkeypatch):
    result = _invoke(["--name", "quiet", "--quiet"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert not re.search(r"^\[ *\d+s\]", result.stderr, re.M), result.stderr


def test_the_stage_clock_adds_up_repeated_stages_and_keeps_the_latest_estimate():
    from compress.stages.clock import StageClock

    fake = FakeClock()
    clock = StageClock(clock=fake)
    clock.expect("distillation", 40.0)
    with clock.time("setup"):
        fake.now += 2
    with clock.time("distillation"):
        clock.expect("distillation", 50.0)  # the stage's own estimate, made closer to the work, replaces it
        fake.now += 60
    with pytest.raises(KeyboardInterrupt), clock.time("setup"):  # an interrupted stage still took its time
        fake.now += 1
        raise KeyboardInterrupt
    clock.record("start-up", 3.5)
    assert clock.rows() == [
        {"stage": "setup", "seconds": 3.0, "estimate_s": None, "measured_over_estimate": None},
        {"stage": "distillation", "seconds": 60.0, "estimate_s": 50.0, "measured_over_estimate": 1.2},
        {"stage": "start-up", "seconds": 3.5, "estimate_s": None, "measured_over_estimate": None}]


# --- the estimate before training -----------------------------------------------------------------------------

def _rng_states() -> tuple:
    return torch.get_rng_state().clone(), np.random.get_state(), random.getstate()


def test_the_estimate_changes_neither_the_model_nor_any_generator(tmp_path):
    from compress import models
    from compress.estimate import estimate_fit_seconds

    torch.manual_seed(0)
    model = models.build("cnn", (1, 8, 8), 10).eval()  # BatchNorm buffers and eval mode must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    np.random.seed(1)
    random.seed(2)
    torch_rng, np_rng, py_rng = _rng_states()
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)

    def noisy_loss(logits, idx):  # a loss that draws from every global generator
        np.random.rand(), random.random()
        return (logits + torch.rand_like(logits)).logsumexp(-1).mean()

    seconds = estimate_fit_seconds(model, x, n_samples=1437, epochs=100, batch_size=64, loss=noisy_loss,
                                   checkpoint_dir=tmp_path)
    assert math.isfinite(seconds) and seconds > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert all(p.grad is None for p in model.parameters())
    torch_after, np_after, py_after = _rng_states()
    assert torch.equal(torch_rng, torch_after)
    assert np_rng[0] == np_after[0] and np.array_equal(np_rng[1], np_after[1]) and np_rng[2:] == np_after[2:]
    assert py_rng == py_after
    assert list(tmp_path.iterdir()) == []  # the timed checkpoint write left nothing behind


def test_format_duration():
    from compress.estimate import format_duration

    assert [format_duration(s) for s in (0.4, 45, 100, 7380)] == ["0s", "45s", "1m40s", "2h03m"]
