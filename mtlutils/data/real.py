"""Loaders of the real data sets: NYUv2 and CityScapes (the MTAN authors' preprocessed ``.npy`` files) and
UTKFace (JPEG faces with age and gender in the file name).

Nothing here downloads anything: the files are read from ``data_root()/<name>`` (``$MTL_DATA`` when set,
else the repository's ``data/``) or from ``root=``. ``data/README.md`` fixes the layouts and says where
to get each set. A missing or incomplete folder raises :class:`DatasetNotFoundError`, whose message
names the folder, the expected layout and what is wrong.

Every sample is a dict ``{"image": (3, H, W) float32 in [0, 1], <task name>: target, ...}``, as the
generated data sets of :mod:`mtlutils.data`. Dense targets keep their conventions: ``seg`` -1 = void,
``depth`` 0 = invalid, ``normal`` all-zero = invalid.

Values are checked when a sample is read, against the ranges of ``data/README.md``: images uint8 or
floats in [0, 1]; labels whole numbers in ``0 … C-1`` or exactly -1 (void; 255 or any other value is an
error, not a silent void); depth finite and >= 0; normals finite, no longer than 1 (within
:data:`NORMAL_TOLERANCE`) and unit length on the whole (median length of the valid pixels, so that the
shorter normals a resize leaves at surface edges pass); UTKFace ages in 0–120. A file that cannot be
read (truncated, a pickled object array, not a ``.npy``) or whose values are out of range raises
:class:`InvalidSampleError`, a ``ValueError`` that names the file, what was found and the valid range.
``validate()`` checks every file of a split in one pass and reports all the bad ones.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..paths import data_root

__all__ = ["DatasetNotFoundError", "InvalidSampleError", "ValidationReport", "NYUv2", "CityScapes", "UTKFace",
           "parse_utkface_name", "utkface_split_indices", "check_image", "check_labels", "check_depth",
           "check_normals", "NORMAL_TOLERANCE", "UTKFACE_AGE_RANGE"]

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


class InvalidSampleError(ValueError):
    """A file of a real data set cannot be read or holds values outside the documented range.

    ``path`` is the file (or, for a sample whose modalities disagree, the split folder)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    def __reduce__(self):  # picklable, and constructible from the message alone (DataLoader workers)
        return (type(self), (self.args[0], None if self.path is None else str(self.path)))


@dataclass
class ValidationReport:
    """Result of ``validate()``: how many samples and files were checked, and every problem found as
    ``(file, message)``. Truthy when there is no problem; ``str()`` lists them all."""

    dataset: str
    samples: int
    files: int
    problems: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    @property
    def bad_files(self) -> list[Path]:
        """Every file with a problem, once each, in the order found."""
        return list(dict.fromkeys(path for path, _ in self.problems))

    def __str__(self) -> str:
        head = (f"{self.dataset}: {self.samples} samples, {self.files} files checked, "
                f"{len(self.bad_files)} bad file{'' if len(self.bad_files) == 1 else 's'}")
        if self.ok:
            return head + "; every value is in its documented range."
        return "\n".join([head + ":"] + [f"  {message}" for _, message in self.problems])


VALUES_HINT = "data/README.md lists every modality's shape and value range."
NORMAL_TOLERANCE = 0.05       # normals: no pixel longer than 1 + tol; median length of valid pixels >= 1 - tol
IMAGE_TOLERANCE = 1e-3        # float images: [0, 1] up to rounding
UTKFACE_AGE_RANGE = (0, 120)  # years; the release holds 1 to 116


