"""``--task keyword-spotting`` (issue 26): the task's settings, the user's recordings (background and labelled
test streams), the held-out validation clips, and the whole run on real FSDD clips in ONNX Runtime and LiteRT:
a streaming file with the contract and the threshold chosen on validation streams, measured hop by hop on test
streams, the teacher ensemble on the same streams, parity with the sliding-window student, and the budgets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from compress.cli.options import comma_list
from compress.config import RunConfig
from compress.core.errors import InputError
from compress.data.dataset import Dataset
from compress.distill.train import Augment, augment_batch
from compress.export.common.streaming import METADATA_KEY, StreamingContract
from compress.keywords.recordings import load_background, load_labelled_streams
from compress.keywords.task import hold_out
from compress.stages.streaming import sliding_windows, streaming_measured
from tests.conftest import FSDD

RATE = 8000


def _wav(path: Path, seconds: float, rate: int = RATE, value: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    audio = np.full(n, value, np.float32) if value is not None else (
        np.random.default_rng(len(str(path))).uniform(-0.5, 0.5, n).astype(np.float32))
    sf.write(str(path), audio, rate, subtype="FLOAT")
    return path


# --- settings ---------------------------------------------------------------------------------------------------

def test_the_task_needs_keywords_and_a_streaming_student():
    with pytest.raises(InputError, match="--keywords"):
        RunConfig.from_settings(task="keyword-spotting").validate()
    with pytest.raises(InputError, match="streaming family"):
        RunConfig.from_settings(task="keyword-spotting", keywords=["3"], student="ds-cnn").validate()
    with pytest.raises(InputError, match="--task 'spotting'"):
        RunConfig.from_settings(task="spotting").validate()
    with pytest.raises(InputError, match="belong to --task keyword-spotting"):
        RunConfig.from_settings(keywords=["3"]).validate()
    RunConfig.from_settings(task="keyword-spotting", keywords=["3"], student="ds-cnn-stream:0.5").validate()


def test_list_flags_are_comma_lists_as_the_recipe_holds_them():
    assert comma_list("keywords", "yes, no") == ["yes", "no"]
    assert comma_list("test_snr", "10,20") == [10.0, 20.0]
    assert comma_list("keywords", ["a"]) == ["a"]
    with pytest.raises(InputError, match="--test-snr"):
        comma_list("test_snr", "10,loud")


def test_a_recipe_takes_the_streaming_section(tmp_path):
    from compress import recipe

    values = recipe.parse('[streaming]\ntask = "keyword-spotting"\nkeywords = ["3"]\ntest_snr = [5, 15]\n'
                          '[budgets]\nmax_false_accepts_per_hour = 0.5\n')
    cfg = RunConfig.from_settings(**values)
    assert (cfg.streaming.task, cfg.streaming.keywords, cfg.streaming.test_snr) == ("keyword-spotting", ["3"], [5.0, 15.0])
    assert cfg.budgets.max_false_accepts_per_hour == 0.5
    with pytest.raises(InputError, match=r"\[streaming\] keyword"):
        recipe.parse('[streaming]\nkeyword = ["3"]\n')


# --- the user's recordings --------------------------------------------------------------------------------------

def test_background_recordings_are_read_resampled_and_joined(tmp_path):
    _wav(tmp_path / "bg" / "kitchen.wav", 2.0, rate=16000)
    _wav(tmp_path / "bg" / "sub" / "car.wav", 1.5)
    audio, files = load_background(tmp_path / "bg", RATE)
    assert files == ["kitchen.wav", "sub/car.wav"]
    assert len(audio) == int(2.0 * RATE) + int(1.5 * RATE)
    with pytest.raises(InputError, match="no audio files"):
        (tmp_path / "empty").mkdir()
        load_background(tmp_path / "empty", RATE)
    with pytest.raises(InputError, match="not found"):
        load_background(tmp_path / "missing", RATE)


def test_labelled_test_streams_follow_the_documented_csv(tmp_path):
    _wav(tmp_path / "a.wav", 3.0)
    _wav(tmp_path / "b.wav", 2.0)
    (tmp_path / "labels.csv").write_text("file,start_s,end_s,label\na.wav,0.5,1.2,3\na.wav,1.5,2.0,seven\nb.wav,,,\n")
    streams = load_labelled_streams(tmp_path, RATE)
    assert [len(s.spans) for s in streams] == [2, 0]
    assert [(s.start_s, s.end_s, s.label) for s in streams[0].spans] == [(0.5, 1.2, "3"), (1.5, 2.0, "seven")]
    assert streams[0].snr_db is None and streams[0].duration_s == pytest.approx(3.0)


@pytest.mark.parametrize("table, message", [
    ("file,start,end,label\n", "header"),
    ("file,start_s,end_s,label\n../a.wav,0,1,3\n", "inside"),
    ("file,start_s,end_s,label\na.wav,2.5,4.0,3\n", "ends after the recording"),
    ("file,start_s,end_s,label\na.wav,1.0,0.5,3\n", "start_s < end_s"),
    ("file,start_s,end_s,label\nnone.wav,0,1,3\n", "not found"),
])
def test_a_bad_labels_file_is_one_clear_error(tmp_path, table, message):
    _wav(tmp_path / "a.wav", 3.0)
    (tmp_path / "labels.csv").write_text(table)
    with pytest.raises(InputError, match=message):
        load_labelled_streams(tmp_path, RATE)


def test_training_mixes_the_users_background_not_generated_noise():
    """A background of one constant value: every noisy clip moves by a constant, which pink noise never does."""
    background = np.full(20000, 0.25, np.float32)
    clips = torch.zeros(8, 4000)
    clips[:, 1000] = 1.0
    out = augment_batch(clips, Augment(sample_rate=RATE, noise_snr=(0.0, 0.0), noise_prob=1.0,
                                       background=background, background_name="constant"), torch.Generator().manual_seed(0))
    rest = torch.cat([out[:, :1000], out[:, 1001:]], dim=1)
    assert torch.allclose(rest, rest[:, :1].expand_as(rest), atol=1e-5)
    assert "constant at 0..0 dB SNR" in Augment(noise_snr=(0.0, 0.0), background=background,
                                               background_name="constant").describe()


def test_the_tasks_auto_augmentation_has_a_gain_the_user_sets_or_turns_off():
    """auto = time shift + gain + background (the held-out-speaker ablation: gain is what generalises to a new
    voice); --gain-db 0,0 turns the gain off, a reversed range is refused."""
    from compress.stages.streaming import keyword_augment
    base = RunConfig.from_settings(task="keyword-spotting", keywords=["3"])
    assert keyword_augment(base, RATE).gain_db == (-6.0, 6.0)
    assert "gain -6..6 dB" in keyword_augment(base, RATE).describe()
    custom = RunConfig.from_settings(task="keyword-spotting", keywords=["3"], gain_db=[-3.0, 9.0])
    assert keyword_augment(custom, RATE).gain_db == (-3.0, 9.0)
    assert keyword_augment(RunConfig.from_settings(task="keyword-spotting", keywords=["3"], gain_db=[0.0, 0.0]),
                           RATE).gain_db is None
    with pytest.raises(InputError, match="--gain-db"):
        RunConfig.from_settings(task="keyword-spotting", keywords=["3"], gain_db=[6.0, -6.0]).validate()


# --- held-out validation clips ------------------------------------------------------------------------------------

def test_validation_clips_are_held_out_per_label_and_leave_training():
    y = np.repeat(np.arange(3), [10, 20, 1])
    x = np.arange(len(y), dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    ds = Dataset("d", "s", x, y, x[:3], y[:3], ["a", "b", "c"], input_kind="audio")
    kept, held, names = hold_out(ds, 0.1, seed=0)
    assert sorted(names) == ["a", "b", "b"]  # 10% per label; a label with one clip keeps it
    assert len(kept.x_train) + len(held) == len(x)
    assert not set(held[:, 0]) & set(kept.x_train[:, 0])


def test_sliding_windows_end_at_every_hop_with_zeros_before_the_stream():
    audio = np.arange(1, 11, dtype=np.float32)
    windows = np.concatenate(list(sliding_windows(audio, hop=2, window=4)))
    assert windows.tolist() == [[0, 0, 1, 2], [1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10]]


def test_the_ensembles_stream_outputs_are_cached_and_a_damaged_entry_is_recomputed():
    from compress.core.cache import cache_dir
    from compress.stages.streaming import ensemble_on_stream
    from compress.teachers import Teacher

    calls = []

    def logits(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return np.stack([x.mean(axis=1), -x.mean(axis=1)], axis=1)

    member = Teacher("fake", "test", logits, "fingerprint-1")
    audio = np.random.default_rng(0).uniform(-1, 1, 4000).astype(np.float32)
    first = ensemble_on_stream([member], audio, 160, 800)
    seen = len(calls)
    assert first.shape == (25, 2) and seen > 0
    again = ensemble_on_stream([member], audio, 160, 800)
    assert len(calls) == seen and np.array_equal(first, again)  # from the cache
    (entry,) = cache_dir("streams").glob("ensemble-*.npy")
    entry.write_bytes(b"damaged")
    repaired = ensemble_on_stream([member], audio, 160, 800)
    assert len(calls) > seen and np.array_equal(first, repaired)


def test_the_result_per_condition_splits_the_streams_by_snr_and_adds_up_to_the_whole():
    from compress.export.common.streaming import StreamingContract
    from compress.keywords.streams import build_stream
    from compress.stages.streaming import by_condition, score

    rng = np.random.default_rng(0)
    clips = rng.uniform(-0.3, 0.3, (6, 1600)).astype(np.float32)
    labels = ["3", "1", "3", "2", "3", "1"]
    streams = [build_stream(clips, labels, RATE, snr_db=snr, seed=seed) for snr, seed in ((10, 0), (20, 1), (10, 2))]
    contract = StreamingContract(RATE, 160, 1600, ["_silence_", "_unknown_", "1", "2", "3"], ["3"], 0.5, 3, 50)
    student = [rng.dirichlet(np.ones(5) * 0.3, len(st.audio) // 160).astype(np.float32) for st in streams]
    teachers = [rng.dirichlet(np.ones(5) * 0.3, len(st.audio) // 160).astype(np.float32) for st in streams]
    rows = by_condition(streams, student, teachers, contract, None, budget=1.0)
    assert [(r["snr_db"], r["streams"]) for r in rows] == [(10.0, 2), (20.0, 1)]
    whole = score(student, streams, contract, None)["all"]
    for key in ("spans", "hits", "false_accepts"):
        assert sum(r["shipped"][key] for r in rows) == whole[key]
    assert rows[1]["shipped"] == score(student[1:2], streams[1:2], contract, None)["all"]
    assert set(rows[0]["at_budget_on_test_det"]) == {"student", "teacher_ensemble"}


def test_a_streaming_file_that_disagrees_with_the_float_student_falls_back_to_the_next_scheme_down():
    """A quantized streaming file whose top-1 agreement with the float step (a validation stream's first hops) is
    under its variant's minimum is not shipped: int8 -> int8-weights -> float32, each attempt recorded."""
    from types import SimpleNamespace

    from compress import models
    from compress.export.common.streaming import StreamingContract
    from compress.stages.streaming import _export_falling_back, torch_stream

    model = models.build("ds-cnn-stream:0.5", (RATE,), 5).eval()
    step = model.streaming_step()
    probe = np.random.default_rng(0).uniform(-0.3, 0.3, 60 * model.hop_samples).astype(np.float32)
    want = torch_stream(step, probe, model.hop_samples)
    contract = StreamingContract(RATE, model.hop_samples, model.window_samples, list("abcde"), ["a"], 0.5, 3, 50)
    shapes = {spec.name: spec.shape for spec in step.state_specs}
    exported = []

    def export(contract, scheme):  # int8 answers the wrong class on every hop; the others are the float step
        exported.append(scheme)
        rows = iter(np.roll(want, 1, axis=1) if scheme == "int8" else want)
        return SimpleNamespace(state_shapes=shapes, step=lambda audio, states: (next(rows)[None], states))

    backend = SimpleNamespace(streaming_schemes=("none", "int8-weights", "int8"), variant=lambda s, o: s,
                              tolerance=lambda variant: {"top1": 0.97})
    runner, scheme, attempts = _export_falling_back(export, step, backend, "int8", contract, probe)
    assert scheme == "int8-weights" and exported == ["int8", "int8-weights"]
    assert [(a["scheme"], a["kept"]) for a in attempts] == [("int8", False), ("int8-weights", True)]
    assert attempts[0]["top1_agreement"] < 0.5 and attempts[1]["top1_agreement"] == 1.0 and attempts[0]["hops"] == 60
    exported.clear()
    only_int8 = SimpleNamespace(**{**vars(backend), "streaming_schemes": ("none", "int8")})
    _, scheme, attempts = _export_falling_back(export, step, only_int8, "int8", contract, probe)
    assert scheme == "none" and exported == ["int8", "none"] and [a["kept"] for a in attempts] == [False]


def test_keyword_budgets_on_a_clip_run_say_why_they_are_not_measured():
    measured, notes = streaming_measured({"rows": []})
    assert measured == {} and "not --task keyword-spotting" in notes["false_accepts_per_hour"]


# --- the whole run on real clips ------------------------------------------------------------------------------------

def compress(*args, cwd):
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ}, timeout=900)


