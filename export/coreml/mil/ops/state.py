"""Core ML states (iOS18): ``read_state``, ``coreml_update_state`` and ``write_state`` on a state input.

A stateful program's state inputs are not tensors but buffers that persist across predictions
(``MLState`` on the device). The evaluator binds each to a ``StateBuffer`` (``compress.export.coreml.mil.values``)
that the caller keeps between calls: ``read_state`` returns a copy of its value; ``coreml_update_state``
stores the new value (in the state's dtype, float16: Core ML's states are fp16) and returns it.
"""

from __future__ import annotations

import numpy as np

from compress.export.coreml.mil.ops.registry import op


@op("read_state")
def _read_state(a):
    return np.array(a["input"].value)


@op("coreml_update_state")
def _update_state(a):
    buffer = a["state"]
    buffer.value = np.asarray(a["value"]).astype(buffer.value.dtype)
    return np.array(buffer.value)


@op("write_state")
def _write_state(a):
    """What ``coreml_update_state`` becomes in a saved program: store ``data`` in the state; no output."""
    buffer = a["input"]
    buffer.value = np.asarray(a["data"]).astype(buffer.value.dtype)
    return ()
