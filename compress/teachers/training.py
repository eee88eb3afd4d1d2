"""Built-in teacher members trained on the user's data, with the recipe that carries over to new data.

A fixed number of epochs on the whole training split fits the bundled digits and little else: on a colour
image set the same recipe left a CNN far below a plain MLP. So a built-in member is trained with

* a **validation split** held out of the labelled training data (stratified, seeded; never the test split)
  where the training data has ``VALIDATION_MIN_PER_CLASS`` rows per class or more; on smaller sets members
  train on every row for their whole schedule (``holds_out_validation``),
* **early stopping** on it: training ends after ``patience`` epochs without a better validation accuracy,
  never in the first half of the planned epochs, and the member keeps the weights of its best epoch. While
  the learning rate is high, validation accuracy on a small split is noisy: a vgg member on 2,700 colour
  spectrograms stopped at epoch 15 of 30 at 61% (patience 3, 270 validation rows) where its twin ran on to
  83%; so the patience, unless given, grows with the planned epochs (``default_patience``),
* a **learning-rate schedule**: linear warm-up for the first epoch, then cosine decay,
* **augmentation** (``compress.distill.train.Augment``) of the training batches only,
* on images, **label smoothing** 0.1 and a learning rate of 3e-3 with weight decay 5e-4 (``RECIPE_BY_KIND``): a plain
  hand-written CNN with that recipe reached 94% on colour spectrograms where the same ``vgg`` member with the
  general one (2e-3, 1e-4, no smoothing) stopped at 86-90%,

and its **training curve** (loss and validation accuracy per epoch, the best epoch, why it stopped) is kept
with the cached weights and shown in the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress import models
from compress.core.cache import cache_dir, content_key, read_verified, state_dict_sha256, torch_load, write_entry
from compress.core.errors import InputError
from compress.distill.train import Augment, fit, pick_device, predict_logits
from compress.teachers.member import Teacher, module_teacher

TEACHER_TRAINING_VERSION = 7  # bump when the built-in training recipe changes (invalidates caches)
CACHE_FORMAT = 2  # {"format", "weights", "curve"}


@dataclass(frozen=True)
class TeacherRecipe:
    """How built-in members train. ``epochs`` is the most; early stopping usually ends sooner."""

    epochs: int = 10
    patience: int = 3
    val_fraction: float = 0.1
    val_max: int = 5000
    augment: Augment = field(default_factory=Augment)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0  # of the hard labels' cross-entropy (torch's ``label_smoothing``)
    bf16_members: tuple[str, ...] = ()  # built-in members trained under bf16 autocast (resolved per machine)

    def precision_of(self, name: str) -> str:
        """What member ``name`` trains in: ``bf16`` or ``fp32`` (``compress.distill.train.fit``)."""
        return "bf16" if name in self.bf16_members else "fp32"

    def key(self) -> list:
        a = self.augment
        audio = [a.describe()] if a.shift_ms or a.noise_snr is not None or a.gain_db or a.speed else []
        return [self.epochs, self.patience, self.val_fraction, self.val_max, self.augment.crop, self.augment.flip,
                self.lr, self.weight_decay, self.batch_size, self.warmup_epochs, self.label_smoothing, *audio]


# What differs from ``TeacherRecipe``'s general settings for members on one kind of input (``Dataset.input_kind``).
# Images: one ``vgg`` member on 2,700 colour spectrograms (60 epochs, same seed, 300 test rows), fp32 / bf16:
# general recipe 85.67% / 89.67%; label smoothing 0.1: 89.33% / 91.00%; and learning rate 3e-3, weight decay
# 5e-4 (the plain CNN's, ``bench/plain_cnn.py``): 91.00% / 92.33%. Audio members keep the general recipe (their
# FSDD and keyword results were measured with it; nothing measured says smoothing helps them).
RECIPE_BY_KIND = {"image": {"lr": 3e-3, "weight_decay": 5e-4, "label_smoothing": 0.1}}


def recipe_for(data, **settings) -> TeacherRecipe:
    """The built-in members' recipe for ``data``: ``RECIPE_BY_KIND`` for its input kind over the general one,
    no validation split where it has too few rows a class (``holds_out_validation``), and ``settings``
    (epochs, patience, augmentation, ...) on top. The pipeline and ``train_builtin`` both start here."""
    split = {} if holds_out_validation(data.y_train) else {"val_fraction": 0.0}
    return TeacherRecipe(**{**RECIPE_BY_KIND.get(data.input_kind, {}), **split, **settings})


def validation_split(y: np.ndarray, fraction: float, seed: int, cap: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of the labelled training split: stratified, seeded, at most ``cap``
    validation rows. Where a class has too few samples for a stratified split there is no validation
    split (all rows train; the member then trains its full epochs, and the curve says so)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    size = min(int(round(fraction * len(y))), cap)
    counts = np.bincount(y)
    if size < len(np.unique(y)) or counts[counts > 0].min() < 2 or len(y) - size < len(np.unique(y)):
        return rows, rows[:0]
    train, val = train_test_split(rows, test_size=size, random_state=seed, stratify=y)
    return np.sort(train), np.sort(val)


# Below this many training rows per class (on average) built-in members hold out no validation split. On
# 2,700 colour spectrograms (270 a class) one ``vgg`` member (image recipe, 60 epochs, same seed) reached 91.00%
# on the test split trained on 90% of the rows and early-stopped on the other 10%, and 94.33% trained on all of
# them; its 27 validation rows a class had also picked epoch 43 of 55 (85.67%) under the general recipe. Early
# stopping pays on large sets, where a tenth of the rows is a small loss and a precise measurement.
VALIDATION_MIN_PER_CLASS = 1000
SMALL_SET = f"under {VALIDATION_MIN_PER_CLASS:,} training rows a class"  # why a member held nothing out
NO_STRATIFIED_SPLIT = "a class has under 2 samples"  # why ``validation_split`` returned no rows


def holds_out_validation(y: np.ndarray | None) -> bool:
    """Whether built-in members on labels ``y`` hold out a validation split and stop early on it
    (``VALIDATION_MIN_PER_CLASS``), or train on every row for their planned epochs. ``None`` (an unlabelled
    transfer set, which built-in members refuse) counts as holding out: nothing is decided for it here."""
    return y is None or len(y) >= VALIDATION_MIN_PER_CLASS * max(1, len(np.unique(y)))


def default_patience(epochs: int) -> int:
    """Early stopping's patience when the user gives none: 3 epochs, or a fifth of the planned epochs where
    that is more (a cosine schedule stopped early keeps a member trained at a high learning rate)."""
    return max(3, int(epochs) // 5)


class EarlyStopping:
    """Asked by ``fit`` after every epoch: measures validation accuracy, remembers the best weights, and
    says stop after ``patience`` epochs without improvement, not before ``min_epochs`` epochs have run.
    ``restore()`` puts the best weights back."""

    def __init__(self, module: nn.Module, x_val: np.ndarray, y_val: np.ndarray, patience: int, on_epoch=None,
                 min_epochs: int = 0, no_validation_reason: str = NO_STRATIFIED_SPLIT):
        self.module, self.x_val, self.y_val, self.patience = module, x_val, y_val, patience
        self.no_validation_reason = no_validation_reason  # said in the curve when there are no validation rows
        self.min_epochs = min_epochs
        self.on_epoch = on_epoch
        self.losses: list[float] = []
        self.accuracies: list[float] = []
        self.best_epoch, self.best_state = 0, None

    def __call__(self, epoch: int, loss: float) -> bool:
        self.losses.append(float(loss))
        if len(self.y_val):
            acc = float((predict_logits(self.module, self.x_val).argmax(1) == self.y_val).mean())
            self.module.train()  # predict_logits switched to eval mode; the next epoch trains
            self.accuracies.append(acc)
            if self.best_state is None or acc > self.accuracies[self.best_epoch]:
                self.best_epoch = epoch
                self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        if self.on_epoch:
            self.on_epoch(epoch, self.accuracies[-1] if self.accuracies else None)
        return bool(len(self.y_val)) and epoch + 1 >= self.min_epochs and epoch - self.best_epoch >= self.patience

    def restore(self) -> None:
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def curve(self, planned: int) -> dict:
        stopped_early = len(self.losses) < planned
        return {"train_loss": self.losses, "val_accuracy": self.accuracies, "val_samples": int(len(self.y_val)),
                "epochs_run": len(self.losses), "epochs_planned": planned,
                "best_epoch": (self.best_epoch + 1) if self.accuracies else len(self.losses),
                "stopped": (f"early stopping: no better validation accuracy for {self.patience} epochs"
                            if stopped_early else "epoch budget reached" if len(self.y_val)
                            else f"epoch budget reached (no validation split: {self.no_validation_reason})")}


def load_cached_weights(path, module: nn.Module, fmt: int = CACHE_FORMAT, kind: str = "teacher") -> dict | None:
    """The cached entry (weights, curve, ...) when it is a verified format-``fmt`` entry of exactly this
    module, else None (a damaged or foreign entry is discarded: the caller trains again)."""

    def load(p):
        entry = torch_load(p)
        if not isinstance(entry, dict) or entry.get("format") != fmt:
            raise ValueError(f"not a format-{fmt} {kind} entry")
        own = module.state_dict()
        weights = entry["weights"]
        if set(weights) != set(own) or any(weights[k].shape != v.shape for k, v in own.items()):
            raise ValueError(f"not a state_dict of this {type(module).__name__}")
        return entry

    return read_verified(path, load)


def cached_weights_path(name: str, data, recipe: TeacherRecipe, seed: int) -> Path:
    """Where a built-in member's trained weights are cached: keyed by everything that changes them."""
    precision = recipe.precision_of(name)  # fp32 keys are those from before bf16 existed: their entries stay valid
    key = content_key("teacher", TEACHER_TRAINING_VERSION, name, data.fingerprint(), recipe.key(), seed,
                      *([precision] if precision != "fp32" else []))
    return cache_dir("teachers") / f"{name.replace(':', '-')}-{key[:20]}.pt"  # no ':' in file names (Windows)


