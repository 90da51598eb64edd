"""Which runs of a grid have results (mtlutils.experiments.state): the chapters judge complete grids only,
mark the others pending, and refuse a partial set when MTL_RESULTS_COMPLETE=1."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtlutils import experiments as E

GRID = """
name = "state"
baseline = "single"
[data.digits]
kind = "multidigits"
n_train = 16
n_val = 16
[train]
epochs = 1
batch_size = 16
width = 0.25
last_epochs = 1
[grid]
data = ["digits"]
models = ["single", "split"]
seeds = [0, 1]
"""


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "data"))
    path = tmp_path / "state.toml"
    path.write_text(GRID)
    return E.load_config(path, "full")


def test_a_grid_is_complete_only_when_every_planned_run_has_a_result(cfg, tmp_path, monkeypatch):
    results = tmp_path / "results"
    empty = E.grid_state(cfg, results)
    assert not empty.complete and len(empty.planned) == 4 and empty.missing == [r.id for r in E.grid(cfg)]
    assert "0 of 4 runs" in empty.describe() and "make reproduce" in empty.pending_markdown()

    E.run_grid(cfg, results, tmp_path / "ckpt", only="*__split__*", progress=False)
    half = E.grid_state(cfg, results)
    assert half.missing == ["digits__single__equal__seed0", "digits__single__equal__seed1"]
    assert half.cells_complete(models=["split"]) and not half.cells_complete(models=["single"])
    assert not half.complete and "2 of 4 runs" in half.describe()
    assert empty.core_hours_left() is None and "core-hours" not in empty.pending_markdown()
    cpu = [sum(r["cpu_seconds_per_epoch"]) for r in half.runs]     # every epoch, whichever process
    assert half.core_hours_left() == pytest.approx(2 * sum(cpu) / len(cpu) / 3600)
    assert f"EXPERIMENTS=experiments/{cfg['name']}.toml" in half.pending_markdown()
    assert "core-hours" in half.pending_markdown()

    monkeypatch.delenv(E.COMPLETE_ENV, raising=False)
    E.demand_complete(half)                       # a partial set is allowed: the chapters mark it pending
    monkeypatch.setenv(E.COMPLETE_ENV, "1")
    with pytest.raises(E.IncompleteResultsError, match="2 of 4 runs have no result"):
        E.demand_complete(half)

    E.run_grid(cfg, results, tmp_path / "ckpt", progress=False)
    full = E.grid_state(cfg, results)
    assert full.complete and full.missing == [] and "complete" in full.describe()
    E.demand_complete(full)

    # one note for several grids names only the incomplete ones, with one command for all of them
    other = E.GridState("other", empty.planned, ())
    note = E.pending_markdown([full, half, other], "This section")
    assert "`state` (2 of 4 runs)" in note and "`other` (0 of 4 runs)" in note
    assert 'EXPERIMENTS="experiments/state.toml experiments/other.toml"' in note
    assert "core-hours" not in note               # `other` has no finished run to estimate from
    assert E.pending_markdown([full, half]) == half.pending_markdown()
    with pytest.raises(ValueError, match="complete"):
        E.pending_markdown([full])


def test_results_of_other_settings_do_not_count(cfg, tmp_path):
    results = tmp_path / "results"
    E.run_grid(cfg, results, tmp_path / "ckpt", progress=False)
    changed = {**cfg, "train": {**cfg["train"], "epochs": 2}}
    assert E.grid_state(changed, results).done_ids == set()


def test_every_grid_file_is_named_after_its_grid():
    """The pending notes print `make reproduce EXPERIMENTS=experiments/<grid name>.toml`."""
    files = sorted((Path(__file__).parent.parent / "experiments").glob("*.toml"))
    assert files
    for path in files:
        assert E.load_config(path, "quick")["name"] == path.stem, path
