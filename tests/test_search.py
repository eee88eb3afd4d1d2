"""``compress search``: a tiny real search (two families, two widths, a 1-minute budget) on the digits.

What is checked: the chosen folder meets the budgets and lies on the Pareto front of its ``search.json``
(recomputed here by brute force); the folder holds the chosen student (its own ONNX file, run here, gives
the report's test accuracy) and was distilled on the whole training split; a rerun re-trains nothing already measured; Ctrl-C in the middle of a
student and a rerun continue from its checkpoint; a spent time budget stops starting students (a fake
clock, no waiting); an impossible budget exits 1 naming the closest candidate and the budget it breaks,
and leaves an earlier good folder alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.core.errors import InputError

TINY = ["search", "--family", "mlp", "--family", "cnn-small", "--widths", "0.5,1", "--depths", "0.5",
        "--schemes", "none,int8", "--epochs", "3", "--teacher", "mlp-1200", "--teacher", "cnn",
        "--teacher-epochs", "4", "--time-budget", "1", "--max-accuracy-drop", "8", "--max-latency-ms", "50",
        "--latency-runs", "20"]


class EpochCounter:
    """Counts the student epochs actually trained, by wrapping the training loop the pipeline calls."""

    def __init__(self, monkeypatch):
        import compress.pipeline as pipeline

        self.epochs: dict[str, int] = {}
        real_fit = pipeline.fit

        def counting_fit(model, x, *args, on_epoch=None, **kwargs):
            name = f"{type(model).__name__} {sum(p.numel() for p in model.parameters())} params, {len(x)} samples"

            def count(epoch, loss):
                self.epochs[name] = self.epochs.get(name, 0) + 1
                if on_epoch:
                    on_epoch(epoch, loss)

            return real_fit(model, x, *args, on_epoch=count, **kwargs)

        monkeypatch.setattr(pipeline, "fit", counting_fit)

    @property
    def total(self) -> int:
        return sum(self.epochs.values())


def no_timing_skips(monkeypatch) -> None:
    """Untrained exports are skipped only for a broken budget, never for timing slower than the best so far
    (which depends on the machine's load), and the 1-minute budget is not spent by a slow, busy machine (a
    stopped clock; the budget itself is tested with a fake clock): the tests' counts stay exact."""
    import compress.search
    import compress.search.measure

    monkeypatch.setattr(compress.search.measure, "PROBE_SLACK", 1e9)
    monkeypatch.setattr(compress.search, "clock", lambda: 0.0)
    # the stored latencies stand: the finalists' re-timing (tested with a fake timer in test_first_hour) would
    # make a rerun's choice among near-equal candidates depend on the machine's load
    monkeypatch.setattr(compress.search, "_retime_finalists", lambda *args, **kwargs: None)


def invoke(args: list[str], tmp: Path):
    return CliRunner().invoke(app, [*args, "--out", str(tmp / "dist"), "--quiet", "--json"], catch_exceptions=False)


