"""Export targets, one folder each (``export/onnx``, ``export/tflite``, ``export/coreml``), installed as
``compress.export``. ``TARGETS`` (from ``compress.export.registry``) maps a target name to its ``Backend``
record; see ``compress.export.backend`` for what a target provides.
"""

from compress.export.registry import TARGETS, by_suffix, register

__all__ = ["TARGETS", "by_suffix", "register"]
