"""A data set held in memory as tensors: ``images`` (N, C, H, W) and one target tensor per task."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorTasks(Dataset):
    """Base of the generated data sets: subclasses fill :attr:`images` and :attr:`targets` (task -> (N, ...)).

    A sample is ``{"image": images[i], **{task: targets[task][i]}}``.
    """

    images: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {"image": self.images[index]}
        sample.update({name: t[index] for name, t in self.targets.items()})
        return sample
