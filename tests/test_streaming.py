"""Streaming keyword-spotting students (``compress.models.streaming``) and the streaming file's contract
(``compress.export.common.streaming``): the streaming form, fed a real recording hop by hop from zero state,
reproduces the window model on every whole window, in torch and in each target's runtime; the files carry
the one I/O contract; the detection rule is the documented one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress import models
from compress.core.errors import InputError
from compress.export.common.streaming import (AUDIO_INPUT, PROBS_OUTPUT, StreamingContract, detections, run_stream,
                                              state_output)
from compress.export.registry import TARGETS, tolerance_for
from compress.models.streaming import StreamableDSCNN, StreamingStep
from tests.conftest import FSDD

CLIP = 8000  # FSDD's clips are loaded as 1 s at 8 kHz
STREAMING_TARGETS = [name for name, backend in TARGETS.items() if backend.export_streaming is not None]


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """A real 'long recording': 8 FSDD files of different speakers and digits, back to back (about 3.5 s)."""
    pytest.importorskip("soundfile")
    files = sorted((FSDD / "recordings").glob("*.wav")) if (FSDD / "recordings").is_dir() else []
    if not files:
        pytest.skip(f"FSDD not found at {FSDD} (the shared data sets are absent in a fresh clone)")
    from compress.data.audio import read_clip

    picked = files[::len(files) // 8][:8]
    return np.concatenate([read_clip(f, 8000) for f in picked]).astype(np.float32)


def _trained_like(model: StreamableDSCNN, seed: int = 0) -> StreamableDSCNN:
    """Batch-norm statistics and weights far from their initial values (an untrained BN is the identity
    and would hide a streaming bug in the normalization), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def _torch_step(step: StreamingStep):
    names = [s.name for s in step.state_specs]

    def run(audio: np.ndarray, states: dict) -> tuple:
        with torch.no_grad():
            probs, *new = step(torch.from_numpy(audio), *(torch.from_numpy(states[n]) for n in names))
        return probs.numpy(), {n: s.numpy() for n, s in zip(names, new)}

    return run, {s.name: s.shape for s in step.state_specs}