def brute_front(rows: list[dict], keys) -> set[str]:
    """Ids no other row beats on every key (at least as good everywhere, better somewhere)."""
    def better_or_equal(a, b):
        return all((a[k] >= b[k]) if sense == "max" else (a[k] <= b[k]) for k, sense in keys)

    def strictly(a, b):
        return any((a[k] > b[k]) if sense == "max" else (a[k] < b[k]) for k, sense in keys)

    return {r["id"] for r in rows if not any(better_or_equal(o, r) and strictly(o, r) for o in rows if o is not r)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny search in its own cache; the module's tests read it (and rerun it)."""
    import os

    tmp = tmp_path_factory.mktemp("search")
    old = os.environ.get("COMPRESS_CACHE_DIR")
    os.environ["COMPRESS_CACHE_DIR"] = str(tmp / "cache")
    mp = pytest.MonkeyPatch()
    no_timing_skips(mp)
    counter = EpochCounter(mp)
    try:
        result = invoke([*TINY, "--name", "tiny"], tmp)
        yield tmp, result, counter
    finally:
        mp.undo()
        os.environ["COMPRESS_CACHE_DIR"] = old


def test_tiny_search_writes_a_chosen_folder_that_meets_the_budgets_on_the_pareto_front(tiny):
    tmp, result, counter = tiny
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    folder = tmp / "dist" / "tiny"
    saved = json.loads((folder / "search.json").read_text())
    assert saved["chosen"] == out["chosen"] and out["chosen"] is not None
    measured = [r for r in saved["candidates"] if r["status"] == "measured"]
    chosen = next(r for r in measured if r["id"] == saved["chosen"])
    # the budgets, on the validation split the search measured
    assert chosen["accuracy_drop"] <= 8 and chosen["latency_ms"] <= 50 and chosen["meets_budgets"]
    # on the front over accuracy, latency and size, recomputed here; the file's flags agree
    keys = [("val_accuracy", "max"), ("latency_ms", "min"), ("size_kb", "min")]
    front = brute_front(measured, keys)
    assert chosen["id"] in front
    assert {r["id"] for r in measured if r["pareto"]} == front
    # fastest among those meeting every budget, or tied with the fastest (timing noise) and more accurate
    from compress.search.choice import latency_ties

    fastest = min((r for r in measured if r["meets_budgets"]), key=lambda r: r["latency_ms"])
    assert chosen is fastest or (latency_ties(chosen, fastest) and chosen["val_accuracy"] >= fastest["val_accuracy"])
    # two families, two widths: every student appears, cheapest first
    students = list(dict.fromkeys(r["student"] for r in saved["candidates"]))
    assert sorted(students) == sorted(["mlp:0.5:0.5", "mlp:1:0.5", "cnn-small:0.5", "cnn-small:1"])
    assert [r["macs"] for r in saved["candidates"]] == sorted(r["macs"] for r in saved["candidates"])
    assert counter.total > 0 and saved["trained"] >= 1


def test_the_chosen_folder_holds_the_chosen_student_and_its_test_accuracy(tiny):
    import onnxruntime as ort

    from compress.data import load_digits

    tmp, result, _ = tiny
    folder = tmp / "dist" / "tiny"
    saved = json.loads((folder / "search.json").read_text())
    chosen = next(r for r in saved["candidates"] if r["id"] == saved["chosen"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["student"]["arch"] == chosen["student"]
    assert manifest["recipe"]["quantize"] == chosen["scheme"]
    assert "search.json" in manifest["files"]
    report = json.loads((folder / "report.json").read_text())
    data = load_digits()
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"  # the digits are not 8-bit images: normalized input
    feed = data.x_test.astype(np.float32)
    logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: feed[i:i + 64]})[0]
                             for i in range(0, len(feed), 64)])
    assert float((logits.argmax(1) == data.y_test).mean()) == pytest.approx(report["rows"][-1]["accuracy"])
    html = (folder / "report.html").read_text()
    assert "chosen-point" in html and "front-line" in html


def test_a_resumed_search_retrains_nothing_already_measured(tiny, monkeypatch):
    import os

    tmp, first, _ = tiny
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp / "cache"))
    no_timing_skips(monkeypatch)
    counter = EpochCounter(monkeypatch)
    again = invoke([*TINY, "--name", "tiny-again"], tmp)
    assert again.exit_code == 0, again.output
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    assert counter.total == 0, counter.epochs  # not one student epoch trained
    assert after["trained"] == 0
    assert before["resumed"] == 0  # the first run had a fresh cache: each student was trained (or pruned) then
    assert after["resumed"] == before["trained"] + before["pruned"]
    assert after["chosen"] == before["chosen"]
    same = lambda rs: {r["id"]: (r["status"], r["val_accuracy"]) for r in rs if r["status"] != "skipped"}  # noqa: E731
    assert same(after["candidates"]) == same(before["candidates"])
    assert os.environ["COMPRESS_CACHE_DIR"] == str(tmp / "cache")


