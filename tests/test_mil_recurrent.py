"""The MIL reference evaluator's recurrent ops (``lstm``, ``gru``, ``rnn``; ``export/coreml/mil/ops/recurrent.py``).

torch nn.LSTM / nn.RNN / nn.GRU are converted with coremltools (iOS16 and iOS18, fp32 and fp16) and compared with
torch on real digit sequences (an 8x8 digit read row by row); nn.GRU becomes a ``while_loop``. What torch cannot
produce (reverse direction, ``output_sequence=False``, peepholes, ``clip``, non-default activations, the MIL ``gru``)
is built with coremltools' Builder and compared with references written here independently: torch's own layers
where the semantics coincide, else a per-sample, per-step numpy loop over per-gate weight matrices.

Initial states are always given explicitly: tracing nn.LSTM/nn.RNN without them makes coremltools 9 fail on
torch 2.13 (its ``int`` op conversion of the traced batch size), so "without" is not convertible here.
"""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.mil.evaluator import load_program  # noqa: E402
from compress.export.coreml.mil.ops import OPS, Args  # noqa: E402
from tests.mil_cases import (  # noqa: E402
    OP_REL,
    assert_close,
    convert_torch,
    digit_sequences,
    save_program,
    torch_outputs,
)

BATCH, STEPS, FEATURES = 4, 8, 8
TARGETS = ["iOS16", "iOS18"]
PRECISIONS = ["fp32", "fp16"]
# Builder programs: the iOS15 lstm/gru/rnn take fp32 only, so an iOS16 fp16 Builder program is all fp32 (the same
# program as iOS16 fp32) and is left out; iOS17+ computes them in fp16.
BUILDER_RUNS = [("iOS16", "fp32"), ("iOS18", "fp32"), ("iOS18", "fp16")]


def _states(count: int, hidden: int, offset: int = 0) -> np.ndarray:
    """(count, BATCH, hidden) initial states from other real digits, scaled to a typical state size."""
    rows = digit_sequences(BATCH + offset, count, hidden)[offset:]
    return np.ascontiguousarray(0.5 * rows.transpose(1, 0, 2))


# ---- torch nn.LSTM / nn.RNN / nn.GRU through coremltools -------------------------------------------


class Recurrent(nn.Module):
    """An nn.LSTM/nn.RNN/nn.GRU returning (output, h_n[, c_n]) flat; initial states are program inputs or constants."""

    def __init__(self, layer: nn.Module, states: list[np.ndarray], as_inputs: bool):
        super().__init__()
        self.layer = layer
        self.as_inputs = as_inputs
        for i, s in enumerate(states):
            self.register_buffer(f"s{i}", torch.from_numpy(s))
        self.count = len(states)

    def forward(self, x, *given):
        states = given if self.as_inputs else tuple(getattr(self, f"s{i}") for i in range(self.count))
        if isinstance(self.layer, nn.LSTM):
            out, (h, c) = self.layer(x, states)
            return out, h, c
        out, h = self.layer(x, states[0])
        return out, h


