"""The keyword-spotting task's stages: the task's data before training, the streaming file and its streams after.

Before training (``keyword_task``): the labelled clips become the task's classes (``compress.keywords.task``),
with a seeded share of the training clips held out for the validation streams; the user's background
recordings are read once and split by time (training and silence / validation streams / test streams), so
the false accepts on the test streams are never counted on background the model trained on.

After distillation (``measure_streaming``): the student's streaming form (``model.streaming_step()``) is
written in the target's format (``Backend.export_streaming``, the one I/O contract of
``compress.export.common.streaming``) and run hop by hop in the target's runtime on

* validation streams (held-out training clips): the DET curve there chooses the threshold, the lowest
  false-reject rate within the false-accept budget (``compress.keywords.scoring.choose_threshold``);
* test streams (the test split's clips, or the user's labelled recordings): false-reject rate and false
  accepts per hour at that threshold, with the interval and the hours behind them, and the DET curve;

the teacher ensemble is run on the same test streams on sliding windows at the same hop, and the student's
streaming outputs are compared with the same student run on those windows (parity). The file is then
written again with the chosen threshold in its metadata. Cost: per-hop latency in the runtime, real-time
factor, MACs per second of audio (streaming, sliding-window student, ensemble) and the state's size.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from compress import models
from compress.config import RunConfig
from compress.core.cache import cache_dir, content_key, read_verified, write_entry
from compress.core.errors import InputError
from compress.data import Dataset
from compress.devices import arm64_emu
from compress.distill.train import Augment
from compress.export import registry
from compress.export.common.streaming import StreamingContract, detections, run_stream
from compress.keywords.recordings import load_background, load_labelled_streams
from compress.keywords.scoring import Tally, choose_threshold, det_curve, score_stream, summarize
from compress.keywords.streams import Stream, build_stream
from compress.keywords.task import hold_out, keyword_dataset
from compress.teachers import Teacher
from compress.teachers.ensemble import ensemble_probs

KEYWORD_TASK = "keyword-spotting"
BACKGROUND_PARTS = (0.7, 0.15, 0.15)  # training and silence / validation streams / test streams, by time
DEFAULT_FA_BUDGET = 1.0  # false accepts per hour the threshold meets on validation when no budget is set
# hops compared between a streaming file and its float student (the int8 fallback's probe on a validation
# stream, the parity check on a test stream): 40 s at a 20 ms hop, a dozen words, not the first few seconds
# of a stream, which are mostly background (at 400 hops an int8 file agreed on 97% there and on 94.75% of
# a test stream's first 400 hops)
PARITY_HOPS = 2000
RECURRENT_PARITY_HOPS = 40  # hops of a stateful student compared with it run on the stream so far
WINDOW_BATCH = 256  # sliding windows per batch through the teachers
STATEFUL_HOPS = 500  # hops of a test stream the stateful form is compared on
CALIBRATION_HOPS = 400  # per-hop feeds that calibrate a static int8 streaming file
CONTRACT_FILE = "stream.json"  # the streaming contract beside the file (the same JSON as its metadata)
SCHEMES_DOWN = ("int8", "int8-weights", "none")  # a streaming file's fallback order


@dataclass(frozen=True)
class KeywordTask:
    """What the keyword task trains on and measures with (see the module docstring)."""

    data: Dataset  # relabelled: _silence_, _unknown_, keywords; what the teachers and the student train on
    validation_clips: np.ndarray
    validation_labels: list[str]
    test_clips: np.ndarray  # the test split's clips, each with its own word
    test_labels: list[str]
    sample_rate: int
    background: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # by BACKGROUND_PARTS; None: generated noise
    background_source: str  # said in the report


def is_keyword_task(cfg: RunConfig) -> bool:
    return cfg.streaming.task == KEYWORD_TASK


@functools.lru_cache(maxsize=2)
def _background(path: str, sample_rate: int) -> tuple[tuple[np.ndarray, ...], str]:
    """The recordings under ``path`` split by ``BACKGROUND_PARTS`` (read once per run), and what they are
    (files, minutes, a content hash: part of the augmentation's description, hence of the cache keys)."""
    audio, files = load_background(path, sample_rate)
    cuts = np.cumsum([int(len(audio) * p) for p in BACKGROUND_PARTS[:-1]])
    parts = tuple(np.ascontiguousarray(p) for p in np.split(audio, cuts))
    for p in parts:
        p.flags.writeable = False
    minutes = len(audio) / sample_rate / 60
    return parts, f"recorded: {len(files)} file(s), {minutes:.1f} min from {path} (content {content_key(audio.tobytes())[:12]}"


def keyword_task(cfg: RunConfig, raw: Dataset) -> KeywordTask:
    """The task's data: ``raw``'s labelled clips relabelled, validation clips held out (module docstring)."""
    s = cfg.streaming
    if raw.input_kind != "audio":
        raise InputError(f"--task {KEYWORD_TASK}: {raw.name} holds {raw.input_kind} samples; expected audio clips")
    rate = int(raw.normalization.get("sample_rate") or 0)
    if rate <= 0:
        raise InputError(f"--task {KEYWORD_TASK}: {raw.name} does not record its sample rate; expected audio from a "
                         "loader that does (audio-folder)")
    parts, source = _background(str(s.background), rate) if s.background else (None, None)
    source = ("generated pink noise (no --background given)" if source is None else
              f"{source}; first 70% for training, 15% under validation streams, 15% under test streams)")
    trained, val_clips, val_labels = hold_out(raw, s.validation_share, cfg.distill.seed)
    data = keyword_dataset(trained, list(s.keywords), seed=cfg.distill.seed,
                           background=None if parts is None else parts[0], silence_share=s.silence_share,
                           unknown_share=s.unknown_share)
    data = replace(data, normalization={**data.normalization, "keyword_task": {
        **data.normalization["keyword_task"], "background": source, "validation_clips": len(val_labels)}})
    return KeywordTask(data, val_clips, val_labels, raw.x_test, [raw.labels[int(v)] for v in raw.y_test], rate,
                       parts, source)


def keyword_augment(cfg: RunConfig, sample_rate: int) -> Augment:
    """The task's training augmentation: a time shift, a random gain (a near or a far talker: without it a
    held-out speaker's wake word was missed 62-75% of the time at 1 FA/h, with +-6 dB 20-22%; README) and
    background mixed in at a random SNR (the user's recordings' training part where given, else pink noise)."""
    s = cfg.streaming
    parts, source = _background(str(s.background), sample_rate) if s.background else (None, "")
    gain = tuple(s.gain_db) if any(s.gain_db) else None  # 0,0: no gain
    return Augment(shift_ms=s.time_shift_ms, sample_rate=sample_rate, noise_snr=tuple(s.background_snr), gain_db=gain,
                   background=None if parts is None else parts[0],
                   background_name=f"{source})" if source else "")


def make_streams(cfg: RunConfig, task: KeywordTask) -> tuple[list[Stream], list[Stream]]:
    """(validation streams, test streams): one of each per ``test_snr``, seeded; the test streams are the
    user's labelled recordings where given."""
    s, seed = cfg.streaming, cfg.distill.seed
    val_bg = None if task.background is None else task.background[1]
    validation = [st for i, snr in enumerate(s.test_snr)
                  for st in _mixes(task.validation_clips, task.validation_labels, task.sample_rate, snr,
                                   seed + 1000 + i, val_bg, s.stream_hours)]
    return validation, test_streams(cfg, task)


def test_streams(cfg: RunConfig, task: KeywordTask) -> list[Stream]:
    """The test streams: the user's labelled recordings, else built from the test split's clips (seeded, so
    ``compress validate`` rebuilds the very streams the run measured)."""
    s, seed = cfg.streaming, cfg.distill.seed
    if s.test_streams:
        return load_labelled_streams(s.test_streams, task.sample_rate)
    test_bg = None if task.background is None else task.background[2]
    return [st for i, snr in enumerate(s.test_snr)
            for st in _mixes(task.test_clips, task.test_labels, task.sample_rate, snr, seed + i, test_bg,
                             s.stream_hours)]


def _mixes(clips: np.ndarray, labels: list[str], rate: int, snr: float, seed: int, background, hours: float) -> list[Stream]:
    """Streams of ``clips`` at ``snr``: one, then more mixes (another order, gaps and noise: seed + 100 k)
    until they hold ``hours`` of audio."""
    streams = [build_stream(clips, labels, rate, snr_db=snr, seed=seed, background=background)]
    while sum(st.duration_s for st in streams) < hours * 3600:
        streams.append(build_stream(clips, labels, rate, snr_db=snr, seed=seed + 100 * len(streams),
                                    background=background))
    return streams


def run_timed(runner, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``(hops, classes)`` probabilities, seconds per hop): ``audio`` fed hop by hop to a streaming file
    (``run_stream``), each step timed."""
    seconds: list[float] = []

    def timed_step(chunk: np.ndarray, states: dict) -> tuple:
        start = time.perf_counter()
        out = runner.step(chunk, states)
        seconds.append(time.perf_counter() - start)
        return out

    probs = run_stream(timed_step, runner.state_shapes, audio, runner.contract.hop_samples)
    return probs, np.asarray(seconds)


def hop_latency(seconds: np.ndarray | None) -> dict | None:
    """p50/p99 per hop in ms and the hops timed (None: not timed, a reference evaluator)."""
    if seconds is None:
        return None
    return {"p50": float(np.percentile(seconds, 50) * 1e3), "p99": float(np.percentile(seconds, 99) * 1e3),
            "hops": len(seconds)}


def sliding_windows(audio: np.ndarray, hop: int, window: int):
    """The ``window`` samples ending at each whole hop (zeros before the stream starts), in batches."""
    padded = np.concatenate([np.zeros(window, np.float32), np.asarray(audio, np.float32)])
    view = np.lib.stride_tricks.sliding_window_view(padded, window)[hop::hop][:len(audio) // hop]
    for start in range(0, len(view), WINDOW_BATCH):
        yield np.ascontiguousarray(view[start:start + WINDOW_BATCH])


def members_for_streams(members: list[Teacher], data: Dataset) -> tuple[list[Teacher], list[str]]:
    """The members as run on the streams' sliding windows, and each one's runtime: a torch member (fed the data
    as is, answering logits) exported fp32 to a registered runtime that runs here in batches (the same float
    math; on these CNNs 1.4-3x faster than torch on a CPU, and hours of windows are the run's longest wait),
    the others as they are. Where none batches, or a member does not convert, it runs in torch. Threads:
    torch's (all cores, as the members would run in torch): this is throughput, not a device timing."""
    from compress.stages.evaluate import member_artifact

    batch_target = next((name for name, b in registry.TARGETS.items() if b.runs_here and b.batches), None)
    out, runtimes = [], []
    for m in members:
        found = (member_artifact(m, data, batch_target) if batch_target and m.module is not None and m.view is None
                 and m.output == "logits" else None)
        if isinstance(found, tuple) and found[1] == batch_target:
            runner = registry.get(batch_target).open(found[0], torch.get_num_threads())
            out.append(replace(m, logits=runner.predict))
            runtimes.append(runner.engine)
        else:
            out.append(m)
            runtimes.append("PyTorch" if m.module is not None else "its own file's runtime")
    return out, runtimes


def ensemble_on_stream(members: list[Teacher], audio: np.ndarray, hop: int, window: int,
                       runtimes: list[str] | None = None) -> np.ndarray:
    """The teacher ensemble's probabilities on the sliding window ending at every hop. Cached by the members'
    fingerprints, the runtimes they ran in and the stream's content (the same streams are measured for every
    target, and the ensemble on an hour of sliding windows costs minutes); a damaged entry is discarded and
    recomputed."""
    key = content_key("teacher-stream", 2, [m.fingerprint for m in members], runtimes or [], audio.tobytes(), hop,
                      window)
    entry = cache_dir("streams") / f"ensemble-{key[:32]}.npy"
    cached = read_verified(entry, lambda p: np.load(p, allow_pickle=False))
    if cached is not None and cached.shape[0] == len(audio) // hop:
        return cached
    probs = np.concatenate([ensemble_probs(members, w) for w in sliding_windows(audio, hop, window)])
    write_entry(entry, lambda tmp: _save_array(tmp, probs))
    return probs


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a handle: np.save would append ".npy" to the temporary name
        np.save(fh, array, allow_pickle=False)


def student_parity(student: torch.nn.Module, stream: Stream, probs: np.ndarray, hop: int) -> dict:
    """Max abs difference between the streaming file's probabilities and the student (PyTorch) on the sliding
    window ending at the same hop, over up to ``PARITY_HOPS`` hops once a whole window has streamed in. A
    student that carries state (a GRU) is compared with itself run on the stream so far, at
    ``RECURRENT_PARITY_HOPS`` hops spread over the first ``PARITY_HOPS``."""
    if getattr(student, "carries_state", False):
        return _prefix_parity(student, stream, probs, hop)
    window = student.window_samples
    first = -(-window // hop) - 1  # the first hop whose window is all stream
    hops = list(range(first, min(len(probs), first + PARITY_HOPS)))
    if not hops:
        return {"windows": 0, "max_abs_diff": None}
    with torch.no_grad():  # the windows of every hop up to the last compared (the first ones zero-padded)
        ref = np.concatenate([torch.softmax(student.eval()(torch.from_numpy(w)), dim=1).numpy()
                              for w in sliding_windows(stream.audio[:(hops[-1] + 1) * hop], hop, window)])[first:]
    return {"windows": len(hops), "max_abs_diff": float(np.max(np.abs(ref - probs[hops]))),
            "top1_agreement": float(np.mean(ref.argmax(1) == probs[hops].argmax(1))),
            "against": "the same student in PyTorch on the sliding window ending at each hop"}


def _prefix_parity(student: torch.nn.Module, stream: Stream, probs: np.ndarray, hop: int) -> dict:
    hops = sorted(set(np.linspace(0, min(len(probs), PARITY_HOPS) - 1, RECURRENT_PARITY_HOPS).astype(int).tolist()))
    with torch.no_grad():
        ref = np.stack([torch.softmax(student.eval()(torch.from_numpy(stream.audio[None, :(t + 1) * hop])), dim=1)[0]
                        .numpy() for t in hops])
    return {"windows": len(hops), "max_abs_diff": float(np.max(np.abs(ref - probs[hops]))),
            "top1_agreement": float(np.mean(ref.argmax(1) == probs[hops].argmax(1))),
            "against": "the same student in PyTorch on the stream so far (it carries state across windows)"}


def score(probs_per_stream: list[np.ndarray], streams: list[Stream], contract: StreamingContract,
          tolerance_s: float | None) -> dict:
    """Hits, misses and false accepts of the contract's rule on every stream, summarized."""
    tally = Tally()
    for probs, stream in zip(probs_per_stream, streams):
        tally.add(score_stream(detections(probs, contract), stream.spans, stream.duration_s, contract, tolerance_s))
    return summarize(tally)


def describe_streams(streams: list[Stream]) -> list[dict]:
    return [{"duration_s": round(s.duration_s, 2), "snr_db": s.snr_db, "seed": s.seed, "background": s.background,
             "words": len(s.spans)} for s in streams]


def streaming_cost(step, student: torch.nn.Module, members: list[Teacher], data: Dataset, hop_seconds: np.ndarray | None,
                   contract: StreamingContract, rows: list[dict]) -> dict:
    """Per-hop latency and real-time factor in the runtime (None where the runtime is a reference evaluator,
    whose timings say nothing about a device); MACs per second of audio of the streaming student, the same
    student on a sliding window every hop, and the ensemble (also every hop); state size."""
    hops_per_s = contract.sample_rate / contract.hop_samples
    per_hop = models.streaming_macs_per_hop(student)
    sliding = models.count_macs(student, data.input_shape)
    member_macs = [models.count_macs(m.module, data.input_shape) if m.module is not None else None for m in members]
    ensemble = None if any(v is None for v in member_macs) else int(sum(member_macs))
    latency = hop_latency(hop_seconds)
    by_role = {r["role"]: r for r in rows}
    clip_latency = lambda role: (by_role.get(role) or {}).get("latency_ms")  # noqa: E731
    return {
        "hops_per_second": hops_per_s,
        "streaming_student": {"macs_per_hop": per_hop, "macs_per_second": per_hop * hops_per_s,
                              "latency_ms_per_hop": latency,
                              "real_time_factor": None if latency is None else latency["p50"] / 1e3 * hops_per_s,
                              "state_bytes": int(sum(4 * np.prod(s.shape) for s in step.state_specs))},
        "sliding_window_student": {"macs_per_window": sliding, "macs_per_second": sliding * hops_per_s,
                                   "latency_ms_per_window": clip_latency("student"),
                                   "note": "the clip model re-run on the whole window every hop"},
        "frontend": frontend_cost(student.frontend),
        "ensemble": {"macs_per_window": ensemble, "macs_per_second": None if ensemble is None else ensemble * hops_per_s,
                     "latency_ms_per_window": clip_latency("teacher"),
                     "note": "every member on the whole window every hop"
                             + ("" if ensemble is not None else "; MACs unknown for members without a torch module")},
        "ratios": {"sliding_over_streaming": sliding / max(per_hop, 1),
                   "ensemble_over_streaming": None if ensemble is None else ensemble / max(per_hop, 1)},
    }


def frontend_cost(frontend: torch.nn.Module) -> dict:
    """What the streaming student's front-end is and costs per hop (one new frame), said in the report: the
    DFT as a dense convolution, the form every target converts and the fastest measured where alternatives
    convert (``bench/frontend.py``: ONNX ``DFT`` 3x slower per frame at n_fft 200, LiteRT cannot convert
    ``rfft``, Core ML lowers it to a matmul)."""
    return {"form": "log-mel, DFT as a dense convolution (in every target)", **frontend.describe(),
            "macs_per_hop": models.count_macs(frontend, (frontend.n_fft,)),
            "why": "every target converts it, and it was the fastest per frame where another form converts "
                   "(bench/frontend.py)"}


def _export(backend, step, path: Path, contract: StreamingContract, name: str, threads: int, scheme: str,
            calibration: list[dict] | None = None):
    """Write the streaming file with ``contract`` (in ``scheme``) and open it in the target's runtime."""
    shapes = {spec.name: spec.shape for spec in step.state_specs}
    if scheme == "none":
        backend.export_streaming(step, shapes, path, contract, name)
    else:
        backend.export_streaming(step, shapes, path, contract, name, scheme=scheme, calibration=calibration)
    return backend.open_streaming(path, threads)


def calibration_feeds(step, task: KeywordTask, cfg: RunConfig) -> list[dict]:
    """Real per-hop inputs of the streaming file for static int8: the float step run on a stream of training
    clips (``calibration_samples`` of them, at the middle test SNR), every input it saw at each of up to
    ``CALIBRATION_HOPS`` hops, evenly spaced (the states too: their ranges are what int8 must hold)."""
    from compress.export.common.streaming import AUDIO_INPUT

    x, y = task.data.x_train, task.data.y_train
    rows = np.random.default_rng(cfg.distill.seed).permutation(len(x))[:cfg.quantize.calibration_samples]
    snr = float(np.median(cfg.streaming.test_snr))
    stream = build_stream(x[rows], [task.data.labels[int(v)] for v in y[rows]], task.sample_rate, snr_db=snr,
                          seed=cfg.distill.seed + 2000)
    hop, names = step.model.hop_samples, [spec.name for spec in step.state_specs]
    hops = len(stream.audio) // hop
    keep = set(np.linspace(0, hops - 1, min(CALIBRATION_HOPS, hops)).astype(int).tolist())
    states, feeds = step.zero_states(), []
    with torch.no_grad():
        for t in range(hops):
            audio = torch.from_numpy(stream.audio[t * hop:(t + 1) * hop])[None]
            if t in keep:
                feeds.append({AUDIO_INPUT: audio.numpy().copy(), **{n: s.numpy().copy() for n, s in zip(names, states)}})
            _, *states = step(audio, *states)
    return feeds


def measure_streaming(cfg: RunConfig, task: KeywordTask, student: torch.nn.Module, members: list[Teacher],
                      rows: list[dict], tmp_dir: Path, name: str, on_status=lambda text: None) -> dict:
    """The streaming file in ``tmp_dir``, its threshold chosen on validation streams, and everything measured
    on the test streams (module docstring): the report's ``streaming`` section."""
    s, backend = cfg.streaming, registry.get(cfg.export.target)
    budget = cfg.budgets.max_false_accepts_per_hour
    budget = DEFAULT_FA_BUDGET if budget is None else budget
    step = student.streaming_step()
    contract = StreamingContract(task.sample_rate, student.hop_samples, student.window_samples, task.data.labels,
                                 list(s.keywords), 0.5, s.smoothing_hops, s.refractory_hops)
    path = tmp_dir / ("stream" + Path(registry.TARGETS[cfg.export.target].file_name).suffix)
    scheme = streaming_scheme(backend, cfg.quantize.scheme)
    feeds = calibration_feeds(step, task, cfg) if scheme == "int8" else None
    on_status(f"writing the streaming {cfg.export.target} file" + ("" if scheme == "none" else f" ({scheme})"))
    export = functools.partial(_export, backend, step, path, name=name, threads=cfg.device.threads,
                               calibration=feeds)
    validation, test = make_streams(cfg, task)
    runner, scheme, attempts = _export_falling_back(export, step, backend, scheme, contract,
                                                    validation[0].audio[:PARITY_HOPS * contract.hop_samples])
    on_status(f"validation streams in {runner.engine}")
    val_probs = [run_timed(runner, st.audio)[0] for st in validation]
    val_curve = det_curve(val_probs, [st.spans for st in validation], [st.duration_s for st in validation],
                          contract, tolerance_s=s.tolerance_s)
    chosen = choose_threshold(val_curve, budget)
    contract = replace(contract, threshold=chosen["threshold"])
    runner = export(contract=contract, scheme=scheme)  # the threshold into the metadata
    (tmp_dir / CONTRACT_FILE).write_text(contract.to_json() + "\n")  # for apps that cannot read the metadata
    on_status(f"test streams in {runner.engine}")
    timed = [run_timed(runner, st.audio) for st in test]
    test_probs = [p for p, _ in timed]
    curve = det_curve(test_probs, [st.spans for st in test], [st.duration_s for st in test], contract,
                      tolerance_s=s.tolerance_s)
    on_status("teacher ensemble on sliding windows of the test streams")
    window = task.data.input_shape[0]
    stream_members, runtimes = members_for_streams(members, task.data)
    teacher_probs = [ensemble_on_stream(stream_members, st.audio, contract.hop_samples, window, runtimes)
                     for st in test]
    teacher_curve = det_curve(teacher_probs, [st.spans for st in test], [st.duration_s for st in test], contract,
                              tolerance_s=s.tolerance_s)
    parity = student_parity(student, test[0], test_probs[0], contract.hop_samples)
    parity.update(_parity_bound(backend, scheme, parity))
    result = score(test_probs, test, contract, s.tolerance_s)
    stateful = _stateful_form(cfg, backend, step, contract, tmp_dir, name, test[0], test_probs[0], on_status)
    return {
        "stateful": stateful,
        "file": path.name, "contract_file": CONTRACT_FILE, "runtime": runner.engine, "scheme": scheme,
        "scheme_attempts": attempts,
        "calibration_hops": None if feeds is None else len(feeds), "contract": dict(contract.__dict__),
        "io": {"audio": [1, contract.hop_samples], "states": {k: list(v) for k, v in runner.state_shapes.items()},
               "probs": [1, len(contract.labels)]},
        "threshold": {"value": chosen["threshold"], "chosen_on": "validation streams (held-out training clips)",
                      "max_false_accepts_per_hour": budget, "met_on_validation": chosen["met"],
                      "validation": {k: chosen[k] for k in ("frr", "fa_per_hour", "fa_per_hour_95", "false_accepts",
                                                            "spans", "non_keyword_hours")}},
        "test": result, "det": {"student": curve, "teacher_ensemble": teacher_curve, "validation_student": val_curve},
        "by_condition": by_condition(test, test_probs, teacher_probs, contract, s.tolerance_s, budget),
        "at_budget_on_test_det": {"student": choose_threshold(curve, budget),
                                  "teacher_ensemble": choose_threshold(teacher_curve, budget),
                                  "note": "the lowest FRR each reaches within the budget on the test streams' own "
                                          "DET curve (an oracle threshold, for comparing student and teachers only)"},
        "teacher_ensemble": {"runtime": "; ".join(f"{m.name}: {r}" for m, r in zip(members, runtimes))
                                        + f", on the sliding window ending at every hop ({window} samples, batches of "
                                          f"{WINDOW_BATCH})", "same_streams": True,
                             "same_runtime_as_student": set(runtimes) == {runner.engine}},
        "parity": parity,
        "cost": streaming_cost(step, student, members, task.data, np.concatenate([t for _, t in timed])
                               if getattr(runner, "measured", True) else None, contract, rows),
        "streams": {"validation": describe_streams(validation), "test": describe_streams(test)},
        "background": task.background_source, "synthetic_background": task.background is None,
        "notes": _notes(cfg, task, chosen["non_keyword_hours"], test, budget)
                 + [f"the {a['scheme']} streaming file agreed with the float student on {100 * a['top1_agreement']:.1f}% "
                    f"of {a['hops']} validation hops (< {100 * a['minimum']:.0f}%): not shipped, the next scheme "
                    "down was" for a in attempts if not a["kept"]],
    }


def _stateful_form(cfg: RunConfig, backend, step, contract: StreamingContract, tmp_dir: Path, name: str,
                   stream: Stream, explicit: np.ndarray, on_status) -> dict | None:
    """The runtime's own stateful form where the target and its options give one (Core ML states from
    iOS18), written beside the explicit-state file and compared with it hop by hop on a test stream."""
    if backend.export_stateful_streaming is None:
        return None
    shapes = {spec.name: spec.shape for spec in step.state_specs}
    path = tmp_dir / ("stream_stateful" + Path(registry.TARGETS[cfg.export.target].file_name).suffix)
    if backend.export_stateful_streaming(step, shapes, path, contract, name,
                                         cfg.export.export_options("none")) is None:
        return None
    on_status(f"the stateful {cfg.export.target} file")
    runner = backend.open_streaming(path, cfg.device.threads)
    hops = min(len(explicit), STATEFUL_HOPS)
    probs, _ = run_timed(runner, stream.audio[:hops * contract.hop_samples])
    diff = np.abs(probs - explicit[:hops])
    return {"file": path.name, "runtime": runner.engine, "hops": hops, "max_abs_diff": float(diff.max()),
            "top1_agreement": float(np.mean(probs.argmax(1) == explicit[:hops].argmax(1))),
            "against": "the explicit-state file on the same hops of the first test stream",
            "note": "Core ML keeps states in float16: each stored frame is rounded, hence a small difference"}


def torch_stream(step, audio: np.ndarray, hop: int) -> np.ndarray:
    """The PyTorch streaming step fed ``audio`` hop by hop from zero states (``run_stream``'s rows)."""
    names = [spec.name for spec in step.state_specs]

    def run(chunk: np.ndarray, states: dict) -> tuple:
        with torch.no_grad():
            probs, *new = step(torch.from_numpy(chunk), *(torch.as_tensor(np.asarray(states[n])) for n in names))
        return probs.numpy(), {n: v.numpy() for n, v in zip(names, new)}

    return run_stream(run, {spec.name: spec.shape for spec in step.state_specs}, audio, hop)


def _export_falling_back(export, step, backend, scheme: str, contract: StreamingContract, probe: np.ndarray):
    """(runner, scheme shipped, attempts): the streaming file in ``scheme``, or, where a quantized file's top-1
    agreement with the float step on ``probe`` (a validation stream's first hops) is under its variant's
    minimum, the next scheme down (int8, int8-weights, float32; those the target streams): the int8 fallback
    for a file whose layers cannot be kept float one by one. Every quantized attempt is recorded."""
    if scheme == "none":
        return export(contract=contract, scheme="none"), "none", []
    reference = torch_stream(step, probe, contract.hop_samples)
    attempts = []
    for candidate in [scheme, *(d for d in SCHEMES_DOWN[SCHEMES_DOWN.index(scheme) + 1:-1]
                                if d in backend.streaming_schemes)]:
        runner = export(contract=contract, scheme=candidate)
        got = run_stream(runner.step, runner.state_shapes, probe, contract.hop_samples)
        agreement = float(np.mean(got.argmax(1) == reference.argmax(1)))
        minimum = _top1_minimum(backend, candidate)
        attempts.append({"scheme": candidate, "top1_agreement": agreement, "minimum": minimum, "hops": len(got),
                         "kept": agreement >= minimum})
        if agreement >= minimum:
            return runner, candidate, attempts
    return export(contract=contract, scheme="none"), "none", attempts


def streaming_scheme(backend, requested: str) -> str:
    """What the streaming file is written as: the run's ``--quantize`` where the target's streaming files take
    it; ``int8`` falls back to ``int8-weights`` where only that is offered; else float32 (``_notes`` says so)."""
    if requested in backend.streaming_schemes:
        return requested
    if requested == "int8" and "int8-weights" in backend.streaming_schemes:
        return "int8-weights"
    return "none"


def by_condition(streams: list[Stream], student: list[np.ndarray], teachers: list[np.ndarray],
                 contract: StreamingContract, tolerance_s: float | None, budget: float) -> list[dict]:
    """The test result per SNR of the built streams (one condition each; the user's recordings are one): the
    shipped threshold's FRR and FA/h, and each DET curve's lowest FRR within the budget, student and ensemble."""
    groups: dict = {}
    for i, stream in enumerate(streams):
        groups.setdefault(stream.snr_db, []).append(i)
    rows = []
    for snr, index in groups.items():
        picked = [streams[i] for i in index]
        spans, seconds = [st.spans for st in picked], [st.duration_s for st in picked]
        curves = {role: det_curve([probs[i] for i in index], spans, seconds, contract, tolerance_s=tolerance_s)
                  for role, probs in (("student", student), ("teacher_ensemble", teachers))}
        rows.append({"snr_db": snr, "streams": len(picked),
                     "shipped": score([student[i] for i in index], picked, contract, tolerance_s)["all"],
                     "at_budget_on_test_det": {role: choose_threshold(curve, budget) for role, curve in curves.items()},
                     "det": curves})
    return rows


def _top1_minimum(backend, scheme: str) -> float:
    """The top-1 agreement a quantized streaming file must keep with the float student: its variant's stated
    minimum (0.97 where the variant states none)."""
    return backend.tolerance(backend.variant(scheme, {})).get("top1") or 0.97


def _parity_bound(backend, scheme: str, parity: dict) -> dict:
    """The streaming file's parity check: float32 within the target's fp32 bound on every window; a quantized
    file by its top-1 agreement with the float student, at the variant's stated minimum (its logit bounds do
    not apply to probabilities)."""
    if scheme == "none":
        bound = backend.tolerance("fp32")["max_rel"]  # probabilities: max(1, max |p|) = 1, so relative = absolute
        ok = parity["max_abs_diff"] is not None and parity["max_abs_diff"] <= bound
        return {"tolerance": bound, "bounds": "max abs difference of probs", "passed": bool(ok)}
    minimum = _top1_minimum(backend, scheme)
    ok = parity.get("top1_agreement") is not None and parity["top1_agreement"] >= minimum
    return {"tolerance": minimum, "bounds": "top-1 agreement (a quantized file)", "passed": bool(ok)}


def _notes(cfg: RunConfig, task: KeywordTask, validation_hours: float, test: list[Stream], budget: float) -> list[str]:
    """What the numbers rest on, said where a reader of the report looks."""
    hours = sum(st.duration_s for st in test) / 3600
    notes = [f"test streams: {len(test)} stream(s), {hours:.2f} h in all"
             + ("" if cfg.streaming.test_streams else ", built from the test split's clips only (each clip once per "
                                                       "stream, seeded gaps of background between them)")]
    one_fa = 1 / max(validation_hours, 1e-9)  # hours of non-keyword audio on the validation streams
    if one_fa > budget:
        notes.append(f"the validation streams are too short to resolve the false-accept budget: one false accept "
                     f"there is {one_fa:.3g}/h > {budget:g}/h, so the threshold had to allow none (raise --stream-hours)")
    if task.background is None:
        notes.append("false accepts were measured without real background audio (generated pink noise); a phone "
                     "hears kitchens, cars and television: pass --background with recordings of them")
    backend = registry.get(cfg.export.target)
    written = streaming_scheme(backend, cfg.quantize.scheme)
    if written != cfg.quantize.scheme:
        notes.append(f"the streaming file is {'float32' if written == 'none' else written}: target "
                     f"{cfg.export.target}'s streaming files take {', '.join(backend.streaming_schemes)}; "
                     f"--quantize {cfg.quantize.scheme} applies to the clip model")
    return notes


def remeasure_streaming(cfg: RunConfig, task: KeywordTask, path: Path, recorded: dict | None, threads: int,
                        arm64_hops: int | None = None) -> tuple[dict, list[dict]]:
    """``compress validate`` on a keyword folder: the streaming file at ``path`` run hop by hop on the rebuilt
    test streams in its runtime, scored at its own threshold; (the section, its checks). The result must equal
    the one recorded at export (same file, runtime and streams); MACs per second come from that record."""
    runner = registry.get(cfg.export.target).open_streaming(path, threads)
    streams = test_streams(cfg, task)
    timed = [run_timed(runner, st.audio) for st in streams]
    result = score([p for p, _ in timed], streams, runner.contract, cfg.streaming.tolerance_s)
    hop_seconds = np.concatenate([t for _, t in timed]) if getattr(runner, "measured", True) else None
    checks = []
    if recorded:
        was, now = recorded["test"]["all"], result["all"]
        same = (was["hits"], was["false_accepts"], was["spans"]) == (now["hits"], now["false_accepts"], now["spans"])
        checks.append({"name": "streaming result reproduces the one recorded at export", "passed": same,
                       "detail": f"hits {now['hits']}/{now['spans']}, false accepts {now['false_accepts']} "
                                 f"(recorded: {was['hits']}/{was['spans']}, {was['false_accepts']}) on "
                                 f"{len(streams)} test stream(s), {runner.engine}"})
    section = {"file": path.name, "runtime": runner.engine, "contract": dict(runner.contract.__dict__), "test": result,
               "latency_ms_per_hop": hop_latency(hop_seconds),
               "streams": describe_streams(streams),
               "cost": {"streaming_student": {"macs_per_second": None if not recorded else
                                              recorded["cost"]["streaming_student"]["macs_per_second"],
                                              "source": "recorded at export (the file's torch model)"}}}
    if arm64_hops:
        section["arm64_emulator"] = _arm64_stream_check(path, streams[0].audio, runner.contract.hop_samples,
                                                        arm64_hops, threads, checks)
    return section, checks


def _arm64_stream_check(path: Path, audio: np.ndarray, hop: int, hops: int, threads: int, checks: list) -> dict:
    """The first ``hops`` hops of a test stream on emulated aarch64 vs this host, as a check."""
    try:
        result = arm64_emu.compare_stream_with_host(path, audio[:hops * hop], threads)
    except (RuntimeError, arm64_emu.EmulatorUnavailable) as exc:
        checks.append({"name": "arm64 emulator reproduces the host's streaming outputs", "passed": False,
                       "detail": str(exc)})
        return {"error": str(exc)}
    ok = result["bit_exact"] or result["max_abs_diff"] <= 1e-4
    checks.append({"name": "arm64 emulator reproduces the host's streaming outputs", "passed": bool(ok),
                   "detail": f"max abs diff {result['max_abs_diff']:.3g} over {result['hops']} hops of a test stream; "
                             f"{result['engine']} vs {result['host_engine']}"})
    return result


def streaming_measured(report: dict) -> tuple[dict, dict]:
    """(what the keyword budgets compare: false accepts per hour and false-reject rate on the test streams,
    MACs per second; why one is missing) from a report (``devices.budgets``' measured keys)."""
    section = report.get("streaming")
    if not section:
        why = "no streaming student: the run is not --task keyword-spotting"
        return {}, dict.fromkeys(("false_accepts_per_hour", "false_reject_rate", "macs_per_second"), why)
    overall = section["test"]["all"]
    return ({"false_accepts_per_hour": overall["fa_per_hour"], "false_reject_rate": overall["frr"],
             "macs_per_second": section["cost"]["streaming_student"]["macs_per_second"]}, {})