SMALL_RUN = ("--data", str(FSDD), "--task", "keyword-spotting", "--keywords", "3", "--limit-train", "600",
             "--limit-test", "100", "--teacher", "speech-cnn", "--teacher-epochs", "2", "--epochs", "3",
             "--test-snr", "20", "--json", "--out", "out")


@pytest.fixture(scope="module")
def keyword_run(tmp_path_factory):
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (the shared data sets are absent in a fresh clone)")
    cwd = tmp_path_factory.mktemp("kws")
    proc = compress("distill-and-export", *SMALL_RUN, "--target", "onnx", "--name", "kws", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, json.loads(proc.stdout)


def test_the_run_writes_a_streaming_file_with_the_contract_and_the_validated_threshold(keyword_run):
    from compress.export.onnx.streaming import open_streaming

    cwd, report = keyword_run
    section = report["streaming"]
    runner = open_streaming(cwd / "out" / "kws" / section["file"])
    contract = runner.contract
    assert contract == StreamingContract(**section["contract"])
    assert contract.labels == ["_silence_", "_unknown_", "3"] and contract.keywords == ["3"]
    assert contract.threshold == section["threshold"]["value"]
    assert section["threshold"]["chosen_on"].startswith("validation streams")
    assert set(runner.state_shapes) == set(section["io"]["states"])
    manifest = json.loads((cwd / "out" / "kws" / "manifest.json").read_text())
    assert manifest["streaming"]["file"] == section["file"] and section["file"] in manifest["files"]
    assert METADATA_KEY == "streaming"


def test_the_test_streams_are_scored_with_what_each_rate_rests_on(keyword_run):
    _, report = keyword_run
    section = report["streaming"]
    overall = section["test"]["all"]
    hours = overall["non_keyword_hours"]
    assert overall["spans"] == sum(1 for _ in range(overall["spans"])) and overall["spans"] > 0
    assert overall["fa_per_hour"] == pytest.approx(overall["false_accepts"] / hours)
    low, high = overall["fa_per_hour_95"]
    assert low <= overall["fa_per_hour"] <= high and high > 0
    assert section["streams"]["test"][0]["snr_db"] == 20.0
    assert section["streams"]["validation"][0]["words"] == 60  # 10% of the 600 training clips, held out
    assert section["synthetic_background"] and any("without real background" in n for n in section["notes"])
    for curve in ("student", "teacher_ensemble", "validation_student"):
        points = section["det"][curve]
        assert len(points) > 10 and all(0 <= p["frr"] <= 1 for p in points)


def test_streaming_matches_the_sliding_window_student_and_costs_less(keyword_run):
    _, report = keyword_run
    section = report["streaming"]
    assert section["parity"]["passed"] and section["parity"]["windows"] > 100
    cost = section["cost"]
    assert cost["ratios"]["sliding_over_streaming"] > 20  # the point of streaming
    assert cost["streaming_student"]["latency_ms_per_hop"]["hops"] > 1000
    frontend = cost["frontend"]  # the front-end computes one frame per hop: n_fft x (n_fft + 2) + mel MACs
    assert frontend["hop"] == section["contract"]["hop_samples"]
    assert frontend["n_fft"] * (frontend["n_fft"] + 2) <= frontend["macs_per_hop"] < cost["streaming_student"]["macs_per_hop"]
    conditions = section["by_condition"]  # one row per SNR: the same streams as the whole
    assert [c["snr_db"] for c in conditions] == [20.0]  # SMALL_RUN: --test-snr 20
    assert sum(c["shipped"]["spans"] for c in conditions) == section["test"]["all"]["spans"]
    assert sum(c["shipped"]["false_accepts"] for c in conditions) == section["test"]["all"]["false_accepts"]
    assert set(section["teacher_ensemble"]) >= {"runtime", "same_runtime_as_student"}
    check = [c for c in report["checks"] if c["name"].startswith("streaming onnx none file vs the PyTorch student")]
    assert check and check[0]["passed"]


def test_a_keyword_budget_breach_fails_the_run(keyword_run):
    cwd, _ = keyword_run  # the teachers and the student are cached: only export and streams run again
    proc = compress("distill-and-export", *SMALL_RUN, "--target", "onnx", "--name", "kws-budget",
                    "--max-macs-per-second", "1000", cwd=cwd)
    assert proc.returncode == 1, proc.stderr[-2000:]
    budget = [b for b in json.loads(proc.stdout)["budgets"] if b["budget"] == "max_macs_per_second"]
    assert budget and not budget[0]["passed"]


def test_the_streaming_file_runs_in_litert_too(keyword_run):
    cwd, onnx_report = keyword_run
    proc = compress("distill-and-export", *SMALL_RUN, "--target", "tflite", "--name", "kws-tflite", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads(proc.stdout)["streaming"]
    assert section["file"] == "stream.tflite" and "LiteRT" in section["runtime"]
    assert section["parity"]["passed"]
    same = onnx_report["streaming"]["streams"]["test"] == section["streams"]["test"]
    assert same  # the same seeded streams whichever target runs them


def test_a_keyword_that_is_not_a_label_is_one_clear_error(tmp_path):
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (the shared data sets are absent in a fresh clone)")
    proc = compress("distill-and-export", "--data", str(FSDD), "--task", "keyword-spotting", "--keywords", "eleven",
                    "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--keywords 'eleven': not a label" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_validate_remeasures_the_streams_of_a_keyword_folder_with_the_same_gates(keyword_run):
    cwd, report = keyword_run
    proc = compress("validate", "out/kws", "--json", "--max-false-reject-rate", "1.0", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    checked = json.loads(proc.stdout)
    section = checked["streaming"]
    assert section["test"]["all"] == report["streaming"]["test"]["all"]  # the same seeded streams, the same file
    assert any(c["name"].startswith("streaming result reproduces") and c["passed"] for c in checked["checks"])
    assert [b["budget"] for b in checked["budgets"]] == ["max_false_reject_rate"]
    proc = compress("validate", "out/kws", "--json", "--max-false-accepts-per-hour", "-1", cwd=cwd)
    assert proc.returncode == 2 and "--max-false-accepts-per-hour" in proc.stderr  # a bad budget is bad input


def test_the_arm64_emulator_runs_the_streaming_files(keyword_run):
    from compress.devices import arm64_emu
    from compress.keywords.streams import build_stream

    if arm64_emu.status() is None:
        pytest.skip("the ARM64 emulator is not set up (compress devices setup arm64-emu)")
    cwd, _ = keyword_run
    from compress.data.audio import fit_length, read_clip

    clips = np.stack([fit_length(read_clip(p, RATE), RATE) for p in sorted((FSDD / "recordings").glob("3_*.wav"))[:2]])
    stream = build_stream(clips, ["3", "3"], RATE, snr_db=20, seed=0)
    for name in ("kws/stream.onnx", "kws-tflite/stream.tflite"):
        path = cwd / "out" / name
        if not path.exists():
            continue  # the LiteRT run is its own test; the ONNX file is always there
        result = arm64_emu.compare_stream_with_host(path, stream.audio[:RATE * 2], threads=1)
        assert result["hops"] == 100 and result["max_abs_diff"] <= 1e-4, result


def test_the_sample_apps_loop_fires_where_the_tools_rule_fires(keyword_run, tmp_path):
    """samples/wake_word/listen.py (what the Swift and Kotlin listeners do) against the tool's ``detections``."""
    import importlib.util
    import shutil

    from compress.data.audio import fit_length, read_clip
    from compress.export.common.streaming import detections, run_stream
    from compress.export.onnx.streaming import open_streaming
    from compress.keywords.streams import build_stream

    cwd, _ = keyword_run
    spec = importlib.util.spec_from_file_location("listen", Path(__file__).parents[1] / "samples/wake_word/listen.py")
    listen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(listen)
    files = sorted((FSDD / "recordings").glob("*_jackson_0.wav"))
    stream = build_stream(np.stack([fit_length(read_clip(p, RATE), RATE) for p in files]),
                          [p.name[0] for p in files], RATE, snr_db=20, seed=3)
    runner = open_streaming(cwd / "out" / "kws" / "stream.onnx")
    probs = run_stream(runner.step, runner.state_shapes, stream.audio, runner.contract.hop_samples)
    column = runner.contract.labels.index("3")
    threshold = float(np.quantile(probs[:, column], 0.97))  # a threshold this small model reaches sometimes
    contract = StreamingContract(**{**runner.contract.__dict__, "threshold": threshold})
    shutil.copy(cwd / "out" / "kws" / "stream.onnx", tmp_path / "stream.onnx")
    (tmp_path / "stream.json").write_text(contract.to_json())
    fired = listen.listen(tmp_path / "stream.onnx", stream.audio)
    assert fired and fired == detections(probs, contract)


def test_an_int8_streaming_file_is_calibrated_on_real_hops_and_agrees_with_the_float_student(keyword_run):
    cwd, _ = keyword_run
    proc = compress("distill-and-export", *SMALL_RUN, "--target", "onnx", "--name", "kws-int8", "--quantize", "int8",
                    cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = json.loads(proc.stdout)["streaming"]
    assert section["scheme"] == "int8" and section["calibration_hops"] > 100
    assert section["parity"]["passed"] and section["parity"]["top1_agreement"] >= 0.97
    import onnx

    ops = {n.op_type for n in onnx.load(str(cwd / "out" / "kws-int8" / "stream.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_int8_on_litert_quantizes_the_clip_model_and_streams_int8_weights_as_said(keyword_run):
    """LiteRT's streaming file takes int8 weights (static int8 would make the contract's float I/O int8): the
    run's --quantize int8 gives a full-int8 clip model (its log-mel kept float) and an int8-weights streaming
    file, said in the notes, agreeing with the float student."""
    cwd, _ = keyword_run
    proc = compress("distill-and-export", *SMALL_RUN, "--target", "tflite", "--name", "kws-tflite-int8",
                    "--quantize", "int8", cwd=cwd)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    section = report["streaming"]
    assert section["scheme"] == "int8-weights" and section["calibration_hops"] is None
    assert any("streaming file is int8-weights" in n for n in section["notes"])
    assert section["parity"]["passed"] and section["parity"]["top1_agreement"] >= 0.97
    assert any(r["role"] == "student" and "int8" in r["runtime"] + str(r.get("model")) for r in report["rows"])


def test_search_tries_the_streaming_families_and_its_choice_is_measured_on_streams(keyword_run):
    cwd, _ = keyword_run  # the teachers and soft targets are cached
    proc = compress("search", *[a for a in SMALL_RUN if a != "--json"], "--json", "--time-budget", "2",
                    "--widths", "0.5", "--depths", "1", "--schemes", "none", "--name", "kws-search", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    families = {c["id"].split(":")[0] for c in result["candidates"]}
    assert families == {"ds-cnn-stream", "crnn-stream"}  # the task's default: the streaming families only
    report = json.loads((cwd / "out" / "kws-search" / "report.json").read_text())
    assert report["streaming"]["file"] == "stream.onnx" and report["streaming"]["parity"]["passed"]
