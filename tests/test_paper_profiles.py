"""Every grid's ``paper`` profile, end to end on tiny fixture data in the real data sets' layouts (NYUv2,
CityScapes, UTKFace), for a step or two on the CPU: the GPU path of the book (real data, full-width
networks, the papers' optimiser settings) is never broken by a change that nobody could run.

To stay a unit test, only sizes change: the images are 32x32 and the networks 1/16 wide; every other
setting (data kind, tasks, classes, batch size, optimiser, scheduler, weightings, models) is the paper
profile's own.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from mtlutils import experiments as E

from test_real_data import make_cityscapes, make_nyuv2, make_utkface

GRIDS = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))


@pytest.fixture(scope="module")
def real_layouts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_nyuv2(root / "nyuv2", {"train": 4, "val": 2})
    make_cityscapes(root / "cityscapes", n=16, classes=(2, 7, 19))   # the task-complexity study
    make_utkface(root / "utkface")
    return root


def _shrink(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for section in cfg["data"].values():
        assert section["kind"] in ("nyuv2", "cityscapes", "utkface"), "a paper profile must use real data"
        section["size"] = [32, 32]
        section.setdefault("train", {})["epochs"] = 1
    cfg["train"]["width"] = 0.0625
    cfg["train"]["epochs"] = 1
    cfg["train"]["last_epochs"] = 1
    for model in cfg.get("models", {}).values():
        model.get("train", {}).pop("width", None)
    return cfg


@pytest.mark.filterwarnings("ignore:UTKFace. skipped")   # the fixture holds two badly named files on purpose
@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_the_paper_profile_runs_on_the_real_layouts(path, real_layouts, tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_DATA", str(real_layouts))
    cfg = _shrink(E.load_config(path, "paper"))
    E.validate({k: v for k, v in cfg.items() if k not in ("profile", "source")}, str(path))
    runs = E.grid(cfg)
    for run in runs:
        result = E.execute(cfg, run, tmp_path / "results", tmp_path / "ckpt", torch.device("cpu"), "test",
                           progress=False)
        assert result["status"] == "finished", (run.id, result["error"])
        assert result["metrics"] and all(v == v for v in result["metrics"].values()), run.id
        assert result["config"]["profile"] == "paper"
    written = sorted(p.name for p in (tmp_path / "results" / "runs").glob("*.json"))
    assert len(written) == len(runs)
    sample = json.loads((tmp_path / "results" / "runs" / written[0]).read_text())
    assert sample["config"]["data"]["kind"] in ("nyuv2", "cityscapes", "utkface")
