"""Streaming evaluation metrics: ``update`` per batch, ``compute`` once at the end.

Every metric is accumulated over the whole evaluation set (sums and counts), never averaged per batch,
so the result does not depend on the batch size. ``HIGHER_IS_BETTER`` tells :func:`delta_mtl` the
direction of each metric name.
"""
from __future__ import annotations

from typing import Mapping

import torch

# direction of every metric name produced in this module (used by delta_mtl)
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "mae": False, "rmse": False}


class Metric:
    """Base class: accumulate with :meth:`update`, read with :meth:`compute`, clear with :meth:`reset`."""

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError


class ClassMetrics(Metric):
    """Classification accuracy (in %) of logits ``(N, C)`` against integer labels ``(N,)``."""

    names = ("accuracy",)

    def reset(self) -> None:
        self.correct = 0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.dim() != 2 or target.shape != pred.shape[:1]:
            raise ValueError(f"ClassMetrics expects logits (N, C) and labels (N,), got "
                             f"{tuple(pred.shape)} and {tuple(target.shape)}")
        self.correct += int((pred.argmax(dim=1) == target).sum())
        self.count += int(target.numel())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise RuntimeError("ClassMetrics.compute() before any update()")
        return {"accuracy": 100.0 * self.correct / self.count}


class RegressMetrics(Metric):
    """Mean absolute error and root mean squared error of predictions ``(N,)`` or ``(N, 1)``."""

    names = ("mae", "rmse")

    def reset(self) -> None:
        self.abs_sum = 0.0
        self.sq_sum = 0.0
        self.count = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = pred.reshape(-1).double()
        target = target.reshape(-1).double()
        if pred.shape != target.shape:
            raise ValueError(f"RegressMetrics: {pred.numel()} predictions for {target.numel()} targets")
        diff = pred - target
        self.abs_sum += float(diff.abs().sum())
        self.sq_sum += float((diff * diff).sum())
        self.count += int(diff.numel())

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise RuntimeError("RegressMetrics.compute() before any update()")
        return {"mae": self.abs_sum / self.count, "rmse": (self.sq_sum / self.count) ** 0.5}


def delta_mtl(model: Mapping[str, float], baseline: Mapping[str, float],
              higher_is_better: Mapping[str, bool] | None = None) -> float:
    """Δ_MTL of Maninis et al. (2019), in %: the mean relative change over all metrics.

    ``Δ = (1/n) Σ_j (−1)^{l_j} (M_m,j − M_b,j) / M_b,j × 100``, with ``l_j = 1`` when lower is better.
    Keys are metric names such as ``"left/accuracy"``; the direction is looked up by the last part of
    the name in ``higher_is_better`` (default: :data:`HIGHER_IS_BETTER`). Positive means better.
    """
    directions = dict(HIGHER_IS_BETTER, **(higher_is_better or {}))
    if set(model) != set(baseline):
        raise ValueError(f"model and baseline must report the same metrics: "
                         f"{sorted(model)} vs {sorted(baseline)}")
    if not model:
        raise ValueError("delta_mtl needs at least one metric")
    total = 0.0
    for key, value in model.items():
        name = key.split("/")[-1]
        if name not in directions:
            raise KeyError(f"unknown direction for metric {key!r}; pass higher_is_better={{{name!r}: ...}}")
        base = baseline[key]
        if base == 0:
            raise ZeroDivisionError(f"baseline value of {key!r} is 0: relative change undefined")
        sign = 1.0 if directions[name] else -1.0
        total += sign * (value - base) / base
    return 100.0 * total / len(model)
