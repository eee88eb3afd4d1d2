"""The training loop: one readable function used for teacher members and for distillation alike.

What differs between the two is only the per-batch loss, passed in as ``batch_loss(logits, idx)``
(``idx`` indexes the training arrays, so soft targets can be looked up in a memory-mapped cache).
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torch import nn


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when available (or requested), else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Same recipe + seed -> same weights and metrics (on the same device type)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def jitter(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pixels`` in each direction, filling with the background value.

    The paper's MNIST jitter. One gather for the whole batch (no per-sample loop, no host sync).
    """
    if pixels <= 0 or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels, pixels, pixels, pixels), value=float(x.min()))
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def fit(
    model: nn.Module,
    x: np.ndarray,
    batch_loss: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: torch.device | None = None,
    jitter_pixels: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with Adam and a cosine learning-rate schedule; returns per-epoch mean loss."""
    device = device or pick_device()
    seed_everything(seed)
    model.to(device).train()
    x_all = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device)  # small data sets live on the device
    order_rng = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(x_all) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    history: list[float] = []
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=order_rng).numpy()
        total, seen = torch.zeros((), device=device), 0  # summed on the device: no host sync per step
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start:start + batch_size])  # sorted: friendlier to memory-mapped targets
            xb = jitter(x_all[torch.as_tensor(idx, device=device)], jitter_pixels, order_rng)
            loss = batch_loss(model(xb), idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        history.append(float(total) / seen)
        if on_epoch:
            on_epoch(epoch, history[-1])
    model.eval()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512, device: torch.device | None = None,
                   set_eval: bool = True) -> np.ndarray:
    """Logits of ``model`` on ``x`` (numpy in, numpy out), in eval mode.

    ``set_eval=False`` for modules that are already frozen for inference and refuse ``.eval()``
    (what ``torch.export.load(...).module()`` returns).
    """
    device = device or next(model.parameters(), torch.empty(0)).device
    if set_eval:
        model.eval()
    out = [model(torch.as_tensor(x[i:i + batch_size], dtype=torch.float32, device=device)).float().cpu().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
