"""Loaders of the real data sets and checked downloads, on tiny fixture folders written here."""
from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlutils.data.download import ChecksumError, download, file_sha256, verify
from mtlutils.data.real import (CityScapes, DatasetNotFoundError, NYUv2, UTKFace, parse_utkface_name,
                                utkface_split_indices)

H, W = 32, 32


def _save(folder: Path, i: int, arr: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{i}.npy", arr)


def _nyuv2_arrays(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.random((H, W, 3))                                   # float64 as in the archive
    label = rng.integers(0, 13, (H, W)).astype(np.float64)
    label[:4] = -1                                                  # void rows
    depth = rng.uniform(0.5, 10.0, (H, W, 1)).astype(np.float32)
    depth[:, :3] = 0                                                # invalid columns
    normal = rng.normal(size=(H, W, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[-5:] = 0                                                 # invalid rows
    return {"image": image, "label": label, "depth": depth, "normal": normal.astype(np.float32)}


def make_nyuv2(folder: Path, counts: dict[str, int] | None = None) -> Path:
    for split, n in (counts or {"train": 3, "val": 2}).items():
        for i in range(n):
            for mod, arr in _nyuv2_arrays(i).items():
                _save(folder / split / mod, i, arr)
    return folder


def make_cityscapes(folder: Path, n: int = 3, classes: tuple[int, ...] = (7, 19)) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            rng = np.random.default_rng(100 + i)
            _save(folder / split / "image", i, rng.random((H, W, 3)).astype(np.float32))
            for c in classes:
                label = rng.integers(0, c, (H, W)).astype(np.float32)
                label[0] = -1
                _save(folder / split / f"label_{c}", i, label)
            depth = rng.uniform(0.01, 0.2, (H, W)).astype(np.float32)   # inverse depth, no channel axis
            depth[5:7] = 0
            _save(folder / split / "depth", i, depth)
    return folder


UTK_GOOD = ["1_0_0_20161219140623097.jpg.chip.jpg", "25_1_2_20170116174525125.jpg.chip.jpg",
            "40_0_1_20170117134913421.jpg", "61_1_3_20170109142408075.jpg", "7_1_4_20170103200522151.jpg",
            "116_0_0_20170120134921760.jpg.chip.jpg", "33_0_3_20170119180531394.jpg", "58_1_0_2017011.jpg",
            "19_0_2_20170116165113203.jpg"]
UTK_BAD = ["39_1_20170116174525125.jpg.chip.jpg", "notes.jpg"]        # a missing field; not a face name


def make_utkface(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(UTK_GOOD + UTK_BAD):
        Image.new("RGB", (20, 24), color=(10 * k, 255 - 10 * k, 128)).save(folder / name, format="JPEG")
    return folder


# --- NYUv2 ------------------------------------------------------------------------------------------------

def test_nyuv2_samples_keep_values_and_conventions(tmp_path):
    ds = NYUv2(make_nyuv2(tmp_path / "nyuv2"), split="train")
    assert len(ds) == 3 and len(NYUv2(tmp_path / "nyuv2", split="val")) == 2
    s = ds[1]
    assert set(s) == {"image", "seg", "depth", "normal"}
    ref = _nyuv2_arrays(1)
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["seg"].shape == (H, W) and s["seg"].dtype == torch.int64
    assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
    assert s["normal"].shape == (3, H, W) and s["normal"].dtype == torch.float32
    np.testing.assert_allclose(s["image"].permute(1, 2, 0).numpy(), ref["image"], atol=1e-6)
    assert torch.equal(s["seg"], torch.from_numpy(ref["label"].astype(np.int64)))
    assert (s["seg"][:4] == -1).all() and s["seg"][4:].min() >= 0
    assert torch.equal(s["depth"][0], torch.from_numpy(ref["depth"][..., 0]))
    assert (s["depth"][0, :, :3] == 0).all()
    assert (s["normal"][:, -5:] == 0).all()
    torch.testing.assert_close(s["normal"][:, :-5].norm(dim=0), torch.ones(H - 5, W))
    assert torch.equal(ds[-1]["image"], ds[2]["image"])
    with pytest.raises(IndexError):
        ds[3]


def test_nyuv2_resize_keeps_invalid_and_unit_normals(tmp_path):
    ds = NYUv2(make_nyuv2(tmp_path / "nyuv2"), size=(16, 24))
    s = ds[0]
    assert s["image"].shape == (3, 16, 24) and s["seg"].shape == (16, 24)
    assert s["depth"].shape == (1, 16, 24) and s["normal"].shape == (3, 16, 24)
    assert s["seg"].dtype == torch.int64 and set(s["seg"].unique().tolist()) <= set(range(-1, 13))
    assert (s["seg"][:2] == -1).all()                               # 4 of 32 rows void -> 2 of 16
    d = s["depth"][0]
    valid = d != 0
    assert (~valid).any() and valid.any()
    assert d[valid].min() >= 0.5 and d[valid].max() <= 10.0       # no blending with the invalid zeros
    nvalid = s["normal"].abs().sum(0) > 0
    torch.testing.assert_close(s["normal"].norm(dim=0)[nvalid], torch.ones(int(nvalid.sum())))
    assert not nvalid[-2:].any()


def test_default_root_is_mtl_data(tmp_path, monkeypatch):
    make_nyuv2(tmp_path / "nyuv2")
    make_cityscapes(tmp_path / "cityscapes")
    make_utkface(tmp_path / "utkface")
    monkeypatch.setenv("MTL_DATA", str(tmp_path))
    assert NYUv2().root == tmp_path / "nyuv2" and len(NYUv2()) == 3
    assert CityScapes(split="val").root == tmp_path / "cityscapes"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert UTKFace(split="test").root == tmp_path / "utkface"


# --- CityScapes -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("classes", [7, 19])
def test_cityscapes_samples(tmp_path, classes):
    root = make_cityscapes(tmp_path / "cityscapes")
    ds = CityScapes(root, split="val", classes=classes)
    assert len(ds) == 3 and ds.num_classes == classes
    s = ds[2]
    assert set(s) == {"image", "seg", "depth"}
    assert s["image"].shape == (3, H, W) and s["image"].dtype == torch.float32
    assert s["seg"].shape == (H, W) and s["seg"].dtype == torch.int64
    assert s["depth"].shape == (1, H, W) and s["depth"].dtype == torch.float32
    label = np.load(root / "val" / f"label_{classes}" / "2.npy")
    assert torch.equal(s["seg"], torch.from_numpy(label.astype(np.int64)))
    assert (s["seg"][0] == -1).all() and s["seg"].max() < classes
    assert torch.equal(s["depth"][0], torch.from_numpy(np.load(root / "val" / "depth" / "2.npy")))
    assert (s["depth"][0, 5:7] == 0).all()


def test_bad_arguments(tmp_path):
    make_cityscapes(tmp_path / "cityscapes")
    with pytest.raises(ValueError, match="classes"):
        CityScapes(tmp_path / "cityscapes", classes=13)
    with pytest.raises(ValueError, match="split"):
        NYUv2(tmp_path / "nyuv2", split="test")
    with pytest.raises(ValueError, match="split"):
        UTKFace(tmp_path, split="validation")


# --- errors -----------------------------------------------------------------------------------------------

def _assert_helpful(err: DatasetNotFoundError, folder: Path) -> str:
    msg = str(err)
    assert str(folder) in msg and "MTL_DATA" in msg and "data/README.md" in msg and "book/setup.md" in msg
    assert isinstance(err, FileNotFoundError)
    return msg


def test_missing_folder_errors_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_DATA", str(tmp_path))
    for cls, folder in ((NYUv2, "nyuv2"), (CityScapes, "cityscapes"), (UTKFace, "utkface")):
        with pytest.raises(DatasetNotFoundError) as info:
            cls()
        msg = _assert_helpful(info.value, tmp_path / folder)
        assert f"{folder}/" in msg                                   # the expected tree
        assert info.value.folder == tmp_path / folder
    with pytest.raises(DatasetNotFoundError, match="nyuv2/"):
        NYUv2(tmp_path / "elsewhere")
    err = pickle.loads(pickle.dumps(info.value))
    assert isinstance(err, DatasetNotFoundError) and str(err) == str(info.value)


def test_incomplete_folders_say_what_is_wrong(tmp_path):
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 3})
    with pytest.raises(DatasetNotFoundError, match="'val'") as info:
        NYUv2(root, split="val")
    _assert_helpful(info.value, root)

    for f in (root / "train" / "depth").iterdir():
        f.unlink()
    (root / "train" / "depth").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"no depth/") as info:
        NYUv2(root)
    _assert_helpful(info.value, root)

    root = make_nyuv2(tmp_path / "nyuv2b", {"train": 3})
    (root / "train" / "normal" / "2.npy").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"different numbers.*normal/ 2") as info:
        NYUv2(root)
    _assert_helpful(info.value, root)

    root = make_nyuv2(tmp_path / "nyuv2c", {"train": 3})
    for mod in ("image", "label", "depth", "normal"):
        (root / "train" / mod / "1.npy").rename(root / "train" / mod / "7.npy")
    with pytest.raises(DatasetNotFoundError, match=r"1\.npy"):
        NYUv2(root)

    city = make_cityscapes(tmp_path / "cityscapes")
    for f in (city / "train" / "label_19").iterdir():
        f.unlink()
    (city / "train" / "label_19").rmdir()
    assert len(CityScapes(city, classes=7)) == 3
    with pytest.raises(DatasetNotFoundError, match=r"no label_19/"):
        CityScapes(city, classes=19)

    empty = tmp_path / "utkface"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no file named") as info:
        UTKFace(empty)
    _assert_helpful(info.value, empty)


def test_wrong_array_shape_is_reported(tmp_path):
    root = make_nyuv2(tmp_path / "nyuv2", {"train": 1})
    np.save(root / "train" / "image" / "0.npy", np.zeros((3, H, W)))  # channels first
    with pytest.raises(ValueError, match="channels last"):
        NYUv2(root)[0]


# --- UTKFace ----------------------------------------------------------------------------------------------

def test_utkface_name_parsing():
    assert parse_utkface_name("25_1_2_20170116174525125.jpg.chip.jpg") == (25, 1, 2)
    assert parse_utkface_name("40_0_1_20170117134913421.jpg") == (40, 0, 1)
    for bad in UTK_BAD + ["25_2_0_2017.jpg", "25_1_2_2017.png", "x_1_2_2017.jpg"]:
        assert parse_utkface_name(bad) is None


def test_utkface_samples_splits_and_warning(tmp_path):
    root = make_utkface(tmp_path / "utkface")
    with pytest.warns(UserWarning, match=r"skipped 2 of 11") as record:
        splits = {s: UTKFace(root, split=s, size=(16, 12), seed=0) for s in ("train", "val", "test")}
    assert len([w for w in record if "skipped" in str(w.message)]) == 1   # warned once, with the count
    assert splits["train"].skipped == sorted(UTK_BAD)
    names = {s: {p.name for p in ds.files} for s, ds in splits.items()}
    assert {s: len(v) for s, v in names.items()} == {"train": 6, "val": 1, "test": 2}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])
    assert set().union(*names.values()) == set(UTK_GOOD)

    ds = splits["train"]
    s = ds[0]
    assert set(s) == {"image", "age", "gender"}
    assert s["image"].shape == (3, 16, 12) and s["image"].dtype == torch.float32
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    age, gender, _ = parse_utkface_name(ds.files[0].name)
    assert s["age"].dtype == torch.float32 and s["age"].shape == () and float(s["age"]) == pytest.approx(age / 100)
    assert s["gender"].dtype == torch.int64 and int(s["gender"]) == gender
    assert UTKFace(root, split="val", size=None)[0]["image"].shape == (3, 24, 20)

    # deterministic: the same seed gives the same split; another seed another one (on these 9 files)
    again = UTKFace(root, split="train", seed=0)
    assert [p.name for p in again.files] == [p.name for p in ds.files]
    assert {p.name for p in UTKFace(root, split="train", seed=1).files} != names["train"]


