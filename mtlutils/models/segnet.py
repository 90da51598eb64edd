"""SegNet (Badrinarayanan et al.), as in the MTAN authors' reference code.

Encoder: five VGG-16 stages of 2, 2, 3, 3, 3 conv units (3x3 conv with bias, batch norm, ReLU) with
widths 64-128-256-512-512, each followed by 2x2 max pooling that keeps its indices. Decoder, mirrored:
max unpooling with those indices, then 3, 3, 3, 2, 2 conv units back to 64 channels at full
resolution. Task heads: 3x3 conv 64->64 then 1x1 conv 64->outputs, then the task's activation.
Xavier-normal initialisation. One 13-class single-task SegNet has 24,981,069 parameters.

Options used by the baselines of the MTAN tables: ``width`` (channel multiplier, for CPU runs),
``wide`` (last stage twice as wide: Split-Wide), ``deep`` (every conv unit doubled: Split-Deep) and
``side_channels`` (extra input channels at the start of every stage but the first: the task networks of
Dense, which read ``[task features ; shared features]``; as in the authors' code their last decoder stage
keeps the doubled width until its last unit, 128->128->64).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from ..tasks import Task
from .vgg import Stitched, check_placement, conv_unit, run_units, scaled

# With deterministic algorithms requested, PyTorch warns that max unpooling has no deterministic kernel.
# The indices come from non-overlapping 2x2 max pooling, so they are unique: the scatter has no write
# conflicts and is deterministic anyway.
warnings.filterwarnings("ignore", message="max_unpooling2d_forward_out does not have a deterministic")

WIDTHS = (64, 128, 256, 512, 512)
ENCODER_UNITS = (2, 2, 3, 3, 3)
DECODER_UNITS = (2, 2, 3, 3, 3)  # per stage, listed from full resolution (stage 0) to the deepest


def _stage(c_in: int, c_out: int, units: int, deep: bool, narrow_last: bool = False) -> nn.Sequential:
    """``units`` conv units c_in->c_out->...->c_out; ``deep`` doubles every unit. ``narrow_last``: the
    units keep the input width and only the last one narrows, c_in->...->c_in->c_out (the last decoder
    stage of the Dense task networks in the MTAN authors' code, 128->128->64)."""
    widths = [c_in] * units + [c_out] if narrow_last else [c_in] + [c_out] * units
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(conv_unit(a, b))
        if deep:
            layers.append(conv_unit(b, b))
    return nn.Sequential(*layers)


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every conv/linear layer (as the reference code)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SegNetTrunk(nn.Module):
    """SegNet encoder-decoder: image ``(N, C, H, W)`` -> features ``(N, 64·width, H, W)``.

    ``forward(x, side)`` optionally concatenates ``side[k]`` to the input of stage ``k`` (the 4 encoder
    stages after the first, then the 5 decoder stages from deepest to shallowest); ``stage_inputs(x)``
    returns those 9 inputs of this network, so another network can read them (Dense).
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0, widths: Sequence[int] = WIDTHS,
                 wide: bool = False, deep: bool = False, side_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        w = [scaled(c, width) for c in widths]
        if wide:
            w[-1] *= 2
        side = list(side_channels) if side_channels is not None else [0] * 9
        if len(side) != 9:
            raise ValueError(f"side_channels needs 9 entries (4 encoder + 5 decoder stages), got {len(side)}")
        self.in_channels, self.min_size, self.size_multiple = in_channels, 32, 32
        self.widths = w
        self.encoder = nn.ModuleList()
        c_in = in_channels
        for s, (c_out, units) in enumerate(zip(w, ENCODER_UNITS)):
            extra = side[s - 1] if s > 0 else 0
            self.encoder.append(_stage(c_in + extra, c_out, units, deep))
            c_in = c_out
        self.decoder = nn.ModuleList()  # index 0 = deepest stage
        for k, s in enumerate(range(len(w) - 1, -1, -1)):
            c_out = w[s - 1] if s > 0 else w[0]
            narrow_last = s == 0 and side[4 + k] > 0  # Dense task network, full resolution
            self.decoder.append(_stage(w[s] + side[4 + k], c_out, DECODER_UNITS[s], deep, narrow_last))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.out_features = w[0]
        xavier_init(self)

    def _run(self, x: torch.Tensor, side: Sequence[torch.Tensor] | None, record: bool
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        taps: list[torch.Tensor] = []
        indices = []
        k = 0
        for s, stage in enumerate(self.encoder):
            if s > 0:
                if record:
                    taps.append(x)
                if side is not None:
                    x = torch.cat([x, side[k]], dim=1)
                k += 1
            x, idx = self.pool(stage(x))
            indices.append(idx)
        for stage, idx in zip(self.decoder, reversed(indices)):
            x = self.unpool(x, idx)
            if record:
                taps.append(x)
            if side is not None:
                x = torch.cat([x, side[k]], dim=1)
            k += 1
            x = stage(x)
        return x, taps

    def forward(self, x: torch.Tensor, side: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        return self._run(x, side, record=False)[0]

    def stitch_points(self, every: str = "stage") -> list[tuple[str, int]]:
        """``(name, channels)`` of every point where :meth:`run_stitched` yields, in order: encoder
        stages ``pool1``..``pool5`` then decoder stages ``dec5``..``dec1`` (``every="stage"``), or every
        conv unit ``enc<stage>.<unit>`` / ``dec<stage>.<unit>`` (``every="conv"``)."""
        check_placement(every)
        stages = [(f"enc{s + 1}", st) for s, st in enumerate(self.encoder)]
        stages += [(f"dec{len(self.decoder) - k}", st) for k, st in enumerate(self.decoder)]
        if every == "conv":
            return [(f"{name}.{u + 1}", unit[0].out_channels) for name, st in stages for u, unit in enumerate(st)]
        return [(name.replace("enc", "pool"), st[-1][0].out_channels) for name, st in stages]

    def run_stitched(self, x: torch.Tensor, every: str = "stage") -> Stitched:
        """:meth:`forward` (without side inputs) as a generator, for soft sharing between networks.

        Yields the features at every point of :meth:`stitch_points` and continues with the tensor sent
        back; returns the trunk's output. ``every="stage"``: after every encoder stage's pooling and at
        the end of every decoder stage (dense features; an unpooled map is sparse and its indices belong
        to one network); ``"conv"``: after every conv unit. Sending back what was yielded reproduces
        :meth:`forward` exactly.
        """
        check_placement(every)
        conv = every == "conv"
        indices = []
        for stage in self.encoder:
            x, idx = self.pool((yield from run_units(stage, x, conv)))
            indices.append(idx)
            if not conv:
                x = yield x
        for stage, idx in zip(self.decoder, reversed(indices)):
            x = yield from run_units(stage, self.unpool(x, idx), conv)
            if not conv:
                x = yield x
        return x

    def unpooling_ties(self) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
        """``(encoder conv, decoder conv)`` pairs whose channels max unpooling ties: channel ``c`` of the
        decoder conv's output is put back at the positions where channel ``c`` of the encoder conv's output
        had its maxima (the last conv of encoder stage ``s`` and the last conv of the decoder stage that
        feeds the unpooling with stage ``s``'s indices). The deepest unpooling reuses the indices of the
        very tensor it unpools, so it ties nothing."""
        last = lambda stage: stage[-1][0]  # noqa: E731  the conv of a stage's last unit
        deepest = len(self.encoder) - 1
        return [(last(self.encoder[deepest - k]), last(self.decoder[k - 1])) for k in range(1, len(self.decoder))]

    def stage_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features and the inputs of the 9 stages that can take side inputs."""
        return self._run(x, None, record=True)

    def side_channel_sizes(self) -> list[int]:
        """Channels of the 9 stage inputs returned by :meth:`stage_inputs`."""
        w = self.widths
        return [w[s - 1] for s in range(1, len(w))] + [w[s] for s in range(len(w) - 1, -1, -1)]


class DenseHead(nn.Module):
    """Task head of a dense task: 3x3 conv (in->in), 1x1 conv (in->outputs), then the task's activation."""

    def __init__(self, in_features: int, task: Task) -> None:
        super().__init__()
        self.task = task
        self.net = nn.Sequential(nn.Conv2d(in_features, in_features, 3, padding=1),
                                 nn.Conv2d(in_features, task.out_channels, 1))
        xavier_init(self)
        if task.output_bias is not None:   # start at the training mean (no random numbers drawn)
            nn.init.constant_(self.net[-1].bias, task.output_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.task.activate(self.net(features))
