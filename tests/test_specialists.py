"""Specialists (Hinton et al. 2015 §5): the mechanics against hand-computed values and a brute-force optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compress import models
from compress.core.cache import cache_dir
from compress.core.errors import InputError
from compress.data import load_data
from compress.specialists import (Fold, check_given, cluster_classes, combine, confusion_share, coverage_view,
                                  dustbin_correction, objective, replace_head, train_specialist, training_rows)
from compress.teachers.training import TeacherRecipe


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def planted(groups: list[list[int]], classes: int, rows: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predicted distributions where each class is confused only with the classes of its group."""
    rng = np.random.default_rng(seed)
    group_of = {c: g for g in groups for c in g}
    y = rng.integers(0, classes, rows)
    probs = np.full((rows, classes), 0.002)
    for i, c in enumerate(y):
        probs[i, c] += 0.7
        probs[i, rng.choice(group_of.get(c, [c]))] += 0.25
    return probs / probs.sum(1, keepdims=True), y


def test_covariance_clustering_finds_the_planted_confusable_groups():
    groups = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    probs, _ = planted(groups, 12)
    assert cluster_classes(probs, 4, seed=0) == [tuple(g) for g in groups]
    assert cluster_classes(probs, 4, seed=3) == [tuple(g) for g in groups]  # not an accident of one seed


def test_clusters_over_the_maximum_are_split_and_those_under_the_minimum_dropped():
    probs, _ = planted([[0, 1, 2, 3, 4, 5], [6, 7], [8, 9]], 10)
    assert cluster_classes(probs, 3, seed=0) == [(0, 1, 2, 3, 4, 5), (6, 7), (8, 9)]
    subsets = cluster_classes(probs, 3, max_classes=3, seed=0)
    assert all(2 <= len(s) <= 3 for s in subsets) and sorted(c for s in subsets for c in s) == list(range(10))
    assert cluster_classes(probs, 3, min_classes=3, seed=0) == [(0, 1, 2, 3, 4, 5)]
    with pytest.raises(InputError, match="max_classes 2"):
        cluster_classes(probs, 3, min_classes=3, max_classes=2)


def test_confusion_share_is_the_wrong_mass_inside_the_subset():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.8, 0.0], [0.5, 0.0, 0.5]])
    y = np.array([0, 1, 2])
    # wrong mass: row 0: 0.3 + 0.1, row 1: 0.2, row 2: 0.5 -> 1.1; inside {0, 1}: 0.3 (row 0) + 0.2 (row 1)
    assert confusion_share(probs, y, (0, 1)) == pytest.approx(0.5 / 1.1)


def test_hand_given_subsets_by_name_or_index_and_their_errors():
    labels = ["cat", "dog", "fox", "owl"]
    assert check_given([["dog", "cat"], [3, 2]], labels) == [(0, 1), (2, 3)]
    with pytest.raises(InputError, match="'eel' unknown"):
        check_given([["cat", "eel"]], labels)
    with pytest.raises(InputError, match="expected 2 to 3"):
        check_given([["cat"]], labels)


def test_the_fold_puts_every_other_class_in_the_dustbin():
    fold = Fold((1, 3), 5)
    q = np.array([[0.1, 0.2, 0.3, 0.15, 0.25]])
    np.testing.assert_allclose(fold.fold(q), [[0.2, 0.15, 0.1 + 0.3 + 0.25]])
    assert fold.outcome.tolist() == [2, 0, 2, 1, 2]


def test_the_dustbin_correction_is_the_log_of_the_oversampling():
    # a subset holding 10% of the rows, trained half and half: its odds were raised 9-fold
    assert dustbin_correction(0.1, 0.5) == pytest.approx(math.log(9))
    assert dustbin_correction(0.25, 0.25) == pytest.approx(0.0)  # not over-sampled: nothing to correct
    y = np.array([0] * 10 + [1] * 10 + [2] * 80)
    rows, labels = training_rows(y, (0, 1), seed=0)
    assert (labels < 2).sum() == 20 and (labels == 2).sum() == 20  # half from the subset, half from the rest
    assert set(y[rows[labels == 2]]) == {2} and labels[y[rows] == 1].tolist() == [1] * 10
    assert dustbin_correction(0.2, 0.5) == pytest.approx(math.log(4))


