"""The ensemble teacher and its soft targets: the mean of the members' softmax(z / T), computed once per
(members, transfer set, T) and cached as a memory-mapped ``.npy`` with its checksum."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.core.cache import cache_dir, content_key, read_verified, write_entry
from compress.core.errors import InputError

if TYPE_CHECKING:
    from compress.teachers import Teacher


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) per row, in float64 and shifted by the row maximum so large logits cannot overflow."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def member_probs(member: Teacher, x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """One member's distribution over the classes at temperature T, by what the member outputs:
    logits -> softmax(z / T); probabilities -> renormalized p^(1/T); a label (a black-box member that only
    answers with a class) -> a one-hot hard pseudo-label, whatever T. Non-finite outputs are an InputError
    naming the member (``check_members`` only probes a few samples)."""
    out = member.logits(x)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise InputError(f"teacher {member.name!r}: outputs NaN or infinity for {int((~finite).sum())} of {len(x)} "
                         f"real samples (first: sample {int(np.flatnonzero(~finite)[0])}); expected finite logits")
    if member.output == "label":
        return np.eye(out.shape[1], dtype=np.float64)[np.argmax(out, axis=1)]
    if member.output == "probs":
        return softmax(np.log(np.clip(out.astype(np.float64), 1e-12, None)), temperature)
    return softmax(out, temperature)


def ensemble_probs(members: list[Teacher], x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The ensemble teacher: the mean of the members' softmax(z / T) distributions (Hinton et al.).

    A member whose logits hold NaN or infinity on any sample is an ``InputError`` naming it (``check_members``
    only probes a few samples).
    """
    total = None
    for m in members:
        p = member_probs(m, x, temperature)
        total = p if total is None else total + p
    return (total / len(members)).astype(np.float32)


def soft_targets(members: list[Teacher], x: np.ndarray, temperature: float, data_key: str) -> tuple[np.ndarray, bool]:
    """Ensemble soft targets for the transfer set, computed once and cached as a memory-mapped .npy.

    The key is (member fingerprints, transfer-set content hash, T): changing any of them recomputes.
    Returns (read-only memmap, whether it came from the cache). The entry's checksum is verified on every
    read: a damaged one is recomputed. When the cache cannot be written (disk full), the targets are
    returned from memory (read-only) instead.
    """
    key = content_key("soft-targets", [m.fingerprint for m in members], data_key, float(temperature))
    path = cache_dir("soft-targets") / f"{key[:32]}.npy"

    def load(p: Path) -> np.ndarray:
        targets = np.load(p, mmap_mode="r", allow_pickle=False)
        if targets.ndim != 2 or len(targets) != len(x) or targets.dtype != np.float32:
            raise ValueError(f"holds {targets.dtype} {tuple(targets.shape)}, expected float32 ({len(x)}, classes)")
        return targets

    targets = read_verified(path, load)
    if targets is not None:
        return targets, True
    probs = ensemble_probs(members, x, temperature)
    if not np.isfinite(probs).all():
        raise InputError("teacher ensemble: soft targets contain NaN or infinity; expected finite probabilities")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, probs)

    if write_entry(path, write):
        return np.load(path, mmap_mode="r"), False
    probs.flags.writeable = False
    return probs, False
