"""The yardstick for colour images: an ordinary small CNN a practitioner would write by hand, trained for a
given number of seconds, independent of the toolkit's models, schedules and defaults.

Three VGG-style blocks of 16/32/64 channels (two 3x3 conv + batch norm + ReLU each, then 2x2 max-pool), global
average pooling, a linear head; AdamW (lr 3e-3, weight decay 5e-4), one-cycle learning rate, label smoothing
0.1, random horizontal flip and a random shift of up to 1/8 of the side (zero padding), per-image
standardization. It trains for the seconds it is given, its one-cycle schedule driven by the share of them
spent (a step count fixed from a timed probe was 3.5x off when the probe met other work).

Used by ``bench/real_data.py`` to put "what the defaults reach" beside "what a plain CNN reaches in the same
minutes" on the same train/test split, read by the toolkit's own image-folder loader; ``widths_for`` sizes it
like the student for a second yardstick (the student's own size trained without a teacher).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def plain_cnn(channels: int, num_classes: int, widths=(16, 32, 64)) -> nn.Module:
    layers: list[nn.Module] = []
    for width in widths:
        for _ in range(2):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardization (each image to mean 0, std 1 over its pixels and channels)."""
    flat = x.flatten(1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-3)).view_as(x)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 1/8 of the side, one per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
    return x.gather(3, cols)


def one_cycle(fraction: float, max_lr: float = 3e-3) -> float:
    """torch's OneCycleLR shape (cosine up from max_lr/25 over the first 30%, cosine down to max_lr/25e4),
    as a function of the share of the time budget spent, not of a step count fixed in advance."""
    fraction = min(max(fraction, 0.0), 1.0)
    start, end = max_lr / 25, max_lr / 25 / 1e4
    if fraction < 0.3:
        return start + (max_lr - start) * (1 - math.cos(math.pi * fraction / 0.3)) / 2
    return end + (max_lr - end) * (1 + math.cos(math.pi * (fraction - 0.3) / 0.7)) / 2


def train_for(seconds: float, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              num_classes: int, batch: int = 64, seed: int = 0, widths=(16, 32, 64)) -> dict:
    """Train the plain CNN for ``seconds`` of wall time (the learning rate follows the share of the time
    spent, so the schedule ends when the time does, whatever the machine's speed or load) and return its
    test accuracy (percent), the epochs it got through, its steps and the seconds it took."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    xs, ys = standardize(torch.from_numpy(x_train).float()), torch.from_numpy(y_train).long()
    model = plain_cnn(xs.shape[1], num_classes, widths).train()
    opt = torch.optim.AdamW(model.parameters(), lr=one_cycle(0.0), weight_decay=5e-4)
    steps, spent = 0, 0.0
    while spent < seconds:
        order = torch.randperm(len(xs), generator=generator)
        for begin in range(0, len(xs), batch):
            spent = time.perf_counter() - started
            if spent >= seconds:
                break
            for group in opt.param_groups:
                group["lr"] = one_cycle(spent / seconds)
            idx = order[begin:begin + batch]
            loss = F.cross_entropy(model(augment(xs[idx], generator)), ys[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    model.eval()
    with torch.no_grad():
        xt = standardize(torch.from_numpy(x_test).float())
        predicted = torch.cat([model(xt[i:i + 512]).argmax(1) for i in range(0, len(xt), 512)])
    accuracy = 100 * float((predicted == torch.from_numpy(y_test)).float().mean())
    return {"accuracy": accuracy, "epochs": round(steps * batch / len(xs), 1), "steps": steps,
            "seconds": round(time.perf_counter() - started, 1), "budget_s": round(seconds, 1),
            "widths": list(widths), "params": sum(p.numel() for p in model.parameters())}


def widths_for(params: int, channels: int, num_classes: int) -> tuple[int, ...]:
    """The plain CNN's widths scaled (k/16 of 16/32/64, at least 4) so its parameter count is nearest ``params``:
    the yardstick at the student's own size."""
    def count(widths) -> int:
        return sum(p.numel() for p in plain_cnn(channels, num_classes, widths).parameters())

    candidates = [tuple(max(4, round(c * k / 16)) for c in (16, 32, 64)) for k in range(2, 33)]
    return min(candidates, key=lambda widths: abs(count(widths) - params))
