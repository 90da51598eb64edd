"""The cross-stitch unit of Misra et al. (CVPR 2016).

At a stitch point, each of the T task networks has produced activations ``x_j`` of shape
``(N, C, *spatial)``. The unit mixes them linearly, separately at every location:

* **Eq. 1** (forward): ``x̃_i = Σ_j α_ij x_j``; with two tasks ``x̃_A = α_AA x_A + α_AB x_B`` and
  ``x̃_B = α_BA x_A + α_BB x_B``. Same-task values α_ii are the paper's α_S, the others its α_D.
* **Eq. 2** (gradient to the inputs): ``∂L/∂x_j = Σ_i α_ij ∂L/∂x̃_i``, the transposed mixing matrix.
* **Eq. 3, corrected** (gradient to α): ``∂L/∂α_ij = Σ ∂L/∂x̃_i · x_j``, summed over the batch and the
  locations (and over the channels when one α serves the whole layer). The paper prints
  ``∂L/∂α_AB = ∂L/∂x̃_B · x_A``, which is the derivative for α_BA, and leaves the sum implicit.

Granularity: ``"channel"`` (the paper's choice for segmentation + surface normals: one T×T matrix per
channel, α of shape ``(T, T, C)``) or ``"layer"`` (one T×T matrix for the whole layer, α ``(T, T)``).

Two implementations that give the same values and gradients (``tests/test_cross_stitch.py``):

* :class:`CrossStitchFunction`: a ``torch.autograd.Function`` whose backward is Eq. 2 and the corrected
  Eq. 3 written out by hand (the reference of the coursework checks);
* :class:`CrossStitch`: the reusable layer (an ``nn.Module`` holding α). By default it runs
  :class:`CrossStitchFunction`, whose backward makes fewer temporary tensors than autograd's (a training
  step of a cross-stitch network is measurably faster, ``benchmarks/bench_cross_stitch.py``);
  ``autograd=True`` computes Eq. 1 in plain tensor operations and lets autograd derive the backward.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

GRANULARITIES = ("channel", "layer")


def _coefficient(alpha: torch.Tensor, i: int, j: int, ndim: int) -> torch.Tensor:
    """α_ij, shaped to broadcast over activations with ``ndim`` dimensions ``(N, C, *spatial)``."""
    a = alpha[i, j]
    if alpha.dim() == 3:  # per channel: (C,) -> (1, C, 1, ..., 1)
        return a.view(1, -1, *([1] * (ndim - 2)))
    return a  # per layer: a 0-d tensor broadcasts everywhere


def _weighted_sum(coefficients: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k c_k t_k`` into one new tensor (accumulated in place: one allocation, not one per term)."""
    out = tensors[0] * coefficients[0]
    for c, t in zip(coefficients[1:], tensors[1:]):
        out.addcmul_(t, c)
    return out


