"""Gumbel-Softmax: differentiable samples of a categorical distribution (Jang et al. 2017; Maddison et
al. 2017), the relaxation Stochastic Filter Groups use to sample kernel groupings.

* **Gumbel-max trick**: with ``g_i = -log(-log u_i)``, ``u_i ~ U(0, 1)`` i.i.d.,
  ``argmax_i (log p_i + g_i)`` is distributed as ``Cat(p)``.
* **Relaxation** with temperature ``τ > 0``: ``y = softmax((log p + g) / τ)``, a point of the simplex that
  tends to the one-hot Gumbel-max sample as ``τ -> 0`` and to uniform as ``τ -> ∞``.
* **Straight-through** (``hard=True``): the forward value is the one-hot ``argmax`` sample, the gradient
  that of the relaxed ``y``: ``y_hard - y.detach() + y``.

Guards against NaN: ``τ`` must be a finite positive number, the logits finite, and the uniforms are
clamped to ``[tiny, 1 - eps]`` so that neither logarithm sees 0. Where ``(logits + g) / τ`` would
overflow (float32 logits ~1e37 at ``τ = 0.01``, float16 logits ~1e4 at ``τ = 0.05``: decided from the
largest ``|logit|``, ``τ`` and the noise's bound) the maximum along ``dim`` is subtracted before the division
(softmax is shift-invariant); elsewhere the plain division is kept, so ordinary inputs give bit-for-bit
the same samples as before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sample_gumbel", "gumbel_softmax"]


def sample_gumbel(shape: torch.Size | tuple[int, ...], *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise ``g = -log(-log u)``, ``u ~ U(0, 1)`` clamped away from 0 and 1."""
    u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    info = torch.finfo(dtype)
    u = u.clamp(min=info.tiny, max=1.0 - info.eps)
    return -torch.log(-torch.log(u))


def _check(logits: torch.Tensor, tau: float) -> float:
    """Validate the arguments; return the largest ``|logit|`` (one device sync for both)."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {type(logits).__name__}"
                        f"{'' if not isinstance(logits, torch.Tensor) else ' of dtype ' + str(logits.dtype)}")
    if isinstance(tau, torch.Tensor):
        tau = float(tau)
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"the temperature tau must be a finite number > 0, got {tau!r}")
    largest = float(logits.detach().abs().amax()) if logits.numel() else 0.0  # NaN if any logit is NaN
    if not math.isfinite(largest):
        raise ValueError("logits must be finite (got NaN or inf); parameterise the probabilities with a "
                         "softmax and pass log p = log_softmax(logits), which is always finite")
    return largest


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A Gumbel-Softmax sample of ``Cat(softmax(logits))`` along ``dim`` (the same distribution as
    ``torch.nn.functional.gumbel_softmax``).

    Args:
        logits: unnormalised log-probabilities (``log p`` up to a constant), any shape; finite.
        tau: temperature ``τ > 0`` of the relaxation.
        hard: straight-through: return the one-hot sample, with the gradient of the relaxed one.
        dim: the category dimension.
        generator: optional random generator (for reproducible samples).

    Returns:
        a tensor of the shape of ``logits`` whose slices along ``dim`` lie on the simplex (one-hot with
        ``hard=True``).
    """
    largest = _check(logits, tau)
    g = sample_gumbel(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    info = torch.finfo(logits.dtype)
    noise = 1.0 - math.log(info.eps)  # |g| <= -log(eps) + a little, from the clamp of the uniforms
    if (largest + noise) / float(tau) < info.max / 2:  # (logits + g) / tau cannot overflow: the plain form
        y = F.softmax((logits + g) / float(tau), dim=dim)
    else:  # it could: shift by the (constant) maxima first, softmax does not change
        z = (logits - logits.detach().amax(dim=dim, keepdim=True)) + g
        y = F.softmax((z - z.detach().amax(dim=dim, keepdim=True)) / float(tau), dim=dim)  # <= 0, max exactly 0
    if not hard:
        return y
    y_hard = torch.zeros_like(y).scatter_(dim, y.argmax(dim=dim, keepdim=True), 1.0)
    return y_hard - y.detach() + y
