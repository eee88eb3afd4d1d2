"""Streaming keyword-spotting students: trained on windows, run hop by hop with explicit state.

A phone's wake-word model listens to a continuous microphone stream and is run every hop (tens of ms). A
clip model recomputes its whole window at every hop; a streaming model computes only what the newest hop
adds (google-research's kws_streaming). ``StreamableDSCNN`` is a DS-CNN built so that both forms compute
the same function:

* the log-mel front-end is inside the model (``compress.models.frontend.LogMel``, ``center=False``), with
  ``hop_samples`` = the front-end's hop: each hop of audio completes exactly one new frame;
* every convolution is *valid* (unpadded) along time with stride 1 (padding and strides only along the mel
  bands), so a frame's features depend on a fixed number of past frames only;
* the head averages the last ``pooled_frames`` frames' features (and the bands), then a linear layer.

``StreamableDSCNN(window)`` is the non-streaming form: ``(batch, window_samples)`` PCM -> logits, trained and
distilled like any student. ``StreamingStep(model)`` is the streaming form over the *same* modules (the same
weights): ``(audio [1, hop_samples], *states) -> (probs [1, classes], *states_out)``, where the states are
ring buffers (the last ``n_fft - hop`` samples; the last ``k - 1`` frames into each time-kernel ``k``
convolution; the last ``pooled_frames - 1`` pooled feature vectors), all zeros at the start of a stream.
Once a stream holds a whole window (hop ``t`` with ``(t + 1) * hop_samples >= window_samples``), the step's
``probs`` equal ``softmax(model(last window_samples samples))`` up to float rounding (the order of the sums
differs); ``tests/test_streaming.py`` checks it hop by hop on real recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compress.core.errors import InputError
from compress.models.frontend import FLOAT_UNDER_INT8, LogMel
from compress.models.scaling import member_name, scaled

# 8 kHz, 25 ms windows every 20 ms: each 160-sample hop completes one 200-sample frame
STREAM_FRONTEND = {"sample_rate": 8000, "n_fft": 200, "hop": 160, "n_mels": 40, "fmin": 20.0, "fmax": None}
STREAM_CHANNELS, STREAM_BLOCKS = 48, 3  # the registered ds-cnn-stream: the family's base
FIRST_KERNEL = (10, 5)  # (mel bands, frames) of the first convolution; stride 2 along the bands


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the streaming form: its input name (the output is ``<name>_out``) and shape."""

    name: str
    shape: tuple[int, ...]


