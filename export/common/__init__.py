"""What every target shares: the metadata an exported model carries (``ModelInfo``), the SQNR ranking of
per-layer int8 errors (``sqnr``), the one budgeted int8 float-fallback loop (``fallback``) and the raw-pixel
input (``preprocess``: the student behind its own normalization, and the conversions to and from raw pixels)."""

from compress.export.common.model_info import ModelInfo

__all__ = ["ModelInfo"]
