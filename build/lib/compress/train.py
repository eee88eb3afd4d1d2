"""The training loop: one readable function used for teacher members and for distillation alike.

What differs between the two is only the per-batch loss, passed in as ``batch_loss(logits, idx)``
(``idx`` indexes the training arrays, so soft targets can be looked up in a memory-mapped cache).
"""

from __future__ import annotations

import random
from pathlib import Path
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


OPTIMIZERS = {
    "adam": lambda params, lr, wd: torch.optim.Adam(params, lr=lr, weight_decay=wd),
    "adamw": lambda params, lr, wd: torch.optim.AdamW(params, lr=lr, weight_decay=wd),
    "sgd": lambda params, lr, wd: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
}


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_checkpoint(path: Path, state: dict) -> None:
    from compress.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def fit(
    model: nn.Module,
    x: np.ndarray,
    batch_loss: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    device: torch.device | None = None,
    jitter_pixels: int = 0,
    checkpoint: Path | None = None,
    data_parallel: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with a cosine learning-rate schedule; returns per-epoch mean loss.

    With ``checkpoint``, everything that decides the next epoch (weights, optimizer and schedule state,
    the shuffling generator, torch's RNG) is saved after every epoch, and a later call with the same
    path continues after the last saved epoch: an interrupted run resumes and ends bit-identical to an
    uninterrupted one. With ``data_parallel`` (under ``torchrun``) each process takes its share of every
    batch and DistributedDataParallel averages the gradients; rank 0 writes the checkpoint. Teachers are
    trained by rank 0 alone, so it is opt-in.
    """
    device = device or pick_device()
    seed_everything(seed)
    rank, world = distributed() if data_parallel else (0, 1)
    model.to(device).train()
    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x_all = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device)  # small data sets live on the device
    order_rng = torch.Generator().manual_seed(seed)
    opt = OPTIMIZERS[optimizer](model.parameters(), lr, weight_decay)
    steps_per_epoch = max(1, -(-len(x_all) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: list[float] = []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(str(checkpoint), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        order_rng.set_state(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
    for epoch in range(len(history), epochs):
        order = torch.randperm(len(x_all), generator=order_rng).numpy()
        total, seen = torch.zeros((), device=device), 0  # summed on the device: no host sync per step
        for start in range(0, len(order), batch_size):
            idx = np.sort(order[start:start + batch_size])  # sorted: friendlier to memory-mapped targets
            xb = jitter(x_all[torch.as_tensor(idx, device=device)], jitter_pixels, order_rng)
            if world > 1:  # this process's share of the batch; DDP averages the gradients
                xb, idx = xb[rank::world], idx[rank::world]
            loss = batch_loss(trained(xb), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        history.append(float(total) / max(seen, 1))
        if checkpoint is not None and rank == 0:
            _save_checkpoint(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                          "schedule": schedule.state_dict(), "order_rng": order_rng.get_state(),
                                          "torch_rng": torch.get_rng_state(), "history": history})
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