def _window_probs(model: StreamableDSCNN, audio: np.ndarray) -> dict[int, np.ndarray]:
    """hop -> softmax(model(the window ending at that hop)), for every hop whose window is whole."""
    hop, window = model.hop_samples, model.window_samples
    ends = [t for t in range(len(audio) // hop) if (t + 1) * hop >= window]
    x = np.stack([audio[(t + 1) * hop - window:(t + 1) * hop] for t in ends])
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    return dict(zip(ends, probs))


@pytest.mark.parametrize("name", ["ds-cnn-stream", "ds-cnn-stream:0.5:0.67", "ds-cnn-stream:1.5"])
def test_the_streaming_form_reproduces_the_window_model_on_every_window(recording, name):
    model = _trained_like(models.build(name, (CLIP,), 12))
    step, shapes = _torch_step(StreamingStep(model))
    streamed = run_stream(step, shapes, recording, model.hop_samples)
    windows = _window_probs(model, recording)
    assert len(windows) >= 100 and len(streamed) == len(recording) // model.hop_samples
    diff = max(float(np.abs(streamed[t] - p).max()) for t, p in windows.items())
    assert diff <= tolerance_for("onnx", "fp32")["max_rel"], diff
    assert not np.allclose(streamed[min(windows)], streamed[max(windows)])  # the stream's content moves the output


def test_the_window_is_the_front_ends_framing_and_a_too_short_clip_is_refused():
    model = models.build("ds-cnn-stream", (CLIP,), 12)
    fe = model.frontend
    assert model.hop_samples == fe.hop and (model.window_samples - fe.n_fft) % fe.hop == 0
    assert model.window_samples <= CLIP < model.window_samples + fe.hop
    with pytest.raises(InputError, match="receptive field"):
        models.build("ds-cnn-stream", (1600,), 12)
    with pytest.raises(InputError, match="raw audio"):
        models.build("ds-cnn-stream", (1, 28, 28), 10)


def test_streaming_costs_a_frame_per_hop_not_a_window():
    """What always-on costs: the step's MACs per hop against the window model's per hop (sliding windows)."""
    model = models.build("ds-cnn-stream", (CLIP,), 12).eval()
    step = StreamingStep(model)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step(torch.zeros(1, model.hop_samples), *(torch.zeros(s.shape) for s in step.state_specs))
    per_hop = counter.get_total_flops() // 2
    assert models.count_macs(model, (model.window_samples,)) >= 20 * per_hop


def test_the_recurrent_streaming_form_reproduces_the_model_on_the_stream_so_far(recording):
    """crnn-stream carries a GRU's hidden state across windows: hop t from zero states equals the model run on
    the first (t + 1) hops of the stream (causal framing and padding, compress.models.streaming)."""
    model = _trained_like(models.build("crnn-stream", (CLIP,), 12))
    step, shapes = _torch_step(model.streaming_step())
    streamed = run_stream(step, shapes, recording, model.hop_samples)
    hops = [0, 1, 4, 5, 30, len(streamed) // 2, len(streamed) - 1]
    with torch.no_grad():
        prefix = [torch.softmax(model(torch.from_numpy(recording[None, :(t + 1) * model.hop_samples])), 1)[0].numpy()
                  for t in hops]
    diff = max(float(np.abs(streamed[t] - p).max()) for t, p in zip(hops, prefix))
    assert diff <= tolerance_for("onnx", "fp32")["max_rel"], diff
    assert model.window_samples == CLIP and model.carries_state
    assert models.is_streamable("crnn-stream:0.5") and not models.is_streamable("ds-cnn")


@pytest.mark.parametrize("family", ["ds-cnn-stream:0.5", "crnn-stream:0.5"])
@pytest.mark.parametrize("target", STREAMING_TARGETS)
def test_each_target_writes_the_contract_and_streams_as_torch_does(recording, tmp_path, target, family):
    backend = TARGETS[target]
    model = _trained_like(models.build(family, (CLIP,), 12), seed=1)
    step = model.streaming_step()
    torch_step, shapes = _torch_step(step)
    labels = ["_silence_", "_unknown_", *[str(d) for d in range(10)]]
    contract = StreamingContract(8000, model.hop_samples, model.window_samples, labels, ["3", "7"], 0.6, 3, 25)
    path = backend.export_streaming(step, shapes, tmp_path / f"stream{backend.suffix}", contract, family)
    runner = backend.open_streaming(path)
    assert runner.contract == contract and runner.state_shapes == shapes
    got = run_stream(runner.step, runner.state_shapes, recording, model.hop_samples)
    want = run_stream(torch_step, shapes, recording, model.hop_samples)
    assert got.shape == want.shape == (len(recording) // model.hop_samples, len(labels))
    assert float(np.abs(got - want).max()) <= tolerance_for(target, "fp32")["max_rel"]
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("target", [t for t in STREAMING_TARGETS if "int8-weights" in TARGETS[t].streaming_schemes])
def test_an_int8_weights_streaming_file_keeps_the_float_contract_and_streams_close_to_torch(recording, tmp_path, target):
    """Dynamic-range / linear int8 weights: the network's weights shrink to int8 (the file loses at least half
    their float bytes; the log-mel's constants may stay float), its inputs, outputs and states stay float32
    (the contract), and its probabilities stay close to torch's hop by hop."""
    backend = TARGETS[target]
    model = _trained_like(models.build("ds-cnn-stream:0.5", (CLIP,), 12), seed=2)
    step = model.streaming_step()
    torch_step, shapes = _torch_step(step)
    labels = ["_silence_", "_unknown_", *[str(d) for d in range(10)]]
    contract = StreamingContract(8000, model.hop_samples, model.window_samples, labels, ["3"], 0.6, 3, 25)
    size = lambda p: sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size  # noqa: E731
    fp32 = backend.export_streaming(step, shapes, tmp_path / f"fp32{backend.suffix}", contract, "s")
    int8 = backend.export_streaming(step, shapes, tmp_path / f"int8{backend.suffix}", contract, "s",
                                    scheme="int8-weights")
    assert size(fp32) - size(int8) >= 0.5 * 4 * sum(p.numel() for p in model.parameters())
    runner = backend.open_streaming(int8)
    assert runner.contract == contract and runner.state_shapes == shapes
    probs, states = runner.step(recording[None, :model.hop_samples], {n: np.zeros(s, np.float32) for n, s in shapes.items()})
    assert np.asarray(probs).dtype == np.float32 and all(np.asarray(v).dtype == np.float32 for v in states.values())
    got = run_stream(runner.step, runner.state_shapes, recording, model.hop_samples)
    want = run_stream(torch_step, shapes, recording, model.hop_samples)
    assert float(np.abs(got - want).max()) <= 0.01  # observed <= 4e-4 (ORT, LiteRT, Core ML evaluator)
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.97


def test_the_onnx_file_names_its_inputs_and_outputs_as_the_contract_says(tmp_path):
    pytest.importorskip("onnx")
    import onnx

    model = models.build("ds-cnn-stream:0.5", (CLIP,), 12).eval()
    step = StreamingStep(model)
    shapes = {s.name: s.shape for s in step.state_specs}
    contract = StreamingContract(8000, model.hop_samples, model.window_samples, [str(i) for i in range(12)], ["3"])
    path = TARGETS["onnx"].export_streaming(step, shapes, tmp_path / "s.onnx", contract, "s")
    graph = onnx.load(str(path)).graph

    def dims(v):
        return tuple(d.dim_value for d in v.type.tensor_type.shape.dim)

    inputs, outputs = {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}
    assert inputs == {AUDIO_INPUT: (1, model.hop_samples), **shapes}
    assert outputs == {PROBS_OUTPUT: (1, 12), **{state_output(n): s for n, s in shapes.items()}}


def test_the_detection_rule_smooths_thresholds_and_waits_out_the_refractory_hops():
    labels = ["_silence_", "_unknown_", "yes", "no"]
    c = StreamingContract(8000, 160, 800, labels, ["yes", "no"], threshold=0.5, smoothing_hops=2, refractory_hops=3)
    p = np.zeros((12, 4))
    p[:, 0] = 1.0
    p[0, 2], p[1, 2] = 0.5, 0.6          # hop 0: one hop so far, mean 0.5 -> fires; hop 1 (0.55) is refractory
    p[5, 2], p[6, 2], p[7, 2] = 1.0, 0.2, 0.9  # hop 5: mean(0, 1) = 0.5 -> fires; 6 (0.6), 7 (0.55) refractory
    p[10, 2] = p[11, 2] = 1.0            # hop 10 fires (the refractory hops of 5 are 6..8), 11 is refractory
    p[8, 3], p[9, 3] = 0.99, 0.01        # 'no': hop 8 mean(0, 0.99) = 0.495 < 0.5; hop 9 mean 0.5 -> fires
    assert detections(p, c) == [(0, "yes"), (5, "yes"), (9, "no"), (10, "yes")]
    assert detections(p, StreamingContract(8000, 160, 800, labels, ["yes"], 0.5, 1, 0)) == \
           [(0, "yes"), (1, "yes"), (5, "yes"), (7, "yes"), (10, "yes"), (11, "yes")]


@pytest.mark.parametrize("family", ["ds-cnn-stream:0.5", "crnn-stream:0.5"])
def test_core_mls_stateful_form_streams_as_torch_does_with_float16_states(recording, tmp_path, family):
    """iOS18: the states inside the model (ct.StateType), run by the MIL evaluator's read/write_state; Core ML
    stores states in float16, so the bound is fp16 rounding of the stored frames, not the fp32 one."""
    backend = TARGETS["coreml"]
    model = _trained_like(models.build(family, (CLIP,), 12), seed=2)
    step = model.streaming_step()
    torch_step, shapes = _torch_step(step)
    contract = StreamingContract(8000, model.hop_samples, model.window_samples, [str(i) for i in range(12)], ["3"])
    assert backend.export_stateful_streaming(step, shapes, tmp_path / "old.mlpackage", contract, family,
                                             {"deployment_target": "iOS17"}) is None  # states need iOS18
    path = backend.export_stateful_streaming(step, shapes, tmp_path / "s.mlpackage", contract, family,
                                             {"deployment_target": "iOS18"})
    runner = backend.open_streaming(path)
    assert runner.stateful and runner.contract == contract and set(runner.program.states) == set(shapes)
    audio = recording[:200 * model.hop_samples]
    got = run_stream(runner.step, runner.state_shapes, audio, model.hop_samples)
    want = run_stream(torch_step, shapes, audio, model.hop_samples)
    assert float(np.abs(got - want).max()) <= 1e-2 and (got.argmax(1) == want.argmax(1)).mean() >= 0.99