def test_the_combination_matches_a_brute_force_optimizer():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    classes, rows = 7, 6
    generalist = _softmax(rng.normal(size=(rows, classes)) * 2)
    folds = [Fold((0, 1, 2), classes), Fold((2, 3), classes), Fold((4, 5, 6), classes)]
    specialists = [_softmax(rng.normal(size=(rows, len(f.classes) + 1)) * 2) for f in folds]
    q, on = combine(generalist, specialists, folds, top_n=3, tolerance=1e-10, max_steps=20000)
    assert on.any(1).all()
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-9)
    for r in range(rows):
        def loss(z):
            return objective(_softmax(z[None]), generalist[r:r + 1], [p[r:r + 1] for p in specialists], folds, on[r:r + 1])[0]

        best = minimize(loss, np.log(generalist[r]), method="BFGS", options={"gtol": 1e-10})
        np.testing.assert_allclose(q[r], _softmax(best.x[None])[0], atol=1e-5)
        assert loss(np.log(q[r])) <= best.fun + 1e-9


def test_only_specialists_meeting_the_generalists_top_classes_take_part():
    classes = 6
    generalist = np.array([[0.7, 0.2, 0.04, 0.03, 0.02, 0.01], [0.01, 0.02, 0.03, 0.04, 0.2, 0.7]])
    folds = [Fold((0, 1), classes), Fold((4, 5), classes)]
    specialists = [np.array([[0.1, 0.8, 0.1]] * 2), np.array([[0.3, 0.6, 0.1]] * 2)]
    q, on = combine(generalist, specialists, folds, top_n=1)
    assert on.tolist() == [[True, False], [False, True]]
    assert q[0].argmax() == 1  # the specialist overrules the generalist between its two classes
    assert q[1].argmax() == 5
    none_on = np.array([[0.02, 0.03, 0.9, 0.03, 0.01, 0.01]])
    q, on = combine(none_on, [s[:1] for s in specialists], folds, top_n=1)
    assert not on.any() and np.array_equal(q, none_on)  # no specialist covers class 2: the generalist's own


def test_each_specialist_runs_only_on_the_rows_where_it_is_active():
    from compress.specialists import Specialist, combined

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    generalist = _softmax(rng.normal(size=(40, 6)) * 3)
    asked = []

    def answer(rows: np.ndarray) -> np.ndarray:  # a specialist's logits: a fixed function of the row
        asked.append(len(rows))
        return np.stack([rows[:, 0], rows[:, 1], rows[:, 2]], axis=1).astype(np.float64)

    specialists = [Specialist((0, 1), None, 0.0, "test", {}, True, "a", stored=answer),
                   Specialist((4, 5), None, 0.0, "test", {}, True, "b", stored=answer)]
    q, on = combined(generalist, specialists, x, 1.0, top_n=1)
    assert asked == [int(on[:, 0].sum()), int(on[:, 1].sum())] and sum(asked) < 40
    every_row = [_softmax(answer(x)) for _ in specialists]  # what running every specialist on every row gives
    expected, _ = combine(generalist, every_row, [Fold(sp.classes, 6) for sp in specialists], top_n=1)
    np.testing.assert_allclose(q, expected, atol=1e-12)


def test_the_table_4_view_groups_rows_by_how_many_specialists_cover_the_true_class():
    y = np.array([0, 1, 2, 3, 4])
    before = np.array([0, 2, 2, 0, 4])
    after = np.array([0, 1, 2, 3, 3])
    view = coverage_view(y, [(0, 1), (1, 3)], before, after)
    assert [(g["covering"], g["test_rows"]) for g in view] == [(0, 2), (1, 2), (2, 1)]
    assert view[0]["errors_made"] == 1 and view[1]["errors_fixed"] == 1 and view[2]["errors_fixed"] == 1
    assert view[2]["change_points"] == 100.0


