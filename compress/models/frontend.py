"""An exportable log-mel front-end: raw PCM ``(batch, samples)`` -> log-mel ``(batch, 1, n_mels, frames)``.

``LogMel`` is built only from ops that torch.onnx (dynamo), litert-torch and coremltools (TorchScript
trace) all convert, so a speech model that starts with it takes raw PCM on the device:

1. STFT as a fixed-weight ``Conv1d``: ``n_fft``-tap kernels holding the windowed DFT basis
   (``w[n]·cos(2πkn/N)`` for bins ``k = 0..N/2`` and ``-w[n]·sin(2πkn/N)`` for ``k = 1..N/2-1``; the sine
   rows of bins 0 and N/2 are identically zero and are dropped), stride ``hop``. No ``torch.stft``, no
   complex tensors.
2. Power and mel filterbank in one step: the conv output is squared and a fixed 1×1 ``Conv1d`` (a matmul)
   applies the mel filters to both the cosine and the sine rows, so ``mel = M·(re² + im²)``.
3. ``log(mel + eps)``.

Framing: ``center=False`` (librosa's name): frame ``t`` covers samples ``[t·hop, t·hop + n_fft)``; no
padding, ``frames = 1 + (samples - n_fft) // hop``; trailing samples that do not fill a frame are ignored.

Window: periodic Hann (``scipy.signal.get_window("hann", n_fft)``, librosa's default). Mel filters:
Slaney-style, computed in numpy at construction exactly like ``librosa.filters.mel(htk=False,
norm="slaney")`` (triangles on the Slaney mel scale, linear below 1 kHz and logarithmic above, each
scaled by ``2 / (upper edge - lower edge)`` in Hz).

Agreement with librosa: ``LogMel(x)`` equals ``log(librosa.feature.melspectrogram(y=x, sr, n_fft,
hop_length=hop, window="hann", center=False, power=2, n_mels, fmin, fmax, htk=False, norm="slaney") +
eps)`` within ``LIBROSA_TOLERANCE`` (max abs difference in the log domain, float32 torch vs float64
librosa; checked in ``tests/test_frontend.py`` on real FSDD clips and a synthetic sine).

The weights are non-persistent buffers: they are rebuilt from the constructor arguments, so they add
nothing to a checkpoint's ``state_dict`` and are not counted as parameters, but they are baked into every
exported file as constants.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from compress.core.errors import InputError

# Max |LogMel - log(librosa mel + eps)| in the log domain (float32 torch vs float64 librosa). Observed with
# the speech models' recipe: <= 4e-6 on real FSDD clips, 6e-5 on a synthetic two-tone sine; the error is
# float32 rounding of the DFT sums, which the log amplifies where a band's power is near eps (silence).
LIBROSA_TOLERANCE = 1e-3

# A model's ``float_under_int8``: the modules a full-int8 export keeps in float (targets that take
# ``float_layers`` read it). The log-mel's power spectrum spans ten decades before the log: one int8 scale
# cannot hold it, and LiteRT's converter refuses the reshape after it outright (kws_streaming quantizes after
# the feature extractor too). What follows the front-end is quantized as usual.
FLOAT_UNDER_INT8 = ("frontend",)


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale (librosa ``hz_to_mel(htk=False)``): linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(freq >= min_log_hz, min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel` (librosa ``mel_to_hz(htk=False)``)."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` Slaney-normalized triangular filters (librosa.filters.mel's default)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fftfreqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2: n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window("hann", n, fftbins=True)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


class LogMel(nn.Module):
    """Raw PCM ``(batch, samples)`` float32 in [-1, 1] -> ``log(mel power + eps)`` ``(batch, 1, n_mels, frames)``.

    ``sample_rate`` (Hz), ``n_fft`` (window = FFT length, samples), ``hop`` (stride, samples), ``n_mels``,
    ``fmin``/``fmax`` (Hz; fmax defaults to Nyquist), ``eps`` (added before the log; bounds the log of
    silence at ``log(eps)``). See the module docstring for the exact computation and its librosa twin.
    """

    def __init__(self, sample_rate: int = 8000, n_fft: int = 256, hop: int = 160, n_mels: int = 40,
                 fmin: float = 20.0, fmax: float | None = None, eps: float = 1e-6):
        super().__init__()
        if n_fft < 2 or hop < 1 or n_mels < 1:
            raise InputError(f"LogMel: n_fft={n_fft}, hop={hop}, n_mels={n_mels}; expected n_fft >= 2, hop >= 1, n_mels >= 1")
        fmax_ = sample_rate / 2.0 if fmax is None else float(fmax)
        if not 0 <= fmin < fmax_ <= sample_rate / 2.0:
            raise InputError(f"LogMel: fmin={fmin}, fmax={fmax_}; expected 0 <= fmin < fmax <= {sample_rate / 2:g} (Nyquist)")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = int(sample_rate), int(n_fft), int(hop), int(n_mels)
        self.fmin, self.fmax, self.eps = float(fmin), fmax_, float(eps)
        n = np.arange(n_fft)
        window = hann_window(n_fft)
        cos_bins = np.arange(n_fft // 2 + 1)
        sin_bins = np.arange(1, (n_fft + 1) // 2)  # sin rows of bin 0 (and N/2 for even N) are all zero
        cos_k = window[None, :] * np.cos(2 * np.pi * cos_bins[:, None] * n[None, :] / n_fft)
        sin_k = -window[None, :] * np.sin(2 * np.pi * sin_bins[:, None] * n[None, :] / n_fft)
        dft = np.concatenate([cos_k, sin_k], axis=0)[:, None, :]  # (channels, 1, n_fft)
        mel = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax_)  # (n_mels, bins)
        mel2 = np.concatenate([mel, mel[:, sin_bins]], axis=1)[:, :, None]  # applies to re² and im² rows
        self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32), persistent=False)
        self.register_buffer("mel", torch.tensor(mel2, dtype=torch.float32), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return 1 + (int(num_samples) - self.n_fft) // self.hop

    def output_shape(self, num_samples: int) -> tuple[int, int, int]:
        """``(1, n_mels, frames)`` for one clip of ``num_samples`` samples."""
        if num_samples < self.n_fft:
            raise InputError(f"LogMel: clips of {num_samples} samples are shorter than one window ({self.n_fft}); "
                             "expected at least n_fft samples")
        return (1, self.n_mels, self.num_frames(num_samples))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = nn.functional.conv1d(x.unsqueeze(1), self.dft, stride=self.hop)  # (B, C, frames)
        power = spec * spec
        mel = nn.functional.conv1d(power, self.mel)  # (B, n_mels, frames)
        return torch.log(mel + self.eps).unsqueeze(1)

    def extra_repr(self) -> str:
        return (f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop={self.hop}, n_mels={self.n_mels}, "
                f"fmin={self.fmin:g}, fmax={self.fmax:g}, eps={self.eps:g}, center=False")

    def describe(self) -> dict:
        """The recipe, for manifests: everything an app needs to reproduce the features (it need not)."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop": self.hop, "n_mels": self.n_mels,
                "fmin": self.fmin, "fmax": self.fmax, "window": "hann (periodic)", "center": False,
                "power": 2, "mel": "slaney (librosa htk=False, norm='slaney')", "log": f"log(mel + {self.eps:g})"}
