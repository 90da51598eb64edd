"""Timing helpers shared by the benchmarks (imported as a sibling module: run the scripts directly)."""
from __future__ import annotations

from typing import Sequence

import torch

from mtlutils.timing import seconds, sync

__all__ = ["sync", "train_step_seconds"]


def train_step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       batch: dict[str, torch.Tensor], tasks: Sequence, device: torch.device) -> float:
    """Seconds of one training step (forward, summed task losses, backward, optimiser step)."""
    def step() -> None:
        out = model(batch["image"])
        loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds(step, device)
