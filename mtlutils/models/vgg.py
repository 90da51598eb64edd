"""A small VGG-style backbone for image-level tasks (classification, scalar regression).

Stages of (3x3 conv, batch norm, ReLU) x n followed by 2x2 max pooling, as in VGG; then an adaptive
average pool to a fixed ``pool`` grid, so the trunk accepts any input size and (with a grid wider than
1x1) keeps coarse position, which MultiDigits' left/right tasks need.
"""
from __future__ import annotations

import math
from typing import Generator, Sequence

import torch
from torch import nn

from ..tasks import Task

DEFAULT_STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 1), (64, 2))  # (channels, convs) per stage


# where soft-sharing models (cross-stitch) may exchange features between networks of one backbone:
# "stage" = after every pooling stage (the paper's placement), "conv" = after every conv unit
STITCH_PLACEMENTS = ("stage", "conv")
Stitched = Generator[torch.Tensor, torch.Tensor, torch.Tensor]


def check_placement(every: str) -> None:
    if every not in STITCH_PLACEMENTS:
        raise ValueError(f"unknown stitch placement {every!r}; valid choices: {list(STITCH_PLACEMENTS)}")


def run_units(units: nn.Sequential, x: torch.Tensor, stitch_each: bool) -> Stitched:
    """Run conv units in order; with ``stitch_each`` yield after every unit and go on with what is sent back."""
    for unit in units:
        x = unit(x)
        if stitch_each:
            x = yield x
    return x


def check_width(width: float) -> float:
    """``width`` as a float; ``ValueError`` unless it is a finite number > 0."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(width, bool) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"width (the channel multiplier, e.g. 1.0 for the full network, 0.5 for half as many "
                         f"channels) must be a finite number > 0, got {width!r}")
    return value


def scaled(channels: int, width: float) -> int:
    """Channels after a width multiplier ``width > 0`` (at least 1)."""
    return max(1, int(round(channels * check_width(width))))


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

    def stitch_points(self, every: str = "stage") -> list[tuple[str, int]]:
        """``(name, channels)`` of every point where :meth:`run_stitched` yields, in order."""
        check_placement(every)
        points, channels, stage, unit = [], 0, 1, 0
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                if every == "stage":
                    points.append((f"pool{stage}", channels))
                stage, unit = stage + 1, 0
            else:
                channels, unit = layer[0].out_channels, unit + 1
                if every == "conv":
                    points.append((f"conv{stage}.{unit}", channels))
        return points

    def run_stitched(self, x: torch.Tensor, every: str = "stage") -> Stitched:
        """:meth:`forward` as a generator, for soft sharing between networks (cross-stitch).

        Yields the features at every point of :meth:`stitch_points` (``every="stage"``: after every
        pooling; ``"conv"``: after every conv unit) and continues with the tensor sent back; returns
        the trunk's output. Sending back what was yielded reproduces :meth:`forward` exactly.
        """
        check_placement(every)
        for layer in self.features:
            x = layer(x)
            if (every == "stage") == isinstance(layer, nn.MaxPool2d):
                x = yield x
        return self.pool(x).flatten(1)

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
    """Task head of an image-level task: Linear, ReLU, Linear to the task's outputs, then its activation.

    ``forward(f) = output(hidden(f))``: the two halves are separate so that soft sharing can stitch the
    hidden fully-connected layer (``hidden_features`` wide), as cross-stitch networks do with fc6 and fc7.
    """

    def __init__(self, in_features: int, task: Task, hidden: int = 64) -> None:
        super().__init__()
        self.task = task
        self.hidden_features = hidden
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, task.out_channels))
        if task.output_bias is not None:   # start at the training mean (no random numbers drawn)
            nn.init.constant_(self.net[-1].bias, task.output_bias)

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations ``(N, hidden_features)``: Linear, then ReLU."""
        return self.net[1](self.net[0](features))

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """The prediction from the hidden activations: the output Linear, then the task's activation."""
        return self.task.activate(self.net[2](hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(features))
