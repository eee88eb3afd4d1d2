"""The training loop: one readable function used for teacher members and for distillation alike.

What differs between the two is only the per-batch loss, passed in as ``batch_loss(logits, idx)``
(``idx`` indexes the training arrays, so soft targets can be looked up in a memory-mapped cache).
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from compress.core.errors import InputError, TrainingDiverged
from compress.core.registry import Registry


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


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation (never applied outside ``fit``, so never to the test split).

    Images: a random crop after padding each side by ``crop`` pixels (the background value fills the border:
    the paper's jitter), and a random horizontal flip where mirrored images keep their class. Audio clips
    (``(batch, samples)``): a random time shift of up to ``shift_ms`` either way (zeros fill; the clips'
    ``sample_rate`` turns it into samples), and, with
    probability ``noise_prob``, noise mixed in at a signal-to-noise ratio drawn uniformly from ``noise_snr`` dB
    (the Speech Commands recipe's time shift and background mixing): a random stretch of ``background`` (the
    user's recordings, ``background_name`` says which) where given, else generated pink noise. ``gain_db``:
    each clip scaled by a gain drawn uniformly from that range in dB (a near or far talker); ``speed``: each
    clip played faster or slower by a factor drawn from that range (linear resampling, so pitch moves with
    it, as kws_streaming's speed augmentation), cut or zero-padded back to its length. Order: speed, shift,
    gain, then noise (the SNR is of the clip as heard)."""

    crop: int = 0
    flip: bool = False
    shift_ms: int = 0
    sample_rate: int = 0  # of the audio clips (set from the data: compress.pipeline.augmentation)
    noise_snr: tuple[float, float] | None = None
    noise_prob: float = 0.8
    background: np.ndarray | None = field(default=None, compare=False, repr=False)
    background_name: str = ""  # what ``background`` is (and its content hash): part of ``describe``
    gain_db: tuple[float, float] | None = None
    speed: tuple[float, float] | None = None

    def __bool__(self) -> bool:
        return (self.crop > 0 or self.flip or self.shift_ms > 0 or self.noise_snr is not None
                or self.gain_db is not None or self.speed is not None)

    def describe(self) -> str:
        parts = ([f"random crop after padding {self.crop}px"] if self.crop else []) + (["horizontal flip"] if self.flip else [])
        parts += [f"speed x{self.speed[0]:g}..{self.speed[1]:g}"] if self.speed else []
        parts += [f"time shift up to {self.shift_ms} ms"] if self.shift_ms else []
        parts += [f"gain {self.gain_db[0]:g}..{self.gain_db[1]:g} dB"] if self.gain_db else []
        if self.noise_snr is not None:
            source = self.background_name if self.background is not None else "pink noise"
            parts.append(f"{source} at {self.noise_snr[0]:g}..{self.noise_snr[1]:g} dB SNR "
                         f"({100 * self.noise_prob:g}% of clips)")
        return ", ".join(parts) or "none"


def parse_augment(spec: str | None, *, where: str = "--augment") -> Augment:
    """``none``, ``crop``, ``crop=4``, ``flip``, ``crop=2,flip``; for audio ``shift=MS`` (milliseconds) and
    ``noise=LOW:HIGH`` (SNR range, dB) -> ``Augment``."""
    if spec in (None, "", "none", "off"):
        return Augment()
    fields: dict = {}
    for part in str(spec).split(","):
        key, _, value = part.strip().partition("=")
        if key == "flip" and not value:
            fields["flip"] = True
        elif key == "crop" and (not value or value.isdigit()):
            fields["crop"] = int(value) if value else 2
        elif key == "shift" and value.isdigit():
            fields["shift_ms"] = int(value)
        elif key in ("noise", "gain") and _snr_range(value) is not None:
            fields["noise_snr" if key == "noise" else "gain_db"] = _snr_range(value)
        elif key == "speed" and _snr_range(value) is not None and 0.5 <= _snr_range(value)[0] <= _snr_range(value)[1] <= 2:
            fields["speed"] = _snr_range(value)
        else:
            raise InputError(f"{where} {spec!r}: expected 'none', 'auto' or a comma list of crop[=PIXELS] and flip "
                             "(images), shift=MS, noise=LOW:HIGH (SNR, dB), gain=LOW:HIGH (dB) and speed=LOW:HIGH "
                             "(a factor in [0.5, 2]) for audio (e.g. 'crop=4,flip', 'shift=100,noise=5:20,speed=0.9:1.1')")
    return Augment(**fields)


