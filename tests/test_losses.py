"""Hinton et al. (2015) loss: hand-computed values and the T^2 gradient argument."""

import math

import numpy as np
import pytest
import torch

from compress.distill.losses import LOSSES, hinton_loss, soft_cross_entropy


def softmax(z, T=1.0):
    e = [math.exp(v / T) for v in z]
    s = sum(e)
    return [v / s for v in e]


def test_soft_loss_matches_hand_computation():
    z_student, z_teacher, T = [1.0, 2.0, 0.5], [0.2, 3.0, 1.0], 2.0
    p = softmax(z_teacher, T)
    q = softmax(z_student, T)
    expected = -sum(pi * math.log(qi) for pi, qi in zip(p, q)) * T * T
    got = soft_cross_entropy(torch.tensor([z_student]), torch.tensor([p]), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_total_loss_mixes_soft_and_hard_by_alpha():
    z_student, z_teacher, T, alpha = [1.0, 2.0, 0.5], [0.2, 3.0, 1.0], 3.0, 0.25
    p, q, q1 = softmax(z_teacher, T), softmax(z_student, T), softmax(z_student)
    soft = -sum(pi * math.log(qi) for pi, qi in zip(p, q)) * T * T
    hard = -math.log(q1[1])
    got = hinton_loss(torch.tensor([z_student]), torch.tensor([p]), torch.tensor([1]), T, alpha)
    assert got.item() == pytest.approx((1 - alpha) * soft + alpha * hard, rel=1e-6)


def test_soft_loss_is_scaled_by_t_squared_even_without_hard_loss():
    z, p = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.2, 0.3, 0.5]])
    for T in (1.0, 5.0, 20.0):
        unscaled = -(p * torch.log_softmax(z / T, dim=-1)).sum()
        assert hinton_loss(z, p, None, T, 0.0).item() == pytest.approx(unscaled.item() * T * T, rel=1e-6)
        assert LOSSES["soft-only"](z, p, torch.tensor([2]), T, 0.5).item() == pytest.approx(unscaled.item() * T * T, rel=1e-6)


def test_t_squared_keeps_gradient_magnitude_as_temperature_changes():
    """The paper's reason for T^2: without it soft gradients shrink as 1/T^2."""
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(64, 10, generator=g) * 2
    z_s0 = torch.randn(64, 10, generator=g) * 2
    scaled, unscaled = {}, {}
    for T in (5.0, 10.0, 20.0, 40.0):
        teacher = torch.softmax(z_t / T, dim=-1)
        z_s = z_s0.clone().requires_grad_(True)
        soft_cross_entropy(z_s, teacher, T).backward()
        scaled[T] = z_s.grad.norm().item()
        z_s = z_s0.clone().requires_grad_(True)
        (soft_cross_entropy(z_s, teacher, T) / T**2).backward()
        unscaled[T] = z_s.grad.norm().item()
    ratios = [scaled[T] / scaled[5.0] for T in scaled]
    assert max(ratios) < 1.15 and min(ratios) > 0.85, ratios
    # unscaled gradients fall by ~ (40/5)^2 = 64x
    assert unscaled[5.0] / unscaled[40.0] == pytest.approx(64, rel=0.15)


def test_unlabelled_transfer_set_turns_hard_loss_off():
    z, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    with_labels = hinton_loss(z, p, torch.tensor([0]), 2.0, 0.5)
    without = hinton_loss(z, p, None, 2.0, 0.5)
    assert without.item() == pytest.approx(soft_cross_entropy(z, p, 2.0).item())
    assert with_labels.item() != pytest.approx(without.item())
    assert np.isfinite(without.item())
