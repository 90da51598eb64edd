import numpy as np
import pytest
import torch

from mtlutils.data import data_root, loaders, multidigits, source_pools
from mtlutils.data.multidigits import _source_digits


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b = multidigits("train", n=50, seed=3), multidigits("train", n=50, seed=3)
    assert torch.equal(a.images, b.images) and all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets)
    c = multidigits("train", n=50, seed=4)
    assert not torch.equal(a.images, c.images)


def test_train_and_test_use_disjoint_source_digits():
    pools = source_pools()
    assert set(pools["train"]).isdisjoint(pools["test"])
    assert len(pools["train"]) + len(pools["test"]) == 1797
    train, test = multidigits("train", n=400, seed=0), multidigits("test", n=400, seed=0)
    used_train = set(train.sources["left"]) | set(train.sources["right"])
    used_test = set(test.sources["left"]) | set(test.sources["right"])
    assert used_train <= set(pools["train"]) and used_test <= set(pools["test"])


def test_samples_are_dicts_with_correct_labels():
    ds = multidigits("train", n=20, seed=1)
    _, labels = _source_digits(14)
    sample = ds[5]
    assert set(sample) == {"image", "left", "right"}
    assert sample["image"].shape == (1, 20, 28) and sample["image"].dtype == torch.float32
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    assert int(sample["left"]) == labels[ds.sources["left"][5]]
    assert int(sample["right"]) == labels[ds.sources["right"][5]]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="split must be"):
        multidigits("validation")
    with pytest.raises(ValueError, match="n must be"):
        multidigits("train", n=0)
    with pytest.raises(ValueError, match="does not fit"):
        multidigits("train", n=2, digit_size=30)
    train = multidigits("train", n=10)
    with pytest.raises(ValueError, match="batch_size"):
        loaders(train, batch_size=0)


def test_loaders_batches_are_dicts():
    train, test = multidigits("train", n=40), multidigits("test", n=30)
    tl, vl = loaders(train, test, batch_size=16, seed=0)
    batch = next(iter(tl))
    assert batch["image"].shape == (16, 1, 20, 28) and batch["left"].shape == (16,)
    assert sum(b["image"].shape[0] for b in vl) == 30


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MTL_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("MTL_DATA")
    assert data_root().name == "data"