def test_utkface_split_indices_cover_and_are_disjoint():
    parts = utkface_split_indices(23708, seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [16596, 3556, 3556]
    joined = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(joined), np.arange(23708))
    assert all(np.array_equal(parts[s], utkface_split_indices(23708, seed=0)[s]) for s in parts)


# --- downloads --------------------------------------------------------------------------------------------

@pytest.fixture()
def source(tmp_path) -> tuple[str, bytes, str]:
    data = bytes(range(256)) * 300
    src = tmp_path / "src" / "archive.bin"
    src.parent.mkdir()
    src.write_bytes(data)
    return src.as_uri(), data, hashlib.sha256(data).hexdigest()


def test_download_file_url_with_right_checksum(tmp_path, source):
    url, data, digest = source
    dest = tmp_path / "out" / "archive.bin"
    assert download(url, dest, digest.upper(), chunk_size=1000) == dest
    assert dest.read_bytes() == data and verify(dest, digest) and file_sha256(dest) == digest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["archive.bin"]     # no temporary file left


def test_download_wrong_checksum_leaves_nothing(tmp_path, source):
    url, _, digest = source
    dest = tmp_path / "out" / "archive.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(url, dest, wrong)
    assert info.value.expected == wrong and info.value.got == digest
    assert wrong in str(info.value) and digest in str(info.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert not verify(dest, digest)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        download(url, dest, "abc")


def test_download_skips_when_present_and_replaces_a_wrong_file(tmp_path, source):
    url, data, digest = source
    dest = tmp_path / "archive.bin"
    dest.write_bytes(data)

    def refuse(_url):
        raise AssertionError("must not download")

    assert download(url, dest, digest, opener=refuse) == dest
    dest.write_bytes(b"stale")
    calls = []

    def opener(u):
        calls.append(u)
        return io.BytesIO(data)

    download("https://example.invalid/archive.bin", dest, digest, opener=opener)
    assert calls == ["https://example.invalid/archive.bin"] and dest.read_bytes() == data
    # a failed download keeps an existing file as it was
    dest.write_bytes(b"stale")
    with pytest.raises(ChecksumError):
        download("https://example.invalid/archive.bin", dest, digest, opener=lambda u: io.BytesIO(b"other"))
    assert dest.read_bytes() == b"stale" and sorted(p.name for p in tmp_path.iterdir()) == ["archive.bin", "src"]
