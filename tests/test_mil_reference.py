"""The numpy MIL reference evaluator, op by op, against torch (and coremltools' own constexpr decoding).

Each case is a tiny torch module exported with ``compress.export.coreml.convert.export`` (or a MIL program built with
coremltools' Builder where torch cannot produce the op), saved, read back from disk and evaluated with
``compress.export.coreml.mil.evaluator``. Inputs are random normals and REAL data: sklearn digits 8x8 images, scaled.

Bounds: fp32 programs must match torch to ``ATOL_FP32`` (same arithmetic, different summation order);
fp16 programs to ``REL_FP16`` times ``max(1, max |torch output|)``: the input and every op output are
rounded to float16 (relative step 2**-11 = 4.9e-4), and a few chained roundings (plus conv/matmul sums
over up to 100 rounded terms) stay well inside 5e-3.
"""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as Fn  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.mil import ops as mil_ops  # noqa: E402
from compress.export.coreml.mil.evaluator import UnsupportedOpError, evaluate, load_program  # noqa: E402
from compress.export.common import ModelInfo  # noqa: E402
from compress.export.coreml.convert import export  # noqa: E402

ATOL_FP32 = 1e-5
REL_FP16 = 5e-3
N_SAMPLES = 4


# ---- data ---------------------------------------------------------------------------------------


def _digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    return (images - 0.3) / 0.45


DIGITS = _digits()


def real_inputs(kind: str, n: int = N_SAMPLES) -> np.ndarray:
    """Digit images: 'image' -> (n, 4, 8, 8) with 4 different digits as channels; 'flat' -> (n, 64)."""
    if kind == "flat":
        return DIGITS[:n].reshape(n, 64)
    return DIGITS[: 4 * n].reshape(n, 4, 8, 8)


def random_inputs(kind: str, n: int = N_SAMPLES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, 64) if kind == "flat" else (n, 4, 8, 8)
    return rng.standard_normal(shape).astype(np.float32)


# ---- torch op cases -----------------------------------------------------------------------------


class Fn1(nn.Module):
    """Wrap a function (with optional parameters created by ``init``) as a module."""

    def __init__(self, fn, **params):
        super().__init__()
        self.fn = fn
        for k, v in params.items():
            self.register_parameter(k, nn.Parameter(v, requires_grad=False))

    def forward(self, x):
        return self.fn(self, x)


