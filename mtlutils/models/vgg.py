"""A small VGG-style backbone for image-level tasks (classification, scalar regression).

Stages of (3x3 conv, batch norm, ReLU) x n followed by 2x2 max pooling, as in VGG; then an adaptive
average pool to a fixed ``pool`` grid, so the trunk accepts any input size and (with a grid wider than
1x1) keeps coarse position, which MultiDigits' left/right tasks need.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..tasks import Task

DEFAULT_STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 1), (64, 2))  # (channels, convs) per stage


def scaled(channels: int, width: float) -> int:
    """Channels after a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def conv_unit(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (padding 1) + batch norm + ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class VGGTrunk(nn.Module):
    """Convolutional trunk: VGG stages, then adaptive average pooling to ``pool`` and flattening.

    Args:
        in_channels: channels of the input image (1 for MultiDigits).
        stages: ``(channels, number of convs)`` per stage, before the width multiplier.
        width: multiplier of every stage's channels (e.g. 0.5 for the half-width networks of SFG).
        pool: output grid of the final adaptive average pool.
    """

    def __init__(self, in_channels: int = 1, stages: Sequence[tuple[int, int]] = DEFAULT_STAGES,
                 width: float = 1.0, pool: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        if not stages:
            raise ValueError("VGGTrunk needs at least one stage")
        self.in_channels = in_channels
        self.min_size = 2 ** len(stages)
        layers: list[nn.Module] = []
        c_in = in_channels
        for channels, n_convs in stages:
            c_out = scaled(channels, width)
            for _ in range(n_convs):
                layers.append(conv_unit(c_in, c_out))
                c_in = c_out
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.out_features = c_in * pool[0] * pool[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def stages(self) -> list[nn.Sequential]:
        """The conv units of every stage (the layers between two poolings), sharing ``features``' modules."""
        stages, units = [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*units))
                units = []
            else:
                units.append(layer)
        return stages


class MLPHead(nn.Module):
    """Task head of an image-level task: Linear, ReLU, Linear to the task's outputs, then its activation."""

    def __init__(self, in_features: int, task: Task, hidden: int = 64) -> None:
        super().__init__()
        self.task = task
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, task.out_channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.task.activate(self.net(features))
