"""MultiDigits: two real handwritten digits per image, the MultiMNIST recipe on scikit-learn's digits.

The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` (UCI optical recognition set; they ship inside
scikit-learn, so nothing is downloaded) are split once, by a fixed permutation, into a training pool
(70%) and a test pool (30%): the train and test images are composed from *disjoint* source digits.
Each image places one upscaled digit at the left and one at the right of a canvas, with random shifts,
so that they overlap; pixels take the maximum of the two. Tasks: ``left`` and ``right`` (10 classes each);
on request (``targets=``) also ``sum``, the sum of the two digits divided by 18 (a regression target in
[0, 1], computed from the same labels: asking for it changes no image and no other target).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from .tensors import TensorTasks

TARGETS = ("left", "right", "sum")
SUM_SCALE = 18.0  # the sum target is (left + right) / 18, in [0, 1]
POOL_SEED = 20190601  # fixes the train/test split of the source digits; never changes
TRAIN_FRACTION = 0.7


@lru_cache(maxsize=4)
def _source_digits(digit_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits upscaled to ``digit_size`` squared, values in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = torch.nn.functional.interpolate(images, size=(digit_size, digit_size), mode="bilinear",
                                          align_corners=False).squeeze(1).clamp_(0, 1)
    return big.numpy(), bunch.target.astype(np.int64)


def source_pools() -> dict[str, np.ndarray]:
    """Indices of the source digits reserved for each split (disjoint, fixed)."""
    n = 1797
    order = np.random.default_rng(POOL_SEED).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return {"train": np.sort(order[:cut]), "test": np.sort(order[cut:])}


class MultiDigits(TensorTasks):
    """Two-digit images with the labels of the left and the right digit.

    Samples are dicts ``{"image": (1, H, W) float32 in [0, 1], "left": int64, "right": int64}``.

    Args:
        split: ``"train"`` or ``"test"`` (built from disjoint source digits).
        n: number of composed images.
        seed: seed of the composition (which digits, where); same seed -> identical arrays.
        size: canvas ``(H, W)``.
        digit_size: side of each upscaled digit; must fit the canvas height.
        noise: standard deviation of Gaussian pixel noise (clipped to [0, 1]).
        targets: the targets of each sample, from :data:`TARGETS` (default the two digit classes).
    """

    task_names = ("left", "right")

    def __init__(self, split: str = "train", n: int = 6000, seed: int = 0, size: tuple[int, int] = (20, 28),
                 digit_size: int = 14, noise: float = 0.0, targets: Sequence[str] = ("left", "right")) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise ValueError(f"unknown targets {unknown or list(targets)}; valid choices: {list(TARGETS)}")
        height, width = size
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if digit_size > height or 2 * digit_size < width // 2 or digit_size > width:
            raise ValueError(f"digit_size={digit_size} does not fit a canvas of {size}: need "
                             f"digit_size <= H and width/4 <= digit_size <= W")
        self.split, self.n, self.seed, self.size = split, n, seed, (height, width)
        digits, labels = _source_digits(digit_size)
        pool = source_pools()[split]
        # split-specific stream so that train and test with the same seed differ
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        left_idx = rng.choice(pool, size=n)
        right_idx = rng.choice(pool, size=n)
        slack = width - digit_size                       # horizontal room for a digit
        max_shift = max(1, slack // 4)                   # left digit starts in [0, max_shift]
        left_x = rng.integers(0, max_shift + 1, size=n)
        right_x = slack - rng.integers(0, max_shift + 1, size=n)
        left_y = rng.integers(0, height - digit_size + 1, size=n)
        right_y = rng.integers(0, height - digit_size + 1, size=n)
        canvas = np.zeros((n, height, width), dtype=np.float32)
        left_layer = np.zeros_like(canvas)
        rows = np.arange(n)[:, None, None]
        dy = np.arange(digit_size)[None, :, None]
        dx = np.arange(digit_size)[None, None, :]
        left_layer[rows, left_y[:, None, None] + dy, left_x[:, None, None] + dx] = digits[left_idx]
        canvas[rows, right_y[:, None, None] + dy, right_x[:, None, None] + dx] = digits[right_idx]
        np.maximum(canvas, left_layer, out=canvas)
        if noise > 0:
            canvas += rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
            np.clip(canvas, 0.0, 1.0, out=canvas)
        self.images = torch.from_numpy(canvas).unsqueeze(1)
        left, right = torch.from_numpy(labels[left_idx]), torch.from_numpy(labels[right_idx])
        available = {"left": left, "right": right, "sum": (left + right).float() / SUM_SCALE}
        self.targets = {name: available[name] for name in targets}
        self.task_names = tuple(targets)
        self.sources = {"left": left_idx, "right": right_idx}  # indices into sklearn's digits


def multidigits(split: str = "train", n: int = 6000, seed: int = 0, **kwargs) -> MultiDigits:
    """Build the MultiDigits split (see :class:`MultiDigits` for the arguments)."""
    return MultiDigits(split=split, n=n, seed=seed, **kwargs)