def mix(alpha: torch.Tensor, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. 1, ``x̃_i = Σ_j α_ij x_j``, in differentiable tensor operations (autograd makes the backward)."""
    ndim, t = xs[0].dim(), len(xs)
    return [_weighted_sum([_coefficient(alpha, i, j, ndim) for j in range(t)], xs) for i in range(t)]


def check_stitch_inputs(alpha: torch.Tensor, xs: Sequence[torch.Tensor]) -> None:
    """Raise a ``ValueError`` that says what was expected when ``xs`` do not fit ``alpha``."""
    t = alpha.shape[0]
    channels = alpha.shape[2] if alpha.dim() == 3 else None
    if len(xs) != t:
        raise ValueError(f"the cross-stitch unit mixes {t} task activations, got {len(xs)}")
    shape = tuple(xs[0].shape)
    want = f"{t} tensors of one shape (N, {channels if channels else 'C'}, ...)"
    if any(tuple(x.shape) != shape for x in xs):
        raise ValueError(f"cross-stitch expects {want}, got shapes {[tuple(x.shape) for x in xs]}")
    if len(shape) < 2 or (channels is not None and shape[1] != channels):
        raise ValueError(f"cross-stitch expects {want}, got shape {shape}")


class CrossStitchFunction(torch.autograd.Function):
    """Eq. 1 forward, Eq. 2 and corrected Eq. 3 backward by hand, for T tasks and both granularities.

    ``CrossStitchFunction.apply(alpha, x_1, ..., x_T) -> (x̃_1, ..., x̃_T)`` with ``alpha`` of shape
    ``(T, T)`` (per layer) or ``(T, T, C)`` (per channel) and every ``x_j`` of shape ``(N, C, *spatial)``.
    No autograd runs inside: the backward is the two formulas, and it is not itself differentiable
    (``once_differentiable``: a second derivative, e.g. a gradient penalty, raises an error; use
    ``CrossStitch(..., autograd=True)`` for that).
    """

    @staticmethod
    def forward(ctx, alpha: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_stitch_inputs(alpha, xs)
        ctx.save_for_backward(alpha, *xs)
        return tuple(mix(alpha, xs))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        alpha, *xs = ctx.saved_tensors
        t, ndim = len(xs), xs[0].dim()
        grad_xs: list[torch.Tensor | None] = [None] * t
        grad_alpha = None
        # Eq. 2: dL/dx_j = sum_i alpha_ij dL/dx~_i (the transposed matrix)
        for j in range(t):
            if ctx.needs_input_grad[1 + j]:
                grad_xs[j] = _weighted_sum([_coefficient(alpha, i, j, ndim) for i in range(t)], grads)
        if ctx.needs_input_grad[0]:
            # Eq. 3 (corrected): dL/dalpha_ij = sum over batch and locations (and channels) of dL/dx~_i * x_j
            dims = [0] + list(range(2, ndim)) if alpha.dim() == 3 else list(range(ndim))
            product = torch.empty_like(xs[0])  # one buffer for the T^2 products
            grad_alpha = torch.empty_like(alpha)
            for i in range(t):
                for j in range(t):
                    grad_alpha[i, j] = torch.mul(grads[i], xs[j], out=product).sum(dim=dims)
        return (grad_alpha, *grad_xs)


def cross_stitch(alpha: torch.Tensor, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Functional form of :class:`CrossStitchFunction` (the hand-written backward)."""
    return list(CrossStitchFunction.apply(alpha, *xs))


def init_alpha(num_tasks: int, same: float, diff: float, channels: int | None = None) -> torch.Tensor:
    """α with ``same`` (α_S) on the diagonal and ``diff`` (α_D) split equally over the other tasks.

    Each off-diagonal entry is ``diff / (T - 1)``: with two tasks exactly the paper's (α_S, α_D), and for
    any T every row sums to ``same + diff`` (1 for the paper's convex initialisations).
    Shape ``(T, T)``, or ``(T, T, C)`` when ``channels`` is given.
    """
    if num_tasks < 2:
        raise ValueError(f"a cross-stitch unit needs at least two tasks, got {num_tasks}")
    off = diff / (num_tasks - 1)
    matrix = torch.full((num_tasks, num_tasks), off)
    matrix.fill_diagonal_(same)
    if channels is None:
        return matrix
    return matrix.unsqueeze(-1).repeat(1, 1, channels)


class CrossStitch(nn.Module):
    """A cross-stitch unit between ``num_tasks`` networks (Eq. 1), α learned by autograd.

    Args:
        num_tasks: T, the number of task networks it mixes (>= 2).
        channels: C, channels of the activations at this point (checked on every call; sets α's size
            for ``granularity="channel"``).
        granularity: ``"channel"`` (α of shape ``(T, T, C)``, the paper's form for segmentation +
            normals) or ``"layer"`` (one ``(T, T)`` matrix for all channels).
        init: ``(α_S, α_D)``; the paper's best is ``(0.9, 0.1)``. See :func:`init_alpha` for T > 2.
        autograd: differentiate Eq. 1 with autograd instead of the hand-written backward (same values
            and gradients, slower).

    ``forward(xs)`` takes the T activations ``(N, C, *spatial)`` (a list, in task order) and returns the
    T mixtures.
    """

    def __init__(self, num_tasks: int, channels: int, granularity: str = "channel",
                 init: tuple[float, float] = (0.9, 0.1), autograd: bool = False) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; valid choices: {list(GRANULARITIES)}")
        if len(init) != 2:
            raise ValueError(f"init must be (alpha_same, alpha_diff), got {init!r}")
        self.num_tasks, self.channels, self.granularity = num_tasks, channels, granularity
        self.autograd = bool(autograd)
        per_channel = channels if granularity == "channel" else None
        self.alpha = nn.Parameter(init_alpha(num_tasks, float(init[0]), float(init[1]), per_channel))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_stitch_inputs(self.alpha, xs)
        if xs[0].shape[1] != self.channels:
            raise ValueError(f"cross-stitch expects {self.num_tasks} tensors of shape (N, {self.channels}, ...), "
                             f"got shape {tuple(xs[0].shape)}")
        if self.autograd:
            return mix(self.alpha, xs)
        return list(CrossStitchFunction.apply(self.alpha, *xs))

    def same_and_diff(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per task ``i``: α_S = α_ii and α_D = Σ_{j≠i} α_ij (the weight taken from the other tasks),
        each of shape ``(T, C)`` (per channel) or ``(T,)`` (per layer), detached."""
        a = self.alpha.detach()
        eye = torch.eye(self.num_tasks, dtype=torch.bool, device=a.device)
        if a.dim() == 3:
            eye = eye.unsqueeze(-1)
        same = (a * eye).sum(1)
        return same, a.sum(1) - same

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, channels={self.channels}, granularity={self.granularity!r}, "
                f"autograd={self.autograd}")