def test_ctrl_c_in_a_student_and_a_rerun_continue_from_its_checkpoint(tmp_path, monkeypatch):
    from compress.data import load_digits
    from tests.interrupting import install_after_epoch

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    args = ["search", "--family", "mlp", "--widths", "0.5", "--depths", "0.5", "--schemes", "none", "--epochs", "3",
            "--teacher", "mlp-1200", "--teacher-epochs", "2", "--name", "ctrl-c"]
    with monkeypatch.context() as patched:  # Ctrl-C right after the student's 2nd epoch was checkpointed
        install_after_epoch(patched.setattr, "2")
        stopped = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "dist"), "--quiet"])
    assert stopped.exit_code == 130
    assert not (tmp_path / "dist" / "ctrl-c").exists()
    counter = EpochCounter(monkeypatch)
    done = invoke(args, tmp_path)
    assert done.exit_code == 0, done.output
    by_size = {len_: n for key, n in counter.epochs.items() for len_ in [int(key.split(", ")[1].split()[0])]}
    split_rows = json.loads(done.stdout)["reference"]["training_samples"]
    assert by_size[split_rows] == 1  # the candidate: only its third epoch, the first two came from the checkpoint
    assert by_size[len(load_digits().x_train)] == 3  # the chosen one, distilled on the whole training split
    assert json.loads(done.stdout)["chosen"] == "mlp:0.5:0.5 none T=2 alpha=0.1"


def test_a_spent_time_budget_stops_starting_students_and_a_rerun_continues(tmp_path, monkeypatch):
    import compress.search as search_module

    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    no_timing_skips(monkeypatch)
    args = ["search", "--family", "mlp", "--widths", "0.25,0.5", "--depths", "0.5", "--schemes", "none",
            "--epochs", "2", "--teacher", "mlp-1200", "--teacher-epochs", "2", "--name", "budget"]
    ticks = iter(range(0, 10**6, 40))  # every reading of the clock is 40 s later: the minute is gone quickly
    monkeypatch.setattr(search_module, "clock", lambda: float(next(ticks)))
    first = invoke([*args, "--time-budget", "1"], tmp_path)
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)["candidates"]
    assert [r["status"] for r in rows] == ["measured", "not reached"]  # the first student always finishes
    monkeypatch.setattr(search_module, "clock", lambda: 0.0)  # a rerun with time to spare
    profile = tmp_path / "slow-board.toml"  # with a measured host-to-device factor: each candidate gets the estimate
    profile.write_text('name = "slow-board"\nruntime = "onnx"\nthreads = 1\n[estimate]\n'
                       'host_to_device_latency_factor = 3.5\nbasis = "test board, measured"\n')
    second = invoke([*args, "--time-budget", "1", "--device", str(profile)], tmp_path)
    out = json.loads(second.stdout)
    assert [r["status"] for r in out["candidates"]] == ["measured", "measured"]
    assert (out["resumed"], out["trained"]) == (1, 1)
    fresh = out["candidates"][1]
    assert fresh["device_latency_ms"] == pytest.approx(3.5 * fresh["latency_ms"])
    assert out["device_factor"]["factor"] == 3.5 and "host" in out["latency_label"]
    narrower = json.loads(invoke([*args[:4], "0.5", *args[5:], "--time-budget", "1"], tmp_path).stdout)
    assert (narrower["resumed"], narrower["trained"]) == (1, 0)  # another space reuses the students it shares
    counter = EpochCounter(monkeypatch)
    more = json.loads(invoke([*args[:6], "0.5", "--schemes", "none,int8", *args[9:], "--time-budget", "1"],
                             tmp_path).stdout)
    split_rows = more["reference"]["training_samples"]
    candidate_epochs = sum(n for key, n in counter.epochs.items() if f", {split_rows} samples" in key)
    assert (more["resumed"], more["trained"], candidate_epochs) == (2, 0, 0)  # int8 added: measured, not retrained
    assert {r["scheme"]: r["status"] for r in more["candidates"] if r["student"] == "mlp:0.5:0.5"} == {
        "none": "measured", "int8": "measured"}