def _bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def _cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.5

    return {
        # id: (module, input kind, MIL op types that must appear)
        "linear": (nn.Linear(64, 10), "flat", {"linear"}),
        "matmul": (Fn1(lambda s, x: torch.matmul(x, x.transpose(-1, -2))), "image", {"matmul"}),
        "conv": (nn.Conv2d(4, 6, 3, padding=1), "image", {"conv"}),
        "conv_groups_stride": (nn.Conv2d(4, 8, 3, stride=2, groups=2), "image", {"conv"}),
        "conv_depthwise_dilation": (nn.Conv2d(4, 4, 3, dilation=2, groups=4, padding=2), "image", {"conv"}),
        "conv_same": (nn.Conv2d(4, 3, (3, 2), padding="same"), "image", {"conv"}),
        "conv_custom_pad": (nn.Conv2d(4, 3, 3, padding=(1, 2), bias=False), "image", {"conv"}),
        "conv1d": (Fn1(lambda s, x: Fn.conv1d(x.reshape(-1, 4, 64), s.w, stride=2, padding=1), w=r(5, 4, 3)), "image", {"conv"}),
        "relu": (nn.ReLU(), "image", {"relu"}),
        "sigmoid": (nn.Sigmoid(), "image", {"sigmoid"}),
        "tanh": (nn.Tanh(), "image", {"tanh"}),
        "silu": (nn.SiLU(), "image", {"silu"}),
        "clip": (Fn1(lambda s, x: torch.clamp(x, -0.3, 0.8)), "image", {"clip"}),
        "relu6": (nn.ReLU6(), "image", {"clip"}),
        "gelu": (nn.GELU(), "image", {"gelu"}),
        "erf": (Fn1(lambda s, x: torch.erf(x * 0.7)), "image", {"erf"}),
        "gelu_tanh": (nn.GELU(approximate="tanh"), "image", {"gelu"}),
        "leaky_relu": (nn.LeakyReLU(0.1), "image", {"leaky_relu"}),
        "elu": (nn.ELU(), "image", {"elu"}),
        "add_mul_sub_div": (
            Fn1(lambda s, x: (x + s.b) * s.w - x / (x.abs() + 1.0), b=r(4, 1, 1), w=r(1, 8)),
            "image",
            {"add", "mul", "sub", "real_div"},
        ),
        "reshape_flatten": (Fn1(lambda s, x: torch.flatten(x, 1).reshape(-1, 8, 32)), "image", {"reshape"}),
        "transpose": (Fn1(lambda s, x: x.permute(0, 2, 3, 1) * 2.0), "image", {"transpose"}),
        "squeeze_unsqueeze": (Fn1(lambda s, x: torch.unsqueeze(x.mean(dim=1), 1).squeeze(1) + 1.0), "image", {"reduce_mean"}),
        "expand_dims": (Fn1(lambda s, x: torch.unsqueeze(x, 2) * s.w, w=r(1, 1, 3, 1, 1)), "image", {"expand_dims"}),
        "concat": (Fn1(lambda s, x: torch.cat([x, x * 2.0, torch.relu(x)], dim=1)), "image", {"concat"}),
        "pad_constant": (Fn1(lambda s, x: Fn.pad(x, (1, 2, 0, 1), value=0.5)), "image", {"pad"}),
        "pad_reflect": (Fn1(lambda s, x: Fn.pad(x, (2, 1, 1, 2), mode="reflect")), "image", {"pad"}),
        "pad_replicate": (Fn1(lambda s, x: Fn.pad(x, (1, 1, 2, 0), mode="replicate")), "image", {"pad"}),
        "reduce_mean": (Fn1(lambda s, x: x.mean(dim=(2, 3))), "image", {"reduce_mean"}),
        "reduce_sum_keepdim": (Fn1(lambda s, x: x.sum(dim=1, keepdim=True)), "image", {"reduce_sum"}),
        "reduce_max": (Fn1(lambda s, x: x.amax(dim=-1)), "image", {"reduce_max"}),
        "avg_pool": (nn.AvgPool2d(2), "image", {"avg_pool"}),
        "avg_pool_pad_ceil": (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), "image", {"avg_pool"}),
        "max_pool": (nn.MaxPool2d(2), "image", {"max_pool"}),
        "max_pool_pad_stride": (nn.MaxPool2d(3, stride=2, padding=1), "image", {"max_pool"}),
        "adaptive_avg_pool": (nn.AdaptiveAvgPool2d(1), "image", {"reduce_mean"}),
        "softmax": (nn.Softmax(dim=1), "flat", {"softmax"}),
        "log_softmax": (nn.LogSoftmax(dim=-1), "flat", set()),
        "batch_norm": (_bn(4), "image", {"batch_norm"}),
        "layer_norm": (nn.LayerNorm(64), "flat", {"layer_norm"}),
        "slice": (Fn1(lambda s, x: x[:, 1:3, ::2, 2:]), "image", {"slice_by_index"}),
        "mlp_block": (nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), "flat", {"linear", "relu"}),
        "cnn_block": (
            nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10)),
            "image",
            {"conv", "relu", "max_pool", "linear"},
        ),
    }


CASES = _cases()


def _export(module: nn.Module, kind: str, precision: str, path):
    example = torch.from_numpy(random_inputs(kind, 1, seed=99))
    return export(module.eval(), example, path, ModelInfo(name="op", labels=[]), precision=precision)