def train_on_labels(module: nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    *, recipe: TeacherRecipe, seed: int, device: str | None = None, on_epoch=None,
                    on_progress=None, precision: str = "fp32") -> tuple[nn.Module, dict]:
    """``module`` trained by the recipe on hard labels, early-stopped on the validation rows and put back to
    its best epoch: (module on the CPU in eval mode, training curve with its seconds). Built-in members and
    specialists (``compress.specialists``) train this one way."""
    y = torch.as_tensor(y_train)
    started = time.perf_counter()
    why = NO_STRATIFIED_SPLIT if recipe.val_fraction else f"{SMALL_SET}, so every row trains"
    stopper = EarlyStopping(module, x_val, y_val, recipe.patience, on_epoch, min_epochs=recipe.epochs // 2,
                            no_validation_reason=why)

    def loss(logits: torch.Tensor, idx) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, y[idx].to(logits.device), label_smoothing=recipe.label_smoothing)

    fit(module, x_train, loss,
        epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
        seed=seed, device=pick_device(device), augment=recipe.augment,
        warmup_epochs=recipe.warmup_epochs if recipe.epochs > 2 else 0.0, stop=stopper, on_progress=on_progress,
        channels_last=True, precision=precision)
    stopper.restore()
    curve = dict(stopper.curve(recipe.epochs), seconds=round(time.perf_counter() - started, 2),  # validation included
                 precision=precision)
    return module.cpu().eval(), curve