def test_an_impossible_budget_exits_1_naming_the_closest_candidate_and_keeps_the_old_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    old = tmp_path / "dist" / "strict"
    old.mkdir(parents=True)
    (old / "model.onnx").write_bytes(b"a good earlier model")
    args = ["search", "--family", "mlp", "--widths", "0.25,0.5", "--depths", "0.5", "--schemes", "none",
            "--epochs", "2", "--teacher", "mlp-1200", "--teacher-epochs", "2", "--name", "strict",
            "--max-latency-ms", "0.00001", "--out", str(tmp_path / "dist"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    # which of the two is closer to a 10 ns budget is timing noise; the line names one of them and the budget
    assert "no candidate meets the budgets" in line and re.search(r"closest: mlp:0\.(25|5):0\.5 none", line)
    assert "latency" in line
    assert (old / "model.onnx").read_bytes() == b"a good earlier model"
    saved = json.loads((tmp_path / "dist" / "strict.search.json").read_text())
    assert saved["chosen"] is None and re.match(r"mlp:0\.(25|5):0\.5 ", saved["closest"]["id"])  # as the line: noise
    assert (tmp_path / "dist" / "strict.search.html").read_text().count("closest") >= 1


def test_the_space_is_ordered_by_macs_and_refuses_what_the_data_or_target_cannot_take(digits):
    from compress.export.registry import TARGETS
    from compress.search.space import SearchSpace, schemes, trials

    space = SearchSpace(families=["mlp", "cnn-small"], widths=[1.0, 0.5], depths=[0.5])
    plan = trials(space, digits.input_shape, digits.num_classes, "image", 2.0, 0.1)
    assert [t.macs for t in plan] == sorted(t.macs for t in plan) and len(plan) == 4
    audio = SearchSpace(families=["cnn-small", "ds-cnn"], widths=[0.5], depths=[1.0])
    kept = trials(audio, (8000,), 10, "audio", 2.0, 0.1)
    assert {t.student.split(":")[0] for t in kept} == {"ds-cnn"}  # an image CNN does not take raw audio
    assert len(audio.notes) == 1 and audio.notes[0].startswith("cnn-small: left out")
    fixed = trials(SearchSpace(families=["mlp:1.25", "mlp"], widths=[0.5], depths=[0.5, 1.0]), digits.input_shape,
                   digits.num_classes, "image", 2.0, 0.1)  # a fixed width beside the grid
    assert sorted(t.student for t in fixed) == ["mlp:0.5:0.5", "mlp:0.5:1", "mlp:1.25:0.5", "mlp:1.25:1"]
    with pytest.raises(InputError, match="--family 'mlp:abc': width 'abc' is not a number"):
        trials(SearchSpace(families=["mlp:abc"]), digits.input_shape, 10, "image", 2.0, 0.1)
    with pytest.raises(InputError, match="--family 'resnet': not a student family"):
        trials(SearchSpace(families=["resnet"]), digits.input_shape, 10, "image", 2.0, 0.1)
    with pytest.raises(InputError, match="--schemes 'palettize-4': --target onnx does not support it"):
        schemes(SearchSpace(schemes=["palettize-4"]), TARGETS["onnx"].schemes, "onnx")


def test_a_keyword_search_counts_streaming_macs_per_second_and_leaves_out_students_over_the_budget():
    """The streaming students are ordered and budgeted by MACs per second of audio hop by hop (what the battery
    pays), not by their window model's MACs; a budget none meets is refused before any training."""
    from compress import models
    from compress.search.space import SearchSpace, trials

    space = SearchSpace(families=["ds-cnn-stream", "crnn-stream"], widths=[0.5, 1.0], depths=[1.0])
    every = trials(space, (8000,), 3, "keyword-spotting", 2.0, 0.1)
    assert all(t.macs_per_second is not None for t in every)
    assert [t.macs_per_second for t in every] == sorted(t.macs_per_second for t in every)
    assert every[0].macs_per_second == models.streaming_macs_per_second(models.build(every[0].student, (8000,), 3))
    budget = (every[0].macs_per_second + every[-1].macs_per_second) / 2
    budgeted = SearchSpace(families=space.families, widths=space.widths, depths=space.depths)
    kept = trials(budgeted, (8000,), 3, "keyword-spotting", 2.0, 0.1, max_macs_per_second=budget)
    assert 0 < len(kept) < len(every) and all(t.macs_per_second <= budget for t in kept)
    assert any(n.startswith("left out over --max-macs-per-second") for n in budgeted.notes)
    framed = trials(SearchSpace(families=["ds-cnn-stream"], widths=[1.0], depths=[1.0], frames=[1.0, 1.5]), (8000,),
                    3, "keyword-spotting", 2.0, 0.1)  # a longer frame and hop: fewer network runs a second
    assert [t.student for t in framed] == ["ds-cnn-stream:1:1:1.5", "ds-cnn-stream:1:1:1"]
    assert framed[0].macs_per_second < 0.85 * framed[1].macs_per_second
    assert models.build(framed[0].student, (8000,), 3).hop_samples == 240
    with pytest.raises(InputError, match="--max-macs-per-second 1000: every student of the search space costs more"):
        trials(SearchSpace(families=["ds-cnn-stream"], widths=[0.5]), (8000,), 3, "keyword-spotting", 2.0, 0.1,
               max_macs_per_second=1000)


def test_the_recipe_search_section_sets_the_space_and_distill_and_export_ignores_it(tmp_path):
    from compress.cli import _run_configs
    from compress.cli.search import _configs

    recipe = tmp_path / "compress.toml"
    recipe.write_text('[search]\nfamilies = ["mlp"]\nwidths = [0.25, 0.5]\ntime_budget = 3\n\n[distill]\nepochs = 2\n')
    cfg, space, options = _configs(str(recipe), {}, {})
    assert (space.families, space.widths, options.time_budget_min, cfg.distill.epochs) == (["mlp"], [0.25, 0.5], 3.0, 2)
    assert [c.distill.epochs for c in _run_configs(str(recipe), {})] == [2]
    recipe.write_text('[search]\nwidths = 0.5\n')
    with pytest.raises(InputError, match=r"\[search\] widths: expected a list of numbers"):
        _configs(str(recipe), {}, {})


def test_int8_slower_than_float_is_said_and_the_choice_is_the_fastest_that_fits():
    from compress.search.choice import best_feasible, why
    from compress.search.measure import note_int8_vs_float

    rows = [{"id": f"m {s}", "scheme": s, "status": "measured", "latency_ms": lat, "size_kb": kb, "macs": 10,
             "val_accuracy": 0.9, "meets_budgets": True, "note": None}
            for s, lat, kb in (("none", 0.010, 40.0), ("int8", 0.014, 12.0), ("int8-weights", 0.009, 12.0))]
    note_int8_vs_float(rows)
    assert "slower than float" in rows[1]["note"] and rows[2]["note"] is None
    assert best_feasible(rows)["id"] == "m int8-weights"
    rows[2]["meets_budgets"] = False
    assert best_feasible(rows)["id"] == "m none"
    for r in rows:
        r.update(student="m", accuracy_drop=1.0, breaks=[])
    rows[2]["breaks"] = ["accuracy drop 3 points > budget 2 points"]
    text = why(None, rows[0], rows)  # the chosen float student: what its int8 forms showed is said
    assert "int8 of this student was measured too: it meets the budgets and timed 0.014 ms, slower" in text
    assert "int8-weights of this student was measured too: it breaks accuracy drop 3 points" in text
