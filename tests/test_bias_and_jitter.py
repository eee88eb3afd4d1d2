"""Bias correction for an omitted class, and the jitter augmentation."""

import numpy as np
import pytest
import torch

from compress.distill.bias_correction import fit_class_bias, parse_correction, shift_class_bias
from compress.core.errors import InputError
from compress.distill.train import jitter


def test_shift_class_bias_moves_only_that_logit():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(5, 4)
    before = model(x).detach()
    shift_class_bias(model, 2, 3.5)
    after = model(x).detach()
    torch.testing.assert_close(after[:, :2], before[:, :2])
    torch.testing.assert_close(after[:, 2], before[:, 2] + 3.5)


def test_fit_class_bias_recovers_an_underpredicted_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), labels] += 3.0
    logits[:, 1] -= 4.0  # class 1 under-predicted, as after distilling without it
    assert np.mean(logits.argmax(1) == labels) < 0.8
    delta = fit_class_bias(logits, labels, 1)
    assert 3.0 <= delta <= 5.0
    shifted = logits.copy()
    shifted[:, 1] += delta
    assert np.mean(shifted.argmax(1) == labels) > 0.9


def test_parse_correction():
    assert parse_correction("3=+3.5", [str(i) for i in range(10)]) == (3, 3.5)
    with pytest.raises(InputError, match="label 'x' is not in the class list"):
        parse_correction("x=1", ["a", "b"])
    with pytest.raises(InputError, match="expected LABEL=DELTA"):
        parse_correction("3", ["3"])


def test_jitter_shifts_images_and_fills_with_background():
    x = torch.full((64, 1, 6, 6), -1.0)
    x[:, :, 2:4, 2:4] = 5.0  # a 2x2 blob in the middle, background -1
    out = jitter(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.all((out == 5.0).sum(dim=(1, 2, 3)) == 4)  # blob always fully inside after <= 2 px shift
    assert torch.all((out == -1.0).sum(dim=(1, 2, 3)) == 32)  # padding uses the background value
    positions = {tuple(torch.nonzero(o[0] == 5.0)[0].tolist()) for o in out}
    assert len(positions) > 10  # many different shifts
