"""Loaders of the real data sets: NYUv2 and CityScapes (the MTAN authors' preprocessed ``.npy`` files) and
UTKFace (JPEG faces with age and gender in the file name).

Nothing here downloads anything: the files are read from ``data_root()/<name>`` (``$MTL_DATA`` when set,
else the repository's ``data/``) or from ``root=``. ``data/README.md`` fixes the layouts and says where
to get each set. A missing or incomplete folder raises :class:`DatasetNotFoundError`, whose message
names the folder, the expected layout and what is wrong.

Every sample is a dict ``{"image": (3, H, W) float32 in [0, 1], <task name>: target, ...}``, as the
generated data sets of :mod:`mtlutils.data`. Dense targets keep their conventions: ``seg`` -1 = void,
``depth`` 0 = invalid, ``normal`` all-zero = invalid.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DatasetNotFoundError", "NYUv2", "CityScapes", "UTKFace", "parse_utkface_name", "utkface_split_indices"]

README_HINT = ('See data/README.md (and the book page book/setup.md, "Real data sets") for how to get the '
               "data, its exact layout and how to check it.")

NYUV2_LAYOUT = """\
nyuv2/
├── train/{image,label,depth,normal}/0.npy … 794.npy
└── val/{image,label,depth,normal}/0.npy … 653.npy
(channels last: image H×W×3 in [0, 1], label H×W with -1 = void,
 depth H×W×1 metres with 0 = invalid, normal H×W×3 unit with all-zero = invalid)"""

CITYSCAPES_LAYOUT = """\
cityscapes/
├── train/{image,label_7,label_19,depth}/0.npy … 2974.npy
└── val/{image,label_7,label_19,depth}/0.npy … 499.npy
(channels last: image H×W×3 in [0, 1], label_* H×W with -1 = void,
 depth H×W×1 inverse depth with 0 = invalid)"""

UTKFACE_LAYOUT = """\
utkface/
└── <age>_<gender>_<race>_<date>.jpg   (23,708 files, all in one folder;
    the names of the aligned-and-cropped archive end in .jpg.chip.jpg: keep them)"""


class DatasetNotFoundError(FileNotFoundError):
    """A real data set is missing or incomplete. ``folder`` is where it was looked for."""

    def __init__(self, name: str, folder: Path, problem: str, layout: str) -> None:
        self.name, self.folder, self.problem = name, Path(folder), problem
        env = os.environ.get("MTL_DATA")
        now = f"now {env!r}" if env else "not set now"
        message = (f"{name}: {problem}\n"
                   f"Looked in: {self.folder}\n"
                   f"Expected layout (under the data root):\n{_indent(layout)}\n"
                   f"The data root is the environment variable MTL_DATA ({now}) when set, else the "
                   f"repository's data/ folder; or pass root= to the loader.\n"
                   f"{README_HINT}")
        super().__init__(message)

    def __reduce__(self):  # keep the exception picklable (DataLoader workers send it back)
        return (_rebuild_not_found, (self.args[0], self.name, str(self.folder), self.problem))


def _rebuild_not_found(message: str, name: str, folder: str, problem: str) -> DatasetNotFoundError:
    err = DatasetNotFoundError.__new__(DatasetNotFoundError)
    FileNotFoundError.__init__(err, message)
    err.name, err.folder, err.problem = name, Path(folder), problem
    return err


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _resolve_root(root: str | os.PathLike | None, folder: str) -> Path:
    """``root`` as given, else ``data_root()/folder``."""
    if root is not None:
        return Path(root).expanduser()
    from mtlutils.data import data_root

    return data_root() / folder


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    return height, width


# ---------------------------------------------------------------------------------------------------------
# NYUv2 and CityScapes: one .npy per image and modality
# ---------------------------------------------------------------------------------------------------------

_INDEX_NAME = re.compile(r"^(\d+)\.npy$")


def _scan_split(name: str, folder: Path, split: str, modalities: tuple[str, ...], layout: str) -> int:
    """Check ``folder/split/<modality>/{0..n-1}.npy`` for every modality; return ``n``."""
    def fail(problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError(name, folder, problem, layout)

    if not folder.is_dir():
        raise fail(f"the folder {folder} does not exist.")
    split_dir = folder / split
    if not split_dir.is_dir():
        present = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise fail(f"no {split!r} split: {split_dir} does not exist (sub-folders found: "
                   f"{', '.join(present) if present else 'none'}).")
    missing = [m for m in modalities if not (split_dir / m).is_dir()]
    if missing:
        present = [m for m in modalities if m not in missing]
        raise fail(f"incomplete: {split_dir} has {_folders(present) or 'none of the modality folders'} "
                   f"but no {_folders(missing)}.")
    indices: dict[str, set[int]] = {}
    for m in modalities:
        found = set()
        for entry in os.scandir(split_dir / m):
            match = _INDEX_NAME.match(entry.name)
            if match:
                found.add(int(match.group(1)))
        indices[m] = found
    counts = {m: len(v) for m, v in indices.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{m}/ {c}" for m, c in counts.items())
        raise fail(f"incomplete: the modalities of {split_dir} hold different numbers of .npy files "
                   f"({listing}).")
    n = counts[modalities[0]]
    if n == 0:
        raise fail(f"incomplete: no .npy files in {split_dir / modalities[0]}.")
    expected = set(range(n))
    for m in modalities:
        if indices[m] != expected:
            gaps = sorted(expected - indices[m])[:5]
            raise fail(f"incomplete: {split_dir / m} holds {n} files but not 0.npy … {n - 1}.npy "
                       f"(missing e.g. {', '.join(f'{i}.npy' for i in gaps)}); files must be named by "
                       f"their 0-based index, without gaps.")
    return n


def _folders(names: list[str]) -> str:
    return ", ".join(f"{m}/" for m in names)


def _resize_masked(x: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``x`` (C, H, W) that averages valid pixels only; a pixel is valid after the
    resize where the nearest source pixel was valid, else it is 0."""
    m = valid[None].to(x.dtype)  # (1, H, W), broadcasts over channels
    num = F.interpolate((x * m)[None], size=size, mode="bilinear", align_corners=False)[0]
    den = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
    keep = F.interpolate(m[None], size=size, mode="nearest-exact")[0] > 0.5
    return torch.where(keep & (den > 0), num / den.clamp_min(1e-12), torch.zeros_like(num))


