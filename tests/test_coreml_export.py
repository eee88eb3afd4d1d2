"""Core ML export end to end: small digits models -> .mlpackage -> runner (MIL reference off macOS) vs torch.

Covers the per-variant tolerances in ``compress.export.coreml.runner.TOLERANCES`` on REAL inputs (all 1797
sklearn digits), top-1 agreement of compressed variants, metadata/labels, corrupted weights caught
as a parity failure, and the exporter's input errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

import torch.nn as nn  # noqa: E402

from compress.core.errors import InputError  # noqa: E402
from compress.export.coreml.runner import (  # noqa: E402
    ENGINE_MACOS,
    ENGINE_REFERENCE,
    open_coreml,
    parity_error,
    top1_agreement,
)
from compress.export.coreml.tolerances import MAX_REL as TOLERANCES  # noqa: E402  (the max_rel bound per variant)
from compress.export.coreml.tolerances import MIN_TOP1_AGREEMENT, TOLERANCE_REASONS  # noqa: E402
from compress.export.coreml.mil.evaluator import load_program  # noqa: E402
from compress.export.common import ModelInfo  # noqa: E402
from compress.export.coreml.convert import COMPRESSIONS, export  # noqa: E402

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INFO = ModelInfo(
    name="digits-student",
    labels=LABELS,
    normalization={"scale": 1 / 16, "mean": 0.3, "std": 0.45},
    input_kind="image",
    description="8x8 digit classifier",
    author="compress tests",
    license="Apache-2.0",
    version="1.2.3",
)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = ((d.images.astype(np.float32) / 16.0) - 0.3) / 0.45
    return x[:, None], d.target.astype(np.int64)  # (1797, 1, 8, 8)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.net(x)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> nn.Module:
    """A second or two of Adam on digits: realistic (not random) weights and confident logits."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(digits):
    x, y = digits
    torch.manual_seed(0)
    out = {"mlp": _train(MLP(), x, y, epochs=10), "cnn": _train(CNN(), x, y, epochs=10)}
    for m in out.values():
        with torch.no_grad():
            assert (m(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.9  # trained, not random
    return out


def _logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


VARIANTS = {
    # variant: (precision, compression, minimum_deployment_target)
    "fp32": ("fp32", None, "iOS16"),
    "fp16": ("fp16", None, "iOS16"),
    "int8-weights": ("fp16", "int8-weights", "iOS16"),
    "palettize-8": ("fp16", "palettize-8", "iOS16"),
    "palettize-4": ("fp16", "palettize-4", "iOS16"),
    "int4-block": ("fp16", "int4-block", "iOS18"),
    "int8": ("fp16", "int8", "iOS17"),
}


def test_tolerance_table_is_complete():
    assert set(TOLERANCES) == {"fp32", "fp16", *COMPRESSIONS}
    assert set(TOLERANCE_REASONS) == set(TOLERANCES)
    assert TOLERANCES["fp32"] <= 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_variant_matches_torch_on_digits(arch, variant, models, digits, tmp_path):
    x, _ = digits
    model = models[arch]
    precision, compression, target = VARIANTS[variant]
    path = export(
        model,
        torch.from_numpy(x[:1]),
        tmp_path / f"{arch}-{variant}.mlpackage",
        INFO,
        precision=precision,
        compression=compression,
        calibration=x[::9] if compression == "int8" else None,  # 200 calibration images
        minimum_deployment_target=target,
    )
    runner = open_coreml(path, threads=2)
    assert runner.threads == 2
    if runner.engine.startswith(ENGINE_REFERENCE.split(" (")[0]):  # "MIL reference (Linux...)"
        assert runner.measured is False  # evaluator speed is never device latency
    else:
        assert runner.engine == ENGINE_MACOS and runner.measured
    scores = runner.predict(x)
    ref = _logits(model, x)
    assert scores.dtype == np.float32 and scores.shape == ref.shape == (len(x), 10)
    err = parity_error(ref, scores)
    assert err <= TOLERANCES[variant], f"{arch} {variant}: parity error {err:.3g} > {TOLERANCES[variant]}"
    if variant == "fp32":
        assert np.abs(scores - ref).max() <= 1e-4
    else:
        assert err > 0  # the variant really changed the arithmetic
    agreement = top1_agreement(ref, scores)
    assert agreement >= MIN_TOP1_AGREEMENT, f"{arch} {variant}: top-1 agreement {agreement:.4f}"
    program = load_program(path)
    expected_op = {
        "int8-weights": "constexpr_affine_dequantize",
        "palettize-8": "constexpr_lut_to_dense",
        "palettize-4": "constexpr_lut_to_dense",
        "int4-block": "constexpr_blockwise_shift_scale",
        "int8": "quantize",
    }.get(variant)
    if expected_op:
        assert expected_op in program.op_types
    assert program.precision == precision


def test_ios18_compression_ops(models, digits, tmp_path):
    """iOS18 emits the new-style blockwise/LUT constexpr ops; same parity bounds hold."""
    x, _ = digits
    model = models["mlp"]
    ref = _logits(model, x)
    for compression, op in [("int8-weights", "constexpr_blockwise_shift_scale"), ("palettize-6", "constexpr_lut_to_dense")]:
        path = export(model, torch.from_numpy(x[:1]), tmp_path / f"{compression}.mlpackage", INFO,
                      compression=compression, minimum_deployment_target="iOS18")
        program = load_program(path)
        assert op in program.op_types and program.opset == "CoreML8"
        scores = open_coreml(path).predict(x)
        assert parity_error(ref, scores) <= TOLERANCES[compression]
        assert top1_agreement(ref, scores) >= MIN_TOP1_AGREEMENT


def _largest_weight_blob(path):
    """(weight file, data offset, byte size) of the largest blob-stored weight in the package."""
    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    best = None
    for op in fn.block_specializations[fn.opset].operations:
        values = list(op.attributes.values()) + [b.value for a in op.inputs.values() for b in a.arguments]
        for v in values:
            if v.WhichOneof("value") == "blobFileValue":
                n = int(np.prod([d.constant.size for d in v.type.tensorType.dimensions]))
                if best is None or n > best[1]:
                    best = (v.blobFileValue.offset, n)
    weights = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return weights, best[0] + 64, best[1]  # 64-byte blob metadata header precedes the data


@pytest.mark.parametrize("variant", ["fp32", "int8-weights"])
def test_corrupted_weight_blob_fails_parity(variant, models, digits, tmp_path):
    x, _ = digits
    x = x[:300]
    model = models["cnn"]
    precision, compression, target = VARIANTS[variant]
    path = export(model, torch.from_numpy(x[:1]), tmp_path / "m.mlpackage", INFO,
                  precision=precision, compression=compression, minimum_deployment_target=target)
    ref = _logits(model, x)
    assert parity_error(ref, open_coreml(path).predict(x)) <= TOLERANCES[variant]
    weights, offset, count = _largest_weight_blob(path)
    raw = bytearray(weights.read_bytes())
    nbytes = count * (4 if variant == "fp32" else 1)
    start = offset + nbytes // 4
    raw[start : start + nbytes // 4] = bytes([0x3F]) * (nbytes // 4)  # overwrite a quarter of the tensor
    weights.write_bytes(bytes(raw))
    err = parity_error(ref, open_coreml(path).predict(x))
    assert not err <= TOLERANCES[variant], f"corruption went unnoticed (parity error {err:.3g})"


def test_metadata_and_labels(models, digits, tmp_path):
    x, _ = digits
    path = export(models["mlp"], torch.from_numpy(x[:1]), tmp_path / "meta.mlpackage", INFO)
    spec = ct.utils.load_spec(str(path))
    meta = spec.description.metadata
    assert meta.author == INFO.author
    assert meta.license == INFO.license
    assert meta.shortDescription == INFO.description
    assert meta.versionString == INFO.version
    user = dict(meta.userDefined)
    assert json.loads(user["labels"]) == LABELS
    assert json.loads(user["normalization"]) == INFO.normalization
    assert user["input_kind"] == "image" and user["name"] == INFO.name
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    assert [i.name for i in spec.description.input] == ["input"]
    program = load_program(path)
    assert program.labels == LABELS
    out = program.evaluate({"input": x[:5]})
    assert set(out) == {"classLabel", "classLabel_probs"}
    assert out["classLabel_probs"].shape == (5, 10)
    assert list(out["classLabel"]) == [LABELS[i] for i in _logits(models["mlp"], x[:5]).argmax(1)]


def test_plain_model_without_labels(digits, tmp_path):
    x, _ = digits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).eval()
    path = export(model, torch.from_numpy(x[:1]), tmp_path / "plain.mlpackage", ModelInfo(name="p", labels=[]),
                  precision="fp32")
    program = load_program(path)
    assert program.labels is None and program.outputs == ["logits"]
    scores = open_coreml(path).predict(x[:7])
    np.testing.assert_allclose(scores, _logits(model, x[:7]), atol=1e-5)


class ChannelShuffleNet(nn.Module):
    """A ShuffleNet-style unit: the channel shuffle reshapes with the traced shape (``x.view(n, 2, c // 2, h, w)``),
    which coremltools 9 cannot convert from TorchScript under torch 2.13 ("only 0-dimensional arrays can be
    converted to Python scalars"); the exporter then converts the model through ``torch.export``."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, torch.relu(self.depthwise(b))], dim=1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_model_torchscript_cannot_convert_goes_through_torch_export(precision, digits, tmp_path):
    import coremltools as ct

    x, _ = digits
    torch.manual_seed(0)
    model = ChannelShuffleNet().eval()
    example = torch.from_numpy(x[:1])
    with pytest.raises(Exception, match="0-dimensional"):  # the TorchScript path alone fails (the reason for this)
        ct.convert(torch.jit.trace(model, example), inputs=[ct.TensorType(shape=example.shape)],
                   convert_to="mlprogram", skip_model_load=True)
    path = export(model, example, tmp_path / "shuffle.mlpackage", INFO, precision=precision)
    scores = open_coreml(path).predict(x)
    err = parity_error(_logits(model, x), scores)
    assert err <= TOLERANCES[precision], f"{precision}: parity error {err:.3g}"
    assert top1_agreement(_logits(model, x), scores) >= MIN_TOP1_AGREEMENT


def test_export_input_errors(models, digits, tmp_path):
    x, _ = digits
    model, example = models["mlp"], torch.from_numpy(x[:1])
    with pytest.raises(InputError, match="compression: 'int4'.*int8-weights, palettize-4, palettize-6, palettize-8, int4-block, int8"):
        export(model, example, tmp_path / "a.mlpackage", INFO, compression="int4")
    with pytest.raises(InputError, match="minimum_deployment_target: 'iOS16'.*'int8'"):
        export(model, example, tmp_path / "b.mlpackage", INFO, compression="int8", calibration=x[:10])
    with pytest.raises(InputError, match="minimum_deployment_target: 'iOS17' is too old for compression 'int4-block'"):
        export(model, example, tmp_path / "b4.mlpackage", INFO, compression="int4-block", minimum_deployment_target="iOS17")
    with pytest.raises(InputError, match="calibration"):
        export(model, example, tmp_path / "c.mlpackage", INFO, compression="int8", minimum_deployment_target="iOS17")
    with pytest.raises(InputError, match="precision: 'int8'"):
        export(model, example, tmp_path / "d.mlpackage", INFO, precision="int8")
    with pytest.raises(InputError, match="minimum_deployment_target: unknown"):
        export(model, example, tmp_path / "e.mlpackage", INFO, minimum_deployment_target="iOS99")
    assert not any(tmp_path.iterdir())


def test_unconvertible_op_names_op_and_target(tmp_path):
    class Det(nn.Module):
        def forward(self, x):
            return torch.linalg.det(x)

    path = tmp_path / "det.mlpackage"
    with pytest.raises(InputError, match=r"op 'linalg_det'.*target 'coreml'"):
        export(Det(), torch.randn(1, 3, 3), path, ModelInfo(name="det", labels=[]))
    assert not path.exists() and not any(tmp_path.iterdir())  # atomic: nothing half-written


def test_reexport_replaces_package_atomically(models, digits, tmp_path):
    x, _ = digits
    path = tmp_path / "m.mlpackage"
    export(models["mlp"], torch.from_numpy(x[:1]), path, INFO, precision="fp32")
    export(models["mlp"], torch.from_numpy(x[:1]), path, INFO, precision="fp16")
    assert load_program(path).precision == "fp16"
    assert [p.name for p in tmp_path.iterdir()] == ["m.mlpackage"]


def test_flexible_batch_for_models_without_labels(models, digits, tmp_path):
    x, _ = digits
    model = models["cnn"]
    path = export(model, torch.from_numpy(x[:1]), tmp_path / "flex.mlpackage", ModelInfo(name="f", labels=[]),
                  precision="fp16", max_batch=64)
    spec = ct.utils.load_spec(str(path))
    batch_range = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges[0]
    assert (batch_range.lowerBound, batch_range.upperBound) == (1, 64)
    program = load_program(path)
    assert program.inputs["input"][1] is None  # flexible: the evaluator runs the batch in one pass
    out = program.evaluate({"input": x[:50]})["logits"]
    ref = _logits(model, x[:50])
    assert out.shape == (50, 10)
    assert parity_error(ref, out) <= TOLERANCES["fp16"]
    np.testing.assert_array_equal(open_coreml(path).predict(x[:50]), out)
    with pytest.raises(InputError, match="max_batch: a Core ML classifier"):
        export(model, torch.from_numpy(x[:1]), tmp_path / "cls.mlpackage", INFO, max_batch=64)


def test_macos_runner_reads_probabilities_in_label_order(models, digits, tmp_path, monkeypatch):
    """The Core ML path (macOS only) with MLModel faked: the probs dict is read in label order."""
    import coremltools.models

    import compress.export.coreml.runner as runner_mod

    x, _ = digits
    path = export(models["mlp"], torch.from_numpy(x[:1]), tmp_path / "mac.mlpackage", INFO, precision="fp32")
    program = load_program(path)
    calls = []

    class FakeMLModel:
        def __init__(self, p, compute_units=None):
            assert str(p) == str(path)

        def predict(self, feeds):
            calls.append(feeds["input"].shape)
            out = program.evaluate(feeds)
            scores = out["classLabel_probs"][0]
            keyed = {label: float(s) for label, s in zip(LABELS, scores)}
            return {"classLabel": out["classLabel"][0], "classLabel_probs": dict(reversed(list(keyed.items())))}

    monkeypatch.setattr(runner_mod.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(coremltools.models, "MLModel", FakeMLModel)
    runner = open_coreml(path)
    assert runner.engine == ENGINE_MACOS and runner.measured
    scores = runner.predict(x[:6])
    assert calls == [(1, 1, 8, 8)] * 6  # fixed batch 1: one prediction per example
    np.testing.assert_allclose(scores, _logits(models["mlp"], x[:6]), atol=1e-4)
