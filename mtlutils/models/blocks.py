"""The building blocks every backbone and architecture is made of.

A *conv unit* is a 3x3 convolution (padding 1, with bias), batch norm and ReLU: the unit of VGG and of
SegNet, of the Dense task networks and of MTAN's shared ``f`` layers. A *stage* is an ``nn.Sequential``
of conv units between two poolings. Widths go through :func:`scaled` so that one ``width`` multiplier
shrinks a whole network for CPU runs.
"""
from __future__ import annotations

import math
from typing import Generator

import torch
from torch import nn

# a trunk's forward written as a generator: yields features, receives (possibly mixed) features back
Stitched = Generator[torch.Tensor, torch.Tensor, torch.Tensor]


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


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every conv/linear layer (the SegNet of the MTAN authors'
    code initialises this way; no pretraining)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv_layers(module: nn.Module) -> list[nn.Conv2d]:
    """The convolutions below ``module``, in registration order (= execution order in a stage)."""
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def stage_channels(stage: nn.Module) -> tuple[int, int]:
    """``(input channels, output channels)`` of a stage or unit: its first conv's input, its last conv's output."""
    layers = conv_layers(stage)
    return layers[0].in_channels, layers[-1].out_channels


def first_and_last(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stage; return its first unit's output ``u`` and its last unit's output ``p`` (MTAN's taps,
    Liu et al. 2019, §3.2). The same computation as ``stage(x)``."""
    u = stage[0](x)
    p = u
    for unit in list(stage)[1:]:
        p = unit(p)
    return u, p


def run_units(units: nn.Sequential, x: torch.Tensor, stitch_each: bool) -> Stitched:
    """Run conv units in order; with ``stitch_each`` yield after every unit and go on with what is sent back."""
    for unit in units:
        x = unit(x)
        if stitch_each:
            x = yield x
    return x
