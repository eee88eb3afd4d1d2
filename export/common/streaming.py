"""The streaming file's I/O contract, the same for every target: what an app's audio loop feeds and reads.

* input ``audio``: float32 ``[1, hop_samples]``, the newest hop of mono PCM at ``sample_rate``, in [-1, 1];
* every other input is a state tensor (float32, all zeros at the start of a stream); for each state input
  ``S`` there is an output ``S_out`` of the same shape, fed back as ``S`` on the next hop;
* output ``probs``: float32 ``[1, classes]``, the class probabilities of the window ending at this hop, in the
  order of ``labels``;
* metadata key ``streaming``: JSON with ``sample_rate``, ``hop_samples``, ``window_samples``, ``labels``,
  ``keywords``, ``threshold``, ``smoothing_hops``, ``refractory_hops`` (``StreamingContract``).

Each target writes and runs such a file (``Backend.export_streaming`` / ``Backend.open_streaming``);
``run_stream`` feeds a recording hop by hop to any of them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Protocol, Sequence

import numpy as np

from compress.core.errors import InputError

AUDIO_INPUT = "audio"
PROBS_OUTPUT = "probs"
METADATA_KEY = "streaming"


def state_output(name: str) -> str:
    """The output that carries state input ``name`` to the next hop."""
    return f"{name}_out"


@dataclass(frozen=True)
class StreamingContract:
    """What a streaming file says about itself (metadata key ``streaming``): enough for an app to run it."""

    sample_rate: int
    hop_samples: int
    window_samples: int
    labels: list[str]
    keywords: list[str] = field(default_factory=list)
    threshold: float = 0.5
    smoothing_hops: int = 1
    refractory_hops: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> StreamingContract:
        try:
            table = json.loads(text)
            return cls(**{f.name: table[f.name] for f in fields(cls)})
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{where}: metadata {METADATA_KEY!r} is not a streaming contract ({exc}); expected the "
                             "JSON this tool writes (sample_rate, hop_samples, window_samples, labels, ...)") from None


class StreamRunner(Protocol):
    """One streaming file opened in its runtime."""

    contract: StreamingContract
    state_shapes: dict[str, tuple[int, ...]]
    engine: str
    measured: bool  # its per-hop timings are the runtime's (False: a reference evaluator, not timed)

    def step(self, audio: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One hop: ``audio`` [1, hop] -> (probs [1, classes], the states for the next hop)."""


def zero_states(shapes: dict[str, Sequence[int]]) -> dict[str, np.ndarray]:
    return {name: np.zeros(tuple(shape), dtype=np.float32) for name, shape in shapes.items()}


def run_stream(step: Callable, shapes: dict[str, Sequence[int]], audio: np.ndarray, hop: int) -> np.ndarray:
    """``audio`` (mono float32) fed hop by hop from zero states; ``(hops, classes)`` probabilities, one row per
    whole hop (a trailing partial hop is not fed)."""
    states, rows = zero_states(shapes), []
    for t in range(len(audio) // hop):
        probs, states = step(np.ascontiguousarray(audio[t * hop:(t + 1) * hop], dtype=np.float32)[None], states)
        rows.append(np.asarray(probs, dtype=np.float32).reshape(-1))
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def detections(probs: np.ndarray, contract: StreamingContract) -> list[tuple[int, str]]:
    """The detection rule every consumer of a streaming file applies (the apps in ``samples/`` too): a keyword
    fires at hop ``t`` when the mean of its ``probs`` over hops ``t - smoothing_hops + 1 .. t`` reaches
    ``threshold`` (fewer hops at the start of a stream: the mean of those there are), then cannot fire again
    before hop ``t + refractory_hops + 1``. ``probs``: ``(hops, classes)`` in ``labels`` order. Returns
    ``[(hop, keyword)]`` in time order."""
    probs = np.asarray(probs, dtype=np.float64)
    k = max(1, int(contract.smoothing_hops))
    sums = np.cumsum(np.vstack([np.zeros((1, probs.shape[1])), probs]), axis=0)
    hops = np.arange(1, len(probs) + 1)
    smoothed = (sums[hops] - sums[np.maximum(hops - k, 0)]) / np.minimum(hops, k)[:, None]
    out: list[tuple[int, str]] = []
    for keyword in contract.keywords:
        column, quiet_until = contract.labels.index(keyword), -1
        for t in np.flatnonzero(smoothed[:, column] >= contract.threshold):
            if t > quiet_until:
                out.append((int(t), keyword))
                quiet_until = t + int(contract.refractory_hops)
    return sorted(out)
