"""The one small interface every runtime runner implements.

A runner loads an exported file into the runtime that will run it on the device and answers
``predict(x) -> logits`` on float32 inputs in the model's normalized input space. A file that takes raw
8-bit pixels (``ModelInfo.preprocessing``; the normalization is inside the file) gets the pixels the
normalized input came from (``compress.export.common.preprocess.to_raw``, reading the preprocessing from
the file), and its runner also takes uint8 pixels as they are (what an app passes). Validation, latency
measurement and reports only ever talk to this interface, so a new runtime is one new module plus one
``open`` in its ``compress.export.backend.Backend`` record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Runner:
    """A loaded model in its runtime.

    engine: human-readable runtime name and version, shown in reports ("ONNX Runtime 1.23.2").
    predict: float32 batch in (normalized; or uint8 pixels for a raw-pixel file) -> float32 scores out
    (logits, or what the artifact outputs).
    threads: intra-op threads the runtime was configured with.
    measured: False where the runtime could not run here and the numbers come from a reference
    evaluator; the report names the engine either way.
    """

    engine: str
    predict: Callable[[np.ndarray], np.ndarray]
    threads: int
    measured: bool = True
