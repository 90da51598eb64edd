"""Data sets. Every data set yields dict samples ``{"image": tensor, <task name>: target, ...}``.

The embedded default data is made here (nothing is downloaded): :func:`multidigits` (real handwriting
from scikit-learn's digits, image-level tasks) and :func:`make_scenes` (procedural 3D rooms with exact
segmentation, depth and surface normals). The real data sets (:class:`NYUv2`, :class:`CityScapes`,
:class:`UTKFace`) are read from files the user downloads (data/README.md); :func:`download` fetches a
file and verifies its SHA-256.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from ..paths import data_root
from .download import ChecksumError, download, file_sha256, verify
from .multidigits import MultiDigits, multidigits, source_pools
from .real import CityScapes, DatasetNotFoundError, InvalidSampleError, NYUv2, UTKFace, ValidationReport
from .scenes import Scenes, make_scenes

__all__ = ["MultiDigits", "multidigits", "source_pools", "Scenes", "make_scenes", "NYUv2", "CityScapes",
           "UTKFace", "DatasetNotFoundError", "InvalidSampleError", "ValidationReport", "download", "verify", "file_sha256", "ChecksumError", "loaders",
           "data_root"]


def loaders(train: Dataset, test: Dataset | None = None, batch_size: int = 64, seed: int = 0,
            num_workers: int = 0) -> tuple[DataLoader, DataLoader | None]:
    """A shuffling training loader (own seeded generator) and an ordered test loader."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                              num_workers=num_workers, drop_last=False)
    test_loader = None
    if test is not None:
        test_loader = DataLoader(test, batch_size=max(batch_size, 256), shuffle=False, num_workers=num_workers)
    return train_loader, test_loader
