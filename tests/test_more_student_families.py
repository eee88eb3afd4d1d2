"""The mlp, cnn-small, cnn and ds-cnn families (``compress search`` scales them): each is its registered student at
1.0, grows in MACs with every multiplier, rejects bad arguments with a one-line error naming the family and
what was expected, and its members train and export to ONNX with parity against torch on real inputs
(digits for mlp and cnn-small, FSDD clips for ds-cnn; skipped when ../shared is absent).

Parity: fp32 ONNX against the registry's bound (``tolerance_for``), reusing test_student_families' setup
(random BN affine parameters and real-data statistics, logits rescaled to O(1)) after a few training steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compress import models
from compress.core.errors import InputError
from tests.conftest import fsdd_test_clips
from tests.test_student_families import _check_parity, _prepare_for_parity

DIGITS = (1, 8, 8)
AUDIO = (8000,)
# family name at 1.0 -> (registered model it must equal, an input shape it takes)
BASES = {"mlp": ("mlp-800", DIGITS), "cnn-small": ("cnn-small", DIGITS), "cnn": ("cnn", DIGITS), "ds-cnn": ("ds-cnn", AUDIO)}
BAD_NAMES = {
    "mlp:abc": ("width 'abc' is not a number", "mlp[:width[:depth]]"),
    "mlp:1:0": ("depth 0 is out of range", "mlp[:width[:depth]]"),
    "mlp:1:2:3": ("3 arguments, but mlp takes at most 2", "mlp[:width[:depth]]"),
    "ds-cnn:0": ("width 0 is out of range", "ds-cnn[:width[:depth]]"),
    "ds-cnn:0.5:x": ("depth 'x' is not a number", "ds-cnn[:width[:depth]]"),
    "ds-cnn:5": ("width 5 is out of range", "ds-cnn[:width[:depth]]"),
    "cnn-small:1:2": ("2 arguments, but cnn-small takes at most 1", "cnn-small[:width]"),
    "cnn-small:-1": ("width -1 is out of range", "cnn-small[:width]"),
}


def _architecture(name: str, shape) -> tuple[list[tuple[int, ...]], int]:
    model = models.build(name, shape, 10)
    return [tuple(p.shape) for p in model.parameters()], models.count_macs(model, shape)


def _macs(name: str, shape) -> int:
    return models.count_macs(models.build(name, shape, 10), shape)


# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("family", list(BASES))
def test_family_at_one_is_the_registered_student(family):
    registered, shape = BASES[family]
    expected = _architecture(registered, shape)
    for name in (family, f"{family}:1", f"{family}:1.0", *([f"{family}:1:1"] if family not in ("cnn-small", "cnn") else [])):
        assert _architecture(name, shape) == expected, name


def test_macs_strictly_increase_with_width_and_depth():
    series = {
        "mlp width": [_macs(f"mlp:{w}", DIGITS) for w in (0.25, 0.5, 1, 2)],
        "mlp depth": [_macs(f"mlp:0.5:{d}", DIGITS) for d in (0.5, 1, 1.5, 2)],  # 1, 2, 3, 4 hidden layers
        "cnn-small width": [_macs(f"cnn-small:{w}", DIGITS) for w in (0.5, 1, 1.5, 2)],
        "cnn width": [_macs(f"cnn:{w}", DIGITS) for w in (0.25, 0.5, 1, 1.5)],
        "ds-cnn width": [_macs(f"ds-cnn:{w}", AUDIO) for w in (0.25, 0.5, 1, 2)],
        "ds-cnn depth": [_macs(f"ds-cnn:0.5:{d}", AUDIO) for d in (0.25, 0.5, 1, 2)],  # 1, 2, 3, 6 blocks
    }
    for label, macs in series.items():
        assert all(a < b for a, b in zip(macs, macs[1:])), (label, macs)


def test_multipliers_round_half_up_and_keep_the_minimums():
    def hidden(name):
        return [m.out_features for m in models.build(name, DIGITS, 10).modules() if isinstance(m, nn.Linear)][:-1]

    def conv_channels(name, shape):
        model = models.build(name, shape, 10)
        return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]

    assert hidden("mlp:0.35") == [280, 280]
    assert hidden("mlp:1:1.25") == [800] * 3  # 2.5 layers round up (Python's round would give 2)
    assert hidden("mlp:0.001:0.01") == [8]  # at least 8 units and one hidden layer
    assert conv_channels("cnn-small:0.5", DIGITS) == [4, 8]
    assert conv_channels("cnn-small:0.01", DIGITS) == [4, 4]  # at least 4 channels
    assert conv_channels("cnn-small:1.5", DIGITS) == [12, 24]
    assert conv_channels("cnn:0.25", DIGITS) == [8, 16, 32]
    small = conv_channels("ds-cnn:0.01:0.01", AUDIO)  # first conv, then depthwise + pointwise per block
    assert small == [4, 4, 4]
    wide = [m for m in models.build("ds-cnn:0.5:2", AUDIO, 10).body.modules() if isinstance(m, nn.Conv2d)]
    assert wide[0].out_channels == 20 and sum(c.groups > 1 for c in wide) == 6


# ---------------------------------------------------------------------------------------------- names


def test_names_are_known_and_described():
    for name in ("mlp", "mlp:0.5", "mlp:0.5:0.5", "cnn-small:2", "ds-cnn:0.5", "ds-cnn:2:0.5"):
        assert models.is_known(name), name
    for name in (*BAD_NAMES, "mlps:0.5", "ds-cnn-s:0.5"):
        assert not models.is_known(name), name
    assert "mlp" not in models.MODELS and {"mlp", "cnn-small", "ds-cnn"} <= set(models.FAMILIES)
    text = models.describe_names()
    assert "\n" not in text
    for usage, first_line, example in (("mlp[:width[:depth]]", "ReLU MLP scaled from mlp-800", "mlp:0.25"),
                                       ("cnn-small[:width]", "scaled from cnn-small", "cnn-small:0.5"),
                                       ("ds-cnn[:width[:depth]]", "scaled from ds-cnn", "ds-cnn:0.5")):
        assert f"{usage} (" in text and first_line in text and example in text, usage


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_bad_arguments_are_one_line_errors_naming_the_family(name):
    reason, usage = BAD_NAMES[name]
    with pytest.raises(InputError) as err:
        models.build(name, DIGITS, 10)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model {name!r}: ")
    assert reason in message and f"expected {usage} with multipliers in (0, 4]" in message, message
    assert models.why_unknown(name) in message


def test_shape_errors_name_the_member_as_written():
    with pytest.raises(InputError, match=r"^model 'cnn-small:0\.5': input shape \(8000,\) does not fit"):
        models.build("cnn-small:0.5", AUDIO, 10)
    with pytest.raises(InputError, match=r"^model 'ds-cnn:0\.5:2': input shape \(1, 8, 8\) does not fit"):
        models.build("ds-cnn:0.5:2", DIGITS, 10)


def test_factory_teacher_specs_in_a_module_named_like_a_family_stay_factories():
    from compress.teachers import teacher_format

    assert teacher_format("mlp:0.5") == "builtin"
    assert teacher_format("mlp:build=weights.pt") == "factory"  # a user's mlp.py, not a bad family argument


# ---------------------------------------------------------------------------------------------- train + export


def _trains(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
    """A few Adam steps on one real batch lower the loss on it (gradients reach the whole network)."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(float(nn.functional.cross_entropy(model(x), y)))
    assert losses[-1] < losses[0], losses


