"""Students that scale with the problem: the MobileNetV2-style family (``mobilenet[:width[:depth]]``) and the
Hello Edge DS-CNN sizes (``ds-cnn-s/m/l``).

Sizes: multipliers move params and MACs monotonically, channels are rounded as in the paper, every input size
from 8x8 digits to 224x224 photos builds with a last feature map of about 4-7 pixels. Names: family arguments
are parsed strictly, and a bad one is a one-line InputError (also exit 2 through the CLI).

Export parity, fp32 on ONNX, TFLite and Core ML (MIL reference evaluator on Linux), each against the
target's own bound (``tolerance_for``): ``mobilenet:0.35`` on real digits (8x8 grey, and colourized to
32x32 RGB), DS-CNN S/M/L on real FSDD clips (skipped when ../shared is absent). The models are untrained;
to make parity meaningful, BN layers get random affine parameters and running statistics from train-mode
passes over the real data, and the classifier is rescaled so that logits are O(1), not ~0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress import models
from compress.core.errors import InputError
from compress.export.common import ModelInfo
from compress.export.registry import TARGETS, accepting, export_options, tolerance_for, variant_name
from tests.conftest import fsdd_test_clips

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 96, 96), (3, 224, 224), (4, 17, 23)]
BAD_NAMES = {
    "mobilenet:abc": "width 'abc' is not a number",
    "mobilenet:0": "width 0 is out of range",
    "mobilenet:-0.5": "width -0.5 is out of range",
    "mobilenet:0.5:-1": "depth -1 is out of range",
    "mobilenet:nan": "width nan is out of range",
    "mobilenet:1:2:3": "3 arguments, but mobilenet takes at most 2",
    "mobilenet:": "width '' is not a number",
}


def _size(name: str, shape) -> tuple[int, int]:
    model = models.build(name, shape, 10)
    return models.count_params(model), models.count_macs(model, shape)


def _last_feature_map(model: nn.Module, shape) -> tuple[int, int]:
    """Spatial size entering global average pooling."""
    seen = {}
    pool = next(m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d))
    handle = pool.register_forward_hook(lambda m, inputs, out: seen.update(hw=tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    handle.remove()
    return seen["hw"]


# ---------------------------------------------------------------------------------------------- sizes


def test_width_and_depth_multipliers_grow_params_and_macs_monotonically():
    for shape in [(1, 28, 28), (3, 32, 32)]:
        by_width = [_size(f"mobilenet:{w}", shape) for w in (0.25, 0.35, 0.5, 0.75, 1.0, 1.4)]
        by_depth = [_size(f"mobilenet:0.5:{d}", shape) for d in (0.25, 0.5, 1.0, 2.0)]
        for sizes in (by_width, by_depth):
            params, macs = zip(*sizes)
            assert all(a < b for a, b in zip(params, params[1:])), (shape, params)
            assert all(a < b for a, b in zip(macs, macs[1:])), (shape, macs)


def test_bare_family_name_is_the_default_multipliers():
    shape = (1, 28, 28)
    assert _size("mobilenet", shape) == _size("mobilenet:1", shape) == _size("mobilenet:1.0:1.0", shape)
    assert _size("mobilenet:0.5", shape) == _size("mobilenet:0.5:1", shape)


def test_channel_rounding_follows_the_paper():
    # nearest multiple of 8, at least 8, bumped when rounding down would lose more than 10%
    assert models.make_divisible(32 * 0.35) == 16  # 11.2 rounds to 8, which is > 10% below: 16
    assert models.make_divisible(16 * 0.35) == 8  # 5.6 -> the minimum
    assert models.make_divisible(96 * 0.35) == 32  # 33.6
    assert models.make_divisible(20.5) == 24
    assert models.make_divisible(1280 * 1.4) == 1792
    convs = [m for m in models.build("mobilenet:0.35", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 and c.out_channels >= 8 for c in convs)
    # below 224 px the last conv scales with the width (448 = 1280 x 0.35); at 224 px the paper keeps 1280
    assert convs[0].out_channels == 16 and convs[-1].out_channels == models.make_divisible(1280 * 0.35) == 448
    big = [m for m in models.build("mobilenet:0.35", (3, 224, 224), 10).modules() if isinstance(m, nn.Conv2d)]
    assert big[-1].out_channels == 1280
    head = [m for m in models.build("mobilenet:1.4", (3, 32, 32), 10).modules() if isinstance(m, nn.Conv2d)][-1]
    assert head.out_channels == 1792


def test_depth_multiplier_keeps_at_least_one_block_per_stage():
    def blocks(name):
        return sum(isinstance(m, models.InvertedResidual) for m in models.build(name, (1, 28, 28), 10).modules())

    assert blocks("mobilenet") == 17  # the paper's 1+2+3+4+3+3+1
    assert blocks("mobilenet:1:0.01") == 7  # one per stage
    assert blocks("mobilenet:1:0.5") == 1 + 1 + 2 + 2 + 2 + 2 + 1  # rounded up


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
def test_every_input_size_builds_and_runs(shape):
    model = models.build("mobilenet:0.35", shape, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    hw = _last_feature_map(model, shape)
    assert 4 <= min(hw) <= 7, (shape, hw)  # never below ~4x4, and as small as the paper's 7x7 allows
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.in_channels == shape[0]
    # the stride-2 steps that do not fit are dropped from the back: the stem halves every input that allows a step
    assert stem.stride == ((2, 2) if models.downsampling_steps(*shape[1:], 5) >= 1 else (1, 1))


def test_downsampling_steps():
    assert [models.downsampling_steps(s, s, 5) for s in (4, 6, 7, 8, 16, 28, 32, 96, 224, 512)] == [0, 0, 1, 1, 2, 3, 3, 4, 5, 5]
    assert models.downsampling_steps(8, 64, 5) == 1  # the short side decides


def test_residual_only_where_shapes_match():
    model = models.build("mobilenet:0.35", (3, 32, 32), 10)
    blocks = [m for m in model.modules() if isinstance(m, models.InvertedResidual)]
    assert any(b.residual for b in blocks) and not all(b.residual for b in blocks)
    for b in blocks:
        convs = [m for m in b.body if isinstance(m, nn.Conv2d)]
        depthwise = next(c for c in convs if c.groups > 1)
        same_shape = depthwise.stride == (1, 1) and convs[0].in_channels == convs[-1].out_channels
        assert b.residual == same_shape
        assert not isinstance(b.body[-1], nn.ReLU6)  # linear bottleneck


def test_ds_cnn_sizes_match_hello_edge():
    shape = (8000,)
    expected = {"ds-cnn-s": (64, 4), "ds-cnn-m": (172, 4), "ds-cnn-l": (276, 5), "ds-cnn": (40, 3)}
    sizes = {}
    for name, (channels, blocks) in expected.items():
        model = models.build(name, shape, 10).eval()
        convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
        assert convs[0].out_channels == channels
        assert sum(c.groups > 1 for c in convs) == blocks
        assert max(convs[0].stride) == 2  # the strided 10x4 first conv
        assert sorted(convs[0].kernel_size) == [4, 10]
        assert model(torch.zeros(2, *shape)).shape == (2, 10)  # raw PCM in: the LogMel front-end is inside
        sizes[name] = _size(name, shape)
    order = ["ds-cnn", "ds-cnn-s", "ds-cnn-m", "ds-cnn-l"]
    for small, big in zip(order, order[1:]):
        assert sizes[small][0] < sizes[big][0] and sizes[small][1] < sizes[big][1], sizes


# ---------------------------------------------------------------------------------------------- names


def test_known_names():
    for name in ("mobilenet", "mobilenet:0.35", "mobilenet:0.5:0.5", "mobilenet:1e-1", "ds-cnn-s", "mlp-small"):
        assert models.is_known(name), name
    for name in (*BAD_NAMES, "mobilenets:0.5", "nope", "pkg.module:function=weights.pt", "mobilenet:0.5=w.pt"):
        assert not models.is_known(name), name
    assert "mobilenet" not in models.MODELS and "mobilenet" in models.FAMILIES  # MODELS stays a plain dict
    text = models.describe_names()
    assert "\n" not in text and "mobilenet[:width[:depth]]" in text and "mobilenet:0.35" in text
    assert all(name in text for name in models.MODELS)


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_bad_family_arguments_are_one_line_input_errors(name):
    with pytest.raises(InputError) as err:
        models.build(name, (1, 8, 8), 10)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model {name!r}: ")
    assert BAD_NAMES[name] in message and "expected mobilenet[:width[:depth]]" in message


def test_teacher_specs_recognise_family_names_only_when_they_parse():
    from compress.teachers import teacher_format

    assert teacher_format("mobilenet:0.35") == "builtin"
    assert teacher_format("mobilenet") == "builtin"
    assert teacher_format("mypkg.nets:build=weights.pt") == "factory"
    with pytest.raises(InputError, match="width 'abc' is not a number") as err:
        teacher_format("mobilenet:abc")
    assert "\n" not in str(err.value)


def test_run_config_accepts_family_students():
    from compress.pipeline import RunConfig

    RunConfig.from_settings(student="mobilenet:0.5:0.5").validate()
    RunConfig.from_settings(student="ds-cnn-m").validate()
    with pytest.raises(InputError, match=r"^--student 'mobilenet:0': width 0 is out of range"):
        RunConfig.from_settings(student="mobilenet:0").validate()
    with pytest.raises(InputError, match=r"^--student 'nope': unknown; expected one of .*mobilenet:0\.35"):
        RunConfig.from_settings(student="nope").validate()


def test_cli_bad_student_exits_2_with_one_line(tmp_path):
    from typer.testing import CliRunner

    from compress.cli import app

    result = CliRunner().invoke(app, ["distill-and-export", "--student", "mobilenet:abc", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--student 'mobilenet:abc'" in lines[0] and "is not a number" in lines[0], lines
    assert not any(tmp_path.iterdir())  # rejected before any work


# ---------------------------------------------------------------------------------------------- export parity


def _prepare_for_parity(model: nn.Module, calibration: torch.Tensor, seed: int) -> nn.Module:
    """Untrained but not trivial: random BN affine parameters, running statistics from train-mode passes over
    real samples, and a classifier scaled so logits are O(1) (random init gives ~0, where any error hides)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
        model.train()
        for batch in calibration.split(16):
            model(batch)
        model.eval()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        logits = model(calibration)
        head.weight.mul_(3.0 / logits.std().clamp_min(1e-6))
        head.bias.zero_()
    return model