def test_a_new_head_keeps_every_other_weight():
    module = models.build("cnn", (1, 8, 8), 10)
    swapped = replace_head(module, 4)
    assert swapped[-1].out_features == 4 and module[-1].out_features == 10
    kept = {k: v for k, v in module.state_dict().items() if not k.startswith(f"{len(module) - 1}.")}
    assert all(torch.equal(v, swapped.state_dict()[k]) for k, v in kept.items())
    with pytest.raises(InputError, match="no final nn.Linear"):
        replace_head(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), 3)


def test_a_specialist_is_trained_once_then_read_from_the_cache_and_a_damaged_entry_trained_again(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path))
    data = load_data(None, limit_train=600, limit_test=200, seed=0)  # the digits
    generalist = models.build("mlp-small", data.input_shape, data.num_classes)
    recipe = TeacherRecipe(epochs=2)
    kwargs = dict(arch="mlp-small", generalist=generalist, generalist_key="g1", recipe=recipe, seed=0)
    first = train_specialist((3, 8), data, **kwargs)
    assert not first.cached and first.module[-1].out_features == 3
    share = float(np.isin(data.y_train, (3, 8)).mean())
    assert first.correction == pytest.approx(math.log((1 - share) / share))
    again = train_specialist((8, 3), data, **kwargs)
    assert again.cached and np.array_equal(again.logits(data.x_test), first.logits(data.x_test))
    np.testing.assert_allclose(again.probs(data.x_test).sum(1), 1.0)
    (entry,) = cache_dir("specialists").glob("mlp-small-*.pt")
    entry.write_bytes(entry.read_bytes()[:-10])
    retrained = train_specialist((3, 8), data, **kwargs)
    assert not retrained.cached
    other = train_specialist((3, 8), data, **dict(kwargs, generalist_key="g2"))  # another generalist: not reused
    assert not other.cached


# ---- the run: --specialists in distill-and-export ----------------------------------------------------------

RUN = dict(teachers=["mlp-small", "mlp-small"], student="mlp-small", teacher_epochs=2, epochs=2, latency_runs=3,
           seed=0, limit_train=500, limit_test=200)


def test_a_run_with_specialists_distills_from_the_combination_and_reports_it(tmp_path, monkeypatch):
    from compress.devices import html_report
    from compress.pipeline import RunConfig, run

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = RunConfig.from_settings(**RUN, specialists=3, specialist_top_n=2, out=str(tmp_path / "out"), name="s")
    report = run(cfg, quiet=True)
    section = report["specialists"]
    assert section["generalist"] == "ensemble" and section["arch"] == "mlp-small" and section["started_from_generalist"]
    assert section["subsets"] and all(2 <= len(s["classes"]) <= 9 for s in section["subsets"])
    assert sum(g["test_rows"] for g in section["table4"]) == section["test_rows"] == 200
    assert 0 <= section["combined_accuracy"] <= 1 and section["cost"]["student_macs"] > 0
    assert "Specialists" in html_report.render(report)
    assert any(st["stage"] == "specialists" for st in report["run"]["stages"])
    plain = run(RunConfig.from_settings(**RUN, out=str(tmp_path / "out"), name="p"), quiet=True)
    assert "specialists" not in plain
    again = run(cfg.with_settings(name="s2"), quiet=True)  # everything from the cache, the same student
    assert again["specialists"]["targets_cached"]
    assert all(s["specialist_training"]["cached"] for s in again["specialists"]["subsets"])
    assert again["rows"][-1]["accuracy"] == report["rows"][-1]["accuracy"]
    assert [r["accuracy"] for r in plain["rows"][:3]] == [r["accuracy"] for r in report["rows"][:3]]  # same members


