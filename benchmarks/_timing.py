"""Timing helpers shared by the benchmarks (imported as a sibling module: run the scripts directly)."""
from __future__ import annotations

import time
from typing import Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       batch: dict[str, torch.Tensor], tasks: Sequence, device: torch.device) -> float:
    """Seconds of one training step (forward, summed task losses, backward, optimiser step)."""
    sync(device)
    start = time.perf_counter()
    out = model(batch["image"])
    loss = sum(t.loss(out[t.name], batch[t.name]) for t in tasks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(device)
    return time.perf_counter() - start
