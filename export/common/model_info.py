"""What every exporter receives besides the model: the facts an app needs to use the exported file.

Each target module (``export/onnx.py``, ``export/coreml.py``, ``export/tflite.py``) exposes one function
``export(model, example, path, info, **options) -> Path`` that writes the artifact atomically (see
``compress.core.atomic.atomic_path``) and records ``info`` in the format's own metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    """Metadata carried inside exported models (and in the run's manifest)."""

    name: str
    labels: list[str]
    # How an app turns raw input into the model's input: x = (raw * scale - mean) / std
    normalization: dict = field(default_factory=dict)
    input_kind: str = "image"  # "image", "features" or "audio" (raw PCM samples)
    # Empty: the file takes the normalized float32 input. Set (images from an 8-bit source): the file takes
    # raw pixels and normalizes them itself; keys and meaning in ``compress.export.common.preprocess``.
    preprocessing: dict = field(default_factory=dict)
    description: str = ""
    author: str = "compress"
    license: str = ""
    version: str = ""

    def metadata(self) -> dict[str, str]:
        """Flat string key/values, the common denominator of ONNX, Core ML and TFLite metadata."""
        d = asdict(self)
        return {
            "name": self.name,
            "labels": json.dumps(d["labels"]),
            "normalization": json.dumps(d["normalization"], sort_keys=True),
            "input_kind": self.input_kind,
            "preprocessing": json.dumps(d["preprocessing"], sort_keys=True),
            "description": self.description,
            "author": self.author,
            "license": self.license,
            "version": self.version,
        }