TORCH_CASES = {
    # id: (layer, batch_first, initial states as program inputs)
    "lstm_batch_first": (lambda: nn.LSTM(FEATURES, 12, batch_first=True), True, False),
    "lstm_2layer_seq_first": (lambda: nn.LSTM(FEATURES, 10, num_layers=2), False, True),
    "lstm_bidirectional_batch_first": (lambda: nn.LSTM(FEATURES, 10, bidirectional=True, batch_first=True), True, True),
    "lstm_2layer_bidirectional_seq_first": (
        lambda: nn.LSTM(FEATURES, 6, num_layers=2, bidirectional=True), False, False),
    "rnn_tanh_batch_first": (lambda: nn.RNN(FEATURES, 12, batch_first=True), True, False),
    "rnn_relu_2layer_seq_first": (lambda: nn.RNN(FEATURES, 10, num_layers=2, nonlinearity="relu"), False, True),
    # coremltools' gru op differs from torch's (reset gate placement), so nn.GRU becomes a while_loop
    "gru_batch_first": (lambda: nn.GRU(FEATURES, 10, batch_first=True), True, False),
}
# The MIL op each layer of a torch module becomes.
LAYER_OP = {nn.LSTM: "lstm", nn.RNN: "rnn", nn.GRU: "while_loop"}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_recurrent_matches(case, precision, target, tmp_path):
    make, batch_first, as_inputs = TORCH_CASES[case]
    torch.manual_seed(sorted(TORCH_CASES).index(case))
    layer = make()
    directions = 2 if layer.bidirectional else 1
    count = 2 if isinstance(layer, nn.LSTM) else 1
    states = [_states(layer.num_layers * directions, layer.hidden_size, offset=BATCH * (k + 1)) for k in range(count)]
    module = Recurrent(layer, states, as_inputs)
    x = digit_sequences(BATCH, STEPS, FEATURES)
    x = x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))
    inputs = [x] + (states if as_inputs else [])
    path = convert_torch(module, inputs, tmp_path / f"{case}.mlpackage", target=target, precision=precision)

    program = load_program(path)
    op_type = LAYER_OP[type(layer)]
    assert program.op_types.count(op_type) == layer.num_layers, program.op_types
    got = program.evaluate({f"x{i}": v for i, v in enumerate(inputs)})
    want = torch_outputs(module, *inputs)
    assert len(program.outputs) == len(want)
    for name, w in zip(program.outputs, want):
        assert_close(got[name], w, OP_REL[precision], f"{case} {target} {precision} {name}")


# ---- Builder programs against independent references -------------------------------------------


def _run_builder(op_type: str, build, x: np.ndarray, target: str, precision: str, path) -> list[np.ndarray]:
    """Build ``build(x)`` as a one-input MIL program, save it, evaluate it; returns the outputs in order."""
    opset = getattr(ct.target, target)
    prog = mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=opset)(build)
    program = load_program(save_program(prog, path, target, precision))
    assert op_type in program.op_types, program.op_types
    assert program.precision == precision  # an fp16 run really computes the op in float16
    out = program.evaluate({"x": x})
    return [out[name] for name in program.outputs]


def _seq_first() -> np.ndarray:
    return np.ascontiguousarray(digit_sequences(BATCH, STEPS, FEATURES).transpose(1, 0, 2))


def _weights(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in shapes]


# Written independently of the evaluator's table, each straight from its formula.
REF_ACT = {
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "tanh": np.tanh,
    "scaled_tanh": lambda v: 1.0 * np.tanh(1.0 * v),
    "relu": lambda v: np.where(v > 0, v, 0.0),
    "hard_sigmoid": lambda v: np.minimum(np.maximum(0.2 * v + 0.5, 0.0), 1.0),
    "sigmoid_hard": lambda v: np.minimum(np.maximum(0.2 * v + 0.5, 0.0), 1.0),
    "linear": lambda v: v,
}


def ref_lstm(x, h0, c0, w_ih, w_hh, b, p, acts=("sigmoid", "tanh", "tanh"), clip=None, reverse=False):
    """Per sample, per step: gates [i, f, o, z] of coremltools' lstm; returns (states in processing order, h, c)."""
    f_rec, f_cell, f_out = (REF_ACT[k] for k in acts)
    Wi, Wf, Wo, Wz = np.split(w_ih.astype(np.float64), 4)
    Ri, Rf, Ro, Rz = np.split(w_hh.astype(np.float64), 4)
    bi, bf, bo, bz = np.split(b.astype(np.float64), 4)
    pi, pf, po = np.split(p.astype(np.float64), 3)
    order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    seq, hs, cs = [], [], []
    for n in range(x.shape[1]):
        h, c, out = h0[n].astype(np.float64), c0[n].astype(np.float64), []
        for t in order:
            xt = x[t, n]
            i = f_rec(np.dot(Wi, xt) + np.dot(Ri, h) + bi + pi * c)
            f = f_rec(np.dot(Wf, xt) + np.dot(Rf, h) + bf + pf * c)
            c = f * c + i * f_cell(np.dot(Wz, xt) + np.dot(Rz, h) + bz)
            if clip is not None:
                c = np.minimum(np.maximum(c, -clip), clip)
            o = f_rec(np.dot(Wo, xt) + np.dot(Ro, h) + bo + po * c)
            h = o * f_out(c)
            out.append(h)
        seq.append(out)
        hs.append(h)
        cs.append(c)
    return np.array(seq).transpose(1, 0, 2), np.array(hs), np.array(cs)


