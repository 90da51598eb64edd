"""Faults on disk and in the runner: damaged checkpoints, checkpoints of other settings, stale results,
half-written summaries, two runners on one grid, validation metrics that diverge. Each test corrupts,
truncates or races files in a temporary folder and checks that the error names the file and that no
earlier good state is lost."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import mtlutils as mu
from mtlutils import experiments as E
from mtlutils.fileio import exclusive
from mtlutils.train import CheckpointError, load_checkpoint, previous_checkpoint

from conftest import StopAtEpoch, params_equal, small_model


def _fit(tasks, loaders, epochs, **kw):
    train, test = loaders
    model = small_model("split", tasks)
    history = mu.fit(model, train, tasks, epochs=epochs, val_data=test, progress=False, device="cpu", seed=1,
                     **kw)
    return model, history


def _interrupted(tasks, loaders, path, epochs=3, stop=3, **kw):
    with pytest.raises(KeyboardInterrupt):
        _fit(tasks, loaders, epochs, checkpoint=path, callbacks=[StopAtEpoch(stop)], **kw)


def test_checkpoints_keep_their_predecessor(digit_tasks, tiny_loaders, tmp_path):
    path = tmp_path / "c.pt"
    _interrupted(digit_tasks, tiny_loaders, path)
    assert load_checkpoint(path)["epoch"] == 2 and load_checkpoint(previous_checkpoint(path))["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "zero bytes"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_resumes(digit_tasks, tiny_loaders, tmp_path,
                                                                        damage):
    full_model, full = _fit(digit_tasks, tiny_loaders, 3)
    path = tmp_path / "c.pt"
    _interrupted(digit_tasks, tiny_loaders, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # 100 zeroed bytes inside the tensor data: the archive still opens, the CRC does not match
        data[len(data) // 2: len(data) // 2 + 100] = bytes(100)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        model, resumed = _fit(digit_tasks, tiny_loaders, 3, checkpoint=path, resume=True)
    assert resumed == full and params_equal(model, full_model)   # nothing lost: epoch 2 is trained again


def test_when_every_checkpoint_is_damaged_one_error_says_what_to_do(digit_tasks, tiny_loaders, tmp_path):
    path = tmp_path / "c.pt"
    _interrupted(digit_tasks, tiny_loaders, path)
    for p in (path, previous_checkpoint(path)):
        p.write_bytes(p.read_bytes()[:100])
    before = {p: p.read_bytes() for p in (path, previous_checkpoint(path))}
    with pytest.raises(CheckpointError, match=r"c\.pt.*c\.pt\.prev.*delete"):
        _fit(digit_tasks, tiny_loaders, 3, checkpoint=path, resume=True)
    assert all(p.read_bytes() == data for p, data in before.items()), "the files are left for inspection"


@pytest.mark.parametrize("change,expected", [
    (dict(epochs=4), "epochs 3 .* vs 4"),
    (dict(lr=5e-3), "lr"),
    (dict(optimizer="sgd"), "optimizer 'Adam'.*'SGD'"),
    (dict(weighting="dwa"), "weighting 'EqualWeighting'.*'DWA'"),
    (dict(seed=2), "seed 1 .* vs 2"),
])
def test_resuming_with_other_settings_is_refused_naming_the_difference(digit_tasks, tiny_loaders, tmp_path,
                                                                      change, expected):
    path = tmp_path / "c.pt"
    _interrupted(digit_tasks, tiny_loaders, path)
    train, test = tiny_loaders
    kw = dict(epochs=3, lr=1e-3, seed=1, optimizer="adam")
    kw.update({k: v for k, v in change.items() if k != "weighting"})
    weighting = mu.weighting.create(change.get("weighting", "equal"), digit_tasks)
    with pytest.raises(CheckpointError, match=f"{path.name}.*other settings.*{expected}"):
        mu.fit(small_model("split", digit_tasks), train, digit_tasks, weighting, val_data=test, progress=False,
               device="cpu", checkpoint=path, resume=True, **kw)
    assert load_checkpoint(path)["epoch"] == 2, "the refused checkpoint is kept"


# ---------------------------------------------------------------------------------------------- runner
GRID = """
name = "faults"
baseline = "single"
[data.digits]
kind = "multidigits"
n_train = 32
n_val = 32
[train]
epochs = 2
batch_size = 16
width = 0.25
last_epochs = 1
[grid]
data = ["digits"]
models = ["split"]
seeds = [0]
"""


@pytest.fixture()
def grid_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "data"))
    path = tmp_path / "faults.toml"
    path.write_text(GRID)
    return path


def test_changing_a_setting_retrains_instead_of_reusing_the_old_training(grid_file, tmp_path):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    cfg = E.load_config(grid_file, "full")
    run = E.grid(cfg)[0]
    # an interrupted run leaves a checkpoint; then the setting changes
    with pytest.raises(KeyboardInterrupt):
        E.execute(cfg, run, results / "faults", ckpt / "faults", torch.device("cpu"), "test", False,
                  callbacks=[StopAtEpoch(2)])
    old = E.checkpoint_path(ckpt / "faults", run, E.run_config(cfg, run))
    assert old.is_file()
    grid_file.write_text(GRID.replace("epochs = 2", "epochs = 3"))
    changed = E.load_config(grid_file, "full")
    E.run_grid(changed, results, ckpt, progress=False)
    record = json.loads((results / "faults" / "runs" / f"{run.id}.json").read_text())
    assert len(record["history"]) == 3 and record["config"]["train"]["epochs"] == 3
    assert record["config_hash"] == E.config_hash(E.run_config(changed, run))
    assert [p.name for p in (ckpt / "faults").glob("*.pt*")] == [old.name], \
        "only the old settings' checkpoint is left; the new run's was deleted once its result was written"
    # the other way round: the result of the old settings does not count for the new ones
    assert E.load_results(cfg, results) == []


def test_a_run_locked_by_another_runner_is_skipped(grid_file, tmp_path, capsys):
    cfg = E.load_config(grid_file, "full")
    run = E.grid(cfg)[0]
    with exclusive(tmp_path / "ckpt" / "faults" / f"{run.id}.lock"):
        assert E.run_grid(cfg, tmp_path / "results", tmp_path / "ckpt", progress=False) == []
    assert "being trained by another runner" in capsys.readouterr().out
    assert len(E.run_grid(cfg, tmp_path / "results", tmp_path / "ckpt", progress=False)) == 1


def test_non_finite_validation_metrics_make_a_diverged_run(grid_file, tmp_path, monkeypatch):
    import mtlutils.experiments.runner as R

    real = R.protocol_metrics
    monkeypatch.setattr(R, "protocol_metrics", lambda rows, last: {**real(rows, last), "left/accuracy": math.nan})
    cfg = E.load_config(grid_file, "full")
    result = E.execute(cfg, E.grid(cfg)[0], tmp_path / "r", tmp_path / "c", torch.device("cpu"), "t", False)
    assert result["status"] == "diverged" and "left/accuracy" in result["error"] and result["metrics"] == {}


def test_a_failed_summary_write_keeps_the_previous_summary(grid_file, tmp_path, monkeypatch):
    cfg = E.load_config(grid_file, "full")
    E.run_grid(cfg, tmp_path / "results", tmp_path / "ckpt", progress=False)
    summary = E.aggregate(cfg, tmp_path / "results")
    before = summary.read_text()
    import mtlutils.fileio as F

    def full_disk(fd, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(F.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        E.aggregate(cfg, tmp_path / "results")
    monkeypatch.undo()
    assert summary.read_text() == before
    assert sorted(p.name for p in summary.parent.iterdir()) == ["runs", "summary.csv"], "no temporary file left"


def test_seeds_are_counted_per_metric(grid_file, tmp_path):
    cfg = E.load_config(grid_file, "full")
    base = {"config": {"data_name": "d", "model": "m", "weighting": "equal"}, "parameters": 1,
            "seconds_per_epoch": [1.0], "status": "finished"}
    runs = [dict(base, seed=0, metrics={"a/x": 1.0, "a/y": 2.0}), dict(base, seed=1, metrics={"a/x": 3.0}),
            dict(base, seed=2, status="diverged", metrics={})]
    table = E.summarise(runs, baseline=None)
    assert int(table.loc[0, "seeds"]) == 1 and int(table.loc[0, "diverged"]) == 1


def test_kept_models_load_with_their_hash_checked(grid_file, tmp_path):
    grid_file.write_text(GRID.replace('seeds = [0]', 'seeds = [0]\nkeep_models = ["*__split__*"]'))
    cfg = E.load_config(grid_file, "full")
    run = E.grid(cfg)[0]
    results = tmp_path / "results"
    result = E.execute(cfg, run, results / "faults", tmp_path / "ckpt", torch.device("cpu"), "t", False)
    assert result["model_file"] == f"models/{run.id}.pt" and len(result["model_sha256"]) == 64
    model, loaded = E.load_model(cfg, run.id, results)
    assert loaded["run"] == run.id and not model.training
    train_set, val_set, tasks = E.build_data(E.run_config(cfg, run)["data"])
    again = mu.evaluate(model, E.make_loaders(train_set, val_set, 16, 0)[1], tasks, "cpu")
    assert again["left/accuracy"] == result["history"][-1]["val/left/accuracy"]   # the trained model itself
    path = results / "faults" / result["model_file"]
    path.write_bytes(path.read_bytes()[:-10] + bytes(10))        # damaged on disk
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        E.load_model(cfg, run.id, results)
    with pytest.raises(ValueError, match="no run"):
        E.load_model(cfg, "nope", results)
