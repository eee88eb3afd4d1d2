"""Training threads (issue 15): the CPUs this process may use (affinity, cgroup quota), one thread for
models too small to gain from more, ``--train-threads`` over the rule, recorded in report.json, and OpenMP
waits that do not spin set by the CLI (never on import). Nothing here times anything."""

from __future__ import annotations

import json
import os

import pytest

from compress.core import threads
from compress.core.threads import Cpus, allowed_cpus, cgroup_cpu_quota, choose_threads

TINY_RUN = ["--epochs", "2", "--teacher-epochs", "1", "--teacher", "mlp-1200", "--latency-runs", "5",
            "--limit-train", "300", "--quiet"]


def test_the_rule_picks_one_thread_for_a_tiny_model_and_every_allowed_cpu_for_a_big_one():
    four = Cpus(4, "4 CPU(s) in the affinity mask")
    assert choose_threads(300_000, cpus=four)[0] == 1  # mlp-small x batch 64
    assert choose_threads(threads.SMALL_STEP_MACS - 1, cpus=four)[0] == 1
    count, why = choose_threads(341_000_000, cpus=four)  # resnet x batch 64
    assert count == 4 and "4 CPU(s)" in why
    assert choose_threads(10**12, cpus=Cpus(1, "1 CPU(s) in the affinity mask"))[0] == 1
    assert choose_threads(300_000, requested=3, cpus=four) == (3, "--train-threads 3")


def test_the_plan_gives_the_student_and_the_largest_teacher_their_own_choice(monkeypatch):
    from compress.estimate import plan_threads

    plan = plan_threads(None, ["mlp-1200", "resnet?scale=1/16", "teacher.onnx"], "mlp-small", (1, 8, 8), 10,
                        student_batch=64, cpus=Cpus(4, "4 CPU(s) in the affinity mask"))
    assert (plan.student, plan.teachers) == (1, 4)
    assert "student mlp-small: 1" in plan.reason and "largest resnet" in plan.reason
    assert plan_threads(None, ["teacher.onnx"], "mlp-small", (1, 8, 8), 10, student_batch=64,
                        cpus=Cpus(4, "x")).teachers is None  # a file member is not trained here
    forced = plan_threads(2, ["mlp-1200"], "mlp-small", (1, 8, 8), 10, student_batch=64)
    assert (forced.student, forced.teachers) == (2, 2) and "--train-threads 2" in forced.reason


@pytest.mark.parametrize("text, expected", [("max 100000", None), ("150000 100000", 1.5), ("400000 100000", 4.0),
                                            ("garbage", None), ("", None)])
def test_cgroup_v2_quota(tmp_path, text, expected):
    (tmp_path / "cpu.max").write_text(text + "\n")
    assert cgroup_cpu_quota(tmp_path) == expected


def test_cgroup_v1_quota_and_none_at_all(tmp_path):
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5


def test_the_allowed_cpus_are_the_affinity_mask_capped_by_the_quota(tmp_path):
    assert allowed_cpus(affinity=lambda: 8, cgroup_root=tmp_path).count == 8
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    cpus = allowed_cpus(affinity=lambda: 8, cgroup_root=tmp_path)
    assert cpus.count == 1 and "cgroup quota 1.5" in cpus.reason  # rounded down: never more than the quota
    (tmp_path / "cpu.max").write_text("1000000 100000\n")
    assert allowed_cpus(affinity=lambda: 2, cgroup_root=tmp_path).count == 2


def test_torch_threads_restores_the_previous_number():
    import torch

    before = torch.get_num_threads()
    with threads.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before


def test_the_cli_sets_passive_waits_only_when_unset(monkeypatch):
    from compress.cli import quiet_libraries

    for key in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel", "TQDM_DISABLE", "TORCH_LOGS", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(key, raising=False)  # restored after the test, whatever quiet_libraries sets
    quiet_libraries()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    quiet_libraries()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # a user's own choice wins


def _invoke(args, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compress.cli import app

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    return CliRunner().invoke(app, ["distill-and-export", *TINY_RUN, "--out", str(tmp_path / "dist"), *args])


def test_train_threads_overrides_the_rule_and_is_recorded(tmp_path, monkeypatch):
    result = _invoke(["--name", "forced", "--train-threads", "2"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "dist" / "forced" / "report.json").read_text())["run"]
    assert run["train_threads"] == 2 and run["train_threads_teachers"] == 2
    assert "--train-threads 2" in run["train_threads_reason"]


def test_without_the_flag_the_rule_is_recorded_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: 4)
    monkeypatch.setattr(threads, "CGROUP_ROOT", tmp_path / "no-cgroup")
    result = _invoke(["--name", "rule"], tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "dist" / "rule" / "report.json").read_text())["run"]
    assert run["train_threads"] == 1 and "1 thread is fastest" in run["train_threads_reason"]
    assert "4 CPU(s) in the affinity mask" in run["train_threads_reason"]


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_bad_train_threads_is_exit_2_with_one_line(tmp_path, monkeypatch, value):
    result = _invoke(["--name", "bad", "--train-threads", value], tmp_path, monkeypatch)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --train-threads {value}: expected an integer >= 1"), result.stderr
    assert not (tmp_path / "dist" / "bad").exists()


def test_train_threads_is_a_recipe_key(tmp_path):
    from compress import recipe

    assert recipe.parse("[distill]\ntrain_threads = 2\n") == {"train_threads": 2}
    with pytest.raises(Exception, match=r"\[distill\] train_threads: expected an integer"):
        recipe.parse('[distill]\ntrain_threads = "two"\n')
