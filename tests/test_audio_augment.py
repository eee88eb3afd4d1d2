"""Audio augmentation in training (``compress.distill.train.Augment``: time shift and generated noise at a
random SNR), as the keyword-spotting recipe uses it: what it does to a batch, seeded, and its spelling."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from compress.core.errors import InputError
from compress.distill.train import Augment, augment_batch, parse_augment


def _clicks(n: int = 64, length: int = 8000) -> torch.Tensor:
    x = torch.zeros(n, length)
    x[:, 4000:4080] = 0.5
    return x


def test_a_time_shift_moves_each_clip_by_at_most_its_range_and_fills_with_zeros():
    augment = replace(parse_augment("shift=100"), sample_rate=8000)  # 100 ms at 8 kHz: up to 800 samples
    y = augment_batch(_clicks(), augment, torch.Generator().manual_seed(0))
    starts = np.array([int(torch.nonzero(row)[0]) for row in y])
    assert np.all(np.abs(starts - 4000) <= 800) and len(set(starts.tolist())) > 20
    assert torch.all((y == 0) | (y == 0.5)) and torch.all(y.sum(dim=1) == 40.0)  # moved, not scaled or cut
    again = augment_batch(_clicks(), augment, torch.Generator().manual_seed(0))
    assert torch.equal(y, again)


def test_noise_is_mixed_into_the_share_of_clips_asked_at_the_snr_drawn():
    augment = parse_augment("noise=10:10")
    x = 0.1 * torch.randn(400, 4000, generator=torch.Generator().manual_seed(1))
    y = augment_batch(x, augment, torch.Generator().manual_seed(2))
    noise = (y - x)
    mixed = noise.abs().amax(dim=1) > 0
    assert mixed.float().mean().item() == pytest.approx(augment.noise_prob, abs=0.06)
    snr = 20 * torch.log10(x[mixed].pow(2).mean(1).sqrt() / noise[mixed].pow(2).mean(1).sqrt())
    assert torch.allclose(snr, torch.full_like(snr, 10.0), atol=0.01)


def test_audio_augmentation_leaves_images_alone_and_image_augmentation_leaves_audio_alone():
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(augment_batch(images, parse_augment("noise=5:20"), torch.Generator()), images)
    clips = torch.rand(4, 100)
    assert torch.equal(augment_batch(clips, parse_augment("crop=2,flip"), torch.Generator()), clips)


def test_the_audio_spelling_and_its_errors():
    assert parse_augment("shift=100,noise=5:20") == Augment(shift_ms=100, noise_snr=(5.0, 20.0))
    assert "time shift up to 100 ms" in parse_augment("shift=100").describe()
    for bad in ("shift=-5", "noise=20:5", "noise=5", "shift=fast"):
        with pytest.raises(InputError, match="shift=MS, noise=LOW:HIGH"):
            parse_augment(bad)
    with pytest.raises(InputError, match="sample rate is unknown"):
        augment_batch(torch.zeros(2, 100), parse_augment("shift=10"), torch.Generator())


def test_gain_scales_each_clip_by_a_gain_drawn_in_its_range():
    x = 0.1 * torch.randn(300, 1000, generator=torch.Generator().manual_seed(3))
    y = augment_batch(x, parse_augment("gain=-6:6"), torch.Generator().manual_seed(4))
    gains_db = 20 * torch.log10(y.pow(2).mean(1).sqrt() / x.pow(2).mean(1).sqrt())
    assert gains_db.min() >= -6.001 and gains_db.max() <= 6.001 and gains_db.std() > 2.5
    ratio = y / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)  # one gain per clip


def test_speed_resamples_each_clip_and_keeps_its_length():
    """A 100 Hz sine played at x0.8..x1.25 keeps its length; its zero crossings move to the speed drawn."""
    t = torch.arange(8000) / 8000
    x = torch.sin(2 * torch.pi * 100 * t)[None].repeat(32, 1) * 0.5
    augment = replace(parse_augment("speed=0.8:1.25"), sample_rate=8000)
    y = augment_batch(x, augment, torch.Generator().manual_seed(5))
    assert y.shape == x.shape
    crossings = ((y[:, 1:3000] > 0) != (y[:, :2999] > 0)).sum(dim=1).float()  # 100 Hz: 75 in 0.375 s
    speeds = crossings / 75
    assert speeds.min() >= 0.75 and speeds.max() <= 1.3 and speeds.std() > 0.05
    with pytest.raises(InputError, match="speed=LOW:HIGH"):
        parse_augment("speed=0.1:3")
    assert "speed x0.8..1.25" in augment.describe() and "gain -6..6 dB" in parse_augment("gain=-6:6").describe()
