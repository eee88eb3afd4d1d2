"""Labelled streams for measuring a keyword spotter: clips in random order with background between them.

Without the user's own long recordings (and their labels), the test streams are built from the test split
only, and the validation streams (where the threshold is chosen) from held-out training rows only: each clip
once per stream, in a seeded random order, separated by gaps of background, with background under the whole
stream at a set signal-to-noise ratio. The spans of every clip are recorded, so a detection can be scored.
Where the user gives no background audio, ``synthetic_background`` makes white or pink noise, and a report
must say that false accepts were measured without real background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compress.core.errors import InputError
from compress.keywords.scoring import Span


@dataclass(frozen=True)
class Stream:
    """One labelled stream: mono float32 PCM in [-1, 1], the clips' spans, and how it was made."""

    audio: np.ndarray
    spans: list[Span]
    sample_rate: int
    snr_db: float | None  # None: a recording (its own level)
    seed: int | None  # None: a recording, not built
    background: str

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def synthetic_background(kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS ``white`` or ``pink`` (1/f power, by shaping white noise's spectrum) noise."""
    white = rng.standard_normal(num_samples)
    if kind == "white":
        noise = white
    elif kind == "pink":
        spectrum = np.fft.rfft(white)
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
        noise = np.fft.irfft(spectrum, n=num_samples)
    else:
        raise InputError(f"background {kind!r}: expected white or pink (generated), or a folder of recordings")
    return (noise / max(rms(noise), 1e-12)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def build_stream(clips: np.ndarray, labels: list[str], sample_rate: int, *, snr_db: float, seed: int,
                 gap_s: tuple[float, float] = (0.5, 2.0), background: np.ndarray | None = None,
                 background_kind: str = "pink") -> Stream:
    """``clips`` ``(n, samples)`` with ``labels[i]`` each, once each in a seeded order, ``gap_s`` (uniform) of
    background before each and after the last; the background (``background``, looped, or generated noise of
    ``background_kind``) under the whole stream at ``snr_db`` below the clips' mean RMS. Peaks above 1 are
    scaled down with the whole stream (the SNR is kept)."""
    if len(clips) != len(labels) or not len(clips):
        raise InputError(f"streams: {len(clips)} clips and {len(labels)} labels; expected one label per clip, and clips")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    gaps = rng.uniform(gap_s[0], gap_s[1], size=len(clips) + 1)
    pieces, spans, at = [], [], 0
    for i, gap in zip(order, gaps):
        silent = int(round(gap * sample_rate))
        pieces += [np.zeros(silent, np.float32), np.asarray(clips[i], np.float32)]
        at += silent
        spans.append(Span(at / sample_rate, (at + clips.shape[1]) / sample_rate, labels[i]))
        at += clips.shape[1]
    pieces.append(np.zeros(int(round(gaps[-1] * sample_rate)), np.float32))
    speech = np.concatenate(pieces)
    if background is None:
        noise, name = synthetic_background(background_kind, len(speech), rng), f"{background_kind} noise (generated)"
    else:
        noise, name = np.resize(np.asarray(background, np.float32), len(speech)), "recorded"
        noise = noise / max(rms(noise), 1e-12)
    level = float(np.mean([rms(c) for c in clips])) / (10 ** (snr_db / 20))
    audio = speech + level * noise
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        audio = audio / peak
    return Stream(audio.astype(np.float32), spans, sample_rate, float(snr_db), int(seed), name)