def train_builtin_module(name: str, data, *, recipe: TeacherRecipe, seed: int, device: str | None = None,
                         on_epoch=None, on_progress=None) -> tuple[nn.Module, dict, bool]:
    """Registry model ``name`` trained on the labelled training split (or its cached weights):
    (module on the CPU in eval mode, training curve, whether it came from the cache). ``on_epoch(epoch,
    val_accuracy)`` after each epoch; ``on_progress(epochs_done)`` from the first step on (``fit``'s),
    never for cached weights."""
    if data.y_train is None:
        raise InputError(f"teacher {name!r}: built-in teachers are trained on labels, but the transfer set is unlabelled")
    with torch.random.fork_rng(devices=[]):  # initial weights from (name, seed) alone, not from the global RNG,
        torch.manual_seed(seed)              # whose state depends on which members came from the cache
        module = models.build(name, data.input_shape, data.num_classes)
    path = cached_weights_path(name, data, recipe, seed)
    entry = load_cached_weights(path, module)
    if entry is not None:
        module.load_state_dict(entry["weights"])
        return module.eval().cpu(), dict(entry["curve"], cached=True), True
    train_rows, val_rows = validation_split(data.y_train, recipe.val_fraction, seed, recipe.val_max)
    module, curve = train_on_labels(module, data.x_train[train_rows], data.y_train[train_rows], data.x_train[val_rows],
                                    data.y_train[val_rows], recipe=recipe, seed=seed, device=device,
                                    on_epoch=on_epoch, on_progress=on_progress, precision=recipe.precision_of(name))
    weights = module.state_dict()
    write_entry(path, lambda tmp: torch.save({"format": CACHE_FORMAT, "weights": weights, "curve": curve}, str(tmp)))
    return module, dict(curve, cached=False), False


def train_builtin(name: str, data, *, epochs: int, seed: int, device: str | None = None,
                  jitter_pixels: int = 0, on_epoch=None, recipe: TeacherRecipe | None = None,
                  on_progress=None) -> Teacher:
    """Registry model ``name`` as a member: trained on the labelled training split, or its cached weights
    (validation split, early stopping, schedule, augmentation, curve: see the module's docstring)."""
    recipe = recipe or recipe_for(data, epochs=epochs, augment=Augment(crop=jitter_pixels))
    module, curve, cached = train_builtin_module(name, data, recipe=recipe, seed=seed, device=device,
                                                 on_epoch=on_epoch, on_progress=on_progress)
    member = module_teacher(name, "builtin", module, state_dict_sha256(module.state_dict()), cached=cached)
    member.training = curve
    return member
