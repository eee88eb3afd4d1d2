"""What every target shares: the metadata an exported model carries (``ModelInfo``), the SQNR ranking of
per-layer int8 errors (``sqnr``) and the one budgeted int8 float-fallback loop (``fallback``)."""

from compress.export.common.model_info import ModelInfo

__all__ = ["ModelInfo"]
