"""Training one specialist (Hinton, Vinyals & Dean 2015, §5.1).

A specialist tells apart the classes of its subset ``S`` and one **dustbin** class for everything else.
As the paper does, it

* starts from the generalist's weights (same architecture, a new ``|S| + 1``-way head) when the generalist
  is a torch module with a final ``nn.Linear``; any registered architecture otherwise (from scratch);
* trains on rows of which half come from its subset and half are drawn at random (seeded) from the rest
  (all the rest, when there are fewer of them);
* has its dustbin logit corrected afterwards for that over-sampling: the subset's odds are raised by the
  training mix, so the dustbin logit is raised by ``log(((1 - f) / f) / ((1 - r) / r))``, with ``f`` the
  subset's share of the training split and ``r`` its share of the specialist's training rows (the paper's
  "log of the proportion by which the specialist class is oversampled"; the exact prior-shift form).

Training is the built-in members' recipe (validation split, early stopping on it, warm-up + cosine, the
run's augmentation; ``compress.teachers.training``) on hard labels, and the result is cached under a key
of everything that changes it (the generalist's fingerprint, the architecture, the subset, the data, the
recipe, the seed), checksummed like every cache entry (a damaged entry is trained again).
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress import models
from compress.core.cache import cache_dir, content_key, write_entry
from compress.core.errors import InputError
from compress.distill.train import predict_logits
from compress.teachers.ensemble import softmax
from compress.teachers.training import TeacherRecipe, load_cached_weights, train_on_labels, validation_split

SPECIALIST_VERSION = 1  # bump when the specialist recipe changes (invalidates cached specialists)
CACHE_FORMAT = 1  # {"format", "weights", "curve", "classes", "correction"}


@dataclass
class Specialist:
    """A trained specialist: its classes (indices into the data's labels), its module (outputs ``|S| + 1``
    logits, the dustbin last), the dustbin logit correction, its training curve and cache facts. One
    computed elsewhere (``compress.specialists.outputs``) has no module: ``stored`` answers with its
    corrected logits."""

    classes: tuple[int, ...]
    module: nn.Module | None
    correction: float
    arch: str
    curve: dict
    cached: bool
    fingerprint: str
    view: Callable[[np.ndarray], np.ndarray] | None = None  # the generalist's input contract, when it has one
    stored: Callable[[np.ndarray], np.ndarray] | None = None  # outputs computed elsewhere, looked up by row

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Corrected logits (rows x (|S| + 1)) of the data's samples ``x``: the dustbin's raised by
        ``correction`` (in a stored specialist's file, already)."""
        if self.stored is not None:
            return self.stored(x)
        out = predict_logits(self.module, x if self.view is None else self.view(x)).astype(np.float64)
        out[:, -1] += self.correction
        return out

    def probs(self, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        return softmax(self.logits(x), temperature)


def training_rows(y: np.ndarray, classes: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows of the training split, their specialist labels): every row of the subset, and as many rows
    again drawn without replacement (seeded) from the rest, all of them when there are fewer; labels are
    positions in ``classes``, the dustbin ``len(classes)``."""
    inside = np.isin(y, classes)
    own, rest = np.flatnonzero(inside), np.flatnonzero(~inside)
    if not len(own) or not len(rest):
        raise InputError(f"specialist for classes {list(classes)}: {len(own)} training rows in the subset and "
                         f"{len(rest)} outside it; expected some of each")
    drawn = np.sort(np.random.default_rng(seed).choice(rest, size=min(len(own), len(rest)), replace=False))
    rows = np.concatenate([own, drawn])
    position = np.full(int(y.max()) + 1, len(classes), dtype=np.int64)
    position[list(classes)] = np.arange(len(classes))
    return rows, position[y[rows]]


def specialist_seed(seed: int, classes: tuple[int, ...]) -> int:
    """The training seed of the specialist for ``classes``: from the run's seed and the classes, not the
    specialist's place in a list, so one trained on its own (``compress soft-targets --specialist``) is the
    one the run would train."""
    return seed + 1000 + zlib.crc32(",".join(str(c) for c in sorted(classes)).encode()) % 1_000_000


def dustbin_correction(subset_share: float, training_share: float) -> float:
    """The dustbin logit's correction for over-sampling the subset: ``log(((1-f)/f) / ((1-r)/r))``."""
    f, r = float(subset_share), float(training_share)
    if not (0 < f < 1 and 0 < r < 1):
        raise InputError(f"dustbin correction: subset share {f} and training share {r}; expected both in (0, 1)")
    return math.log((1 - f) / f) - math.log((1 - r) / r)


def replace_head(module: nn.Module, outputs: int) -> nn.Module:
    """A copy of ``module`` whose last ``nn.Linear`` is a fresh one with ``outputs`` outputs."""
    try:
        copied = copy.deepcopy(module)
    except Exception as exc:  # a TorchScript archive and other compiled modules
        raise InputError(f"specialists: the generalist {type(module).__name__} cannot be copied to start a specialist "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); name a registered "
                         "architecture for the specialists (specialists.arch)") from None
    linears = [(name, m) for name, m in copied.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"specialists: the generalist {type(module).__name__} has no final nn.Linear to replace; "
                         "name a registered architecture for the specialists (specialists.arch)")
    name, last = linears[-1]
    parent = copied.get_submodule(name.rpartition(".")[0]) if "." in name else copied
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, outputs, bias=last.bias is not None))
    return copied


