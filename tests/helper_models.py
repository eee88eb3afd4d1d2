"""A factory importable as ``tests.helper_models:small_mlp`` for the factory-teacher test."""

from torch import nn


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def wrong_classes() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
