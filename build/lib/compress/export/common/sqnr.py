"""SQNR ranking of per-layer int8 errors, shared by every target's per-layer error finder.

A target's ``layer_errors`` walks its own graph format (ONNX nodes, TFLite operators, MIL ops); the
arithmetic on the signal-to-quantization-noise ratios, the walk up through ops that only move data, the
ranking and the table for people live here once.
"""

from __future__ import annotations

import math
from typing import Callable

MAX_SAMPLES = 256  # activations of every tensor are kept in memory: a few hundred samples are plenty
DAMAGED_INPUT_DB = 30.0  # an input this noisy (about 5 effective bits) was damaged upstream, not here

# Ranking shared by the TFLite and Core ML per-layer finders (ONNX rows keep their error-added order).
EXACT_DB = 150.0  # SQNR of an exact float input (float32 round-off)
COLLAPSE_DB = 20.0  # a layer whose own noise is within 20 dB of the signal breaks it


def rank_key(row: dict) -> tuple:
    """Worst first: layers that collapse the signal (``layer_sqnr_db`` < ``COLLAPSE_DB``) in graph order, the
    earliest first (behind a collapsed signal every later layer's numbers are noise about noise), then the
    others by ``layer_sqnr_db``."""
    if row["layer_sqnr_db"] < COLLAPSE_DB:
        return (0, row["position"], row["layer_sqnr_db"])
    return (1, row["layer_sqnr_db"], -_sortable(row["error_added_db"]))


def layer_sqnr(input_sqnr: float | None, output_sqnr: float) -> float:
    """SQNR of the noise a layer adds by itself: noise-to-signal out minus noise-to-signal in (noise power
    relative to signal propagates through a layer roughly unchanged), in dB. Unlike the difference of the
    dBs, a layer behind an exact float input (150 dB) that brings its output to a healthy 50 dB is not
    mistaken for the worst one."""
    nsr_in = 0.0 if input_sqnr is None else 10.0 ** (-input_sqnr / 10.0)
    added = 10.0 ** (-output_sqnr / 10.0) - nsr_in
    return EXACT_DB if added <= 0 else max(-EXACT_DB, min(EXACT_DB, -10.0 * math.log10(added)))


def _sortable(v: float | None) -> float:
    return -math.inf if v is None or math.isnan(v) else v



def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped at +-EXACT_DB (an exact copy is as good as float32 round-off)."""
    if noise <= 0:
        return EXACT_DB
    if signal <= 0:
        return -EXACT_DB
    return max(-EXACT_DB, min(EXACT_DB, 10.0 * math.log10(signal / noise)))


def source_layer(tensor, producer: dict, inputs_of: Callable, passthrough: Callable):
    """The compute op a tensor's quantization error belongs to, walking up through pass-through ops.
    Graph-format neutral: ``producer`` maps a tensor to the op writing it, ``inputs_of(op)`` lists an op's
    activation inputs, ``passthrough(op)`` says whether it only moves values (reshape, relu, ...)."""
    op = producer.get(tensor)
    while op is not None and passthrough(op):
        inputs = inputs_of(op)
        if not inputs:
            return op
        op = producer.get(inputs[0])
    return op


def upstream_sqnr(tensor, sqnr: dict, producer: dict, inputs_of: Callable) -> float | None:
    """SQNR of the nearest quantized tensor at or above ``tensor`` (None: reaches a float graph input)."""
    seen = set()
    while tensor not in seen:
        seen.add(tensor)
        if tensor in sqnr:
            return sqnr[tensor]
        op = producer.get(tensor)
        inputs = inputs_of(op) if op is not None else []
        if not inputs:
            return None
        tensor = inputs[0]
    return None



def format_table(rows: list[dict], top: int | None = 10, title: str = "per-layer int8 error (worst first)"):
    """A rich Table of ``layer_errors`` rows (for ``compress debug-quant``)."""
    from rich.table import Table

    def db(v):
        return "—" if v is None else f"{v:.1f}"

    shown = rows[:top] if top else rows
    torch_names = any("module" in r for r in shown)  # TFLite / Core ML rows name the torch module too
    table = Table(title=title)
    cols = ["#", "node"] + (["torch module", "layer SQNR dB"] if torch_names else []) + [
        "op", "output tensor", "error added dB", "output SQNR dB", "input SQNR dB", "weight SQNR dB"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("node", "torch module", "op", "output tensor") else "right")
    for i, r in enumerate(shown, 1):
        extra = [str(r.get("module") or "—"), db(r.get("layer_sqnr_db"))] if torch_names else []
        table.add_row(str(i), str(r["node"]), *extra, str(r["op_type"]), str(r["tensor"]), db(r.get("error_added_db")),
                      db(r.get("sqnr_db")), db(r.get("input_sqnr_db")), db(r.get("weight_sqnr_db")))
    return table
