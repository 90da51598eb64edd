"""Hostile real-data files: out-of-range values, wrong dtypes, truncated or pickled arrays, bad UTKFace names.

Every fault must stop with an :class:`InvalidSampleError` (a ``ValueError``) that names the file and the
valid range, at the moment the sample is read (not as an IndexError deep in training), and ``validate()``
must list every bad file of a split in one pass without raising.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mtlutils.data import InvalidSampleError, ValidationReport
from mtlutils.data.real import NORMAL_TOLERANCE, CityScapes, NYUv2, UTKFace

from test_real_data import H, W, make_cityscapes, make_nyuv2, make_utkface


def _unit_normals(seed: int = 0) -> np.ndarray:
    n = np.random.default_rng(seed).normal(size=(H, W, 3))
    return (n / np.linalg.norm(n, axis=-1, keepdims=True)).astype(np.float32)


def _labels(value, dtype=np.float64) -> np.ndarray:
    label = np.random.default_rng(0).integers(0, 13, (H, W)).astype(dtype)
    label[5, 5:9] = value
    return label


# folder, array written to <split>/<folder>/0.npy, words the message must hold (besides the path)
NYU_FAULTS = {
    "label 13 of 13 classes": ("label", _labels(13), ["13 (4 pixels)", "0–12", "-1 (void)"]),
    "uint8 255 as void": ("label", _labels(255, np.uint8), ["255 (4 pixels)", "here void is -1"]),
    "label -2": ("label", _labels(-2), ["-2 (4 pixels)", "-1 (void)"]),
    "fractional labels": ("label", _labels(2.5), ["fractional", "2.5", "nearest"]),
    "NaN label": ("label", _labels(np.nan), ["NaN", "-1"]),
    "bool labels": ("label", np.ones((H, W), dtype=bool), ["dtype bool", "0–12"]),
    "float image in 0-255": ("image", np.random.default_rng(0).random((H, W, 3)) * 255, ["divide by 255", "[0, 1]"]),
    "uint16 image": ("image", np.full((H, W, 3), 4000, dtype=np.uint16), ["uint16", "uint8 (0–255)"]),
    "NaN in image": ("image", np.where(np.eye(H, W)[..., None] > 0, np.nan, 0.5) * np.ones((H, W, 3)),
                     ["NaN or infinite", "[0, 1]"]),
    "negative image": ("image", np.full((H, W, 3), -0.5), ["[-0.5, -0.5]", "[0, 1]"]),
    "string image": ("image", np.full((H, W, 3), "x"), ["dtype <U1", "uint8"]),
    "negative depth": ("depth", np.full((H, W, 1), -1.0, dtype=np.float32), ["negative depth", ">= 0"]),
    "NaN depth": ("depth", np.full((H, W, 1), np.nan, dtype=np.float32), ["NaN", "mark invalid pixels with 0"]),
    "integer depth (mm)": ("depth", np.full((H, W, 1), 2500, dtype=np.uint16), ["dtype uint16", "millimetres"]),
    "normals twice as long": ("normal", _unit_normals() * 2, ["longer than 1", "tolerance"]),
    "normals half as long": ("normal", _unit_normals() * 0.5, ["median length 0.5", "normalise"]),
    "colour-encoded normals": ("normal", (_unit_normals() + 1) / 2, ["colour-encoded", "2 * value - 1"]),
    "inf normals": ("normal", np.where(np.eye(H, W)[..., None] > 0, np.inf, 0) + _unit_normals(), ["NaN or infinite"]),
    "uint8 normals": ("normal", np.full((H, W, 3), 128, dtype=np.uint8), ["dtype uint8", "127.5"]),
    "channels first": ("normal", np.zeros((3, H, W), dtype=np.float32), ["H×W×3 (channels last)"]),
    "empty image": ("image", np.zeros((0, W, 3)), ["H, W >= 1"]),
}


@pytest.mark.parametrize("fault", sorted(NYU_FAULTS))
def test_nyuv2_bad_values_name_the_file_and_the_range(tmp_path, fault):
    folder, arr, words = NYU_FAULTS[fault]
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 2})
    bad = root / "train" / folder / "0.npy"
    np.save(bad, arr)
    ds = NYUv2(root)
    assert ds[1]["seg"].shape == (H, W)                                 # other samples still load
    with pytest.raises(InvalidSampleError) as info:
        ds[0]
    message = str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == bad
    assert message.startswith(str(bad)) and "data/README.md" in message
    for word in words:
        assert word in message, (word, message)
    with pytest.raises(InvalidSampleError, match=str(bad)):
        NYUv2(root, size=(16, 16))[0]                                   # checked before any resize


def test_documented_conventions_and_resized_normals_pass(tmp_path):
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 1})
    np.save(root / "train" / "image" / "0.npy", np.full((H, W, 3), 255, dtype=np.uint8))
    label = _labels(-1, np.int16)                                       # -1 = void, any integer dtype
    np.save(root / "train" / "label" / "0.npy", label)
    normals = _unit_normals()
    normals[:, W // 2] = (normals[:, W // 2 - 1] + normals[:, W // 2 + 1]) / 2   # averaged at an edge: shorter
    normals[-3:] = 0                                                    # invalid
    normals[0] *= 1 + NORMAL_TOLERANCE / 2                              # rounding
    np.save(root / "train" / "normal" / "0.npy", normals.astype(np.float16))
    depth = np.zeros((H, W), dtype=np.float64)                          # all invalid, no channel axis
    np.save(root / "train" / "depth" / "0.npy", depth)
    s = NYUv2(root)[0]
    assert float(s["image"].max()) == 1.0 and int(s["seg"].min()) == -1 and s["seg"].dtype == torch.int64
    assert torch.equal(s["seg"], torch.from_numpy(label.astype(np.int64)))
    assert (s["depth"] == 0).all() and (s["normal"][:, -3:] == 0).all()


def test_cityscapes_7_class_folder_holding_19_class_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    bad = root / "val" / "label_7" / "1.npy"
    np.save(bad, np.load(root / "val" / "label_19" / "1.npy"))
    with pytest.raises(InvalidSampleError, match=r"label values outside the valid range") as info:
        CityScapes(root, split="val", classes=7)[1]
    message = str(info.value)
    assert str(bad) in message and "0–6 (the 7 classes) or -1 (void)" in message
    assert "is this a label_19 file in label_7/?" in message
    assert len(CityScapes(root, split="val", classes=19)[1]) == 3        # the 19-class files are fine
    with pytest.raises(InvalidSampleError, match="inverse depth"):
        np.save(root / "val" / "depth" / "0.npy", -np.ones((H, W), dtype=np.float32))
        CityScapes(root, split="val")[0]


# --- unreadable files -------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


UNREADABLE = {
    "truncated": (_truncate, "truncated or empty"),
    "header only": (lambda p: p.write_bytes(p.read_bytes()[:60]), "truncated or empty"),
    "empty": (lambda p: p.write_bytes(b""), "truncated or empty"),
    "object array": (lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
                     "Python objects"),
    "pickle": (lambda p: p.write_bytes(pickle.dumps(np.zeros((H, W)))), "Python objects"),
    "text": (lambda p: p.write_text("label,0\n"), "not a readable .npy file"),
    "npz archive": (lambda p: np.savez(open(p, "wb"), label=np.zeros((H, W))), ".npz archive"),
}


@pytest.mark.parametrize("fault", sorted(UNREADABLE))
def test_unreadable_npy_files_name_the_path(tmp_path, fault):
    corrupt, words = UNREADABLE[fault]
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 2})
    bad = root / "train" / "label" / "1.npy"
    corrupt(bad)
    ds = NYUv2(root)
    with pytest.raises(InvalidSampleError) as info:
        ds[1]
    assert info.value.path == bad and str(bad) in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ValueError)
    assert ds[0]["seg"].shape == (H, W)


def test_error_survives_pickling_and_dataloader_workers(tmp_path):
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 2})
    bad = root / "train" / "label" / "1.npy"
    np.save(bad, _labels(13))
    err = InvalidSampleError("x", bad)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, InvalidSampleError) and again.path == bad and str(again) == "x"
    for workers in (0, 1):
        loader = DataLoader(NYUv2(root), batch_size=2, num_workers=workers)
        with pytest.raises(InvalidSampleError, match=str(bad)):         # not an IndexError inside the loss
            next(iter(loader))


# --- validate(): one pass over a split, every bad file listed --------------------------------------------

def test_validate_lists_every_bad_file_and_raises_nothing(tmp_path, capsys):
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 5, "val": 2})
    good = NYUv2(root, split="val").validate()
    assert isinstance(good, ValidationReport) and good.ok and bool(good)
    assert "2 samples, 8 files checked, 0 bad files; every value is in its documented range" in capsys.readouterr().out
    train = root / "train"
    np.save(train / "label" / "0.npy", _labels(13))
    np.save(train / "image" / "2.npy", np.random.default_rng(0).random((H, W, 3)) * 255)
    _truncate(train / "depth" / "2.npy")
    np.save(train / "normal" / "3.npy", _unit_normals() * 3)
    np.save(train / "depth" / "4.npy", np.ones((H + 1, W, 1), dtype=np.float32))   # sizes disagree
    report = NYUv2(root).validate(verbose=False)
    assert not report and capsys.readouterr().out == ""
    assert report.bad_files == [train / "label" / "0.npy", train / "image" / "2.npy", train / "depth" / "2.npy",
                                train / "normal" / "3.npy", train]
    text = str(report)
    assert text.startswith(f"NYUv2 'train' ({train}): 5 samples, 20 files checked, 5 bad files:")
    assert "0–12" in text and "divide by 255" in text and "truncated" in text and "longer than 1" in text
    assert "sample 4 (4.npy): the modalities differ in size" in text


def test_cityscapes_validate(tmp_path):
    root = make_cityscapes(tmp_path / "cityscapes")
    assert CityScapes(root, split="train", classes=19).validate(verbose=False).ok
    np.save(root / "train" / "label_7" / "2.npy", np.full((H, W), 7.0))
    report = CityScapes(root, split="train", classes=7).validate(verbose=False)
    assert report.bad_files == [root / "train" / "label_7" / "2.npy"] and "0–6" in str(report)


# --- UTKFace ----------------------------------------------------------------------------------------------

def test_utkface_age_out_of_range_and_broken_images(tmp_path):
    root = make_utkface(tmp_path / "utkface")
    Image.new("RGB", (20, 24)).save(root / "999_0_0_20170109150557335.jpg", format="JPEG")
    Image.new("RGB", (20, 24)).save(root / "121_1_0_20170109150557336.jpg", format="JPEG")
    Image.new("RGB", (200, 200), color=(9, 9, 9)).save(root / "30_1_0_20170109150557337.jpg", format="JPEG")
    _truncate(root / "30_1_0_20170109150557337.jpg")
    (root / "31_1_0_20170109150557338.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning):
        splits = [UTKFace(root, split=s, seed=0) for s in ("train", "val", "test")]
    bad_names = {"999_0_0_20170109150557335.jpg", "121_1_0_20170109150557336.jpg",
                 "30_1_0_20170109150557337.jpg", "31_1_0_20170109150557338.jpg"}
    found = []
    for ds in splits:
        report = ds.validate(verbose=False)
        found += [p.name for p in report.bad_files]
        for index, path in enumerate(ds.files):
            if path.name in bad_names:
                with pytest.raises(InvalidSampleError, match=str(path)) as info:
                    ds[index]
                assert info.value.path == path
                if path.name[0] in "19":
                    assert "expected 0–120" in str(info.value)
                else:
                    assert "cannot decode the image" in str(info.value)
            else:
                assert ds[index]["image"].shape == (3, 64, 64)
    assert sorted(found) == sorted(bad_names)
