"""The MIL reference evaluator's interpreter: declared shapes/dtypes checked after every op, and control flow
(``while_loop``, ``cond``, nested) run from saved packages, against plain Python written independently.

Inputs are real sklearn digits (``tests/mil_cases.py``)."""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from tests.mil_cases import OP_REL, assert_close, digit_images, save_program  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.mil import control_flow  # noqa: E402
from compress.export.coreml.mil import ops as mil_ops  # noqa: E402
from compress.export.coreml.mil.evaluator import UnsupportedOpError, load_program, supported_op_types  # noqa: E402

X = digit_images(1, 2, 8)  # (1, 2, 8, 8) two real digits


def _mb():
    from coremltools.converters.mil import Builder as mb

    return mb


def _relu_tanh_program(tmp_path):
    mb = _mb()

    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.tanh(x=mb.relu(x=x))

    return save_program(prog, tmp_path / "relu_tanh.mlpackage", "iOS16")


# ---- declared shapes and dtypes ------------------------------------------------------------------


def test_an_op_returning_the_wrong_shape_is_named_with_both_shapes(tmp_path, monkeypatch):
    path = _relu_tanh_program(tmp_path)
    program = load_program(path)
    (out,) = program.outputs
    np.testing.assert_allclose(program.evaluate({"x": X})[out], np.tanh(np.maximum(X, 0)), atol=1e-6)
    relu = mil_ops.OPS["relu"]
    monkeypatch.setitem(mil_ops.OPS, "relu", lambda a: relu(a)[..., :-1])  # an op implemented with a wrong size
    with pytest.raises(InputError) as info:
        program.evaluate({"x": X})
    msg = str(info.value)
    assert "MIL op 'relu'" in msg and "op #" in msg, msg
    assert "(1, 2, 8, 7)" in msg and "(1, 2, 8, 8)" in msg and "declares" in msg, msg
    assert "\n" not in msg


def test_an_op_returning_the_wrong_dtype_kind_is_named(tmp_path, monkeypatch):
    path = _relu_tanh_program(tmp_path)
    monkeypatch.setitem(mil_ops.OPS, "relu", lambda a: (np.asarray(a["x"]) > 0))  # bool where fp32 is declared
    with pytest.raises(InputError, match=r"MIL op 'relu' .* is bool in the reference evaluator, but the program "
                                         r"declares float32"):
        load_program(path).evaluate({"x": X})


# ---- control flow ---------------------------------------------------------------------------------


def _loop_program(tmp_path, target: str = "iOS16"):
    """y = x; i = 0; while i < n (n from the data: 1 + number of positive pixels // 16): y = tanh(y) * 1.5 + 0.1;
    a ``cond`` inside the body adds 1 on even steps and subtracts 0.5 on odd ones."""
    mb = _mb()

    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape)], opset_version=getattr(ct.target, target))
    def prog(x):
        positive = mb.reduce_sum(x=mb.cast(x=mb.greater(x=x, y=0.0), dtype="int32"))
        n = mb.add(x=mb.floor_div(x=positive, y=np.int32(16)), y=np.int32(1))

        def cond(i, y):
            return mb.less(x=i, y=n)

        def body(i, y):
            step = mb.add(x=mb.mul(x=mb.tanh(x=y), y=1.5), y=0.1)
            even = mb.equal(x=mb.mod(x=i, y=np.int32(2)), y=np.int32(0))
            branch = mb.cond(pred=even, _true_fn=lambda: mb.add(x=step, y=1.0), _false_fn=lambda: mb.sub(x=step, y=0.5))
            return mb.add(x=i, y=np.int32(1)), branch

        _, y = mb.while_loop(_cond=cond, _body=body, loop_vars=(np.int32(0), x))
        return y

    return save_program(prog, tmp_path / f"loop_{target}.mlpackage", target)


def _loop_reference(x: np.ndarray) -> np.ndarray:
    n = int((x > 0).sum()) // 16 + 1
    y = x.astype(np.float64)
    for i in range(n):
        y = np.tanh(y) * 1.5 + 0.1
        y = y + 1.0 if i % 2 == 0 else y - 0.5
    return y


@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
def test_while_loop_with_a_nested_cond_matches_python(target, tmp_path):
    program = load_program(_loop_program(tmp_path, target))
    assert "while_loop" in program.op_types
    (out,) = program.outputs
    counts = set()
    for x in (X, -X, X + 1.0):  # real digits: different data-dependent trip counts
        counts.add(int((x > 0).sum()) // 16 + 1)
        assert_close(program.evaluate({"x": x.astype(np.float32)})[out], _loop_reference(x), OP_REL["fp32"], target)
    assert len(counts) >= 2, counts  # the loop length really depends on the data


def test_cond_takes_each_branch_from_the_data(tmp_path):
    mb = _mb()

    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        pred = mb.greater(x=mb.reduce_mean(x=x), y=0.0)
        return mb.cond(pred=pred, _true_fn=lambda: mb.relu(x=x), _false_fn=lambda: mb.mul(x=x, y=-2.0))

    program = load_program(save_program(prog, tmp_path / "cond.mlpackage", "iOS16"))
    assert "cond" in program.op_types
    (out,) = program.outputs
    for x in (X + 1.0, X - 5.0):
        want = np.maximum(x, 0) if x.mean() > 0 else x * -2.0
        np.testing.assert_allclose(program.evaluate({"x": x})[out], want, atol=1e-6)
    assert (X + 1.0).mean() > 0 > (X - 5.0).mean()  # both branches were taken


def test_an_unsupported_op_inside_a_loop_body_names_its_place(tmp_path, monkeypatch):
    path = _loop_program(tmp_path)
    monkeypatch.delitem(mil_ops.OPS, "tanh")
    with pytest.raises(UnsupportedOpError, match=r"MIL op 'tanh' \(op #\d+, output '[^']+', in while_loop #\d+ body\)"):
        load_program(path)


def test_a_loop_that_never_ends_stops_with_an_error(tmp_path, monkeypatch):
    mb = _mb()

    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape)], opset_version=ct.target.iOS16)
    def prog(x):
        _, y = mb.while_loop(_cond=lambda i, y: mb.greater_equal(x=i, y=np.int32(0)),
                             _body=lambda i, y: (mb.add(x=i, y=np.int32(1)), mb.relu(x=y)),
                             loop_vars=(np.int32(0), x))
        return y

    path = save_program(prog, tmp_path / "forever.mlpackage", "iOS16")
    monkeypatch.setattr(control_flow, "MAX_ITERATIONS", 50)
    with pytest.raises(InputError, match=r"while_loop.*still running after 50 iterations"):
        load_program(path).evaluate({"x": X})


def test_control_flow_is_in_the_supported_list():
    listed = supported_op_types()
    assert {"while_loop", "cond", "const"} <= set(listed) and listed == sorted(listed)


def test_an_op_type_registered_twice_fails_at_import():
    from compress.export.coreml.mil.ops.registry import op

    with pytest.raises(ValueError, match="'relu' is registered twice"):
        op("relu")(lambda a: a["x"])
    assert mil_ops.OPS["relu"].__module__.endswith("elementwise")  # the original stays