def _snr_range(text: str) -> tuple[float, float] | None:
    low, sep, high = text.partition(":")
    try:
        pair = (float(low), float(high)) if sep else None
    except ValueError:
        return None
    return pair if pair is not None and pair[0] <= pair[1] and all(abs(v) < 200 for v in pair) else None


def _pink_noise(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Unit-RMS pink (1/f power) noise per row, made from white noise by shaping its spectrum."""
    spectrum = torch.fft.rfft(torch.randn(shape, generator=generator), dim=1)
    spectrum = spectrum / torch.arange(spectrum.shape[1]).clamp_min(1).sqrt()
    noise = torch.fft.irfft(spectrum, n=shape[1], dim=1)
    return noise / noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def _background_noise(background: np.ndarray, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Unit-RMS random stretches of ``background`` (looped where shorter than a clip), one per row."""
    n, length = shape
    source = torch.as_tensor(np.resize(background, max(len(background), length)), dtype=torch.float32)
    starts = torch.randint(0, len(source) - length + 1, (n,), generator=generator)
    noise = source[starts[:, None] + torch.arange(length)[None, :]]
    return noise / noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-6)


def _change_speed(x: torch.Tensor, speed: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Each clip resampled by a factor from ``speed`` (> 1: faster, shorter), then cut or zero-padded at the end
    back to its length (the clips' own convention: left-aligned)."""
    n, length = x.shape
    factors = speed[0] + (speed[1] - speed[0]) * torch.rand(n, generator=generator)
    out = torch.zeros_like(x)
    for i, factor in enumerate(factors.tolist()):
        size = max(2, int(round(length / factor)))
        stretched = torch.nn.functional.interpolate(x[i][None, None], size=size, mode="linear", align_corners=True)[0, 0]
        out[i, :min(size, length)] = stretched[:length]
    return out


def augment_audio(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """``augment``'s speed change, time shift, gain and noise mixing on a batch of clips ``(batch, samples)``."""
    n, length = x.shape
    if augment.speed is not None:
        x = _change_speed(x, augment.speed, generator)
    shift = int(round(augment.shift_ms * augment.sample_rate / 1000))
    if augment.shift_ms and augment.sample_rate <= 0:
        raise InputError("--augment shift: the clips' sample rate is unknown; expected audio from a loader that "
                         "records its sample_rate")
    if shift > 0:
        offset = torch.randint(-shift, shift + 1, (n,), generator=generator).to(x.device)
        source = torch.arange(length, device=x.device)[None, :] - offset[:, None]
        inside = (source >= 0) & (source < length)
        x = torch.where(inside, x.gather(1, source.clamp(0, length - 1)), torch.zeros((), dtype=x.dtype, device=x.device))
    if augment.gain_db is not None:
        low, high = augment.gain_db
        x = x * (10 ** ((low + (high - low) * torch.rand(n, generator=generator)) / 20)).to(x.device, x.dtype)[:, None]
    if augment.noise_snr is not None:
        low, high = augment.noise_snr
        snr = low + (high - low) * torch.rand(n, generator=generator)
        mixed = (torch.rand(n, generator=generator) < augment.noise_prob).float()
        noise = (_pink_noise((n, length), generator) if augment.background is None
                 else _background_noise(augment.background, (n, length), generator)).to(x.device, x.dtype)
        level = x.pow(2).mean(dim=1).sqrt().clamp_min(1e-4) * (10 ** (-snr / 20) * mixed).to(x.device, x.dtype)
        x = x + level[:, None] * noise
    return x


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """``augment`` applied to one training batch: images ``(batch, C, H, W)`` or audio clips ``(batch, samples)``
    (other shapes pass through)."""
    if x.dim() == 2 and (augment.shift_ms or augment.noise_snr is not None or augment.gain_db is not None
                         or augment.speed is not None):
        return augment_audio(x, augment, generator)
    if x.dim() != 4:
        return x
    x = jitter(x, augment.crop, generator)
    if augment.flip:
        mirror = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return x


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Run the block with denormal floats flushed to zero on the CPU, then put the caller's setting back.

    Why: a ReLU network's Adam moments decay geometrically where gradients are zero (dead units, MNIST's
    blank borders) and pass through the denormal range, where x86 arithmetic is many times slower: after 31
    epochs of a 60k MNIST distillation 38% of ``mlp-800``'s first-layer and 88% of its second-layer first
    moments were denormal, and a step took 15.5 ms instead of 10.4 ms with them flushed (the stage ran at
    3x its estimate, which times the first, clean steps). Values below ~1e-38 change nothing a model
    computes; flushing changes the last bits of the results, so cached teachers and students were
    invalidated with it."""
    was_flushing = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_flushing)


def flushing_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has a setter and no getter)."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0)[0] == 0)


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused optimizer kernels run


def fused_update(make: Callable) -> Callable:
    """``make(params, lr, weight_decay, fused=...)`` with torch's fused (one kernel for every tensor) update
    where every parameter is a float tensor on a CPU or CUDA device, else the per-tensor loop. Why: on this
    project's 2-core CPU the per-tensor Adam update of ``mlp-800`` (1.3 M weights, 1 thread) took as long as
    the step's forward and backward passes together (20 ms vs 19 ms, profiled in a 60k MNIST run: 60% of
    the distillation); fused took 4.9 ms. Same arithmetic in another order: results differ in the last bits,
    so the cached teachers' and students' keys were bumped with it."""
    def build(params, lr: float, weight_decay: float):
        params = list(params)
        fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
        return make(params, lr, weight_decay, fused=fused or None)
    return build


OPTIMIZERS = Registry("optimizer", "--optimizer")  # name -> (params, lr, weight_decay) -> torch optimizer
OPTIMIZERS.register("adam", fused_update(lambda params, lr, wd, fused: torch.optim.Adam(
    params, lr=lr, weight_decay=wd, fused=fused)))
OPTIMIZERS.register("adamw", fused_update(lambda params, lr, wd, fused: torch.optim.AdamW(
    params, lr=lr, weight_decay=wd, fused=fused)))
OPTIMIZERS.register("sgd", fused_update(lambda params, lr, wd, fused: torch.optim.SGD(
    params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd, fused=fused)))


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside ``torchrun``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


PROGRESS_CALLS_PER_EPOCH = 20  # fit's on_progress inside an epoch: a line at most every 15 s reads it
CHECKPOINT_FORMAT = 2  # bump when the checkpoint's contents change (older ones are discarded and recomputed)
_CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "history", "order_rng", "torch_rng", "numpy_rng", "python_rng")


def _rng_states(order_rng: torch.Generator, device: torch.device) -> dict:
    """Every RNG state that decides the next epoch, as tensors, lists and numbers (``weights_only`` loads
    them: nothing in a checkpoint is unpickled as code)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    states = {"order_rng": order_rng.get_state(), "torch_rng": torch.get_rng_state(),
              "numpy_rng": [str(np_name), np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
              "python_rng": [int(py_version), list(py_internal), py_gauss]}
    if device.type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(state: dict, order_rng: torch.Generator, device: torch.device) -> None:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy_rng"]
    py_version, py_internal, py_gauss = state["python_rng"]
    numpy_state = (str(np_name), np.asarray(np_keys, dtype=np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss))
    python_state = (int(py_version), tuple(int(v) for v in py_internal), None if py_gauss is None else float(py_gauss))
    order_rng.set_state(state["order_rng"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)


def load_checkpoint(path: Path) -> dict | None:
    """The training checkpoint at ``path`` (on the CPU), or None when there is none or it was discarded.

    Read through the cache's checksum (``read_verified``) and with ``weights_only=True``: a planted pickle
    never runs, and a damaged, foreign or older-format file is discarded with one warning line.
    """
    from compress.core.cache import read_verified, torch_load

    def load(p: Path) -> dict:
        state = torch_load(p)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a format-{CHECKPOINT_FORMAT} training checkpoint")
        missing = [k for k in _CHECKPOINT_KEYS if k not in state]
        if missing or not all(isinstance(h, float) for h in state["history"]):
            raise ValueError(f"incomplete training checkpoint (missing {', '.join(missing) or 'history'})")
        return state

    return read_verified(path, load)


def checkpoint_state(model: nn.Module, opt, schedule, history: list[float], order_rng: torch.Generator,
                     device: torch.device) -> dict:
    """What ``fit`` checkpoints after every epoch (``compress.estimate`` times writing the same)."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(), "history": list(history), **_rng_states(order_rng, device)}


def _save_checkpoint(path: Path, state: dict) -> bool:
    """Write the checkpoint and its checksum; False (after one warning line) when it cannot be written."""
    from compress.core.cache import write_entry

    return write_entry(path, lambda tmp: torch.save(state, str(tmp)))


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
    augment: Augment | None = None,
    warmup_epochs: float = 0.0,
    checkpoint: Path | None = None,
    data_parallel: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    stop: Callable[[int, float], bool] | None = None,
    on_progress: Callable[[float], None] | None = None,
    channels_last: bool = False,
    precision: str = "fp32",
) -> list[float]:
    """Train ``model`` in place with a cosine learning-rate schedule; returns per-epoch mean loss.

    With ``checkpoint``, everything that decides the next epoch (weights, optimizer and schedule state,
    the shuffling generator, torch's, numpy's and Python's RNGs) is saved after every epoch, and a later
    call with the same path continues after the last saved epoch: an interrupted run resumes and ends
    bit-identical to an uninterrupted one. The checkpoint holds only tensors, lists and numbers, is loaded
    with ``weights_only=True`` and checked against its sha256; a damaged one (or one that does not fit this
    model) is discarded with one warning line and training starts over. When it cannot be written (disk
    full), training goes on without it after one warning line. With ``data_parallel`` (under
    ``torchrun``) each process takes its share of every batch and DistributedDataParallel averages the gradients; rank 0 writes the checkpoint. Teachers are
    trained by rank 0 alone, so it is opt-in.

    ``augment`` (or the older ``jitter_pixels``, a crop) changes training batches only. ``warmup_epochs``
    ramps the learning rate up linearly before the cosine decay (deep nets with BN on new data diverge
    less). ``stop(epoch, loss)`` is asked after every epoch (early stopping on a validation split).
    ``on_progress(epochs_done)`` is told when training starts (0, or the resumed epoch) and about
    ``PROGRESS_CALLS_PER_EPOCH`` times inside each epoch (e.g. 2.5), so a 60k-sample epoch that takes a
    minute is not a minute of silence in a CI log; it reads nothing from the device (no host sync).
    ``channels_last``: a model with 2-D convolutions on image batches trains in NHWC layout (``nhwc_pays``).
    ``precision`` ``bf16``: the forward pass under bf16 autocast; weights, optimizer and loss stay fp32.
    """
    autocast, device = _autocast(precision), device or pick_device()
    seed_everything(seed)
    rank, world = distributed() if data_parallel else (0, 1)
    model.to(device).train()
    nhwc = training_layout(model, channels_last, np.ndim(x))
    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    x_all = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(device)  # small data sets live on the device
    order_rng = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, -(-len(x_all) // batch_size))
    total_steps, warmup = epochs * steps_per_epoch, int(warmup_epochs * steps_per_epoch)
    augment = augment or Augment(crop=jitter_pixels)
    opt, schedule = _optimizer_and_schedule(model, optimizer, lr, weight_decay, total_steps, warmup)
    history: list[float] = []
    if checkpoint is not None:
        history, opt, schedule = _resume(checkpoint, model, opt, schedule, order_rng, device, seed,
                                         lambda: _optimizer_and_schedule(model, optimizer, lr, weight_decay, total_steps, warmup))
    saving = checkpoint is not None and rank == 0
    if on_progress is not None and len(history) < epochs:
        on_progress(float(len(history)))
    for epoch in range(len(history), epochs):
        within = None if on_progress is None else (lambda fraction, e=epoch: on_progress(e + fraction))
        history.append(_epoch(trained, x_all, batch_loss, opt, schedule, order_rng, batch_size, augment,
                              rank, world, within, nhwc, autocast))
        if not math.isfinite(history[-1]):  # stop before a diverged epoch is checkpointed or exported
            raise TrainingDiverged(f"training diverged at epoch {epoch + 1}/{epochs}: the mean loss is "
                                   f"{history[-1]}; nothing was exported (lower --lr, or another --optimizer)")
        if saving:  # after a failed write (one warning) the run goes on without checkpoints
            saving = _save_checkpoint(checkpoint, checkpoint_state(model, opt, schedule, history, order_rng, device))
        if on_epoch:
            on_epoch(epoch, history[-1])
        if stop is not None and stop(epoch, history[-1]):
            break
    model.to(memory_format=torch.contiguous_format).eval()  # exporters and callers expect the ordinary layout
    return history


PRECISIONS = ("fp32", "bf16")  # what fit trains in
TRAIN_PRECISIONS = ("auto", *PRECISIONS)  # --train-precision: auto is resolved per model before fit


def _autocast(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision == "bf16"


def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's own check; ``avx512_bf16`` / AMX flags as a
    fallback): without it bf16 autocast is emulated and slower than fp32."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        return bool(check())
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_layout(model: nn.Module, channels_last: bool, input_dims: int) -> bool:
    """Whether ``model`` trains in channels-last layout (asked for, and ``nhwc_pays``); when it does, ``model``
    is put in that layout here, before the optimizer holds its parameters (it keeps the converted ones).
    ``fit`` and ``compress.estimate`` both decide it here, so an estimate times the layout fit trains in."""
    nhwc = channels_last and nhwc_pays(model, input_dims)
    if nhwc:
        model.to(memory_format=torch.channels_last)
    return nhwc


def nhwc_pays(model: nn.Module, input_dims: int) -> bool:
    """Whether training ``model`` in channels-last layout is worth it: it has 2-D convolutions and takes
    4-D image batches. Measured by ``bench/throughput.py`` on this project's 2-core CPU (batch 64, fp32, ms
    per training step, NCHW -> NHWC): cnn 37.4 -> 19.1 on MNIST shapes, resnet 18.9 -> 16.5, resnet on
    3x36x36 29.2 -> 26.4, mobilenet:0.35:0.5 70.7 -> 55.4 (oneDNN's convolutions work in NHWC and
    reorder NCHW tensors on every call otherwise)."""
    return input_dims == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


def _optimizer_and_schedule(model: nn.Module, optimizer: str, lr: float, weight_decay: float, total_steps: int,
                            warmup: int = 0):
    """The optimizer and its per-step schedule: cosine decay, after a linear warm-up when ``warmup`` > 0."""
    opt = OPTIMIZERS[optimizer](model.parameters(), lr, weight_decay)
    if warmup <= 0 or warmup >= total_steps:
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    ramp = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=warmup)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps - warmup)
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, [ramp, decay], milestones=[warmup])


def _resume(checkpoint: Path, model: nn.Module, opt, schedule, order_rng: torch.Generator, device, seed: int,
            fresh: Callable) -> tuple[list[float], object, object]:
    """Continue from ``checkpoint`` when it holds a verified state of this run: (history, optimizer,
    schedule). A verified checkpoint that does not fit (e.g. another model) is discarded and training
    starts over from the initial weights and seeds, as if it were absent."""
    state = load_checkpoint(checkpoint)
    if state is None:
        return [], opt, schedule
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_states(state, order_rng, device)
        return list(state["history"]), opt, schedule
    except Exception as exc:  # verified but not this run's
        from compress.core.cache import discard, one_line

        discard(checkpoint, f"does not fit this training run: {one_line(exc)}")
        model.load_state_dict(initial)
        seed_everything(seed)
        order_rng.manual_seed(seed)
        opt, schedule = fresh()
        return [], opt, schedule


@denormals_flushed()
def _epoch(trained: nn.Module, x_all: torch.Tensor, batch_loss: Callable, opt, schedule, order_rng: torch.Generator,
           batch_size: int, augment: Augment, rank: int, world: int,
           on_fraction: Callable[[float], None] | None = None, nhwc: bool = False, autocast: bool = False) -> float:
    """One pass over the shuffled data, with denormals flushed; the mean loss (summed on the device: no host
    sync per step).
    ``on_fraction(done)`` is called every ``1 / PROGRESS_CALLS_PER_EPOCH`` of the epoch (not at its end)."""
    order = torch.randperm(len(x_all), generator=order_rng).numpy()
    total, seen = torch.zeros((), device=x_all.device), 0
    steps = -(-len(order) // batch_size)
    every = max(1, steps // PROGRESS_CALLS_PER_EPOCH)
    for step, start in enumerate(range(0, len(order), batch_size), start=1):
        idx = np.sort(order[start:start + batch_size])  # sorted: friendlier to memory-mapped targets
        summed, count = train_step(trained, x_all, idx, batch_loss, opt, schedule, augment, order_rng, nhwc, rank, world,
                                   autocast)
        total += summed
        seen += count
        if on_fraction is not None and step % every == 0 and step < steps:
            on_fraction(step / steps)
    return float(total) / max(seen, 1)


def train_step(trained: nn.Module, x_all: torch.Tensor, idx: np.ndarray, batch_loss: Callable, opt, schedule,
               augment: Augment, generator: torch.Generator, nhwc: bool = False, rank: int = 0,
               world: int = 1, autocast: bool = False) -> tuple[torch.Tensor, int]:
    """One optimizer step on rows ``idx`` of ``x_all`` (augmented, in the training layout, this process's
    share under ``torchrun``; with ``autocast`` the forward pass in bf16, the loss in fp32): (the batch's
    summed loss as a device tensor, its rows). ``compress.estimate`` times this same function, so an estimate
    pays what a step pays."""
    xb = x_all[torch.as_tensor(idx, device=x_all.device)]
    if augment:
        xb = augment_batch(xb, augment, generator)
    if nhwc:
        xb = xb.contiguous(memory_format=torch.channels_last)
    if world > 1:  # this process's share of the batch; DDP averages the gradients
        xb, idx = xb[rank::world], idx[rank::world]
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = trained(xb)
    loss = batch_loss(logits.float(), idx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()
    return loss.detach() * len(idx), len(idx)


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