def _read_npy(path: Path) -> np.ndarray:
    """``np.load(path)`` of one array, pickles refused; any failure is an :class:`InvalidSampleError`
    naming the file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, EOFError, OSError) as exc:
        try:
            with open(path, "rb") as f:
                head = f.read(6)
        except OSError:
            head = b""
        if isinstance(exc, EOFError) or "EOF" in str(exc) or "not fully written" in str(exc):
            why = "the file is truncated or empty"
        elif head == b"\x93NUMPY" and "allow_pickle" in str(exc):
            why = "it holds an array of Python objects, which is not loaded for safety"
        elif head[:1] == b"\x80":
            why = "it holds Python objects (a pickle), which are not loaded for safety"
        else:
            why = "it is not a readable .npy file"
        raise InvalidSampleError(f"{path}: cannot read the array: {why} ({type(exc).__name__}: {exc}). Download "
                                 f"or unpack this file again. {VALUES_HINT}", path) from exc
    if not isinstance(arr, np.ndarray):
        if hasattr(arr, "close"):
            arr.close()
        raise InvalidSampleError(f"{path}: is a .npz archive, expected one array saved with np.save. "
                                 f"{VALUES_HINT}", path)
    return arr


def _numeric(arr: np.ndarray, path: Path, what: str, allowed: str) -> None:
    """Refuse bool, complex, string and object arrays."""
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidSampleError(f"{path}: {what} of dtype {arr.dtype}; expected {allowed}. {VALUES_HINT}", path)


def _finite(arr: np.ndarray, path: Path, what: str, fix: str) -> None:
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise InvalidSampleError(f"{path}: {what} holds {int(bad.sum())} NaN or infinite values; {fix}. "
                                     f"{VALUES_HINT}", path)


def _examples(values: np.ndarray, limit: int = 5) -> str:
    """Up to ``limit`` distinct values with their counts: ``13 (120 pixels), 255 (4 pixels)``."""
    uniq, counts = np.unique(values, return_counts=True)
    shown = ", ".join(f"{_num(v)} ({c} pixel{'' if c == 1 else 's'})" for v, c in zip(uniq[:limit], counts[:limit]))
    return shown + (f" and {len(uniq) - limit} other values" if len(uniq) > limit else "")


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def check_image(arr: np.ndarray, path: Path) -> None:
    """An image array ``H×W×3``: uint8 (0–255) or floats in [0, 1]."""
    allowed = "uint8 (0–255) or floats in [0, 1]"
    _numeric(arr, path, "an image", allowed)
    if arr.dtype == np.uint8:
        return
    if not np.issubdtype(arr.dtype, np.floating):
        hint = " (16-bit images: convert to 8 bits, or to floats divided by 65535)" if arr.dtype == np.uint16 else ""
        raise InvalidSampleError(f"{path}: an image of dtype {arr.dtype} with values in [{_num(arr.min())}, "
                                 f"{_num(arr.max())}]; expected {allowed}{hint}. {VALUES_HINT}", path)
    _finite(arr, path, "the image", "expected floats in [0, 1]")
    low, high = float(arr.min()), float(arr.max())
    if low < -IMAGE_TOLERANCE or high > 1 + IMAGE_TOLERANCE:
        hint = " (it looks like 0–255: divide by 255)" if high <= 255 + IMAGE_TOLERANCE and low >= 0 else ""
        raise InvalidSampleError(f"{path}: float image values in [{_num(low)}, {_num(high)}]; expected {allowed}"
                                 f"{hint}. {VALUES_HINT}", path)


def check_labels(arr: np.ndarray, path: Path, num_classes: int, finer: int | None = None) -> None:
    """A label array ``H×W``: whole numbers in ``0 … num_classes-1``, or exactly -1 for void. ``finer``: the
    class count of a finer labelling of the same set (CityScapes: 19), named in the message when the bad
    values fit it."""
    allowed = f"whole numbers in 0–{num_classes - 1} (the {num_classes} classes) or -1 (void)"
    _numeric(arr, path, "labels", allowed)
    _finite(arr, path, "the labels", "mark void pixels with -1")
    if np.issubdtype(arr.dtype, np.floating):
        fractional = arr != np.rint(arr)
        if fractional.any():
            raise InvalidSampleError(f"{path}: {int(fractional.sum())} fractional label values, e.g. "
                                     f"{_examples(arr[fractional], 3)}; expected {allowed} (labels resized with "
                                     f"interpolation? use nearest neighbour). {VALUES_HINT}", path)
    bad = ~((arr == -1) | ((arr >= 0) & (arr < num_classes)))
    if not bad.any():
        return
    values = arr[bad]
    hints = []
    if (values == 255).any():
        hints.append("255 marks void in many label formats, but here void is -1: set label[label == 255] = -1")
    top, bottom = float(values.max()), float(values.min())
    if finer is not None and bottom >= 0 and top < finer:
        hints.append(f"values up to {_num(top)} fit the {finer}-class labels: is this a label_{finer} file in "
                     f"label_{num_classes}/?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise InvalidSampleError(f"{path}: label values outside the valid range: {_examples(values)}; expected "
                             f"{allowed}{hint}. {VALUES_HINT}", path)


def check_depth(arr: np.ndarray, path: Path, what: str = "depth") -> None:
    """A depth array: finite floats >= 0 (0 = invalid)."""
    allowed = f"finite floats >= 0 ({what}, 0 = invalid)"
    _numeric(arr, path, what, allowed)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidSampleError(f"{path}: {what} of dtype {arr.dtype}; expected {allowed} (integer depth maps "
                                 f"are usually scaled, e.g. millimetres: convert to the documented unit). "
                                 f"{VALUES_HINT}", path)
    _finite(arr, path, what, "mark invalid pixels with 0")
    negative = arr < 0
    if negative.any():
        raise InvalidSampleError(f"{path}: {int(negative.sum())} negative {what} values (smallest "
                                 f"{_num(arr.min())}); expected {allowed}. {VALUES_HINT}", path)


def check_normals(arr: np.ndarray, path: Path) -> None:
    """A normal map ``H×W×3``: finite floats, each pixel all-zero (invalid) or of unit length.

    No pixel may be longer than ``1 + NORMAL_TOLERANCE`` and the median length of the valid pixels must be
    at least ``1 - NORMAL_TOLERANCE``; single shorter normals pass (a resize averages unit normals at
    surface edges into shorter ones)."""
    allowed = "floats: unit vectors, or all three components 0 (invalid)"
    _numeric(arr, path, "normals", allowed)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidSampleError(f"{path}: normals of dtype {arr.dtype}; expected {allowed} (normals stored as "
                                 f"8-bit colours: n = value / 127.5 - 1). {VALUES_HINT}", path)
    _finite(arr, path, "the normals", "mark invalid pixels with (0, 0, 0)")
    length = np.sqrt(np.square(arr.astype(np.float64)).sum(axis=-1))
    too_long = length > 1 + NORMAL_TOLERANCE
    if too_long.any():
        hint = (" (all components >= 0: colour-encoded normals? n = 2 * value - 1 for [0, 1], value / 127.5 - 1 "
                "for 0–255)" if float(arr.min()) >= 0 else "")
        raise InvalidSampleError(f"{path}: {int(too_long.sum())} normals longer than 1 (longest "
                                 f"{float(length.max()):.4g}, tolerance {NORMAL_TOLERANCE}); expected {allowed}"
                                 f"{hint}. {VALUES_HINT}", path)
    valid = length > 0
    if valid.any():
        median = float(np.median(length[valid]))
        if median < 1 - NORMAL_TOLERANCE:
            raise InvalidSampleError(f"{path}: the normals are not unit vectors: median length {median:.4g} over "
                                     f"{int(valid.sum())} valid pixels (tolerance {NORMAL_TOLERANCE}); expected "
                                     f"{allowed}; normalise them (n / |n|). {VALUES_HINT}", path)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _resolve_root(root: str | os.PathLike | None, folder: str) -> Path:
    """``root`` as given, else ``data_root()/folder``."""
    if root is not None:
        return Path(root).expanduser()
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

    # sample key -> channels of the stored array (None: H×W)
    _CHANNELS: dict[str, int | None] = {"image": 3, "seg": None, "depth": 1, "normal": 3}
    depth_name = "depth"
    num_classes = 0
    finer_classes: int | None = None  # a finer labelling of the same images (for the messages)

    def _load(self, index: int, key: str) -> np.ndarray:
        """The checked array of sample ``index`` for ``key``: ``(H, W)`` for labels, else ``(H, W, C)`` (a
        missing last axis of size 1 is added); :class:`InvalidSampleError` names the file otherwise."""
        path = self.path(index, key)
        channels = self._CHANNELS[key]
        arr = _read_npy(path)
        if channels == 1 and arr.ndim == 2:
            arr = arr[..., None]
        if channels is None and arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        want = 2 if channels is None else 3
        if arr.ndim != want or (channels is not None and arr.shape[-1] != channels) or 0 in arr.shape[:2]:
            form = "H×W" if channels is None else f"H×W×{channels} (channels last)"
            raise InvalidSampleError(f"{path}: expected an array of shape {form} with H, W >= 1, got {arr.shape}. "
                                     f"{README_HINT}", path)
        if key == "image":
            check_image(arr, path)
        elif key == "seg":
            check_labels(arr, path, self.num_classes, self.finer_classes)
        elif key == "depth":
            check_depth(arr, path, self.depth_name)
        elif key == "normal":
            check_normals(arr, path)
        return arr

    def _image(self, index: int) -> torch.Tensor:
        """(3, H, W) float32; uint8 arrays are scaled by 1/255, float arrays kept as stored ([0, 1])."""
        arr = self._load(index, "image")
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _seg(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self._load(index, "seg").astype(np.int64))  # checked: whole, -1 or a class

    def _depth(self, index: int) -> torch.Tensor:
        arr = self._load(index, "depth").astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _normal(self, index: int) -> torch.Tensor:
        arr = self._load(index, "normal").astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def validate(self, verbose: bool = True) -> ValidationReport:
        """Read and check every file of this split once; return (and with ``verbose`` print) a
        :class:`ValidationReport` that lists every unreadable or out-of-range file, and every sample whose
        modalities differ in size. Nothing is raised for bad data."""
        report = ValidationReport(f"{self.name} {self.split!r} ({self.root / self.split})", self.n,
                                  self.n * len(self.folders))
        for index in range(self.n):
            shapes = {}
            for key in self.folders:
                try:
                    shapes[key] = self._load(index, key).shape[:2]
                except InvalidSampleError as err:
                    report.problems.append((err.path or self.path(index, key), str(err)))
            if len(set(shapes.values())) > 1:
                folder = self.root / self.split
                report.problems.append((folder, f"{folder}: sample {index} ({index}.npy): the modalities differ "
                                                f"in size: {shapes}"))
        if verbose:
            print(report)
        return report

    def _finish(self, index: int, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Check that the modalities agree in size, then resize to ``self.size`` if set."""
        shapes = {k: tuple(v.shape[-2:]) for k, v in sample.items()}
        if len(set(shapes.values())) > 1:
            raise InvalidSampleError(f"{self.name} sample {index} of {self.root / self.split}: the modalities "
                                     f"differ in size: {shapes}", self.root / self.split)
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
    float32 unit (all-zero = invalid)}``. Files are read lazily, one sample at a time, and their values
    checked (:class:`InvalidSampleError` names a bad file); :meth:`validate` checks a whole split.

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
    Values are checked when read, as for :class:`NYUv2` (labels: 0 … classes-1 or -1); :meth:`validate`
    checks a whole split.

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
    depth_name = "inverse depth"

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", classes: int = 7,
                 size: tuple[int, int] | None = None) -> None:
        if classes not in (2, 7, 19):
            raise ValueError(f"classes must be 7 or 19 (or 2 where label_2 exists), got {classes!r}")
        self.num_classes = int(classes)
        self.finer_classes = 19 if classes < 19 else None
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
    (0 male, 1 female)}``; images are read lazily with PIL, converted to RGB and resized to ``size``. A
    sample whose age is outside :data:`UTKFACE_AGE_RANGE` or whose image cannot be decoded raises
    :class:`InvalidSampleError` naming the file; :meth:`validate` checks the whole split.

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

        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if self.size is not None and img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated file ...
            raise InvalidSampleError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); download "
                                     f"or unpack this file again.", path) from exc
        if 0 in arr.shape[:2]:
            raise InvalidSampleError(f"{path}: the image is empty ({arr.shape[1]}×{arr.shape[0]} pixels).", path)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def check_age(self, index: int) -> None:
        """:class:`InvalidSampleError` naming the file if the age in its name is outside
        :data:`UTKFACE_AGE_RANGE`."""
        age = int(self.ages[index])
        low, high = UTKFACE_AGE_RANGE
        if not low <= age <= high:
            raise InvalidSampleError(f"{self.files[index]}: age {age} years in the file name; expected {low}–{high} "
                                     f"(the release holds 1–116). Rename or remove the file.", self.files[index])

    def validate(self, verbose: bool = True) -> ValidationReport:
        """Check the age and decode the image of every sample of this split once; return (and with
        ``verbose`` print) a :class:`ValidationReport` listing every bad file. Nothing is raised."""
        report = ValidationReport(f"UTKFace {self.split!r} ({self.root})", len(self), len(self))
        for index in range(len(self)):
            for check in (self.check_age, self.load_image):
                try:
                    check(index)
                except InvalidSampleError as err:
                    report.problems.append((self.files[index], str(err)))
        if verbose:
            print(report)
        return report

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for UTKFace {self.split!r} with {len(self)} samples")
        index %= len(self)
        self.check_age(index)
        return {"image": self.load_image(index),
                "age": (self.ages[index].float() / 100.0),
                "gender": self.genders[index].clone()}

    def __repr__(self) -> str:
        return (f"UTKFace(root={str(self.root)!r}, split={self.split!r}, n={len(self)} of {self.n_total}, "
                f"size={self.size}, seed={self.seed})")