def _fp32_options(target: str) -> dict:
    """The float export: targets that take a compute precision (Core ML defaults to fp16) are asked for fp32."""
    return export_options(target, "none", **({"precision": "fp32"} if target in accepting("precision") else {}))


def _check_parity(tmp_path, model: nn.Module, x: np.ndarray, target: str, name: str, labels: list[str],
                  input_kind: str) -> None:
    with torch.no_grad():
        ref = model(torch.as_tensor(x)).numpy()
    assert np.abs(ref).max() > 1.0  # logits with something to lose
    backend = TARGETS[target]
    options = _fp32_options(target)
    variant = variant_name(target, options)
    assert variant == "fp32"
    info = ModelInfo(name=name, labels=labels, input_kind=input_kind)
    path = backend.export(model, torch.as_tensor(x[:1]), tmp_path / backend.file_name, info, **options)
    runner = backend.open(path, 1)
    got = np.concatenate([runner.predict(x[i:i + 1]) for i in range(len(x))])
    assert got.shape == ref.shape
    bound = tolerance_for(target, variant)["max_rel"] * max(1.0, float(np.abs(ref).max()))
    assert np.abs(got - ref).max() <= bound, (name, target, float(np.abs(got - ref).max()), bound)
    assert np.array_equal(got.argmax(1), ref.argmax(1))