def _torch(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def _check(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    err = float(np.abs(got - want).max())
    if precision == "fp32":
        assert err <= ATOL_FP32, f"fp32 max abs error {err:.3g} > {ATOL_FP32}"
    else:
        bound = REL_FP16 * max(1.0, float(np.abs(want).max()))
        assert err <= bound, f"fp16 max abs error {err:.3g} > {bound:.3g}"


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own note about conv_same's even kernel
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_op_matches(case, precision, tmp_path):
    module, kind, expected_ops = CASES[case]
    path = _export(module, kind, precision, tmp_path / f"{case}.mlpackage")
    program = load_program(path)
    missing = expected_ops - set(program.op_types)
    assert not missing, f"exporter did not emit {missing}; program ops: {program.op_types}"
    assert program.precision == precision
    if precision == "fp16":
        assert "cast" in program.op_types  # fp32 input cast to fp16 and the output back
    for x in (random_inputs(kind), real_inputs(kind)):
        out = program.evaluate({"input": x})
        assert set(out) == {"logits"}
        assert out["logits"].dtype == np.float32
        if precision == "fp16":  # computed in float16: every value is exactly a float16 number
            np.testing.assert_array_equal(out["logits"], out["logits"].astype(np.float16).astype(np.float32))
        _check(out["logits"], _torch(module, x), precision)


# ---- hand-built MIL programs (ops torch does not emit, compression ops) --------------------------


def _save_program(prog, path, target, precision=None):
    ml = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=precision or ct.precision.FLOAT32,
        skip_model_load=True,
    )
    ml.save(str(path))
    return path


def _conv_ref(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return Fn.conv2d(torch.from_numpy(x), torch.from_numpy(w.astype(np.float32))).numpy()


X4 = real_inputs("image", 1)  # (1, 4, 8, 8) real digits


def test_constexpr_affine_dequantize_ios16(tmp_path):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(1)
    q = rng.integers(-127, 128, size=(6, 4, 3, 3)).astype(np.int8)
    scale = rng.uniform(0.001, 0.02, size=(6,)).astype(np.float32)
    zp = rng.integers(-3, 4, size=(6,)).astype(np.int8)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zp, scale=scale, axis=0)
        return mb.conv(x=x, weight=w)

    path = _save_program(prog, tmp_path / "aq.mlpackage", ct.target.iOS16)
    program = load_program(path)
    assert "constexpr_affine_dequantize" in program.op_types
    (name,) = program.outputs
    w = (q.astype(np.float32) - zp[:, None, None, None]) * scale[:, None, None, None]
    np.testing.assert_allclose(program.evaluate({"x": X4})[name], _conv_ref(X4, w), atol=ATOL_FP32)


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_constexpr_lut_to_dense_ios16_packed(nbits, tmp_path):
    from coremltools.converters.mil import Builder as mb
    from coremltools.optimize._utils import pack_elements_into_bits

    rng = np.random.default_rng(nbits)
    shape = (5, 4, 3, 3)
    lut = rng.standard_normal(2**nbits).astype(np.float32)
    idx = rng.integers(0, 2**nbits, size=int(np.prod(shape))).astype(np.uint8)
    packed = pack_elements_into_bits(idx, nbits)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        w = mb.constexpr_lut_to_dense(indices=packed, lut=lut, shape=np.array(shape, np.uint32))
        return mb.conv(x=x, weight=w)

    path = _save_program(prog, tmp_path / "lut.mlpackage", ct.target.iOS16)
    (name,) = load_program(path).outputs
    w = lut[idx].reshape(shape)
    np.testing.assert_allclose(evaluate(path, {"x": X4})[name], _conv_ref(X4, w), atol=ATOL_FP32)


@pytest.mark.parametrize("vector", [False, True])
def test_constexpr_lut_to_dense_ios18_grouped(vector, tmp_path):
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(7)
    # 2 groups along the output-channel axis, 4 palettes (uint2 indices); vector palettization along axis 1
    vsize = 2 if vector else 1
    idx_shape = (6, 4 // vsize, 3, 3)
    lut = rng.standard_normal((2, 1, 1, 1, 4, vsize)).astype(np.float16)
    idx = rng.integers(0, 4, size=idx_shape).astype(types.np_uint2_dtype)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape, dtype=types.fp16)], opset_version=ct.target.iOS18)
    def prog(x):
        kw = {"vector_axis": 1} if vector else {}
        w = mb.constexpr_lut_to_dense(indices=idx, lut=lut, **kw)
        return mb.conv(x=x, weight=w)

    path = _save_program(prog, tmp_path / "lut18.mlpackage", ct.target.iOS18, ct.precision.FLOAT16)
    program = load_program(path)
    assert "constexpr_lut_to_dense" in program.op_types
    # reference decoding, written out: group g = out channel // 3; vector entries fill axis 1
    i = idx.astype(np.int64)
    w = np.zeros((6, 4, 3, 3), np.float32)
    for o in range(6):
        for c in range(idx_shape[1]):
            for v in range(vsize):
                w[o, c * vsize + v] = lut[o // 3, 0, 0, 0][i[o, c], v]
    (name,) = program.outputs
    got = program.evaluate({"x": X4.astype(np.float16)})[name]
    want = _conv_ref(X4.astype(np.float16).astype(np.float32), w)
    _check(got, want, "fp16")


def test_constexpr_blockwise_shift_scale_ios18(tmp_path):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(3)
    data = rng.integers(-8, 8, size=(6, 4, 3, 3)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, size=(3, 2, 1, 1)).astype(np.float32)  # blocks of 2 x 2 channels
    offset = rng.integers(-2, 3, size=(3, 2, 1, 1)).astype(np.int8)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape)], opset_version=ct.target.iOS18)
    def prog(x):
        w = mb.constexpr_blockwise_shift_scale(data=data, scale=scale, offset=offset)
        return mb.conv(x=x, weight=w)

    path = _save_program(prog, tmp_path / "bss.mlpackage", ct.target.iOS18)
    program = load_program(path)
    assert "constexpr_blockwise_shift_scale" in program.op_types
    s = np.repeat(np.repeat(scale, 2, 0), 2, 1)
    o = np.repeat(np.repeat(offset, 2, 0), 2, 1).astype(np.float32)
    w = (data.astype(np.float32) - o) * s
    (name,) = program.outputs
    np.testing.assert_allclose(program.evaluate({"x": X4})[name], _conv_ref(X4, w), atol=ATOL_FP32)