def _cbr(cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int], groups: int = 1) -> nn.Sequential:
    """Conv (valid along time, 'same' along the bands) + BN + ReLU."""
    padding = ((kernel[0] - 1) // 2, 0)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class StreamableDSCNN(nn.Module):
    """DS-CNN whose time axis is causal and unpadded, so it converts to a streaming step (module docstring).

    ``window_samples`` is the largest window of the front-end's framing that fits the clips (``center=False``:
    trailing samples that do not fill a frame are left out); the input may hold more samples, whose extra tail
    is ignored as a clip model's front-end ignores it."""

    float_under_int8 = FLOAT_UNDER_INT8  # the log-mel stays float in a full-int8 file

    def __init__(self, num_samples: int, num_classes: int, channels: int = STREAM_CHANNELS,
                 blocks: int = STREAM_BLOCKS, frontend: dict | None = None, name: str = "ds-cnn-stream"):
        super().__init__()
        self.frontend = LogMel(**(frontend or STREAM_FRONTEND))
        fe = self.frontend
        if fe.n_fft < fe.hop:
            raise InputError(f"model {name!r}: n_fft {fe.n_fft} < hop {fe.hop}; expected frames that overlap or touch "
                             "(each hop completes one frame)")
        frames = fe.output_shape(num_samples)[2]
        self.time_kernels = (FIRST_KERNEL[1],) + (3,) * blocks
        self.pooled_frames = frames - sum(k - 1 for k in self.time_kernels)
        if self.pooled_frames < 1:
            raise InputError(f"model {name!r}: clips of {num_samples} samples give {frames} frames, fewer than its "
                             f"receptive field of {frames - self.pooled_frames + 1}; expected longer clips")
        self.window_samples = fe.n_fft + (frames - 1) * fe.hop
        self.hop_samples = fe.hop
        self.input_norm = nn.BatchNorm2d(1)
        self.first = _cbr(1, channels, FIRST_KERNEL, (2, 1))
        self.blocks = nn.ModuleList(nn.Sequential(_cbr(channels, channels, (3, 3), (1, 1), groups=channels),
                                                  _cbr(channels, channels, (1, 1), (1, 1)))
                                    for _ in range(blocks))
        self.classifier = nn.Linear(channels, num_classes)

    def streaming_step(self) -> StreamingStep:
        """The hop-by-hop form over these weights (what every streaming family's model gives)."""
        return StreamingStep(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel ``(batch, 1, bands, frames)`` -> per-frame features ``(batch, channels, frames')``."""
        h = self.first(self.input_norm(x))
        for block in self.blocks:
            h = block(h)
        return h.mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.frontend(x[:, -self.window_samples:] if x.shape[1] > self.window_samples else x))
        return self.classifier(h[:, :, -self.pooled_frames:].mean(dim=2))


class StreamingStep(nn.Module):
    """One hop of ``StreamableDSCNN`` with explicit state: ``(audio, *states) -> (probs, *states_out)``.

    Shares the model's modules (its weights; eval mode for BN). ``state_specs`` lists the states in argument
    order; ``zero_states`` gives the start of a stream."""

    def __init__(self, model: StreamableDSCNN):
        super().__init__()
        self.model = model.eval()
        # the model's float_under_int8 as this module names them: a quantized streaming file keeps them float
        self.float_under_int8 = tuple(f"model.{n}" for n in model.float_under_int8)
        fe = model.frontend
        channels, bands = model.classifier.in_features, self._bands(model)
        self.state_specs = (StateSpec("audio_tail", (1, fe.n_fft - fe.hop)),
                            StateSpec("first_frames", (1, 1, fe.n_mels, model.time_kernels[0] - 1)),
                            *(StateSpec(f"block{i}_frames", (1, channels, bands, k - 1))
                              for i, k in enumerate(model.time_kernels[1:])),
                            StateSpec("pooled_frames", (1, channels, model.pooled_frames - 1)))

    @staticmethod
    def _bands(model: StreamableDSCNN) -> int:
        conv = model.first[0]
        return (model.frontend.n_mels + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1

    def zero_states(self) -> list[torch.Tensor]:
        return [torch.zeros(spec.shape) for spec in self.state_specs]

    @staticmethod
    def _push(state: torch.Tensor, new: torch.Tensor, added: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the window: ``state`` then ``new`` along the last axis, the next state: that window minus its
        oldest ``added`` entries). ``added`` is a Python constant, so a trace holds no shape arithmetic (Core ML's
        converter refuses the ``int`` ops a traced ``x.shape`` leaves)."""
        window = torch.cat([state, new], dim=-1)
        return window, window[..., added:]

    def forward(self, audio: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        tail, first, *block_states, pooled = states
        samples, tail_out = self._push(tail, audio, m.hop_samples)
        frame = m.input_norm(m.frontend(samples))  # (1, 1, bands, 1): the newest frame
        window, first_out = self._push(first, frame, 1)
        h = m.first(window)
        outs = []
        for block, state in zip(m.blocks, block_states):
            window, state_out = self._push(state, h, 1)
            h = block(window)
            outs.append(state_out)
        window, pooled_out = self._push(pooled, h.mean(dim=2), 1)
        probs = torch.softmax(m.classifier(window.mean(dim=2)), dim=1)
        return (probs, tail_out, first_out, *outs, pooled_out)


def stream_frontend(frame: float) -> dict:
    """The streaming front-end with its frame (``n_fft``) and hop both scaled by ``frame``: a longer hop runs
    the network fewer times per second of audio (the always-on cost), a shorter frame costs less per hop
    (n_fft x (n_fft + 2) MACs); both change what the model hears, so they are a search axis, not a free win."""
    return {**STREAM_FRONTEND, "n_fft": scaled(STREAM_FRONTEND["n_fft"], frame, minimum=16),
            "hop": scaled(STREAM_FRONTEND["hop"], frame, minimum=8)}


def ds_cnn_stream(input_shape, num_classes, width: float = 1.0, depth: float = 1.0, frame: float = 1.0) -> nn.Module:
    """Streaming DS-CNN keyword spotter: causal, unpadded in time, converts to a hop-by-hop step with state.

    Width multiplies the 48 channels, depth the 3 depthwise-separable blocks (at least 4 channels, 1 block),
    frame the front-end's 25 ms frame and 20 ms hop (``stream_frontend``)."""
    shape = tuple(input_shape)
    name = member_name("ds-cnn-stream", width, depth, frame)
    if len(shape) != 1:
        raise InputError(f"model {name!r}: input shape {shape} does not fit; expects raw audio (samples,)")
    return StreamableDSCNN(shape[0], num_classes, channels=scaled(STREAM_CHANNELS, width, minimum=4),
                           blocks=scaled(STREAM_BLOCKS, depth, minimum=1), frontend=stream_frontend(frame), name=name)


CRNN_CHANNELS, CRNN_HIDDEN = 32, 64  # the registered crnn-stream: the family's base


class GRUCell(nn.Module):
    """``torch.nn.GRUCell``'s equations from two linear layers and elementwise ops: every converter lowers
    these the same way (the recurrent ops themselves are lowered differently by each, or not at all)."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.from_input = nn.Linear(inputs, 3 * hidden)
        self.from_hidden = nn.Linear(hidden, 3 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gx, gh, n = self.from_input(x), self.from_hidden(h), self.hidden
        reset = torch.sigmoid(gx[:, :n] + gh[:, :n])
        update = torch.sigmoid(gx[:, n:2 * n] + gh[:, n:2 * n])
        new = torch.tanh(gx[:, 2 * n:] + reset * gh[:, 2 * n:])
        return (1 - update) * new + update * h


class StreamableCRNN(nn.Module):
    """A convolutional-recurrent keyword spotter (a CRNN, Arik et al. 2017): a causal convolution over the
    log-mel frames, a GRU over time, the class scores from its last hidden state.

    Causal end to end, so its streaming form is exact: the audio is left-padded with the ``n_fft - hop``
    samples a stream's first hop lacks, and the normalized frames with the ``k - 1`` zero frames the
    convolution's ring buffer starts with; the GRU starts from zeros. ``forward(x)`` is the model on the
    stream so far: the streaming step at hop ``t`` (``CRNNStep``, from zero states) equals ``forward`` of the
    first ``(t + 1) * hop`` samples (``carries_state``: unlike the DS-CNN, whose output depends on the last
    window only, the GRU remembers the whole stream; trained on clips from zero state, as kws_streaming's
    GRU models are)."""

    float_under_int8 = FLOAT_UNDER_INT8  # the log-mel stays float in a full-int8 file

    carries_state = True

    def __init__(self, num_samples: int, num_classes: int, channels: int = CRNN_CHANNELS, hidden: int = CRNN_HIDDEN,
                 frontend: dict | None = None, name: str = "crnn-stream"):
        super().__init__()
        self.frontend = LogMel(**(frontend or STREAM_FRONTEND))
        fe = self.frontend
        frames = fe.output_shape(num_samples + fe.n_fft - fe.hop)[2]
        if frames < FIRST_KERNEL[1]:
            raise InputError(f"model {name!r}: clips of {num_samples} samples give {frames} frames; expected at "
                             f"least {FIRST_KERNEL[1]}")
        self.hop_samples = fe.hop
        self.window_samples = frames * fe.hop  # what one training clip covers (the causal framing)
        self.time_kernels = (FIRST_KERNEL[1],)
        self.input_norm = nn.BatchNorm2d(1)
        self.first = _cbr(1, channels, FIRST_KERNEL, (2, 1))
        self.bands = (fe.n_mels + 2 * ((FIRST_KERNEL[0] - 1) // 2) - FIRST_KERNEL[0]) // 2 + 1
        self.cell = GRUCell(channels * self.bands, hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def streaming_step(self) -> CRNNStep:
        return CRNNStep(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fe = self.frontend
        frames = self.input_norm(fe(nn.functional.pad(x, (fe.n_fft - fe.hop, 0))))
        h = self.first(nn.functional.pad(frames, (self.time_kernels[0] - 1, 0)))
        features = h.flatten(1, 2)  # (batch, channels * bands, frames)
        state = x.new_zeros(x.shape[0], self.cell.hidden)
        for t in range(features.shape[2]):
            state = self.cell(features[:, :, t], state)
        return self.classifier(state)


class CRNNStep(nn.Module):
    """One hop of ``StreamableCRNN`` with explicit state: the audio tail, the convolution's ring buffer of
    normalized frames, the GRU's hidden state."""

    def __init__(self, model: StreamableCRNN):
        super().__init__()
        self.model = model.eval()
        # the model's float_under_int8 as this module names them: a quantized streaming file keeps them float
        self.float_under_int8 = tuple(f"model.{n}" for n in model.float_under_int8)
        fe = model.frontend
        self.state_specs = (StateSpec("audio_tail", (1, fe.n_fft - fe.hop)),
                            StateSpec("first_frames", (1, 1, fe.n_mels, model.time_kernels[0] - 1)),
                            StateSpec("gru_hidden", (1, model.cell.hidden)))

    def zero_states(self) -> list[torch.Tensor]:
        return [torch.zeros(spec.shape) for spec in self.state_specs]

    def forward(self, audio: torch.Tensor, tail: torch.Tensor, first: torch.Tensor,
                hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        samples, tail_out = StreamingStep._push(tail, audio, m.hop_samples)
        frame = m.input_norm(m.frontend(samples))
        window, first_out = StreamingStep._push(first, frame, 1)
        hidden_out = m.cell(m.first(window).flatten(1), hidden)
        return torch.softmax(m.classifier(hidden_out), dim=1), tail_out, first_out, hidden_out


def crnn_stream(input_shape, num_classes, width: float = 1.0, frame: float = 1.0) -> nn.Module:
    """Streaming CRNN keyword spotter: a causal convolution and a GRU, stepped hop by hop with its hidden state.

    Width multiplies the 32 channels and the 64 GRU units (at least 4 and 8), frame the front-end's 25 ms
    frame and 20 ms hop (``stream_frontend``)."""
    shape = tuple(input_shape)
    name = member_name("crnn-stream", width, frame)
    if len(shape) != 1:
        raise InputError(f"model {name!r}: input shape {shape} does not fit; expects raw audio (samples,)")
    return StreamableCRNN(shape[0], num_classes, channels=scaled(CRNN_CHANNELS, width, minimum=4),
                          hidden=scaled(CRNN_HIDDEN, width, minimum=8), frontend=stream_frontend(frame), name=name)