def _ifoz(w: np.ndarray) -> np.ndarray:
    """torch's [i, f, g, o] gate stacking -> coremltools' [i, f, o, z]."""
    i, f, g, o = np.split(w, 4)
    return np.concatenate([i, f, o, g])


@pytest.mark.parametrize("target, precision", BUILDER_RUNS)
@pytest.mark.parametrize("output_sequence", [True, False])
def test_lstm_reverse_matches_torch_on_flipped_input(output_sequence, precision, target, tmp_path):
    """direction='reverse' = torch nn.LSTM on the time-reversed input, outputs in processing order."""
    torch.manual_seed(3)
    layer = nn.LSTM(FEATURES, 12).eval()
    sd = {k: v.numpy() for k, v in layer.state_dict().items()}
    h0, c0 = _states(1, 12, BATCH)[0], _states(1, 12, 2 * BATCH)[0]

    def lstm_reverse(x):
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=_ifoz(sd["weight_ih_l0"]),
                       weight_hh=_ifoz(sd["weight_hh_l0"]), bias=_ifoz(sd["bias_ih_l0"] + sd["bias_hh_l0"]),
                       direction="reverse", output_sequence=output_sequence)

    x = _seq_first()
    got = _run_builder("lstm", lstm_reverse, x, target, precision, tmp_path / "rev.mlpackage")
    with torch.no_grad():
        seq, (h, c) = layer(torch.from_numpy(x[::-1].copy()), (torch.from_numpy(h0[None]), torch.from_numpy(c0[None])))
    seq = seq.numpy() if output_sequence else seq.numpy()[-1:]
    for g, w, what in zip(got, [seq, h[0].numpy(), c[0].numpy()], ["sequence", "h", "c"]):
        assert_close(g, w, OP_REL[precision], f"lstm reverse {what}")


LSTM_VARIANTS = {
    # id: (recurrent_activation, cell_activation, activation, clip, peephole)
    "peephole_clip": ("sigmoid", "tanh", "tanh", 0.4, True),
    "hard_sigmoid_relu_scaled_tanh": ("hard_sigmoid", "relu", "scaled_tanh", None, True),
    "tanh_linear_sigmoid_clip": ("tanh", "linear", "sigmoid", 0.6, False),
    "relu_sigmoid_linear": ("relu", "sigmoid", "linear", None, False),
}


@pytest.mark.parametrize("target, precision", BUILDER_RUNS)
@pytest.mark.parametrize("variant", sorted(LSTM_VARIANTS))
def test_lstm_peephole_clip_activations(variant, precision, target, tmp_path):
    *acts, clip, has_peephole = LSTM_VARIANTS[variant]
    hidden = 6
    w_ih, w_hh, b, p = _weights(sorted(LSTM_VARIANTS).index(variant), (4 * hidden, FEATURES),
                                (4 * hidden, hidden), (4 * hidden,), (3 * hidden,))
    p = p * 2 if has_peephole else np.zeros_like(p)
    h0, c0 = _states(1, hidden, BATCH)[0], _states(1, hidden, 2 * BATCH)[0]
    kwargs = dict(recurrent_activation=acts[0], cell_activation=acts[1], activation=acts[2], output_sequence=True)
    if clip is not None:
        kwargs["clip"] = np.float32(clip)
    if has_peephole:
        kwargs["peephole"] = p

    def lstm_variant(x):
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=w_ih, weight_hh=w_hh, bias=b, **kwargs)

    x = _seq_first()
    got = _run_builder("lstm", lstm_variant, x, target, precision, tmp_path / "v.mlpackage")
    want = ref_lstm(x, h0, c0, w_ih, w_hh, b, p, tuple(acts), clip)
    if clip is not None:  # the clamp must actually bind, so a missing clip fails the test
        assert np.abs(ref_lstm(x, h0, c0, w_ih, w_hh, b, p, tuple(acts))[2]).max() > clip
    for g, w, what in zip(got, want, ["sequence", "h", "c"]):
        assert_close(g, w, OP_REL[precision], f"lstm {variant} {what}")