def test_quantize_dequantize_and_cast(tmp_path):
    from coremltools.converters.mil import Builder as mb

    scale = np.float16(0.02)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        h = mb.cast(x=x, dtype="fp16")
        q = mb.quantize(input=h, scale=scale, output_dtype="int8")
        d = mb.dequantize(input=q, scale=scale)
        return mb.cast(x=d, dtype="fp32")

    path = _save_program(prog, tmp_path / "qdq.mlpackage", ct.target.iOS17, ct.precision.FLOAT16)
    program = load_program(path)
    assert {"quantize", "dequantize", "cast"} <= set(program.op_types)
    (name,) = program.outputs
    x = np.concatenate([X4, random_inputs("image", 1) * 4])  # real values and some beyond the int8 range
    h = x.astype(np.float16).astype(np.float32)
    want = np.clip(np.rint(h / np.float32(scale)), -128, 127) * np.float32(scale)
    got = program.evaluate({"x": x})[name]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want.astype(np.float16).astype(np.float32), atol=1e-6)


def test_conv_pad_types_valid_same_lower(tmp_path):
    from coremltools.converters.mil import Builder as mb

    w = np.random.default_rng(5).standard_normal((3, 4, 2, 2)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=X4.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        a = mb.conv(x=x, weight=w, pad_type="valid")
        b = mb.conv(x=x, weight=w, pad_type="same")
        c = mb.conv(x=x, weight=w, pad_type="same_lower")
        return a, b, c

    path = _save_program(prog, tmp_path / "pads.mlpackage", ct.target.iOS16)
    out = evaluate(path, {"x": X4})
    program = load_program(path)
    a, b, c = (out[n] for n in program.outputs)
    xt, wt = torch.from_numpy(X4), torch.from_numpy(w)
    np.testing.assert_allclose(a, Fn.conv2d(xt, wt).numpy(), atol=ATOL_FP32)
    np.testing.assert_allclose(b, Fn.conv2d(Fn.pad(xt, (0, 1, 0, 1)), wt).numpy(), atol=ATOL_FP32)
    np.testing.assert_allclose(c, Fn.conv2d(Fn.pad(xt, (1, 0, 1, 0)), wt).numpy(), atol=ATOL_FP32)


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_constexpr_decoding_matches_coremltools(target, tmp_path):
    """Weights the evaluator decodes from a compressed package == coremltools' own decompression."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    module = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10)).eval()
    example = torch.from_numpy(random_inputs("image", 1, seed=99))
    base = export(module, example, tmp_path / "base.mlpackage", ModelInfo(name="op", labels=[]),
                  minimum_deployment_target=target)
    ml = ct.models.MLModel(str(base), skip_model_load=True)
    configs = [
        ("int8", cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(mode="linear_symmetric", weight_threshold=0)),
        ("pal4", cto.palettize_weights, cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=0)),
        ("pal2", cto.palettize_weights, cto.OpPalettizerConfig(mode="uniform", nbits=2, weight_threshold=0)),
        ("prune", cto.prune_weights, cto.OpMagnitudePrunerConfig(target_sparsity=0.6, weight_threshold=0)),
    ]
    if target == "iOS18":
        configs.append(("int4-block", cto.linear_quantize_weights, cto.OpLinearQuantizerConfig(
            mode="linear", dtype="int4", granularity="per_block", block_size=4, weight_threshold=0)))
    for name, fn, cfg in configs:
        compressed = fn(ml, cto.OptimizationConfig(global_config=cfg))
        path = tmp_path / f"{name}.mlpackage"
        compressed.save(str(path))
        ours = load_program(path)._constants()
        prog = milproto_load(compressed.get_spec(), getattr(ct.target, target), str(path / "Data/com.apple.CoreML/weights"))
        checked = 0
        for op in prog.functions["main"].operations:
            if op.op_type.startswith("constexpr_"):
                theirs = op.materialized_val_inference()
                np.testing.assert_array_equal(ours[op.outputs[0].name], theirs, err_msg=f"{name} {op.op_type}")
                checked += 1
        assert checked >= 2, name
        # and the whole compressed program still runs: same as torch within the compression's error
        x = real_inputs("image")
        got = load_program(path).evaluate({"input": x})["logits"]
        assert np.abs(got - _torch(module, x)).max() < 0.5, name


# ---- errors -------------------------------------------------------------------------------------


def test_unknown_op_in_program_is_named(tmp_path, monkeypatch):
    from coremltools.converters.mil import Builder as mb

    monkeypatch.delitem(mil_ops.OPS, "cumsum", raising=False)  # an op the evaluator lacks (the table has it now)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        y = mb.relu(x=x)
        return mb.cumsum(x=y, axis=1)

    path = _save_program(prog, tmp_path / "cumsum.mlpackage", ct.target.iOS16)
    with pytest.raises(UnsupportedOpError) as info:
        load_program(path)
    msg = str(info.value)
    assert "'cumsum'" in msg and "op #" in msg and "output '" in msg
    assert isinstance(info.value, InputError) and "\n" not in msg


def test_op_missing_from_table_is_named(tmp_path, monkeypatch):
    path = _export(nn.Sequential(nn.Linear(64, 8), nn.Tanh()), "flat", "fp32", tmp_path / "tanh.mlpackage")
    monkeypatch.delitem(mil_ops.OPS, "tanh")
    with pytest.raises(UnsupportedOpError, match=r"MIL op 'tanh' \(op #\d+, output '[^']+'\)"):
        evaluate(path, {"input": real_inputs("flat")})


def test_missing_input_and_wrong_shape(tmp_path):
    path = _export(nn.Linear(64, 3), "flat", "fp32", tmp_path / "lin.mlpackage")
    with pytest.raises(InputError, match="input 'input' is missing"):
        evaluate(path, {"x": real_inputs("flat")})
    with pytest.raises(InputError, match="expected"):
        evaluate(path, {"input": np.zeros((2, 63), np.float32)})
    with pytest.raises(InputError, match="not found"):
        load_program(tmp_path / "nope.mlpackage")