class _DenseNpy(Dataset):
    """Shared reader of the MTAN preprocessed layout ``<root>/<split>/<modality>/{i}.npy``."""

    name = ""
    folder_name = ""
    layout = ""
    splits = ("train", "val")
    task_names: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike | None, split: str, folders: dict[str, str],
                 size: tuple[int, int] | None) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        self.root = _resolve_root(root, self.folder_name)
        self.split, self.size = split, _check_size(size)
        self.folders = dict(folders)  # sample key -> folder under <root>/<split>
        self.n = _scan_split(self.name, self.root, split, tuple(self.folders.values()), self.layout)

    def __len__(self) -> int:
        return self.n

    def path(self, index: int, key: str) -> Path:
        """The ``.npy`` file of sample ``index`` for the sample key ``key`` (``"image"``, ``"seg"`` ...)."""
        return self.root / self.split / self.folders[key] / f"{index}.npy"

    def _load(self, index: int, key: str, channels: int | None) -> np.ndarray:
        """Array ``(H, W)`` when ``channels`` is None, else ``(H, W, channels)`` (a missing last axis of
        size 1 is added)."""
        path = self.path(index, key)
        arr = np.load(path, allow_pickle=False)
        if channels == 1 and arr.ndim == 2:
            arr = arr[..., None]
        if channels is None and arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        want = 2 if channels is None else 3
        if arr.ndim != want or (channels is not None and arr.shape[-1] != channels):
            form = "H×W" if channels is None else f"H×W×{channels} (channels last)"
            raise ValueError(f"{path}: expected an array of shape {form}, got {arr.shape}. {README_HINT}")
        return arr

    def _image(self, index: int) -> torch.Tensor:
        """(3, H, W) float32; 8-bit arrays are scaled by 1/255, float arrays kept as stored ([0, 1])."""
        arr = self._load(index, "image", 3)
        arr = arr.astype(np.float32) / 255.0 if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _seg(self, index: int) -> torch.Tensor:
        arr = self._load(index, "seg", None)
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.where(np.isfinite(arr), np.rint(arr), -1)
        seg = torch.from_numpy(arr.astype(np.int64))
        return seg.clamp_min_(-1)  # any negative label is void

    def _depth(self, index: int) -> torch.Tensor:
        arr = np.nan_to_num(self._load(index, "depth", 1).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _normal(self, index: int) -> torch.Tensor:
        arr = np.nan_to_num(self._load(index, "normal", 3).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _finish(self, index: int, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check that the modalities agree in size, then resize to ``self.size`` if set."""
        shapes = {k: tuple(v.shape[-2:]) for k, v in sample.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"{self.name} sample {index} of {self.root / self.split}: the modalities differ "
                             f"in size: {shapes}")
        if self.size is None or shapes["image"] == self.size:
            return sample
        out = {"image": F.interpolate(sample["image"][None], size=self.size, mode="bilinear",
                                      align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)}
        if "seg" in sample:
            seg = sample["seg"][None, None].float()
            out["seg"] = F.interpolate(seg, size=self.size, mode="nearest-exact")[0, 0].long()
        if "depth" in sample:
            depth = sample["depth"]
            out["depth"] = _resize_masked(depth, depth[0] != 0, self.size)
        if "normal" in sample:
            normal = sample["normal"]
            resized = _resize_masked(normal, normal.abs().sum(0) > 0, self.size)
            out["normal"] = F.normalize(resized, dim=0)  # all-zero (invalid) stays zero
        return out

    def _index(self, index: int) -> int:
        index = int(index)
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.name} {self.split!r} with {self.n} samples")
        return index % self.n

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={self.n}, size={self.size})"


class NYUv2(_DenseNpy):
    """NYUv2 as preprocessed by the MTAN authors: 13-class segmentation, depth and surface normals.

    Reads ``<root>/{train,val}/{image,label,depth,normal}/{i}.npy`` (channels last, 288×384 in the
    archive; 795 train and 654 val images). Samples are dicts ``{"image": (3, H, W) float32 in [0, 1],
    "seg": (H, W) int64 (-1 = void), "depth": (1, H, W) float32 metres (0 = invalid), "normal": (3, H, W)
    float32 unit (all-zero = invalid)}``. Files are read lazily, one sample at a time.

    Args:
        root: the ``nyuv2`` folder; default ``data_root()/"nyuv2"``.
        split: ``"train"`` or ``"val"`` (the validation set is the test set of the MTAN tables).
        size: optional ``(H, W)`` to resize to: bilinear for the image; nearest for labels; for depth and
            normals a bilinear average of the valid pixels only, valid where the nearest source pixel is,
            normals renormalised. ``None`` keeps the stored size.
    """

    name = "NYUv2"
    folder_name = "nyuv2"
    layout = NYUV2_LAYOUT
    task_names = ("seg", "depth", "normal")
    num_classes = 13

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 size: tuple[int, int] | None = None) -> None:
        super().__init__(root, split, {"image": "image", "seg": "label", "depth": "depth", "normal": "normal"},
                         size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self._index(index)
        sample = {"image": self._image(i), "seg": self._seg(i), "depth": self._depth(i), "normal": self._normal(i)}
        return self._finish(i, sample)


class CityScapes(_DenseNpy):
    """CityScapes as preprocessed by the MTAN authors: 7- or 19-class segmentation and inverse depth.

    Reads ``<root>/{train,val}/{image,label_<classes>,depth}/{i}.npy`` (channels last, 128×256 in the
    archive; 2,975 train and 500 val images). Samples are dicts ``{"image": (3, H, W) float32 in [0, 1],
    "seg": (H, W) int64 (-1 = void), "depth": (1, H, W) float32 inverse depth as stored (0 = invalid)}``.

    Args:
        root: the ``cityscapes`` folder; default ``data_root()/"cityscapes"``.
        split: ``"train"`` or ``"val"`` (the official validation set, on which the MTAN tables report).
        classes: 7 (the MTAN tables) or 19; 2 reads ``label_2`` where the archive has it.
        size: optional ``(H, W)`` to resize to (as :class:`NYUv2`); ``None`` keeps the stored size.
    """

    name = "CityScapes"
    folder_name = "cityscapes"
    layout = CITYSCAPES_LAYOUT
    task_names = ("seg", "depth")

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", classes: int = 7,
                 size: tuple[int, int] | None = None) -> None:
        if classes not in (2, 7, 19):
            raise ValueError(f"classes must be 7 or 19 (or 2 where label_2 exists), got {classes!r}")
        self.num_classes = int(classes)
        super().__init__(root, split, {"image": "image", "seg": f"label_{classes}", "depth": "depth"}, size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self._index(index)
        return self._finish(i, {"image": self._image(i), "seg": self._seg(i), "depth": self._depth(i)})


# ---------------------------------------------------------------------------------------------------------
# UTKFace: JPEG files named age_gender_race_date.jpg
# ---------------------------------------------------------------------------------------------------------

UTKFACE_SPLIT_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
_UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)
_warned_skips: set[tuple[str, int]] = set()


def parse_utkface_name(name: str) -> tuple[int, int, int] | None:
    """``(age, gender, race)`` from a UTKFace file name ``age_gender_race_date.jpg`` (also
    ``….jpg.chip.jpg``); ``None`` when the name does not follow that pattern (e.g. a missing field)."""
    match = _UTK_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def utkface_split_indices(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, covering, sorted indices of ``n`` items for ``"train"``/``"val"``/``"test"``: a fixed
    permutation from ``seed`` cut at 70 / 15 / 15 %."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(UTKFACE_SPLIT_FRACTIONS["train"] * n))
    n_val = int(round(UTKFACE_SPLIT_FRACTIONS["val"] * n))
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


class UTKFace(Dataset):
    """UTKFace faces with age (regression, years / 100) and gender (two classes).

    Reads every ``<root>/<age>_<gender>_<race>_<date>.jpg`` (or ``.jpg.chip.jpg``). Names that do not
    parse are skipped, counted in :attr:`skipped` and reported in one warning. The parsed files, sorted by
    name, are split 70 / 15 / 15 % by a fixed permutation from ``seed``. Samples are dicts
    ``{"image": (3, H, W) float32 in [0, 1], "age": float32 scalar (years / 100), "gender": int64 scalar
    (0 male, 1 female)}``; images are read lazily with PIL, converted to RGB and resized to ``size``.

    Args:
        root: the ``utkface`` folder; default ``data_root()/"utkface"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: ``(H, W)`` of the returned images (bilinear); ``None`` keeps the stored 200×200.
        seed: seed of the split; the same seed and files give the same split on every machine.
    """

    task_names = ("age", "gender")
    splits = ("train", "val", "test")

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 size: tuple[int, int] | None = (64, 64), seed: int = 0) -> None:
        if split not in self.splits:
            raise ValueError(f"split must be one of {self.splits}, got {split!r}")
        self.root = _resolve_root(root, "utkface")
        self.split, self.size, self.seed = split, _check_size(size), int(seed)
        if not self.root.is_dir():
            raise DatasetNotFoundError("UTKFace", self.root, f"the folder {self.root} does not exist.",
                                       UTKFACE_LAYOUT)
        parsed: list[tuple[str, tuple[int, int, int]]] = []
        skipped: list[str] = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            fields = parse_utkface_name(entry.name)
            if fields is None:
                skipped.append(entry.name)
            else:
                parsed.append((entry.name, fields))
        self.skipped = skipped
        if not parsed:
            found = f" ({len(skipped)} files with other names, e.g. {skipped[0]!r})" if skipped else ""
            raise DatasetNotFoundError("UTKFace", self.root,
                                       f"incomplete: no file named <age>_<gender>_<race>_<date>.jpg in "
                                       f"{self.root}{found}.", UTKFACE_LAYOUT)
        key = (str(self.root.resolve()), len(skipped))
        if skipped and key not in _warned_skips:
            _warned_skips.add(key)
            examples = ", ".join(repr(s) for s in skipped[:3])
            warnings.warn(f"UTKFace: skipped {len(skipped)} of {len(skipped) + len(parsed)} files in "
                          f"{self.root} whose names do not parse as <age>_<gender>_<race>_<date>.jpg "
                          f"(e.g. {examples})", UserWarning, stacklevel=2)
        self.n_total = len(parsed)
        self.indices = utkface_split_indices(self.n_total, self.seed)[split]
        chosen = [parsed[i] for i in self.indices]
        self.files = [self.root / name for name, _ in chosen]
        self.ages = torch.tensor([f[0] for _, f in chosen], dtype=torch.int64)      # years
        self.genders = torch.tensor([f[1] for _, f in chosen], dtype=torch.int64)
        self.races = torch.tensor([f[2] for _, f in chosen], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, index: int) -> torch.Tensor:
        """The image of sample ``index`` as (3, H, W) float32 in [0, 1]."""
        from PIL import Image

        with Image.open(self.files[index]) as img:
            img = img.convert("RGB")
            if self.size is not None and img.size != (self.size[1], self.size[0]):
                img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for UTKFace {self.split!r} with {len(self)} samples")
        index %= len(self)
        return {"image": self.load_image(index),
                "age": (self.ages[index].float() / 100.0),
                "gender": self.genders[index].clone()}

    def __repr__(self) -> str:
        return (f"UTKFace(root={str(self.root)!r}, split={self.split!r}, n={len(self)} of {self.n_total}, "
                f"size={self.size}, seed={self.seed})")
