"""MIL ops added beside the evaluator's op families: iOS18 joint compression decodes (sparse + palettized,
sparse + quantized: identical to coremltools' own decompression), ``slice_update`` and ``reshape_like``."""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402

from tests.mil_cases import OP_REL, assert_close, convert_torch, digit_images, rel_error, save_program, torch_outputs  # noqa: E402

from compress.export.coreml.mil.evaluator import load_program  # noqa: E402

X = digit_images(4, 4, 8)


def _joint(ml, second: str):
    import coremltools.optimize.coreml as cto

    pruned = cto.prune_weights(ml, cto.OptimizationConfig(
        global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=0)))
    if second == "palettize-4":
        cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=0)
        return cto.palettize_weights(pruned, cto.OptimizationConfig(global_config=cfg), joint_compression=True)
    cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=0)
    return cto.linear_quantize_weights(pruned, cto.OptimizationConfig(global_config=cfg), joint_compression=True)


@pytest.mark.parametrize("second, op_type", [("palettize-4", "constexpr_lut_to_sparse"),
                                             ("int8", "constexpr_sparse_blockwise_shift_scale")])
def test_joint_sparse_compression_decodes_as_coremltools_does(second, op_type, tmp_path):
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10)).eval()
    base = convert_torch(module, X[:1], tmp_path / "base.mlpackage", target="iOS18")
    compressed = _joint(ct.models.MLModel(str(base), skip_model_load=True), second)
    path = tmp_path / f"{second}.mlpackage"
    compressed.save(str(path))
    program = load_program(path)
    ours = program._constants()
    prog = milproto_load(compressed.get_spec(), ct.target.iOS18, str(path / "Data/com.apple.CoreML/weights"))
    types = [op.op_type for op in prog.functions["main"].operations]
    assert op_type in types and "constexpr_sparse_to_dense" in types, types
    checked = 0
    for op in prog.functions["main"].operations:
        if op.op_type == "constexpr_sparse_to_dense":
            np.testing.assert_array_equal(ours[op.outputs[0].name], op.materialized_val_inference())
            checked += 1
    assert checked == 2  # the conv and the linear weights
    (name,) = program.outputs
    got = np.concatenate([program.evaluate({"x0": X[i:i + 1]})[name] for i in range(len(X))])
    assert rel_error(got, torch_outputs(module, X)[0]) < 0.5  # half the weights are zero: only a sanity bound


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_slice_update_matches_numpy(precision, tmp_path):
    from coremltools.converters.mil import Builder as mb

    dtype = ct.converters.mil.mil.types.fp16 if precision == "fp16" else ct.converters.mil.mil.types.fp32

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8), dtype=dtype), mb.TensorSpec(shape=(1, 2, 4, 8), dtype=dtype)],
                opset_version=ct.target.iOS18)
    def prog(x, u):
        return mb.slice_update(x=x, update=u, begin=np.array([0, 1, 0, 0], np.int32), end=np.array([1, 4, 8, 8], np.int32),
                               stride=np.array([1, 2, 2, 1], np.int32))

    program = load_program(save_program(prog, tmp_path / "su.mlpackage", "iOS18", precision))
    assert "slice_update" in program.op_types
    x, u = X[:1], digit_images(1, 2, 8)[:, :, ::2]
    if precision == "fp16":
        x, u = x.astype(np.float16), u.astype(np.float16)
    want = x.astype(np.float32).copy()
    want[:, 1:4:2, 0:8:2, :] = u
    (name,) = program.outputs
    assert_close(program.evaluate({"x": x, "u": u})[name], want, OP_REL[precision], "slice_update")


def test_reshape_like_takes_dims_from_reference_tensors(tmp_path):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 8, 8)), mb.TensorSpec(shape=(2, 2, 3))],
                opset_version=ct.target.iOS16)
    def prog(x, r):
        return mb.reshape_like(x=x, ref_tensors=(r, x), begins=(0, 2), ends=(2, 3), end_masks=(False, True))

    program = load_program(save_program(prog, tmp_path / "rl.mlpackage", "iOS16"))
    assert "reshape_like" in program.op_types
    (name,) = program.outputs
    got = program.evaluate({"x": X[:1], "r": np.zeros((2, 2, 3), np.float32)})[name]
    np.testing.assert_array_equal(got, X[:1].reshape(2, 2, 8, 8))
