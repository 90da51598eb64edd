"""A small VGG-style backbone for image-level tasks (classification, scalar regression).

Stages of (3x3 conv, batch norm, ReLU) x n followed by 2x2 max pooling, as in VGG; then an adaptive
average pool to a fixed ``pool`` grid, so the trunk accepts any input size and (with a grid wider than
1x1) keeps coarse position, which MultiDigits' left/right tasks need.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import Task
from .blocks import Stitched, check_width, conv_unit, first_and_last, run_units, scaled  # noqa: F401 (re-exported)
from .contract import STITCH_PLACEMENTS, StagePass, check_placement  # noqa: F401 (re-exported)

__all__ = ["DEFAULT_STAGES", "VGGTrunk", "MLPHead"]

DEFAULT_STAGES: tuple[tuple[int, int], ...] = ((16, 1), (32, 1), (64, 2))  # (channels, convs) per stage


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
        self.min_size, self.size_multiple = 2 ** len(stages), 1
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

    # -- StagedTrunk (mtlutils.models.contract): what MTAN attaches its attention networks to ---------------
    def encoder_stages(self) -> list[nn.Sequential]:
        """The conv units of every stage (the layers between two poolings), sharing ``features``' modules."""
        stages, units = [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*units))
                units = []
            else:
                units.append(layer)
        return stages

    def decoder_stages(self) -> list[nn.Sequential]:
        """No decoder: ``[]``."""
        return []

    def run_stages(self, x: torch.Tensor) -> StagePass:
        """:meth:`forward`, recording every stage's first and last conv unit outputs and its input."""
        trace = StagePass()
        for j, stage in enumerate(self.encoder_stages()):
            if j > 0:
                trace.inputs.append(x)
            u, p = first_and_last(stage, x)
            trace.encoder.append((u, p))
            x = F.max_pool2d(p, 2, 2)
        trace.output = self.pool(x).flatten(1)
        return trace

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The layers after the last stage's conv units: its 2x2 max pooling, the adaptive average pool,
        flattening."""
        return self.pool(F.max_pool2d(x, 2, 2)).flatten(1)

    def initialise(self, module: nn.Module) -> None:
        """This trunk keeps PyTorch's default initialisation, which ``module`` got when it was made."""


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
