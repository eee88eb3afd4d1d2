"""The MIL reference evaluator on attention, indexing/sorting/scatter, normalization and the remaining unary
and parametric activation ops, against torch (where coremltools emits the op for a torch module) or against
an independent reference (torch functional code or plainly written loops) for Builder programs.

Inputs are real sklearn digits (``tests.mil_cases``). Index outputs (topk, argsort, argmax) must match exactly,
so the inputs of those cases are made tie-free along the sorted axis (``untied``) and checked to be so.
"""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.mil.evaluator import load_program  # noqa: E402
from tests.mil_cases import (  # noqa: E402
    OP_REL, assert_close, convert_torch, digit_images, digit_sequences, save_program, torch_outputs,
)

PRECISIONS = ["fp32", "fp16"]
TARGETS = ["iOS16", "iOS18"]


def as_input(x: np.ndarray, precision: str) -> np.ndarray:
    """What the program computes on: an fp16 program casts its float32 input to float16 first."""
    return x.astype(np.float16).astype(np.float32) if precision == "fp16" else x


def untied(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` plus distinct offsets (multiples of 0.004) along ``axis``, so that no two values along it are equal,
    in float32 nor in float16 (the first seed whose offsets leave no coincidence)."""
    for seed in range(20):
        offsets = np.argsort(np.random.default_rng(seed).random(x.shape), axis=axis) * 0.004
        y = (x + offsets).astype(np.float32)
        if all((np.diff(np.sort(y.astype(dt), axis=axis), axis=axis) != 0).all() for dt in (np.float32, np.float16)):
            return y
    raise AssertionError(f"no tie-free offsets found along axis {axis}")


class Fn1(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def check_program(path, want_ops: set[str]):
    program = load_program(path)
    missing = want_ops - set(program.op_types)
    assert not missing, f"coremltools did not emit {missing}; program ops: {program.op_types}"
    return program


def run(program, feeds: dict) -> list[np.ndarray]:
    out = program.evaluate(feeds)
    return [out[name] for name in program.outputs]


# ---- torch modules ----------------------------------------------------------------------------------

IMG = digit_images(2, 3, 8)  # (2, 3, 8, 8)
IMG_W = untied(IMG, -1)  # tie-free along the last axis
IMG_C = untied(digit_images(2, 5, 6), 1)  # tie-free along the channels
SEQ = digit_sequences(4, 6, 8)  # (4, 6, 8)
IDX = torch.from_numpy(np.argsort(np.random.default_rng(3).random((2, 3, 8, 2)), axis=-1).astype(np.int64))
ROWS, COLS = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])


def _sorting(x, y):
    values, indices = torch.topk(x, 3, dim=-1)
    low_values, low_indices = torch.topk(y, 2, dim=1, largest=False)
    sorted_values, sorted_indices = torch.sort(x, dim=-1, descending=True)
    return values, indices, low_values, low_indices, torch.argsort(x, dim=-1), sorted_values, sorted_indices


def _gather_scatter(x):
    return (torch.gather(x, 3, IDX),
            torch.index_select(torch.roll(x, 3, 2), 3, torch.tensor([5, 0, 7, 0])),
            torch.ones_like(x).scatter(3, IDX, x[..., :2]),
            x.scatter_add(3, IDX, x[..., 3:5] * 2),
            x.index_put((ROWS, COLS), x[1, 2] * 0.5),
            x.index_put((ROWS, COLS), x[1, 2] * 0.5, accumulate=True))


def _masks(x, y):
    return (torch.tril(x, -1) + 2 * torch.triu(x, 2), torch.flip(x, [1, 3]), torch.cumsum(x, dim=2),
            Fn.one_hot(torch.argmax(y, dim=-1), 8).float() * y.sum(), torch.nonzero(x > 0.5))


def _einsums(a, b, c, d, e, f):
    return (torch.einsum("nchw,nwhu->nchu", a, b), torch.einsum("zwhu,zchw->zchu", c, d),
            torch.einsum("chw,whr->chr", e, f))


def _math(x):
    t = torch.tanh(x)
    return (torch.acos(t), torch.asin(t), torch.atan(x), torch.atanh(0.9 * t), torch.cosh(x), torch.sinh(x),
            torch.tan(0.5 * x), Fn.softplus(x, beta=2.0), Fn.threshold(x, 0.1, 20.0))


def _instance_norm() -> nn.Module:
    m = nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        m.bias.copy_(torch.tensor([0.2, -0.3, 0.1]))
    return m


EINSUM_INPUTS = (digit_images(2, 3, 5), digit_images(2, 5, 5)[:, :, :, :4].copy(),  # nchw, nwhu
                 digit_images(1, 5, 4)[:, :, :1].copy(), digit_images(2, 3, 5)[:, :, :4].copy(),  # broadcast n, h
                 digit_images(1, 3, 4)[0], digit_images(1, 4, 4)[0][:, :, :3].copy())  # chw, whr

TORCH_CASES = {
    # id: (module, inputs, ops that must appear, indices of the outputs that are indices (exact match))
    "sorting": (Fn1(_sorting), (IMG_W, IMG_C), {"topk", "argsort", "gather_along_axis"}, {1, 3, 4, 6}),
    "gather_scatter": (Fn1(_gather_scatter), (IMG,),
                       {"gather_along_axis", "gather", "scatter_along_axis", "scatter_nd", "fill_like"}, set()),
    "masks": (Fn1(_masks), (IMG, IMG_W), {"band_part", "reverse", "cumsum", "one_hot", "reduce_argmax", "non_zero"},
              {4}),
    "einsum": (Fn1(_einsums), EINSUM_INPUTS, {"einsum"}, set()),
    "math": (Fn1(_math), (IMG,), {"acos", "asin", "atan", "atanh", "cosh", "sinh", "tan", "softplus_parametric",
                                  "threshold"}, set()),
    "instance_norm": (_instance_norm(), (IMG,), {"instance_norm"}, set()),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_torch_op(case, target, precision, tmp_path):
    module, xs, want_ops, index_outputs = TORCH_CASES[case]
    program = check_program(convert_torch(module, xs, tmp_path / f"{case}.mlpackage", target=target,
                                          precision=precision), want_ops)
    got = run(program, {f"x{i}": x for i, x in enumerate(xs)})
    want = torch_outputs(module, *(as_input(x, precision) for x in xs))
    assert len(got) == len(want)
    if case == "einsum":
        assert program.op_types.count("einsum") == 3
    for i, (g, w) in enumerate(zip(got, want)):
        if i in index_outputs:
            assert g.dtype.kind == "i", f"output {i} dtype {g.dtype}"
            np.testing.assert_array_equal(g, w, err_msg=f"{case} output {i}")
        else:
            assert_close(g, w, OP_REL[precision], f"{case} {target} {precision} output {i}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_torch_sdpa_ios18(precision, tmp_path):
    q, k, v = SEQ.reshape(2, 2, 6, 8), SEQ[::-1].reshape(2, 2, 6, 8) * 0.7, np.roll(SEQ, 1, axis=1).reshape(2, 2, 6, 8)
    module = Fn1(lambda q, k, v: Fn.scaled_dot_product_attention(q, k, v))
    program = check_program(convert_torch(module, (q, k, v), tmp_path / "sdpa.mlpackage", precision=precision),
                            {"scaled_dot_product_attention"})
    (got,) = run(program, {"x0": q, "x1": k, "x2": v})
    (want,) = torch_outputs(module, *(as_input(t, precision) for t in (q, k, v)))
    assert_close(got, want, OP_REL[precision], f"sdpa {precision}")


# ---- Builder programs ------------------------------------------------------------------------------


def build(tmp_path, fn, inputs: dict[str, np.ndarray], target: str, precision: str, want_ops: set[str]):
    """Save the Builder program ``fn`` (its parameters are named like ``inputs``, float32 tensors of those
    shapes) for ``target`` at ``precision``, load it back and run it on ``inputs``: (program, outputs)."""
    from coremltools.converters.mil import Builder as mb

    specs = [mb.TensorSpec(shape=v.shape) for v in inputs.values()]
    prog = mb.program(input_specs=specs, opset_version=getattr(ct.target, target))(fn)
    path = save_program(prog, tmp_path / f"{fn.__name__}.mlpackage", target, precision)
    program = check_program(path, want_ops)
    assert list(program.inputs) == list(inputs)
    return program, run(program, inputs)


def check_all(got: list[np.ndarray], want: list[np.ndarray], precision: str, names: list[str]) -> None:
    assert len(got) == len(want) == len(names)
    for g, w, name in zip(got, want, names):
        assert_close(g, w, OP_REL[precision], f"{name} {precision}")


def half(x: np.ndarray, precision: str) -> np.ndarray:
    """A constant as an fp16 program stores it."""
    return as_input(np.asarray(x, np.float32), precision)


RNG = np.random.default_rng(11)
G_B2 = RNG.integers(0, 8, (2, 3, 4)).astype(np.int32)  # gather axis 3, batch_dims 2
G_B1 = RNG.integers(-8, 8, (2, 5)).astype(np.int32)  # gather axis 2, batch_dims 1 (negatives: iOS16 only)
ND_B1 = np.stack([RNG.integers(0, 3, (2, 4)), RNG.integers(0, 8, (2, 4))], -1).astype(np.int32)
ND = np.stack([RNG.integers(0, 2, 5), RNG.integers(0, 3, 5), RNG.integers(0, 8, 5)], -1).astype(np.int32)
GA = RNG.integers(0, 3, (2, 2, 8, 8)).astype(np.int32)  # gather_along_axis axis 1


def _gather_reference(x, g_b1):
    """The five gathers of ``test_gather_family``, element by element."""
    out = [np.empty((2, 3, 8, 4)), np.empty((2, 3, 5, 8)), np.empty((2, 4, 8)), np.empty((5, 8)), np.empty(GA.shape)]
    for b, c, h, j in np.ndindex(2, 3, 8, 4):
        out[0][b, c, h, j] = x[b, c, h, G_B2[b, c, j]]
    for b, c, j, w in np.ndindex(2, 3, 5, 8):
        out[1][b, c, j, w] = x[b, c, g_b1[b, j] % 8, w]
    for b, m, w in np.ndindex(2, 4, 8):
        out[2][b, m, w] = x[b, ND_B1[b, m, 0], ND_B1[b, m, 1], w]
    for m, w in np.ndindex(5, 8):
        out[3][m, w] = x[ND[m, 0], ND[m, 1], ND[m, 2], w]
    for b, c, h, w in np.ndindex(*GA.shape):
        out[4][b, c, h, w] = x[b, GA[b, c, h, w], h, w]
    return out


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_gather_family(target, precision, tmp_path):
    from coremltools.converters.mil import Builder as mb

    g_b1 = G_B1 if target == "iOS16" else G_B1 % 8  # iOS17+ treats negative indices as out of bounds

    def gathers(x):
        return (mb.gather(x=x, indices=G_B2, axis=3, batch_dims=2), mb.gather(x=x, indices=g_b1, axis=-2, batch_dims=1),
                mb.gather_nd(x=x, indices=ND_B1, batch_dims=1), mb.gather_nd(x=x, indices=ND),
                mb.gather_along_axis(x=x, indices=GA, axis=1))

    program, got = build(tmp_path, gathers, {"x": IMG}, target, precision, {"gather", "gather_nd", "gather_along_axis"})
    want = _gather_reference(as_input(IMG, precision), g_b1)
    check_all(got, want, precision, ["gather batch_dims=2", "gather batch_dims=1", "gather_nd batch_dims=1",
                                     "gather_nd", "gather_along_axis"])


SCATTER_MODES = ["update", "add", "sub", "mul", "div", "max", "min"]
S_IDX = np.array([6, 1, 3], np.int32)  # scatter along axis 2
SA_IDX = IDX.numpy().astype(np.int32)  # scatter_along_axis axis 3: 2 distinct columns per row
ND_IDX = np.array([[0, 2], [1, 0], [1, 1], [0, 0]], np.int32)  # scatter_nd into (batch, channel)
UPDATES = {name: RNG.uniform(0.5, 1.5, shape).astype(np.float32)
           for name, shape in [("scatter", (2, 3, 3, 8)), ("along", SA_IDX.shape), ("nd", (4, 8, 8))]}


def _combine(mode: str, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    return {"update": lambda: new, "add": lambda: old + new, "sub": lambda: old - new, "mul": lambda: old * new,
            "div": lambda: old / new, "max": lambda: np.maximum(old, new), "min": lambda: np.minimum(old, new)}[mode]()


def _scatter_reference(x: np.ndarray, mode: str, precision: str) -> list[np.ndarray]:
    """scatter, scatter_along_axis, scatter_nd of ``test_scatter_family``, one update at a time."""
    u = {k: half(v, precision).astype(np.float64) for k, v in UPDATES.items()}
    a, b, c = (x.astype(np.float64) for _ in range(3))
    for i, p in enumerate(S_IDX):
        a[:, :, p, :] = _combine(mode, a[:, :, p, :], u["scatter"][:, :, i, :])
    for n, ch, h, j in np.ndindex(*SA_IDX.shape):
        w = SA_IDX[n, ch, h, j]
        b[n, ch, h, w] = _combine(mode, b[n, ch, h, w], u["along"][n, ch, h, j])
    for m, (n, ch) in enumerate(ND_IDX):
        c[n, ch] = _combine(mode, c[n, ch], u["nd"][m])
    return [a, b, c]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_scatter_family_every_mode(target, precision, tmp_path):
    """Every mode of scatter, scatter_along_axis and scatter_nd; iOS18 programs use the iOS17 definitions
    with ``validate_indices=True`` (not on scatter_nd: coremltools 9's compile-time check of it cannot broadcast
    indices that address fewer dimensions than ``data`` has)."""
    from coremltools.converters.mil import Builder as mb

    extra = {"validate_indices": True} if target == "iOS18" else {}

    def scatters(x):
        out = []
        for mode in SCATTER_MODES:
            out += [mb.scatter(data=x, indices=S_IDX, updates=UPDATES["scatter"], axis=2, mode=mode, **extra),
                    mb.scatter_along_axis(data=x, indices=SA_IDX, updates=UPDATES["along"], axis=-1, mode=mode,
                                          **extra),
                    mb.scatter_nd(data=x, indices=ND_IDX, updates=UPDATES["nd"], mode=mode)]
        return tuple(out)

    program, got = build(tmp_path, scatters, {"x": IMG}, target, precision,
                         {"scatter", "scatter_along_axis", "scatter_nd"})
    assert program.op_types.count("scatter_nd") == len(SCATTER_MODES)
    x = as_input(IMG, precision)
    for i, mode in enumerate(SCATTER_MODES):
        check_all(got[3 * i : 3 * i + 3], _scatter_reference(x, mode, precision), precision,
                  [f"{op} mode={mode}" for op in ("scatter", "scatter_along_axis", "scatter_nd")])


def test_scatter_repeated_indices_accumulate(tmp_path):
    """Repeated indices: every update is applied (add accumulates, mul multiplies twice)."""
    from coremltools.converters.mil import Builder as mb

    idx = np.array([2, 5, 2], np.int32)
    upd = UPDATES["scatter"]

    def repeated(x):
        return (mb.scatter(data=x, indices=idx, updates=upd, axis=2, mode="add"),
                mb.scatter(data=x, indices=idx, updates=upd, axis=2, mode="mul"))

    _, (added, multiplied) = build(tmp_path, repeated, {"x": IMG}, "iOS16", "fp32", {"scatter"})
    want_add, want_mul = IMG.astype(np.float64), IMG.astype(np.float64)
    for i, p in enumerate(idx):
        want_add[:, :, p] += upd[:, :, i]
        want_mul[:, :, p] *= upd[:, :, i]
    check_all([added, multiplied], [want_add, want_mul], "fp32", ["scatter add repeated", "scatter mul repeated"])


def _cumsum_reference(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    """Running sums written out: position i sums positions j <= i (j < i if exclusive; >= / > if reverse)."""
    x = np.moveaxis(x.astype(np.float64), axis, 0)
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[0]):
            before = j > i if reverse else j < i
            if before or (j == i and not exclusive):
                out[i] += x[j]
    return np.moveaxis(out, 0, axis)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_topk_argsort_cumsum(target, precision, tmp_path):
    """topk's iOS16 inputs (ascending, sort, return_indices), iOS17's uint16 indices (iOS18 only), argsort
    ascending along a middle axis, and cumsum's exclusive/reverse variants. (iOS17's ``k=-1`` cannot be saved
    by coremltools 9: its type inference gives the output a dimension of -1.)"""
    from coremltools.converters.mil import Builder as mb

    def sorting(x, y):
        out = [*mb.topk(x=x, k=3, axis=-1, ascending=True), mb.topk(x=y, k=2, axis=1, return_indices=False),
               *mb.topk(x=y, k=4, axis=1, sort=False), mb.argsort(x=y, axis=1, ascending=True)]
        if target == "iOS18":
            out += [*mb.topk(x=x, k=8, axis=-1, output_indices_dtype="uint16")]
        out += [mb.cumsum(x=x, axis=2, exclusive=exclusive, reverse=reverse)
                for exclusive in (False, True) for reverse in (False, True)]
        return tuple(out)

    program, got = build(tmp_path, sorting, {"x": IMG_W, "y": IMG_C}, target, precision, {"topk", "argsort", "cumsum"})
    x, y = (torch.from_numpy(as_input(v, precision)) for v in (IMG_W, IMG_C))
    low3 = torch.topk(x, 3, dim=-1, largest=False)
    top4 = torch.topk(y, 4, dim=1)
    want = [low3.values, low3.indices, torch.topk(y, 2, dim=1).values, top4.values, top4.indices,
            torch.argsort(y, dim=1)]
    if target == "iOS18":
        want += list(torch.sort(x, dim=-1, descending=True))
    want = [w.numpy() for w in want]
    indices = {i for i, w in enumerate(want) if w.dtype.kind == "i"}
    want += [_cumsum_reference(x.numpy(), 2, e, r) for e in (False, True) for r in (False, True)]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        if i in indices:
            assert g.dtype.kind in "iu", f"output {i}: {g.dtype}"
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}")
        else:
            assert_close(g, w, OP_REL[precision], f"sorting/cumsum output {i} {precision}")
    if target == "iOS18":  # uint16 indices inside the program; coremltools casts the model output to int32
        env = program.run_single({"x": IMG_W, "y": IMG_C}, keep_all=True)
        (inner,) = [v for k, v in env.items() if k.endswith("__pre__output__int32__cast")]
        assert inner.dtype == np.uint16



def test_topk_ios15(tmp_path):
    """iOS15's topk (no sort / return_indices inputs): both outputs, descending by default."""
    from coremltools.converters.mil import Builder as mb

    def topk15(x, y):
        return (*mb.topk(x=x, k=3), *mb.topk(x=y, k=2, axis=1, ascending=True))

    program, got = build(tmp_path, topk15, {"x": IMG_W, "y": IMG_C}, "iOS15", "fp32", {"topk"})
    assert not {"sort", "return_indices"} & {k for o in program._ops if o.type == "topk" for k in o.bindings}
    top = torch.topk(torch.from_numpy(IMG_W), 3, dim=-1)
    low = torch.topk(torch.from_numpy(IMG_C), 2, dim=1, largest=False)
    for g, w in zip(got, [top.values, top.indices, low.values, low.indices]):
        np.testing.assert_array_equal(g, w.numpy())


LENGTHS = np.array([5, 2], np.int32)  # reverse_sequence: one length per batch item


def _transform_reference(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """reverse_sequence, sliding_windows, band_part, one_hot and reverse of ``test_reorder_and_masks``, written out."""
    rev_seq = x.copy()
    for b, n in enumerate(LENGTHS):
        for t in range(n):
            rev_seq[b, :, t] = x[b, :, n - 1 - t]
    windows = np.stack([x[:, :, :, s : s + 3] for s in range(0, 8 - 3 + 1, 2)], axis=3)  # (2, 3, 8, 3, 3)
    band = x.copy()
    for m, n in np.ndindex(8, 8):
        if m - n > 1 or n - m > 2:
            band[..., m, n] = 0
    hot = np.full((2, 8, 3, 8), -1.0)  # one_hot axis=1 of argmax over the last axis of y (2, 3, 8, 8)
    arg = y.argmax(axis=-1)
    for b, c, h in np.ndindex(2, 3, 8):
        hot[b, arg[b, c, h], c, h] = 2.0
    return [rev_seq, windows, band, hot, x[::-1, ::-1, ::-1, ::-1]]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_reorder_and_masks(target, precision, tmp_path):
    from coremltools.converters.mil import Builder as mb

    def transforms(x, y):
        arg = mb.reduce_argmax(x=y, axis=-1)
        return (mb.reverse_sequence(x=x, lengths=LENGTHS, seq_axis=2, batch_axis=0),
                mb.sliding_windows(x=x, axis=-1, size=3, stride=2), mb.band_part(x=x, lower=1, upper=2),
                mb.one_hot(indices=arg, one_hot_vector_size=8, axis=1, on_value=2.0, off_value=-1.0),
                mb.reverse(x=x))

    program, got = build(tmp_path, transforms, {"x": IMG, "y": IMG_W}, target, precision,
                         {"reverse_sequence", "sliding_windows", "band_part", "one_hot", "reverse"})
    want = _transform_reference(as_input(IMG, precision), as_input(IMG_W, precision))
    check_all(got, want, precision, ["reverse_sequence", "sliding_windows", "band_part", "one_hot", "reverse"])


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_norms_and_parametric_activations(target, precision, tmp_path):
    """l2_norm (last three axes per batch item), local_response_norm (odd window sizes; torch has the op but
    coremltools 9 cannot convert nn.LocalResponseNorm), clamped_relu and scaled_tanh against torch code."""
    from coremltools.converters.mil import Builder as mb

    x5 = digit_images(2, 6, 5)

    def norms(x, z, s):
        return (mb.l2_norm(x=x, epsilon=1e-4), mb.l2_norm(x=s), mb.local_response_norm(x=z, size=3),
                mb.local_response_norm(x=z, size=5, alpha=0.5, beta=0.6, k=1.5),
                mb.local_response_norm(x=s, size=3, alpha=0.2),
                mb.clamped_relu(x=x, alpha=0.3, beta=0.9), mb.scaled_tanh(x=x, alpha=1.7, beta=0.6))

    program, got = build(tmp_path, norms, {"x": IMG, "z": x5, "s": SEQ}, target, precision,
                         {"l2_norm", "local_response_norm", "clamped_relu", "scaled_tanh"})
    x, z, s = (torch.from_numpy(as_input(v, precision)) for v in (IMG, x5, SEQ))
    want = [x / torch.sqrt((x * x).sum(dim=(1, 2, 3), keepdim=True) + 1e-4), s / torch.sqrt((s * s).sum() + 1e-6),
            Fn.local_response_norm(z, 3), Fn.local_response_norm(z, 5, alpha=0.5, beta=0.6, k=1.5),
            Fn.local_response_norm(s, 3, alpha=0.2),
            torch.clamp(Fn.leaky_relu(x, 0.3), max=0.9), 1.7 * torch.tanh(0.6 * x)]
    check_all(got, [w.numpy() for w in want], precision,
              ["l2_norm rank 4", "l2_norm rank 3", "local_response_norm 3", "local_response_norm 5",
               "local_response_norm rank 3", "clamped_relu", "scaled_tanh"])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_sdpa_masks_ios18(precision, tmp_path):
    """scaled_dot_product_attention with a constant boolean causal mask (L, S), a float mask broadcast over
    heads and queries (B, 1, 1, S), a boolean mask computed in the program (B, 1, L, S), and L != S, EV != E."""
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(5)
    seq = digit_sequences(8, 6, 8)
    q, k = seq[:4].reshape(2, 2, 6, 8), seq[4:].reshape(2, 2, 6, 8)
    v = np.ascontiguousarray(seq[::-1][:4].reshape(2, 2, 6, 8)[..., :5])
    causal = np.tril(np.ones((6, 6), bool))
    bias = np.where(rng.random((2, 1, 1, 6)) < 0.3, -1e4, rng.normal(0, 0.5, (2, 1, 1, 6))).astype(np.float32)
    keep = rng.normal(size=(2, 1, 4, 6)).astype(np.float32)
    keep[..., 0] = 1.0  # every query row keeps at least one key

    def attention(q, k, v, keep):
        return (mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=causal),
                mb.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=bias),
                mb.scaled_dot_product_attention(query=mb.slice_by_index(x=q, begin=[0, 0, 2, 0], end=[2, 2, 6, 8]),
                                                key=k, value=v, attn_mask=mb.greater(x=keep, y=0.0)),
                mb.scaled_dot_product_attention(query=q, key=k, value=v))

    inputs = {"q": q, "k": k, "v": v, "keep": keep}
    program, got = build(tmp_path, attention, inputs, "iOS18", precision, {"scaled_dot_product_attention"})
    assert program.op_types.count("scaled_dot_product_attention") == 4
    tq, tk, tv = (torch.from_numpy(as_input(t, precision)) for t in (q, k, v))
    sdpa = Fn.scaled_dot_product_attention
    want = [sdpa(tq, tk, tv, attn_mask=torch.from_numpy(causal)),
            sdpa(tq, tk, tv, attn_mask=torch.from_numpy(half(bias, precision))),
            sdpa(tq[:, :, 2:], tk, tv, attn_mask=torch.from_numpy(keep > 0)), sdpa(tq, tk, tv)]
    check_all(got, [w.numpy() for w in want], precision, ["causal bool mask", "float mask", "computed bool mask",
                                                           "no mask"])


# ---- errors and coverage ---------------------------------------------------------------------------


def _call(op_type: str, **inputs):
    from compress.export.coreml.mil.ops import OPS, Args

    return OPS[op_type](Args({k: [v] for k, v in inputs.items()}, op_type, "op #7, output 'y'"))


@pytest.mark.parametrize("op_type, inputs, message", [
    ("gather", {"x": IMG, "indices": np.array([8]), "axis": 3}, "out of range [-8, 8)"),
    ("gather", {"x": IMG, "indices": np.array([-1]), "axis": -1, "validate_indices": False}, "out of range [0, 8)"),
    ("gather_along_axis", {"x": IMG, "indices": GA + 1, "axis": 1}, "out of range"),
    ("scatter_nd", {"data": IMG, "indices": ND_IDX + 1, "updates": UPDATES["nd"]}, "out of range"),
    ("scatter", {"data": IMG, "indices": S_IDX, "updates": UPDATES["scatter"], "axis": 2, "mode": "xor"},
     "mode 'xor'"),
    ("topk", {"x": IMG, "k": 9}, "k 9"),
    ("one_hot", {"indices": np.array([3, 8]), "one_hot_vector_size": 8}, "index 8"),
    ("reverse_sequence", {"x": IMG, "lengths": np.array([9, 1]), "seq_axis": 2}, "lengths [9, 1]"),
])
def test_unsupported_values_raise_one_line(op_type, inputs, message):
    with pytest.raises(InputError) as err:
        _call(op_type, **inputs)
    text = str(err.value)
    assert "\n" not in text and f"'{op_type}'" in text and "op #7" in text and message in text, text


def test_registry_covers_the_common_ops():
    """Every op this family adds is registered, in the family module it belongs to (registering an op type twice
    fails at import: ``compress.export.coreml.mil.ops.registry.op``)."""
    from compress.export.coreml.mil import ops

    added = {"scaled_dot_product_attention", "topk", "argsort", "cumsum", "gather", "gather_nd", "gather_along_axis",
             "scatter", "scatter_nd", "scatter_along_axis", "one_hot", "band_part", "reverse", "reverse_sequence",
             "sliding_windows", "non_zero", "fill_like", "l2_norm", "local_response_norm", "acos", "asin", "atan",
             "atanh", "cosh", "sinh", "tan", "threshold", "clamped_relu", "scaled_tanh", "softplus_parametric",
             "non_maximum_suppression", "resample", "affine"}
    assert added <= set(ops.OPS)
    modules = {name: ops.OPS[name].__module__.rsplit(".", 1)[-1] for name in added}
    assert {m for m in modules.values()} <= {"attention", "indexing", "norms", "elementwise", "detection", "resample"}, modules


def _nms_reference(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, score_threshold: float, m: int):
    """Greedy NMS from corner coordinates and a full IoU matrix: (kept indices, IoU matrix)."""
    corners = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    n = len(boxes)
    iou = np.zeros((n, n))
    for i, j in np.ndindex(n, n):
        w = min(corners[i, 2], corners[j, 2]) - max(corners[i, 0], corners[j, 0])
        h = min(corners[i, 3], corners[j, 3]) - max(corners[i, 1], corners[j, 1])
        inter = max(w, 0) * max(h, 0)
        iou[i, j] = inter / (boxes[i, 2] * boxes[i, 3] + boxes[j, 2] * boxes[j, 3] - inter)
    alive = [i for i in sorted(range(n), key=lambda i: -scores[i]) if scores[i] >= score_threshold]
    kept = []
    while alive and len(kept) < m:
        best = alive.pop(0)
        kept.append(best)
        alive = [i for i in alive if iou[best, i] <= iou_threshold]
    return kept, iou


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_non_maximum_suppression(target, precision, tmp_path):
    """iOS16 programs use the iOS15 layout (boxes (n, B, 4), score threshold, count output); iOS18 the iOS17 one
    (boxes (n, 4, B), no threshold). Boxes and scores are real digit pixels; no IoU or score sits within 1e-3 of
    a threshold, so float16 rounding cannot flip a decision."""
    from coremltools.converters.mil import Builder as mb

    v = digit_images(2, 5, 4).reshape(2, 5, 16).transpose(0, 2, 1)  # 16 boxes with 5 digit pixels each
    boxes = np.concatenate([3 * v[..., :2], 1.5 + np.abs(v[..., 2:4])], axis=-1).astype(np.float32)  # (2, 16, 4)
    scores = untied(np.ascontiguousarray(v[..., 4:]), 1)  # (2, 16, 1)
    iou_threshold, score_threshold, m = 0.25, -0.5 if target == "iOS16" else -np.inf, 6
    ios15 = target == "iOS16"

    def nms(boxes, scores):
        kw = {"score_threshold": score_threshold} if ios15 else {}
        return mb.non_maximum_suppression(boxes=boxes, scores=scores, iou_threshold=iou_threshold, max_boxes=m, **kw)

    feeds = {"boxes": boxes, "scores": scores} if ios15 else {"boxes": boxes.transpose(0, 2, 1).copy(),
                                                              "scores": scores.transpose(0, 2, 1).copy()}
    program, got = build(tmp_path, nms, feeds, target, precision, {"non_maximum_suppression"})
    if not ios15:
        got = [got[0].transpose(0, 2, 1), got[1].transpose(0, 2, 1), got[2]]
    for b in range(2):
        bx = as_input(boxes[b], precision).astype(np.float64)
        sc = as_input(scores[b, :, 0], precision).astype(np.float64)
        kept, iou = _nms_reference(bx, sc, iou_threshold, score_threshold, m)
        assert np.abs(iou - iou_threshold).min() > 1e-3 and np.abs(sc - score_threshold).min() > 1e-3
        assert 1 < len(kept) <= m
        np.testing.assert_array_equal(got[2][b], kept + [-1] * (m - len(kept)))
        assert_close(got[0][b, : len(kept)], bx[kept], OP_REL[precision], "nms boxes")
        assert_close(got[1][b, : len(kept), 0], sc[kept], OP_REL[precision], "nms scores")
        if ios15:
            assert got[3][b] == len(kept)


# ---- resample (grid_sample) and affine -------------------------------------------------------------

SAMPLE_X = digit_images(2, 3, 6)
GRID = np.moveaxis(digit_images(2, 2, 5), 1, -1)  # (2, 5, 5, 2): real digit pixels as (x, y) coordinates
# to [-1.13, 1.17]: some points outside the image, none on a pixel boundary (a nearest-sampling tie)
GRID = ((GRID - GRID.min()) / (GRID.max() - GRID.min()) * 2.3 - 1.13).astype(np.float32)
GRID_SAMPLE_ARGS = [(mode, padding, align) for mode in ("bilinear", "nearest")
                    for padding in ("zeros", "border", "reflection") for align in (False, True)]


def _grid_samples(x, grid):
    return tuple(Fn.grid_sample(x, grid, mode=m, padding_mode=p, align_corners=al) for m, p, al in GRID_SAMPLE_ARGS)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_torch_grid_sample_resample(target, precision, tmp_path):
    """Every torch grid_sample mode, padding and align_corners (coremltools maps reflection without
    align_corners to Core ML's symmetric padding)."""
    for align in (False, True):  # no point halfway between two pixels, where nearest sampling is a tie
        for size, c in ((SAMPLE_X.shape[3], GRID[..., 0]), (SAMPLE_X.shape[2], GRID[..., 1])):
            pixels = (c + 1) / 2 * (size - 1) if align else ((c + 1) * size - 1) / 2
            assert np.abs(np.mod(pixels, 1) - 0.5).min() > 1e-3
    module = Fn1(_grid_samples)
    program = check_program(convert_torch(module, (SAMPLE_X, GRID), tmp_path / "gs.mlpackage", target=target,
                                          precision=precision), {"resample"})
    assert program.op_types.count("resample") == len(GRID_SAMPLE_ARGS)
    got = run(program, {"x0": SAMPLE_X, "x1": GRID})
    want = torch_outputs(module, as_input(SAMPLE_X, precision), as_input(GRID, precision))
    check_all(got, want, precision, [f"grid_sample {m} {p} align_corners={al}" for m, p, al in GRID_SAMPLE_ARGS])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_torch_affine_grid_affine(precision, tmp_path):
    """affine_grid + grid_sample with a constant theta becomes one ``affine`` op (bilinear, zero padding)."""
    theta = torch.tensor([[[0.9, -0.3, 0.1], [0.25, 1.1, -0.2]], [[1.2, 0.0, 0.3], [0.1, 0.8, 0.05]]])

    def warp(x):
        return tuple(Fn.grid_sample(x, Fn.affine_grid(theta, [2, 3, 4, 7], align_corners=al), align_corners=al)
                     for al in (False, True))

    module = Fn1(warp)
    program = check_program(convert_torch(module, (SAMPLE_X,), tmp_path / "affine.mlpackage", target="iOS16",
                                          precision=precision), {"affine"})
    got = run(program, {"x0": SAMPLE_X})
    want = torch_outputs(module, as_input(SAMPLE_X, precision))
    check_all(got, want, precision, ["affine align_corners=False", "affine align_corners=True"])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_resample_coordinate_modes_and_padding_value(precision, tmp_path):
    """Builder-only settings: unnormalized and [0, 1] coordinates, a non-zero padding value; the reference maps
    the coordinates to [-1, 1] by hand and shifts torch's zero padding: pad + grid_sample(x - pad)."""
    from coremltools.converters.mil import Builder as mb

    height, width = SAMPLE_X.shape[2:]
    unnormalized = (GRID + 1) / 2 * np.array([width - 1, height - 1], np.float32)  # align_corners=True pixels
    zero_one = (GRID + 1) / 2  # the same points in [0, 1] (align_corners=False)

    def resamples(x, pixels, unit):
        kw = {"sampling_mode": "bilinear", "padding_mode": "constant", "padding_value": 0.7}
        return (mb.resample(x=x, coordinates=pixels, coordinates_mode="unnormalized", align_corners=True, **kw),
                mb.resample(x=x, coordinates=unit, coordinates_mode="normalized_zero_to_one", align_corners=False,
                            **kw))

    program, got = build(tmp_path, resamples, {"x": SAMPLE_X, "pixels": unnormalized, "unit": zero_one}, "iOS16",
                         precision, {"resample"})
    x = torch.from_numpy(as_input(SAMPLE_X, precision))
    grid_pixels = as_input(unnormalized, precision) / np.array([width - 1, height - 1], np.float32) * 2 - 1
    grid_unit = as_input(zero_one, precision) * 2 - 1
    want = [0.7 + Fn.grid_sample(x - 0.7, torch.from_numpy(g.astype(np.float32)), align_corners=al)
            for g, al in ((grid_pixels, True), (grid_unit, False))]
    check_all(got, [w.numpy() for w in want], precision, ["resample unnormalized", "resample normalized_zero_to_one"])