def test_subsets_by_hand_and_the_generalists_name_are_checked(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.pipeline import RunConfig, run

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    report = run(RunConfig.from_settings(**RUN, specialist_subsets=["1+7", "3+8+9"], generalist="mlp-small#1",
                                         out=str(tmp_path / "out"), name="h"), quiet=True)
    section = report["specialists"]
    assert section["given_by_hand"] and [s["classes"] for s in section["subsets"]] == [["1", "7"], ["3", "8", "9"]]
    assert section["generalist"] == "mlp-small#1"
    flags = ["--teacher", "mlp-small", "--student", "mlp-small", "--teacher-epochs", "1", "--epochs", "1",
             "--limit-train", "300", "--limit-test", "100", "--out", str(tmp_path / "bad")]
    result = CliRunner().invoke(app, ["distill-and-export", *flags, "--specialists", "2", "--generalist", "nobody"])
    assert result.exit_code == 2 and "--generalist 'nobody': not a member" in result.output
    result = CliRunner().invoke(app, ["distill-and-export", *flags, "--specialist-subsets", "1+eel"])
    assert result.exit_code == 2 and "class 'eel' unknown" in result.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())  # nothing half-written


# ---- specialists computed elsewhere: compress soft-targets --specialist, --specialist-outputs ----------------