@pytest.mark.parametrize("target, precision", BUILDER_RUNS)
def test_lstm_bidirectional_last_step_with_peepholes(precision, target, tmp_path):
    """bidirectional, output_sequence=False, separate backward weights/bias/peephole, clip."""
    hidden = 5
    shapes = [(4 * hidden, FEATURES), (4 * hidden, hidden), (4 * hidden,), (3 * hidden,)]
    fw, bw = _weights(11, *shapes), _weights(12, *shapes)
    h0, c0 = _states(1, 2 * hidden, BATCH)[0], _states(1, 2 * hidden, 2 * BATCH)[0]

    def lstm_bidirectional(x):
        return mb.lstm(x=x, initial_h=h0, initial_c=c0, weight_ih=fw[0], weight_hh=fw[1], bias=fw[2], peephole=fw[3],
                       weight_ih_back=bw[0], weight_hh_back=bw[1], bias_back=bw[2], peephole_back=bw[3],
                       direction="bidirectional", output_sequence=False, clip=np.float32(0.8))

    x = _seq_first()
    got = _run_builder("lstm", lstm_bidirectional, x, target, precision, tmp_path / "bi.mlpackage")
    _, h_f, c_f = ref_lstm(x, h0[:, :hidden], c0[:, :hidden], *fw, clip=0.8)
    _, h_b, c_b = ref_lstm(x, h0[:, hidden:], c0[:, hidden:], *bw, clip=0.8, reverse=True)
    h, c = np.concatenate([h_f, h_b], axis=1), np.concatenate([c_f, c_b], axis=1)
    for g, w, what in zip(got, [h[None], h, c], ["last step", "h", "c"]):
        assert_close(g, w, OP_REL[precision], f"lstm bidirectional {what}")


def ref_gru(x, h0, w_ih, w_hh, b, acts=("sigmoid", "tanh"), reverse=False):
    """coremltools' gru (reset applied before the recurrent product), gates [r, o, z], per sample and step."""
    f_rec, f_out = REF_ACT[acts[0]], REF_ACT[acts[1]]
    Wr, Wo, Wz = np.split(w_ih.astype(np.float64), 3)
    Rr, Ro, Rz = np.split(w_hh.astype(np.float64), 3)
    br, bo, bz = np.split(b.astype(np.float64), 3)
    order = list(range(x.shape[0]))[::-1] if reverse else list(range(x.shape[0]))
    seq = np.zeros((x.shape[0], x.shape[1], Rr.shape[0]))
    for n in range(x.shape[1]):
        h = h0[n].astype(np.float64)
        for k, t in enumerate(order):
            z = f_rec(np.dot(Wz, x[t, n]) + np.dot(Rz, h) + bz)
            r = f_rec(np.dot(Wr, x[t, n]) + np.dot(Rr, h) + br)
            o = f_out(np.dot(Wo, x[t, n]) + np.dot(Ro, r * h) + bo)
            h = (1 - z) * o + z * h
            seq[k, n] = h
    return seq, seq[-1]


GRU_VARIANTS = {
    # id: (direction, output_sequence, recurrent_activation, activation)
    "forward_sequence": ("forward", True, "sigmoid", "tanh"),
    "reverse_last_step": ("reverse", False, "sigmoid", "tanh"),
    "reverse_sequence_hard_sigmoid_relu": ("reverse", True, "hard_sigmoid", "relu"),
    "forward_sigmoid_linear": ("forward", True, "sigmoid", "linear"),
}


