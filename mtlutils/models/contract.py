"""The backbone contract: what a backbone's trunk (and head) provides to the architectures built on it.

A *backbone* (:data:`mtlutils.models.BACKBONES`) makes two kinds of parts: a **trunk**, the network
from the image to the features the task heads read (:class:`~mtlutils.models.vgg.VGGTrunk`,
:class:`~mtlutils.models.segnet.SegNetTrunk`), and one **head** per task. Every architecture needs the
core :class:`Trunk`. A few need more, each named here as a capability of its own and checked with
:func:`require` when the model is built (so a wrong backbone fails at once, with a message that says
which backbone has the capability):

* :class:`Trunk` (every architecture): ``in_channels``, ``min_size``, ``size_multiple``,
  ``out_features`` and ``forward(x)``. VGG and SegNet.
* :class:`StitchableTrunk` (``cross_stitch``): ``stitch_points`` and ``run_stitched``, the forward pass as a
  generator that stops where cross-stitch units mix the networks' features. VGG and SegNet.
* :class:`SideInputTrunk` (``dense``): ``forward(x, side)``, ``stage_inputs`` and ``side_channel_sizes``;
  its factory takes ``side_channels=``. SegNet.
* :class:`StagedTrunk` (``mtan``, ``stan``): ``encoder_stages``, ``decoder_stages``, ``run_stages`` (the
  shared pass, with the trunk's own pooling and unpooling, recording every stage), ``finish`` and
  ``initialise``. VGG and SegNet.
* :class:`TiedUnpoolingTrunk` (``sfg``, when the trunk has it): ``unpooling_ties``, the layers whose
  channels max unpooling ties together. SegNet.

Heads: every head is ``head(features) -> prediction`` built by ``make_head(out_features, task)``; a
:class:`StitchableHead` also exposes its hidden fully-connected layer, which cross-stitch networks stitch
(Misra et al. 2016 place units after fc6 and fc7 as well as after the poolings; chapter 3).

To add a backbone: write a trunk that satisfies :class:`Trunk` (and the capabilities the architectures
you want need), a head, and a parts function in :data:`mtlutils.models.BACKBONES`; see
``docs/ARCHITECTURE.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ..tasks import Task
from .blocks import Stitched

TrunkFactory = Callable[..., nn.Module]            # make_trunk(**options) -> a Trunk
HeadFactory = Callable[[int, Task], nn.Module]     # make_head(out_features, task) -> a head

# where soft-sharing models (cross-stitch) may exchange features between networks of one backbone:
# "stage" = after every pooling stage (the paper's placement), "conv" = after every conv unit
STITCH_PLACEMENTS = ("stage", "conv")


def check_placement(every: str) -> None:
    """``ValueError`` naming the valid choices unless ``every`` is one of :data:`STITCH_PLACEMENTS`."""
    if every not in STITCH_PLACEMENTS:
        raise ValueError(f"unknown stitch placement {every!r}; valid choices: {list(STITCH_PLACEMENTS)}")


@runtime_checkable
class InputSpec(Protocol):
    """What a network accepts: images ``(N, in_channels, H, W)`` with ``H, W >= min_size`` and both
    divisible by ``size_multiple`` (1: any size). A model copies these from its trunk."""

    in_channels: int
    min_size: int
    size_multiple: int


@runtime_checkable
class Trunk(InputSpec, Protocol):
    """The core contract: ``forward(x)`` maps images to the features every head reads, ``(N, out_features)``
    for image-level backbones or ``(N, out_features, H, W)`` for dense ones."""

    out_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StitchableTrunk(Trunk, Protocol):
    """Soft sharing between networks of one backbone (cross-stitch, Misra et al. 2016, Eq. 1)."""

    def stitch_points(self, every: str = "stage") -> list[tuple[str, int]]:
        """``(name, channels)`` of every point where :meth:`run_stitched` yields, in order."""

    def run_stitched(self, x: torch.Tensor, every: str = "stage") -> Stitched:
        """``forward`` as a generator: yields the features at every stitch point and continues with the
        tensor sent back; returns the trunk's output. Sending back what was yielded reproduces ``forward``."""


@runtime_checkable
class SideInputTrunk(Trunk, Protocol):
    """Stages that read extra input channels (the Dense baseline of the MTAN tables, Liu et al. 2019: a task
    network's stage reads ``[task features ; shared features]``). Built by ``make_trunk(side_channels=sizes)``."""

    def forward(self, x: torch.Tensor, side: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``forward`` with ``side[k]`` concatenated to the input of the ``k``-th stage that takes one."""

    def stage_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the inputs of every stage that can take a side input (another network's ``side``)."""

    def side_channel_sizes(self) -> list[int]:
        """Channels of the tensors :meth:`stage_inputs` returns (what ``side_channels=`` must be)."""


@dataclass
class StagePass:
    """What a trunk computed at every stage in one forward pass (:meth:`StagedTrunk.run_stages`).

    ``encoder[j] = (u, p)``: the outputs of encoder stage ``j``'s first and last conv units (MTAN's
    ``u^(j)`` and ``p^(j)``, Liu et al. 2019, §3.2); ``decoder[k] = (input, output)`` of decoder stage
    ``k``, deepest first (the input is the unpooled map); ``inputs``: the input of every stage after the
    first, encoder then decoder (the side inputs of :class:`SideInputTrunk`); ``output``: ``forward(x)``.
    """

    encoder: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    decoder: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    output: torch.Tensor | None = None


@runtime_checkable
class StagedTrunk(Trunk, Protocol):
    """The stages of the shared network and its pass through them, for networks that attach their own
    modules to every stage (MTAN's attention networks, Liu et al. 2019, §3.2)."""

    def encoder_stages(self) -> list[nn.Sequential]:
        """The conv units of every encoder stage (between two poolings), in order."""

    def decoder_stages(self) -> list[nn.Sequential]:
        """The conv units of every decoder stage, deepest first; ``[]`` for a trunk without a decoder."""

    def run_stages(self, x: torch.Tensor) -> StagePass:
        """The trunk's forward pass (its own pooling and unpooling included), recording every stage."""

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's layers after its last stage, applied to ``x`` shaped as that stage's output (VGG:
        pooling and flattening; SegNet: nothing): what turns an attended last-stage feature into head input."""

    def initialise(self, module: nn.Module) -> None:
        """Initialise ``module`` (added by an architecture around this trunk) as the trunk's own layers are."""


@runtime_checkable
class TiedUnpoolingTrunk(Protocol):
    """Max unpooling puts a decoder channel where an encoder channel had its maxima, tying the two channels
    (what SFG must group together, chapter 5)."""

    def unpooling_ties(self) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
        """``(encoder conv, decoder conv)`` pairs whose output channels unpooling ties, channel by channel."""


@runtime_checkable
class StitchableHead(Protocol):
    """A head ``output(hidden(features))`` whose hidden fully-connected layer (``hidden_features`` wide)
    can be stitched."""

    hidden_features: int

    def hidden(self, features: torch.Tensor) -> torch.Tensor: ...

    def output(self, hidden: torch.Tensor) -> torch.Tensor: ...


def require(trunk: nn.Module, capability: type, arch: str, what: str, backbone: str) -> None:
    """``ValueError`` unless ``trunk`` has ``capability`` (one of the protocols above): the message names
    the architecture, what it needs (``what``) and a backbone that has it (``backbone``)."""
    if not isinstance(trunk, capability):
        raise ValueError(f"the {arch} architecture needs a backbone with {what} ({backbone}); "
                         f"{type(trunk).__name__} is not a {capability.__name__}")
