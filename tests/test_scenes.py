"""Procedural scenes: shapes, determinism, class granularity, masking, geometry of depth and normals, cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlutils.data import scenes as S
from mtlutils.data.scenes import CLASS_NAMES, OBJECT_ID0, class_mapping, make_scenes

SIZE = (40, 56)


@pytest.fixture(autouse=True)
def _data_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write caches into the repository."""
    monkeypatch.setenv("MTL_DATA", str(tmp_path))


@pytest.fixture(scope="module")
def fine() -> S.Scenes:
    return make_scenes(8, size=SIZE, classes="fine", seed=3, cache=False)


def _equal(a: S.Scenes, b: S.Scenes) -> bool:
    return torch.equal(a.images, b.images) and all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)


def _backproject(ds: S.Scenes) -> torch.Tensor:
    """3D points (N, 3, H, W) in the camera frame from the depth maps and the intrinsics."""
    fx, fy, cx, cy = ds.intrinsics
    z = ds.targets["depth"][:, 0]
    _, h, w = z.shape
    j = torch.arange(w, dtype=torch.float32)
    i = torch.arange(h, dtype=torch.float32)[:, None]
    return torch.stack([(j - cx) / fx * z, (i - cy) / fy * z, z], 1)


def _windows(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 neighbourhoods of the interior pixels, stacked on a new last axis."""
    h, w = x.shape[-2:]
    return torch.stack([x[..., di:di + h - 2, dj:dj + w - 2] for di in range(3) for dj in range(3)], -1)


def test_shapes_dtypes_and_ranges(fine: S.Scenes) -> None:
    ds = make_scenes(5, size=SIZE, classes=7, seed=1, cache=False)
    h, w = SIZE
    assert len(ds) == 5 and ds.num_classes == 7 and len(ds.class_names) == 7
    sample = ds[2]
    assert set(sample) == {"image", "seg", "depth", "normal"}
    assert sample["image"].shape == (3, h, w) and sample["image"].dtype == torch.float32
    assert sample["seg"].shape == (h, w) and sample["seg"].dtype == torch.int64
    assert sample["depth"].shape == (1, h, w) and sample["depth"].dtype == torch.float32
    assert sample["normal"].shape == (3, h, w) and sample["normal"].dtype == torch.float32
    assert ds.images.shape == (5, 3, h, w) and ds.targets["seg"].shape == (5, h, w)
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert float(ds.images.std()) > 0.05                        # not a blank picture
    depth = ds.targets["depth"]
    assert bool((depth > 0).all()) and float(depth.max()) < 15.0  # no invalid pixels by default; metres
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, h, w) and batch["seg"].shape == (4, h, w)


def test_class_ids_in_range_at_every_granularity(fine: S.Scenes) -> None:
    for classes, count in ((2, 2), (7, 7), (19, 19), ("fine", 19)):
        ds = fine if classes == "fine" else make_scenes(8, size=SIZE, classes=classes, seed=3, cache=False)
        seg = ds.targets["seg"]
        assert ds.num_classes == count and len(CLASS_NAMES[count]) == count
        assert int(seg.min()) >= 0 and int(seg.max()) < count
    present = set(fine.targets["seg"].unique().tolist())
    assert {0, 2}.issubset(present)                            # floor and back wall
    assert any(c >= 7 for c in present)                        # some object


def test_same_seed_same_arrays_and_prefix_stable() -> None:
    a = make_scenes(4, size=SIZE, seed=5, cache=False)
    b = make_scenes(4, size=SIZE, seed=5, cache=False)
    assert _equal(a, b) and torch.equal(a.instances, b.instances)
    longer = make_scenes(6, size=SIZE, seed=5, cache=False)      # image i does not depend on n
    assert torch.equal(longer.images[:4], a.images) and torch.equal(longer.targets["depth"][:4], a.targets["depth"])
    assert not torch.equal(make_scenes(4, size=SIZE, seed=6, cache=False).images, a.images)


def test_train_and_test_splits_differ() -> None:
    train = make_scenes(4, size=SIZE, seed=0, split="train", cache=False)
    test = make_scenes(4, size=SIZE, seed=0, split="test", cache=False)
    assert not torch.equal(train.images, test.images)
    assert not torch.equal(train.targets["depth"], test.targets["depth"])


def test_coarse_labels_are_a_fixed_map_of_the_fine_labels(fine: S.Scenes) -> None:
    fine_seg = fine.targets["seg"]
    for classes in (2, 7):
        coarse = make_scenes(8, size=SIZE, classes=classes, seed=3, cache=False).targets["seg"]
        lut = torch.from_numpy(class_mapping(classes))
        assert torch.equal(coarse, lut[fine_seg])
        for f in fine_seg.unique():                              # each fine class -> one coarse class
            assert coarse[fine_seg == f].unique().numel() == 1
    seven_to_two = np.array([0, 0, 0, 0, 1, 1, 1])              # 2 classes are also unions of the 7
    assert np.array_equal(class_mapping(2), seven_to_two[class_mapping(7)])
    assert sorted(set(class_mapping(7))) == list(range(7)) and sorted(set(class_mapping(2))) == [0, 1]


def test_invalid_regions_are_masked_consistently() -> None:
    ds = make_scenes(4, size=SIZE, seed=2, invalid=0.2, cache=False, max_depth=6.0)
    seg, depth, normal = ds.targets["seg"], ds.targets["depth"][:, 0], ds.targets["normal"]
    void = seg == -1
    assert torch.equal(void, depth == 0)
    assert torch.equal(void, (normal == 0).all(1))
    assert torch.equal(void, ds.instances == -1)
    blobs = make_scenes(4, size=SIZE, seed=2, invalid=0.2, cache=False).targets["seg"] == -1
    expected = round(0.2 * SIZE[0] * SIZE[1])
    assert all(int(m.sum()) == expected for m in blobs)          # the requested fraction, per image
    assert bool((void | ~blobs).all())                            # blobs stay invalid with max_depth ...
    assert bool((ds.targets["depth"][:, 0][~void] <= 6.0).all())  # ... and far pixels join them
    same = make_scenes(4, size=SIZE, seed=2, invalid=0.2, cache=False, max_depth=6.0)
    assert torch.equal(same.images, ds.images)                   # images are complete where labels are void
    assert torch.equal(make_scenes(4, size=SIZE, seed=2, cache=False).images, ds.images)


def test_depth_positive_and_normals_unit_and_facing_the_camera(fine: S.Scenes) -> None:
    ds = make_scenes(4, size=SIZE, seed=4, invalid=0.1, cache=False)
    valid = ds.targets["seg"] >= 0
    assert bool((ds.targets["depth"][:, 0][valid] > 0).all())
    normal = ds.targets["normal"]
    length = normal.norm(dim=1)[valid]
    assert float((length - 1).abs().max()) < 1e-5
    points = _backproject(ds)
    assert bool(((normal * points).sum(1)[valid] < 0).all())     # n . (ray to the point) < 0


def test_normals_agree_with_the_geometry_of_the_depth_map(fine: S.Scenes) -> None:
    points = _backproject(fine)
    a = points[:, :, 1:-1, 2:] - points[:, :, 1:-1, :-2]          # horizontal neighbour difference
    b = points[:, :, 2:, 1:-1] - points[:, :, :-2, 1:-1]          # vertical neighbour difference
    est = torch.nn.functional.normalize(torch.linalg.cross(a, b, dim=1), dim=1)
    centre = points[:, :, 1:-1, 1:-1]
    est = torch.where((est * centre).sum(1, keepdim=True) > 0, -est, est)
    stored = fine.targets["normal"][:, :, 1:-1, 1:-1]
    angle = torch.rad2deg(torch.acos((est * stored).sum(1).clamp(-1, 1)))
    inst = fine.instances.long()
    c = inst[:, 1:-1, 1:-1]
    one_surface = (_windows(inst) == c[..., None]).all(-1) & (c >= 0)
    same_normal = (_windows(fine.targets["normal"]) - stored[..., None]).abs().amax(-1).amax(1) < 1e-6
    room = one_surface & (c < OBJECT_ID0)                        # floor, walls, ceiling (and decorations)
    faces = one_surface & (c >= OBJECT_ID0) & same_normal         # box faces, cylinder caps
    curved = one_surface & (c >= OBJECT_ID0) & ~same_normal       # spheres, cylinder sides
    assert room.sum() > 1000 and faces.sum() > 50 and curved.sum() > 50
    assert float(angle[room].median()) < 2.0 and float(angle[room].max()) < 2.0
    assert float(angle[faces].median()) < 2.0 and float(angle[faces].quantile(0.95)) < 2.0
    assert float(angle[curved].median()) < 5.0                    # finite differences across curvature


def test_cache_returns_identical_arrays_and_regenerates_a_corrupt_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_scenes(3, size=SIZE, seed=7, invalid=0.1)
    files = list((tmp_path / "cache").glob("scenes-*.pt"))
    assert len(files) == 1 and first.cache_path == files[0]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]
    uncached = make_scenes(3, size=SIZE, seed=7, invalid=0.1, cache=False)
    assert _equal(first, uncached)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although a valid cache exists")

    with monkeypatch.context() as m:
        m.setattr(S, "render_scenes", no_render)
        again = make_scenes(3, size=SIZE, seed=7, invalid=0.1)
        coarse = make_scenes(3, size=SIZE, seed=7, invalid=0.1, classes=2)  # the same file, other classes
    assert _equal(first, again) and torch.equal(first.instances, again.instances)
    assert torch.equal(coarse.targets["seg"], make_scenes(3, size=SIZE, seed=7, invalid=0.1, classes=2,
                                                          cache=False).targets["seg"])
    for garbage in (b"not a torch file", files[0].read_bytes()[:200], b""):
        files[0].write_bytes(garbage)
        repaired = make_scenes(3, size=SIZE, seed=7, invalid=0.1)
        assert _equal(first, repaired)
        assert S._load_cache(files[0], repaired.cache_key) is not None  # rewritten, valid again
    assert len(list((tmp_path / "cache").glob("scenes-*.pt"))) == 1
    make_scenes(3, size=SIZE, seed=8)                             # other parameters, other file
    assert len(list((tmp_path / "cache").glob("scenes-*.pt"))) == 2


def test_an_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    monkeypatch.setenv("MTL_DATA", str(blocker))
    with pytest.warns(RuntimeWarning, match="could not write the scenes cache"):
        ds = make_scenes(2, size=SIZE, seed=1)
    assert _equal(ds, make_scenes(2, size=SIZE, seed=1, cache=False))


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(ValueError, match="classes must be"):
        make_scenes(2, size=SIZE, classes=5, cache=False)
    with pytest.raises(ValueError, match="split must be"):
        make_scenes(2, size=SIZE, split="validation", cache=False)
    with pytest.raises(ValueError, match="invalid must be"):
        make_scenes(2, size=SIZE, invalid=1.0, cache=False)
    with pytest.raises(ValueError, match="seed must be"):
        make_scenes(2, size=SIZE, seed=-1, cache=False)
    with pytest.raises(ValueError, match="n must be"):
        make_scenes(0, size=SIZE, cache=False)


def test_any_size_including_segnet_friendly_ones() -> None:
    for size in ((32, 32), (17, 23), (64, 96)):
        ds = make_scenes(1, size=size, seed=0, cache=False)
        assert ds.images.shape == (1, 3, *size) and bool((ds.targets["depth"] > 0).all())
    assert np.isclose(S.scene_intrinsics((64, 96))[0], 48 / np.tan(np.radians(30)))
