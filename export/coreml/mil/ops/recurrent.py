"""MIL recurrent layers: ``lstm``, ``gru``, ``rnn`` (coremltools defs iOS15/recurrent.py; iOS17 only adds fp16;
iOS18 gives ``gru`` ``reset_after`` and ``input_bias``).

Layout (coremltools' definitions): ``x`` is (seq, batch, input); weights are stacked by gate along axis 0 and
multiply the column vector (``W x``). LSTM gates are stacked ``[input, forget, output, cell]`` (the torch frontend
reorders torch's i, f, g, o into this), peepholes ``[input, forget, output]``; GRU gates ``[reset, output, update]``.
``bias`` is the single (input + recurrent) bias of each gate.

Conventions the docstrings leave implicit, taken from coremltools' own numerical tests of these ops
(ops/tests/iOS14/test_recurrent.py), which run against the Core ML runtime:
- ``direction="reverse"`` reads ``x`` from the last step to the first and emits the sequence in that processing
  order (output step k is the state after reading ``x[s-1-k]``); the final state is the last one produced.
- ``direction="bidirectional"`` (lstm) emits the backward half in time order, as torch does: output step t holds
  the backward state after reading ``x[t:]``; with ``output_sequence=False`` the single step is the final states.
- LSTM peepholes add ``p * c_{t-1}`` to the input and forget gates and ``p * c_t`` to the output gate; ``clip``
  clamps the new cell state ``c_t`` to [-clip, clip] before it is used (absent: no clamp).
- ``scaled_tanh`` takes no alpha/beta here, so it is tanh; ``hard_sigmoid`` (``sigmoid_hard`` in the rnn docstring)
  is clip(0.2 x + 0.5, 0, 1).
- GRU (``reset_after=False``, the only form before iOS18): ``o_t = act(W_o x + R_o (r_t * h_{t-1}) + b_o)``;
  with ``reset_after=True``: ``o_t = act(W_o x + b_in_o + r_t * (R_o h_{t-1} + b_o))`` (torch's nn.GRU form).
Arithmetic is float32 (float16 inputs widened); the evaluator rounds each output to the declared dtype.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from compress.core.errors import InputError
from compress.export.coreml.mil.ops.registry import F, op


def _sigmoid(v: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _hard_sigmoid(v: np.ndarray) -> np.ndarray:
    return np.clip(0.2 * v + 0.5, 0.0, 1.0)


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "scaled_tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0.0),
    "hard_sigmoid": _hard_sigmoid,
    "sigmoid_hard": _hard_sigmoid,
    "linear": lambda v: v,
}


def _activation(a, name: str, default: str) -> Callable[[np.ndarray], np.ndarray]:
    value = str(a.scalar(name, default))
    fn = _ACTIVATIONS.get(value.lower())
    if fn is None:
        raise InputError(f"MIL op '{a.op_type}' ({a.where}): {name} '{value}' is not supported")
    return fn


def _direction(a, allowed: tuple[str, ...]) -> str:
    value = str(a.scalar("direction", "forward"))
    if value not in allowed:
        raise InputError(f"MIL op '{a.op_type}' ({a.where}): direction '{value}' is not supported")
    return value


def _optional(a, name: str, size: int) -> np.ndarray:
    """An optional const vector (bias, peephole), zeros when the program omits it."""
    v = a.get(name)
    return np.zeros(size, np.float32) if v is None else F(v).astype(np.float32)


def _steps(x: np.ndarray, reverse: bool) -> np.ndarray:
    return x[::-1] if reverse else x


def _sequence_outputs(a, states: np.ndarray, final_h: np.ndarray) -> np.ndarray:
    """The first output: every step (seq, b, H') or only the final hidden state (1, b, H')."""
    return states if a.scalar("output_sequence", False) else final_h[None]


# ---- lstm --------------------------------------------------------------------------------------


def _lstm_direction(x, h, c, w_ih, w_hh, bias, peephole, acts, clip, reverse):
    """One direction over the whole sequence; returns (hidden states in processing order, h, c)."""
    recurrent_act, cell_act, out_act = acts
    p_i, p_f, p_o = np.split(peephole, 3)
    x_proj = _steps(x, reverse) @ w_ih.T + bias  # (s, b, 4H), gates [i, f, o, z]
    states = []
    for xw in x_proj:
        g_i, g_f, g_o, g_z = np.split(xw + h @ w_hh.T, 4, axis=-1)
        i = recurrent_act(g_i + p_i * c)
        f = recurrent_act(g_f + p_f * c)
        c = f * c + i * cell_act(g_z)
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = recurrent_act(g_o + p_o * c)
        h = o * out_act(c)
        states.append(h)
    return np.stack(states), h, c


@op("lstm")
def _lstm(a):
    direction = _direction(a, ("forward", "reverse", "bidirectional"))
    acts = (_activation(a, "recurrent_activation", "sigmoid"), _activation(a, "cell_activation", "tanh"),
            _activation(a, "activation", "tanh"))
    clip = a.scalar("clip")
    clip = None if clip is None else float(clip)
    x, h0, c0 = F(a["x"]), F(a["initial_h"]), F(a["initial_c"])
    hidden = int(np.shape(a["weight_hh"])[1])

    def run(suffix: str, h, c, reverse: bool):
        return _lstm_direction(x, h, c, F(a["weight_ih" + suffix]), F(a["weight_hh" + suffix]),
                               _optional(a, "bias" + suffix, 4 * hidden),
                               _optional(a, "peephole" + suffix, 3 * hidden), acts, clip, reverse)

    if direction != "bidirectional":
        states, h, c = run("", h0, c0, direction == "reverse")
        return _sequence_outputs(a, states, h), h, c
    if "weight_ih_back" not in a or "weight_hh_back" not in a:
        raise InputError(f"MIL op 'lstm' ({a.where}): direction 'bidirectional' needs weight_ih_back/weight_hh_back")
    fwd, h_f, c_f = run("", h0[:, :hidden], c0[:, :hidden], False)
    bwd, h_b, c_b = run("_back", h0[:, hidden:], c0[:, hidden:], True)
    states = np.concatenate([fwd, bwd[::-1]], axis=-1)  # backward half back in time order
    h, c = np.concatenate([h_f, h_b], axis=-1), np.concatenate([c_f, c_b], axis=-1)
    return _sequence_outputs(a, states, h), h, c


# ---- gru ---------------------------------------------------------------------------------------


@op("gru")
def _gru(a):
    reverse = _direction(a, ("forward", "reverse")) == "reverse"
    recurrent_act = _activation(a, "recurrent_activation", "sigmoid")
    act = _activation(a, "activation", "tanh")
    reset_after = bool(a.scalar("reset_after", False))
    x, h = F(a["x"]), F(a["initial_h"])
    w_ih, w_hh = F(a["weight_ih"]), F(a["weight_hh"])
    hidden = w_hh.shape[1]
    w_hr, w_ho, w_hz = np.split(w_hh, 3)
    b_r, b_o, b_z = np.split(_optional(a, "bias", 3 * hidden), 3)
    x_proj = _steps(x, reverse) @ w_ih.T + _optional(a, "input_bias", 3 * hidden)  # gates [r, o, z]
    states = []
    for xw in x_proj:
        x_r, x_o, x_z = np.split(xw, 3, axis=-1)
        r = recurrent_act(x_r + h @ w_hr.T + b_r)
        z = recurrent_act(x_z + h @ w_hz.T + b_z)
        if reset_after:
            o = act(x_o + r * (h @ w_ho.T + b_o))
        else:
            o = act(x_o + (r * h) @ w_ho.T + b_o)
        h = (1.0 - z) * o + z * h
        states.append(h)
    return _sequence_outputs(a, np.stack(states), h), h


# ---- rnn ---------------------------------------------------------------------------------------


@op("rnn")
def _rnn(a):
    reverse = _direction(a, ("forward", "reverse")) == "reverse"
    act = _activation(a, "activation", "tanh")
    x, h = F(a["x"]), F(a["initial_h"])
    w_ih, w_hh = F(a["weight_ih"]), F(a["weight_hh"])
    x_proj = _steps(x, reverse) @ w_ih.T + _optional(a, "bias", w_hh.shape[0])
    states = []
    for xw in x_proj:
        h = act(xw + h @ w_hh.T)
        states.append(h)
    return _sequence_outputs(a, np.stack(states), h), h