@pytest.fixture(scope="module")
def digits():
    """64 real training digits with labels, and 24 real test digits (normalized 8x8)."""
    from compress.data import load_data

    ds = load_data(None)
    train = torch.as_tensor(np.ascontiguousarray(ds.x_train[:64]))
    return train, torch.as_tensor(ds.y_train[:64]).long(), np.ascontiguousarray(ds.x_test[:24]), ds.labels


@pytest.mark.parametrize("name", ["mlp:0.25:0.5", "mlp:0.5:1.5", "cnn-small:0.5", "cnn-small:2", "cnn:0.25"])
def test_digit_families_train_and_export_to_onnx_with_parity(tmp_path, digits, name):
    train, labels_train, test, labels = digits
    torch.manual_seed(0)
    model = models.build(name, tuple(train.shape[1:]), len(labels))
    _trains(model, train, labels_train)
    _prepare_for_parity(model, train, seed=3)
    _check_parity(tmp_path, model, test, "onnx", name, labels, "image")


@pytest.fixture(scope="module")
def fsdd_clips(fsdd_dataset):
    ds = fsdd_dataset
    test = fsdd_test_clips(ds)
    pick = slice(None, None, len(ds.x_train) // 32)
    train = torch.as_tensor(np.ascontiguousarray(ds.x_train[pick][:32]))
    return train, torch.as_tensor(ds.y_train[pick][:32]).long(), test, ds.labels, ds.input_shape


@pytest.mark.parametrize("name", ["ds-cnn:0.5:0.5", "ds-cnn:1.5:2"])
def test_ds_cnn_family_trains_and_exports_to_onnx_with_parity_on_fsdd(tmp_path, fsdd_clips, name):
    train, labels_train, test, labels, shape = fsdd_clips
    torch.manual_seed(0)
    model = models.build(name, shape, len(labels))
    _trains(model, train, labels_train)
    _prepare_for_parity(model, train, seed=4)
    _check_parity(tmp_path, model, test, "onnx", name, labels, "audio")