def _module(arch: str, generalist: nn.Module | None, data, outputs: int, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the new head's weights from the seed alone
        torch.manual_seed(seed)
        if generalist is not None:
            return replace_head(generalist, outputs)
        return models.build(arch, data.input_shape, outputs)


def train_specialist(classes: tuple[int, ...], data, *, arch: str, generalist: nn.Module | None,
                     generalist_key: str, recipe: TeacherRecipe, seed: int, device: str | None = None,
                     on_epoch=None, view: Callable[[np.ndarray], np.ndarray] | None = None,
                     rank: int = 0) -> Specialist:
    """One specialist for ``classes`` (see the module's docstring), trained or read from the cache.
    ``generalist``: the module whose weights it starts from (None: ``arch`` from scratch);
    ``generalist_key``: the generalist's fingerprint (the cache key changes with it; it carries the input
    contract); ``view``: the generalist's own view of the data's samples (its input contract), which the
    specialist then takes too; ``rank``: the ``torchrun`` process training it, recorded in its curve."""
    if data.y_train is None:
        raise InputError("specialists are trained on labels, but the transfer set is unlabelled")
    classes = tuple(sorted(int(c) for c in classes))
    rows, labels = training_rows(data.y_train, classes, seed)
    module = _module(arch, generalist, data, len(classes) + 1, seed)
    subset_share = float(np.isin(data.y_train, classes).mean())
    correction = dustbin_correction(subset_share, float((labels < len(classes)).mean()))
    key = content_key("specialist", SPECIALIST_VERSION, generalist_key, arch, classes, data.fingerprint(),
                      recipe.key(), seed)
    path = cache_dir("specialists") / f"{arch.replace(':', '-')}-{key[:20]}.pt"
    entry = load_cached_weights(path, module, CACHE_FORMAT, "specialist")
    if entry is not None:
        module.load_state_dict(entry["weights"])
        return Specialist(classes, module.eval().cpu(), float(entry["correction"]), arch,
                          dict(entry["curve"], cached=True), True, key, view)
    train, val = validation_split(labels, recipe.val_fraction, seed, recipe.val_max)
    own = (lambda x: x) if view is None else view
    module, curve = train_on_labels(module, own(data.x_train[rows[train]]), labels[train], own(data.x_train[rows[val]]),
                                    labels[val], recipe=recipe, seed=seed, device=device, on_epoch=on_epoch)
    curve = dict(curve, rows=int(len(rows)), subset_rows=int((labels < len(classes)).sum()), trained_by_rank=rank)
    weights = module.state_dict()
    write_entry(path, lambda tmp: torch.save({"format": CACHE_FORMAT, "weights": weights, "curve": curve,
                                              "classes": list(classes), "correction": correction}, str(tmp)))
    return Specialist(classes, module, correction, arch, dict(curve, cached=False), False, key, view)
