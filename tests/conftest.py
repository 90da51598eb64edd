"""Shared fixtures: tiny tasks, data and loaders so that every test runs in seconds on a CPU."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import mtlutils as mu
from mtlutils.data import multidigits


@pytest.fixture(scope="session")
def digit_tasks() -> list[mu.Task]:
    return [mu.TASKS["left"], mu.TASKS["right"]]


@pytest.fixture(scope="session")
def tiny_digits():
    """(train, test) MultiDigits with 96 and 64 images."""
    return multidigits("train", n=96, seed=0), multidigits("test", n=64, seed=0)


@pytest.fixture()
def tiny_loaders(tiny_digits):
    train, test = tiny_digits
    return mu.data.loaders(train, test, batch_size=32, seed=0)


def small_model(arch: str, tasks, seed: int = 0):
    mu.seed_everything(seed)
    return mu.models.create(arch, tasks, width=0.25, hidden=16)


class ListLoader:
    """A re-iterable list of batch dicts with a length, standing in for a DataLoader."""

    def __init__(self, batches, on_epoch=None):
        self.batches = batches
        self.on_epoch = on_epoch
        self.epoch = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.epoch += 1
        for i, batch in enumerate(self.batches):
            yield self.on_epoch(self.epoch, i, batch) if self.on_epoch else batch


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class StopAtEpoch(mu.train.Callback):
    """Interrupts training at the first step of ``epoch`` (as a power cut would): the checkpoint then
    holds the epochs before it."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_step(self, state: mu.train.TrainState) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt(f"stopped in epoch {self.epoch}")