@pytest.fixture(scope="module")
def digit_images():
    """24 real digits (8x8, normalized from training statistics), and the same colourized to 32x32 RGB."""
    from compress.data import load_digits

    ds = load_digits()
    grey = torch.as_tensor(np.ascontiguousarray(ds.x_test[:24]))
    tint = torch.tensor([1.0, 0.6, -0.4]).view(1, 3, 1, 1)  # a different colour per stroke intensity
    offset = torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    rgb = nn.functional.interpolate(grey * tint + offset, size=(32, 32), mode="bilinear", align_corners=False)
    train = torch.as_tensor(np.ascontiguousarray(ds.x_train[:64]))
    train_rgb = nn.functional.interpolate(train * tint + offset, size=(32, 32), mode="bilinear", align_corners=False)
    return {"grey": (train, grey), "rgb": (train_rgb, rgb), "labels": ds.labels}


@pytest.mark.parametrize("colour", ["grey", "rgb"])
@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_mobilenet_export_parity_on_digits(tmp_path, digit_images, colour, target):
    train, test = digit_images[colour]
    torch.manual_seed(0)
    model = models.build("mobilenet:0.35", tuple(train.shape[1:]), len(digit_images["labels"]))
    _prepare_for_parity(model, train, seed=1)
    _check_parity(tmp_path, model, test.numpy(), target, "mobilenet:0.35", digit_images["labels"], "image")


@pytest.fixture(scope="module")
def fsdd_clips(fsdd_dataset):
    ds = fsdd_dataset
    test = fsdd_test_clips(ds)
    train = torch.as_tensor(np.ascontiguousarray(ds.x_train[:: len(ds.x_train) // 48][:48]))
    return train, test, ds.labels, ds.input_shape


@pytest.mark.parametrize("name", ["ds-cnn-s", "ds-cnn-m", "ds-cnn-l"])
@pytest.mark.parametrize("target", ["onnx", "tflite", "coreml"])
def test_ds_cnn_export_parity_on_fsdd(tmp_path, fsdd_clips, name, target):
    train, test, labels, shape = fsdd_clips
    torch.manual_seed(0)
    model = models.build(name, shape, len(labels))
    _prepare_for_parity(model, train, seed=2)
    _check_parity(tmp_path, model, test, target, name, labels, "audio")


def test_shape_errors_name_the_family_member_as_written():
    with pytest.raises(InputError, match=r"^model 'mobilenet:0\.35': input shape \(8000,\) does not fit"):
        models.build("mobilenet:0.35", (8000,), 10)
    with pytest.raises(InputError, match=r"^model 'ds-cnn-m': input shape \(1, 8, 8\) does not fit"):
        models.build("ds-cnn-m", (1, 8, 8), 10)
