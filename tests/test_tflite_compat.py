"""Runtime-compatibility report of exported .tflite files: op versions and the oldest TFLite runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
torch = pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from torch import nn  # noqa: E402

from compress.core.errors import InputError, ValidationFailed  # noqa: E402
from compress.export.tflite import compat as tflite_compat  # noqa: E402
from compress.export.tflite.compat import (  # noqa: E402
    check_min_runtime,
    min_runtime,
    operator_versions,
    report,
    runtime_for,
    unknown_ops,
)
from compress.export.common import ModelInfo  # noqa: E402
from compress.export.tflite.convert import export, read_metadata  # noqa: E402


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A digits-sized MLP and CNN exported as fp32, fp16, int8-dynamic and int8 (op versions only matter)."""
    torch.manual_seed(0)
    x = sklearn_datasets.load_digits().data.astype(np.float32) / 16.0
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    ).eval()
    info = ModelInfo(name="digits", labels=[str(d) for d in range(10)])
    out = tmp_path_factory.mktemp("compat")
    paths = {}
    for kind, model, shape in (("mlp", mlp, (64,)), ("cnn", cnn, (1, 8, 8))):
        rows = x.reshape(-1, *shape)
        for variant in ("fp32", "fp16", "int8-dynamic", "int8"):
            paths[kind, variant] = export(
                model, torch.from_numpy(rows[:1]), out / f"{kind}-{variant}.tflite", info,
                variant=variant, calibration=rows[:64] if variant == "int8" else None,
            )
    return paths


def test_operator_versions_listed(models):
    ops = operator_versions(models["mlp", "fp32"])
    assert ops and all(isinstance(name, str) and isinstance(v, int) and v >= 1 for name, v in ops)
    assert "FULLY_CONNECTED" in dict(ops)
    cnn_ops = dict(operator_versions(models["cnn", "fp32"]))
    assert {"FULLY_CONNECTED", "MAX_POOL_2D"} <= set(cnn_ops)
    assert "CONV_2D" in cnn_ops or "DEPTHWISE_CONV_2D" in cnn_ops  # 1 input channel -> depthwise
    rows = report(models["cnn", "fp32"])
    assert all(row["min_runtime"] for row in rows), rows
    print({k: operator_versions(p) for k, p in models.items()})


def test_every_op_of_every_variant_is_in_the_table(models):
    for key, path in models.items():
        assert unknown_ops(path) == [], key


def test_min_runtime_matches_the_converters_own_stamp(models):
    """The converter writes min_runtime_version from its built-in registry: our table must agree."""
    for key, path in models.items():
        stamped = read_metadata(path)["min_runtime_version"]
        assert min_runtime(path) == stamped, (key, operator_versions(path))


def test_dynamic_range_fully_connected_v12_needs_2_17(models):
    path = models["mlp", "int8-dynamic"]
    ops = dict(operator_versions(path))
    assert ops["FULLY_CONNECTED"] == 12  # hybrid per-channel FC as litert-torch emits it
    assert min_runtime(path) == "2.17.0"
    with pytest.raises(ValidationFailed) as err:
        check_min_runtime(path, "2.14.0")
    msg = str(err.value)
    assert "FULLY_CONNECTED v12" in msg and "2.17.0" in msg and "2.14.0" in msg
    check_min_runtime(path, "2.17.0")
    check_min_runtime(path, "2.18")


def test_cnn_dynamic_range_lists_each_too_new_op(models):
    path = models["cnn", "int8-dynamic"]
    with pytest.raises(ValidationFailed) as err:
        check_min_runtime(path, "2.2.0")
    msg = str(err.value)
    assert "FULLY_CONNECTED v12 (needs 2.17.0)" in msg
    assert "DEPTHWISE_CONV_2D v6 (needs 2.3.0)" in msg  # hybrid per-channel depthwise conv
    assert "MAX_POOL_2D" not in msg and "RESHAPE" not in msg  # v1 ops are fine on 2.2


def test_float_and_full_int8_models_load_on_older_runtimes(models):
    for variant in ("fp32", "fp16", "int8"):
        for kind in ("mlp", "cnn"):
            path = models[kind, variant]
            assert _vkey(min_runtime(path)) < (2, 14, 0), (kind, variant, operator_versions(path))
            check_min_runtime(path, "2.14.0")


def test_fp16_dequantize_version_is_restamped(models):
    """ai-edge-quantizer leaves DEQUANTIZE at v1; an fp16 DEQUANTIZE is v3 (TFLite 1.15+)."""
    ops = dict(operator_versions(models["mlp", "fp16"]))
    assert ops["DEQUANTIZE"] == 3


def test_table_lookup_fully_connected():
    assert runtime_for("FULLY_CONNECTED", 12) == "2.17.0"
    assert runtime_for("FULLY_CONNECTED", 5) == "2.0.0"
    assert runtime_for("FULLY_CONNECTED", 99) is None
    assert runtime_for("NOT_AN_OP", 1) is None


def test_table_is_well_formed():
    from ai_edge_litert import schema_py_generated as schema

    table = json.loads(tflite_compat.TABLE_PATH.read_text())
    assert "runtime_version.cc" in table["_source"]
    names = {n for n in vars(schema.BuiltinOperator) if not n.startswith("_")}
    for op, versions in table["ops"].items():
        assert op in names, op
        previous = (0,)
        for version in sorted(versions, key=int):
            key = _vkey(versions[version])
            assert len(key) == 3 and key >= previous, (op, version)  # newer op versions never need older runtimes
            previous = key


def test_runtime_version_comparison_pads():
    # "2.17" means 2.17.0: FULLY_CONNECTED v12 (2.17.0) is loadable by it
    assert tflite_compat._key("2.17") == tflite_compat._key("2.17.0")
    with pytest.raises(InputError, match="runtime"):
        tflite_compat._key("latest")


def test_errors(tmp_path, models):
    with pytest.raises(InputError, match="no such"):
        operator_versions(tmp_path / "missing.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(InputError, match="not a TFLite flatbuffer"):
        min_runtime(bad)
    with pytest.raises(InputError, match="expected a TFLite version"):
        check_min_runtime(models["mlp", "fp32"], "two.fourteen")