def test_a_specialist_computed_elsewhere_is_the_one_the_run_would_train(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.pipeline import RunConfig, run

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    member = ["--teacher", "mlp-small", "--teacher-epochs", "2", "--limit-train", "500", "--limit-test", "200",
              "--seed", "0", "--quiet"]
    for subset, name in (("3+8", "a.npz"), ("1+7+9", "b.npz")):
        result = CliRunner().invoke(app, ["soft-targets", *member, "--specialist", subset, "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert f"logits of the specialist for '{subset}'" in result.output
    settings = dict(RUN, teachers=["mlp-small"], generalist="mlp-small", out=str(tmp_path / "out"))
    files = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    elsewhere = run(RunConfig.from_settings(**settings, specialist_outputs=files, name="e"), quiet=True)["specialists"]
    here = run(RunConfig.from_settings(**settings, specialist_subsets=["3+8", "1+7+9"], name="h"), quiet=True)["specialists"]
    assert all(s["specialist_training"]["cached"] for s in here["subsets"])  # trained once, by soft-targets
    assert [s["classes"] for s in elsewhere["subsets"]] == [["3", "8"], ["1", "7", "9"]]
    assert elsewhere["combined_accuracy"] == here["combined_accuracy"]
    assert [s["dustbin_correction"] for s in elsewhere["subsets"]] == [s["dustbin_correction"] for s in here["subsets"]]
    assert elsewhere["computed_elsewhere"] == ["a.npz", "b.npz"] and not here["computed_elsewhere"]
    assert elsewhere["cost"]["combination_macs_per_row"] is None and "not measured" in elsewhere["cost"]["note"]
    assert here["cost"]["combination_macs_per_row"] > 0


def test_a_specialist_file_is_checked_against_the_data(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from compress.cli import app
    from compress.specialists.outputs import load_specialist

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    data_flags = ["--limit-train", "300", "--limit-test", "100", "--seed", "0"]
    member = ["--teacher", "mlp-small", "--teacher-epochs", "1", *data_flags, "--quiet"]
    assert CliRunner().invoke(app, ["soft-targets", *member, "--specialist", "3+8", "-o", str(tmp_path / "s.npz")]).exit_code == 0
    assert CliRunner().invoke(app, ["soft-targets", *member, "-o", str(tmp_path / "member.npz")]).exit_code == 0
    data = load_data(None, limit_train=300, limit_test=100, seed=0)
    good = dict(np.load(tmp_path / "s.npz"))
    loaded = load_specialist(str(tmp_path / "s.npz"), data)
    assert loaded.classes == (3, 8) and np.allclose(loaded.logits(data.x_test[::-1]), good["test"][::-1])

    def edited(name: str, **changes) -> str:
        np.savez(tmp_path / name, **{**good, **changes})
        return str(tmp_path / name)

    as_probs = edited("p.npz", output=np.array("probs"), train=_softmax(good["train"]), test=_softmax(good["test"]))
    assert np.allclose(_softmax(load_specialist(as_probs, data).logits(data.x_test)), _softmax(good["test"]), atol=1e-5)
    bad = {"no classes": (str(tmp_path / "member.npz"), "no 1-d string array 'specialist_classes'"),
           "unknown class": (edited("u.npz", specialist_classes=np.array(["3", "eel"])), "class 'eel' is not a label"),
           "columns": (edited("c.npz", train=good["train"][:, :2]), "'train' has 2 outputs per row; expected 3"),
           "no test": (edited("t.npz", test=np.zeros((0, 3), np.float32)), "'test' has 0 rows"),
           "labels only": (edited("l.npz", output=np.array("label")), "holds class indices only")}
    for why, (path, message) in bad.items():
        with pytest.raises(InputError, match=message.replace("(", r"\(")) as caught:
            load_specialist(path, data)
        assert "\n" not in str(caught.value), why
    flags = ["--teacher", "mlp-small", "--student", "mlp-small", "--teacher-epochs", "1", "--epochs", "1", *data_flags,
             "--out", str(tmp_path / "bad")]
    result = CliRunner().invoke(app, ["distill-and-export", *flags, "--specialist-outputs", str(tmp_path / "member.npz")])
    assert result.exit_code == 2 and "'specialist_classes'" in result.output
    result = CliRunner().invoke(app, ["distill-and-export", *flags, "--specialists", "2", "--specialist-outputs",
                                      str(tmp_path / "s.npz")])
    assert result.exit_code == 2 and "expected no --specialists" in result.output
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


TORCHRUN_RECIPE = """
name = "spec"
[data]
limit_train = 600
limit_test = 200
[teachers]
members = ["mlp-small"]
epochs = 2
[student]
arch = "mlp-small"
[distill]
epochs = 2
[device]
latency_runs = 3
[specialists]
subsets = ["3+8", "1+7", "4+9", "2+5+6"]
"""


def _torchrun(work, cache, processes: int):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "COMPRESS_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
              if processes > 1 else [sys.executable])
    cmd = [*launch, "-m", "compress.cli", "distill-and-export", "--quiet", "--json", "--name", f"w{processes}"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)


def test_under_torchrun_each_process_trains_its_share_of_the_specialists(tmp_path):
    """Two processes train specialists 0, 2 and 1, 3; both read all four after a barrier; the combination and
    the student are the bits one process gets."""
    import json

    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    (tmp_path / "compress.toml").write_text(TORCHRUN_RECIPE)
    two = _torchrun(tmp_path, tmp_path / "cache2", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _torchrun(tmp_path, tmp_path / "cache1", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two_report, one_report = json.loads(two.stdout), json.loads(one.stdout)
    assert two_report["run"]["world_size"] == 2
    ranks = [s["specialist_training"]["trained_by_rank"] for s in two_report["specialists"]["subsets"]]
    assert ranks == [0, 1, 0, 1]
    assert [s["specialist_training"]["trained_by_rank"] for s in one_report["specialists"]["subsets"]] == [0, 0, 0, 0]
    assert len(list((tmp_path / "cache2" / "specialists").glob("*.pt"))) == 4
    for name in ("generalist_accuracy", "combined_accuracy", "targets_key"):
        assert two_report["specialists"][name] == one_report["specialists"][name]
    (two_targets,) = (tmp_path / "cache2" / "soft-targets").glob("specialists-*.npy")
    (one_targets,) = (tmp_path / "cache1" / "soft-targets").glob("specialists-*.npy")
    assert two_targets.read_bytes() == one_targets.read_bytes()
    assert two_report["rows"][-1]["accuracy"] == one_report["rows"][-1]["accuracy"]
