"""Speech model families: every model is ``LogMel`` front-end + a 2-D network, so it takes raw PCM.

``SPEECH_MODELS``: name -> factory(input_shape, num_classes) with ``input_shape == (num_samples,)`` (what
``compress.data.audio`` produces). The exported files therefore take ``(batch, num_samples)`` float32 PCM in
[-1, 1] at the front-end's sample rate and return logits; the app does no feature extraction.

The registry's factory signature carries no sample rate, so the registered models use
``FRONTEND`` (8 kHz, 25 ms Hann window, 20 ms hop, 40 Slaney mel bands from 20 Hz to 4 kHz): the audio
loader's default rate. Build models for other rates with the functions here, e.g.
``ds_cnn((16000,), 12, frontend={**FRONTEND, "sample_rate": 16000, "n_fft": 512, "hop": 320})``.

Families (all plain conv/BN/ReLU/pool/linear: ONNX, TFLite and Core ML convert them; no RNNs):

* teachers: ``speech-cnn`` (VGG-style), ``speech-resnet`` (residual), ``speech-wide-cnn`` (wide,
  shallow, with a tall frequency kernel first);
* students: the depthwise-separable CNN of Zhang et al. 2017, "Hello Edge: Keyword Spotting on
  Microcontrollers" (a strided 10×4 conv, then depthwise 3×3 + pointwise 1×1 blocks, average pooling), in
  the paper's three sizes ``ds-cnn-s`` (64 channels, 4 DS blocks), ``ds-cnn-m`` (172, 4) and ``ds-cnn-l``
  (276, 5), and ``ds-cnn``, this project's original smaller variant (40 channels, 3 blocks; not a paper size).

``SPEECH_FAMILIES`` (merged into ``compress.models.FAMILIES``): ``ds-cnn[:width[:depth]]``, the registered
``ds-cnn`` with its channels and blocks multiplied (``ds-cnn:1`` is ``ds-cnn``), for ``compress search``.

This module must not import ``compress.models`` (that module imports this one to register the families).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.core.errors import InputError
from compress.models.frontend import FLOAT_UNDER_INT8, LogMel
from compress.models.scaling import Family, member_name, scaled
from compress.models.streaming import crnn_stream, ds_cnn_stream

FRONTEND = {"sample_rate": 8000, "n_fft": 200, "hop": 160, "n_mels": 40, "fmin": 20.0, "fmax": None}


def _need_audio(input_shape, name: str) -> int:
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise InputError(f"model {name!r}: input shape {shape} does not fit; expects raw audio (samples,)")
    return int(shape[0])


class SpeechModel(nn.Module):
    """``LogMel`` front-end followed by a network over ``(batch, 1, n_mels, frames)``."""

    float_under_int8 = FLOAT_UNDER_INT8  # the log-mel stays float in a full-int8 file

    def __init__(self, frontend: LogMel, body: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.frontend(x))


def _frontend(input_shape, name: str, frontend: dict | None) -> tuple[LogMel, tuple[int, int, int]]:
    num_samples = _need_audio(input_shape, name)
    fe = LogMel(**(frontend or FRONTEND))
    return fe, fe.output_shape(num_samples)


def _cbr(cin: int, cout: int, k=3, stride=1, padding=1, groups=1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


def speech_cnn(input_shape, num_classes, channels=(16, 64, 128, 256), frontend: dict | None = None) -> nn.Module:
    """VGG-style teacher: one 3×3 conv/BN/ReLU per stage, 2×2 max-pool between stages, global average pooling."""
    fe, _ = _frontend(input_shape, "speech-cnn", frontend)
    layers: list[nn.Module] = [nn.BatchNorm2d(1)]
    c = 1
    for i, out in enumerate(channels):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers += _cbr(c, out)
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, num_classes)]
    return SpeechModel(fe, nn.Sequential(*layers))


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout, stride=stride),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (nn.Identity() if stride == 1 and cin == cout else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.skip(x) + self.body(x))


def speech_resnet(input_shape, num_classes, widths=(24, 48, 96), blocks=2, frontend: dict | None = None) -> nn.Module:
    """Residual teacher: stride-2 stem, ``blocks`` basic blocks per width (the first of each later stage strided)."""
    fe, _ = _frontend(input_shape, "speech-resnet", frontend)
    layers: list[nn.Module] = [nn.BatchNorm2d(1), *_cbr(1, widths[0], stride=2)]
    c = widths[0]
    for i, w in enumerate(widths):
        for b in range(blocks):
            layers.append(_Residual(c, w, 2 if (b == 0 and i > 0) else 1))
            c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return SpeechModel(fe, nn.Sequential(*layers))


def speech_wide_cnn(input_shape, num_classes, width=96, frontend: dict | None = None) -> nn.Module:
    """Wide, shallow teacher: a tall 8×3 (frequency × time) conv, 3×2 pooling, two wide 3×3 convs."""
    fe, _ = _frontend(input_shape, "speech-wide-cnn", frontend)
    layers: list[nn.Module] = [
        nn.BatchNorm2d(1), *_cbr(1, width // 2, k=(8, 3), padding=(0, 1)), nn.MaxPool2d((3, 2)),
        *_cbr(width // 2, width), nn.MaxPool2d(2),
        *_cbr(width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width, num_classes),
    ]
    return SpeechModel(fe, nn.Sequential(*layers))


DS_CNN_CHANNELS, DS_CNN_BLOCKS = 40, 3  # the registered ds-cnn: the ds-cnn family's base


def ds_cnn(input_shape, num_classes, channels=DS_CNN_CHANNELS, blocks=DS_CNN_BLOCKS, frontend: dict | None = None, *,
           first_kernel=(10, 4), first_stride=(2, 2), strided_block: int | None = 0, name: str = "ds-cnn") -> nn.Module:
    """DS-CNN student (Hello Edge): a strided ``first_kernel`` conv, ``blocks`` depthwise-separable blocks
    (depthwise 3×3 + pointwise 1×1, each with BN/ReLU; block ``strided_block`` has stride 2), average
    pooling, linear. Kernels and strides are (mel bands, frames).

    The defaults are the registered ``ds-cnn``: this project's original reduced variant, smaller than the
    paper's S (40 channels, 3 blocks, a 10-band × 4-frame first kernel; about 8k parameters). The paper's
    sizes are ``ds_cnn_size``."""
    fe, _ = _frontend(input_shape, name, frontend)
    padding = tuple((k - 1) // 2 for k in first_kernel)
    layers: list[nn.Module] = [nn.BatchNorm2d(1), *_cbr(1, channels, k=first_kernel, stride=first_stride,
                                                        padding=padding)]
    for b in range(blocks):
        layers += _cbr(channels, channels, stride=2 if b == strided_block else 1, groups=channels)  # depthwise 3x3
        layers += _cbr(channels, channels, k=1, padding=0)  # pointwise 1x1
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return SpeechModel(fe, nn.Sequential(*layers))


# Hello Edge's DS-CNN sizes (Zhang et al. 2017, appendix; ARM's ML-KWS-for-MCU ``model_size_info``): channels,
# DS blocks, stride of the 10×4 first conv as (time, frequency), index of the stride-2 DS block (None: none).
DS_CNN_SIZES = {
    "s": (64, 4, (2, 2), None),
    "m": (172, 4, (2, 1), 0),
    "l": (276, 5, (2, 1), 0),
}


def ds_cnn_size(input_shape, num_classes, size: str, frontend: dict | None = None) -> nn.Module:
    """DS-CNN-S/M/L as in the paper: the first conv is 10 frames × 4 bands (the paper's time × frequency
    kernel, here transposed to our (bands, frames) layout) with the paper's strides. The paper feeds 10 MFCCs
    per frame; the front-end here gives 40 log-mel bands, so the same topology costs about 4-5x the paper's
    operations (its parameters are the paper's: they do not depend on the input size)."""
    channels, blocks, (time_stride, freq_stride), strided_block = DS_CNN_SIZES[size]
    return ds_cnn(input_shape, num_classes, channels=channels, blocks=blocks, frontend=frontend,
                  first_kernel=(4, 10), first_stride=(freq_stride, time_stride), strided_block=strided_block,
                  name=f"ds-cnn-{size}")


def ds_cnn_family(input_shape, num_classes, width: float = 1.0, depth: float = 1.0) -> nn.Module:
    """DS-CNN keyword-spotting student scaled from ds-cnn; width multiplies the 40 channels, depth the 3 DS blocks.

    Rounded half up, at least 4 channels and 1 block; at 1.0 it is the registered ``ds-cnn`` (the 8 kHz
    ``FRONTEND``, the strided 10x4 first conv, the first block strided)."""
    return ds_cnn(input_shape, num_classes, channels=scaled(DS_CNN_CHANNELS, width, minimum=4),
                  blocks=scaled(DS_CNN_BLOCKS, depth, minimum=1), name=member_name("ds-cnn", width, depth))


SPEECH_MODELS = {
    # teachers
    "speech-cnn": lambda s, n: speech_cnn(s, n),
    "speech-resnet": lambda s, n: speech_resnet(s, n),
    "speech-wide-cnn": lambda s, n: speech_wide_cnn(s, n),
    # students
    "ds-cnn": lambda s, n: ds_cnn(s, n),
    "ds-cnn-s": lambda s, n: ds_cnn_size(s, n, "s"),
    "ds-cnn-m": lambda s, n: ds_cnn_size(s, n, "m"),
    "ds-cnn-l": lambda s, n: ds_cnn_size(s, n, "l"),
    "ds-cnn-stream": lambda s, n: ds_cnn_stream(s, n),  # streamable: compress.models.streaming
    "crnn-stream": lambda s, n: crnn_stream(s, n),  # streamable, with a GRU's hidden state
}

# Parametrized speech students: family -> Family, as compress.models.FAMILIES.
SPEECH_FAMILIES = {
    "ds-cnn": Family(ds_cnn_family, ("ds-cnn:0.5", "ds-cnn:2:0.5"),
                     search={"width": (0.25, 0.5, 1.0, 1.6), "depth": (0.5, 1.0)}, searched_for=("audio",)),
    # the streaming families: searched for --task keyword-spotting, not in the default clip search
    "ds-cnn-stream": Family(ds_cnn_stream, ("ds-cnn-stream:0.5", "ds-cnn-stream:1:0.67"),
                            search={"width": (0.5, 1.0), "depth": (0.67, 1.0)}, searched_for=("keyword-spotting",),
                            streaming=True),
    "crnn-stream": Family(crnn_stream, ("crnn-stream:0.5", "crnn-stream:1.5"), search={"width": (0.5, 1.0)},
                          searched_for=("keyword-spotting",), streaming=True),
}