@pytest.mark.parametrize("target, precision", BUILDER_RUNS)
@pytest.mark.parametrize("variant", sorted(GRU_VARIANTS))
def test_gru_matches_definition(variant, precision, target, tmp_path):
    direction, output_sequence, rec_act, act = GRU_VARIANTS[variant]
    hidden = 7
    w_ih, w_hh, b = _weights(20 + sorted(GRU_VARIANTS).index(variant), (3 * hidden, FEATURES),
                             (3 * hidden, hidden), (3 * hidden,))
    h0 = _states(1, hidden, BATCH)[0]

    def gru_variant(x):
        return mb.gru(x=x, initial_h=h0, weight_ih=w_ih, weight_hh=w_hh, bias=b, direction=direction,
                      output_sequence=output_sequence, recurrent_activation=rec_act, activation=act)

    x = _seq_first()
    got = _run_builder("gru", gru_variant, x, target, precision, tmp_path / "gru.mlpackage")
    seq, h = ref_gru(x, h0, w_ih, w_hh, b, (rec_act, act), reverse=direction == "reverse")
    for g, w, what in zip(got, [seq if output_sequence else seq[-1:], h], ["sequence", "h"]):
        assert_close(g, w, OP_REL[precision], f"gru {variant} {what}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gru_ios18_reset_after_matches_torch(precision, tmp_path):
    """iOS18 reset_after=True with input_bias is torch's nn.GRU (gates r, z, n -> MIL r, o, z)."""
    torch.manual_seed(4)
    layer = nn.GRU(FEATURES, 9).eval()
    sd = {k: v.numpy() for k, v in layer.state_dict().items()}

    def roz(w):
        r, z, n = np.split(w, 3)
        return np.concatenate([r, n, z])

    h0 = _states(1, 9, BATCH)[0]

    def gru_reset_after(x):
        return mb.gru(x=x, initial_h=h0, weight_ih=roz(sd["weight_ih_l0"]), weight_hh=roz(sd["weight_hh_l0"]),
                      input_bias=roz(sd["bias_ih_l0"]), bias=roz(sd["bias_hh_l0"]), reset_after=True,
                      output_sequence=True)

    x = _seq_first()
    got = _run_builder("gru", gru_reset_after, x, "iOS18", precision, tmp_path / "gru18.mlpackage")
    with torch.no_grad():
        seq, h = layer(torch.from_numpy(x), torch.from_numpy(h0[None]))
    for g, w, what in zip(got, [seq.numpy(), h[0].numpy()], ["sequence", "h"]):
        assert_close(g, w, OP_REL[precision], f"gru reset_after {what}")


@pytest.mark.parametrize("target, precision", BUILDER_RUNS)
@pytest.mark.parametrize("activation", ["sigmoid", "sigmoid_hard", "scaled_tanh", "linear"])
def test_rnn_reverse_activations(activation, precision, target, tmp_path):
    hidden = 6
    w_ih, w_hh, b = _weights(30, (hidden, FEATURES), (hidden, hidden), (hidden,))
    h0 = _states(1, hidden, BATCH)[0]

    def rnn_reverse(x):
        return mb.rnn(x=x, initial_h=h0, weight_ih=w_ih, weight_hh=w_hh, bias=b, direction="reverse",
                      output_sequence=True, activation=activation)

    x = _seq_first()
    got = _run_builder("rnn", rnn_reverse, x, target, precision, tmp_path / "rnn.mlpackage")
    f = REF_ACT[activation]
    h, seq = h0.astype(np.float64), []
    for t in reversed(range(STEPS)):
        h = f(x[t] @ w_ih.T.astype(np.float64) + h @ w_hh.T.astype(np.float64) + b)
        seq.append(h)
    for g, w, what in zip(got, [np.stack(seq), h], ["sequence", "h"]):
        assert_close(g, w, OP_REL[precision], f"rnn {activation} {what}")


# ---- unsupported attribute values ----------------------------------------------------------------


def _rnn_args(**overrides) -> Args:
    w_ih, w_hh = _weights(40, (3, 2), (3, 3))
    values = {"x": np.zeros((2, 1, 2), np.float32), "initial_h": np.zeros((1, 3), np.float32), "weight_ih": w_ih,
              "weight_hh": w_hh, **overrides}
    return Args({k: [v] for k, v in values.items()}, "rnn", "op 0")


def test_unsupported_activation_and_direction_raise():
    assert OPS["rnn"](_rnn_args())[0].shape == (1, 1, 3)
    with pytest.raises(InputError, match=r"rnn.*op 0.*activation 'swish'"):
        OPS["rnn"](_rnn_args(activation="swish"))
    with pytest.raises(InputError, match=r"rnn.*op 0.*direction 'bidirectional'"):
        OPS["rnn"](_rnn_args(direction="bidirectional"))
