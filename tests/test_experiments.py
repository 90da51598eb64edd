"""The experiment runner: config and profiles, the grid, result provenance, skipping and resuming, tables."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mtlutils as mu
from mtlutils import experiments as E, provenance

CONFIG = """
name = "unit"
description = "tiny grid for the tests"
baseline = "single"
[data.digits]
kind = "multidigits"
n_train = 48
n_val = 32
[train]
epochs = 2
batch_size = 16
width = 0.25
last_epochs = 2
[grid]
data = ["digits"]
models = ["single", "split"]
weightings = ["equal", "other"]
seeds = [0, 1]
[profile.quick]
train = {epochs = 1}
"""


@pytest.fixture()
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MTL_DATA", str(tmp_path / "data"))
    path = tmp_path / "unit.toml"
    path.write_text(CONFIG.replace('weightings = ["equal", "other"]', 'weightings = ["equal"]'))
    return path


def test_profiles_override_and_the_grid_skips_weightings_of_single_task_models(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace('"other"', '"dwa"'))
    full, quick = E.load_config(path, "full"), E.load_config(path, "quick")
    assert full["train"]["epochs"] == 2 and quick["train"]["epochs"] == 1
    runs = [r.id for r in E.grid(full)]
    assert "digits__single__dwa__seed0" not in runs and "digits__split__dwa__seed0" in runs
    assert len(runs) == 2 * 1 + 2 * 2  # single: equal only; split: two weightings; two seeds


def test_bad_configs_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no experiment config"):
        E.load_config(tmp_path / "missing.toml")
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[grid]\ndata = ["d"]\nmodels = ["split"]\n')
    with pytest.raises(E.ConfigError, match="data: missing"):
        E.load_config(path, "full")
    path.write_text(CONFIG.replace('kind = "multidigits"', 'kind = "imagenet"'))
    with pytest.raises(E.ConfigError, match=r"data.digits.kind: expected one of .*got 'imagenet'"):
        E.load_config(path, "full")
    path.write_text("name = [")
    with pytest.raises(E.ConfigError, match="not valid TOML"):
        E.load_config(path, "full")


TYPOS = {  # a mistake in the file -> what the error must say
    ("epochs = 2\n", "epoch = 2\n"): "train.epoch: unknown key",
    ("[train]", "[trian]"): "trian: unknown key",
    ("n_val = 32", "n_val = 32\nclases = 3"): "data.digits.clases: unknown key",
    ("epochs = 2\n", "epochs = 2.7\n"): "train.epochs: expected an integer >= 1, got 2.7",
    ("last_epochs = 2", "last_epochs = 0"): "train.last_epochs: expected an integer >= 1",
    ('name = "unit"', 'name = "../elsewhere"'): "name: expected a name",
    ('name = "unit"', 'name = "a/b"'): "name: expected a name",
    ('"dwa"]', '"nope"]'): "grid.weightings: unknown weighting 'nope'",
    ('models = ["single", "split"]', 'models = ["single", "splitt"]'): "grid.models: 'splitt' is neither",
    ("seeds = [0, 1]", "seeds = [0, 0]"): r"grid.seeds: lists \['0'\] twice",
    ("seeds = [0, 1]", 'seeds = ["0"]'): "grid.seeds: expected a non-empty list of integers",
    ("width = 0.25", 'width = 0.25\noptimizer = "adamw"'): r"train.optimizer: expected one of \['adam', 'sgd'\]",
    ("[grid]", "[models.split]\noptions = { sttch = 1 }\n[grid]"): "models.split.options.sttch: unknown key",
    ("[grid]", '[models.split]\narch = "mtann"\n[grid]'): "models.split.arch: unknown architecture 'mtann'",
}


@pytest.mark.parametrize("typo", list(TYPOS), ids=[v.split(":")[0] for v in TYPOS.values()])
def test_a_typo_fails_before_anything_trains_naming_the_key(tmp_path, typo):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace('"other"', '"dwa"').replace(*typo))
    with pytest.raises(E.ConfigError, match=TYPOS[typo]):
        E.load_config(path, "full")


def test_every_problem_is_listed_at_once(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace("epochs = 2\n", "epoch = 2\n").replace("n_val = 32", "n_val = -1"))
    with pytest.raises(E.ConfigError) as info:
        E.load_config(path, "full")
    text = str(info.value)
    assert "4 problem(s)" in text and "train.epoch" in text and "data.digits.n_val" in text and "'other'" in text


def test_the_committed_grids_pass_the_schema():
    for path in sorted((Path(__file__).parents[1] / "experiments").glob("*.toml")):
        for profile in ("quick", "full", "paper"):
            E.load_config(path, profile)


def test_run_writes_provenance_skips_finished_runs_and_aggregates(config, tmp_path, capsys):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    cfg = E.load_config(config, "full")
    files = E.run_grid(cfg, results, ckpt, progress=False)
    assert len(files) == 4 and all(f.is_file() for f in files)
    record = json.loads(files[-1].read_text())
    for key in ("command", "config", "config_hash", "git_commit", "seed", "device", "processes", "versions",
                "fingerprint", "wall_time_s", "cpu_time_s", "protocol", "metrics", "history"):
        assert key in record, key
    # the same run again on this machine: every fingerprint item matches, so the metrics must be equal
    again = E.execute(cfg, E.grid(cfg)[-1], tmp_path / "again", tmp_path / "ckpt_again", torch.device("cpu"),
                      "test", progress=False)
    check = provenance.compare_repeat(record, again, [record])
    assert check.rule == "exact" and check.passed, check.explain()
    assert record["versions"]["torch"] and record["device"] == "cpu" and record["processes"] == 1
    last_two = [row["val/left/accuracy"] for row in record["history"][-2:]]
    assert record["metrics"]["left/accuracy"] == pytest.approx(sum(last_two) / 2)  # the stated protocol

    capsys.readouterr()
    E.run_grid(cfg, results, ckpt, progress=False)                     # everything done: nothing trains
    assert "4 done, 0 to train" in capsys.readouterr().out

    changed = E.load_config(config, "quick")                          # other settings: runs again
    assert not E.is_done(files[0], E.run_config(changed, E.grid(changed)[0]))

    summary = E.aggregate(cfg, results)
    import pandas as pd

    table = pd.read_csv(summary)
    assert set(table["model"]) == {"single", "split"} and (table["seeds"] == 2).all()
    single = table[table["model"] == "single"].iloc[0]
    assert single["delta_mtl_%"] == pytest.approx(0.0)
    split = table[table["model"] == "split"].iloc[0]
    expected = 100 * ((split["left/accuracy"] - single["left/accuracy"]) / single["left/accuracy"]
                      + (split["right/accuracy"] - single["right/accuracy"]) / single["right/accuracy"]) / 2
    assert split["delta_mtl_%"] == pytest.approx(expected, rel=1e-6)  # the CSV keeps 8 digits


def test_an_interrupted_run_resumes_from_its_checkpoint(config, tmp_path, monkeypatch):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    cfg = E.load_config(config, "full")
    run = E.grid(cfg)[0]
    uninterrupted = E.execute(cfg, run, tmp_path / "r0", tmp_path / "c0", E.distributed.setup(), "test", False)

    class CrashInEpoch2(mu.train.Callback):
        def on_step(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt("stopped")

    with pytest.raises(KeyboardInterrupt):
        E.execute(cfg, run, results, ckpt, E.distributed.setup(), "test", False, callbacks=[CrashInEpoch2()])
    checkpoint = E.checkpoint_path(ckpt, run, E.run_config(cfg, run))
    assert checkpoint.is_file() and not (results / "runs" / f"{run.id}.json").exists()
    resumed = E.execute(cfg, run, results, ckpt, E.distributed.setup(), "test", False)
    assert not checkpoint.exists(), "the checkpoint is deleted once the result is written"
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    # the time of every epoch is kept across the resume, not only the last process's
    epochs = len(uninterrupted["history"])
    assert len(resumed["seconds_per_epoch"]) == len(resumed["cpu_seconds_per_epoch"]) == epochs
    assert E.training_seconds(resumed) == pytest.approx(sum(resumed["seconds_per_epoch"]))
    assert E.training_cpu_seconds(resumed) == pytest.approx(sum(resumed["cpu_seconds_per_epoch"]))


def test_training_time_of_result_files_with_and_without_per_epoch_cpu_time():
    new = {"seconds_per_epoch": [2.0, 3.0], "cpu_seconds_per_epoch": [1.5, 2.5], "wall_time_s": 3.1,
           "cpu_time_s": 2.6}
    assert E.training_seconds(new) == 5.0 and E.training_cpu_seconds(new) == 4.0
    one_process = {"seconds_per_epoch": [2.0, 3.0], "wall_time_s": 5.2, "cpu_time_s": 4.4}
    assert E.training_cpu_seconds(one_process) == 4.4          # older file, trained by one process
    resumed = {"seconds_per_epoch": [2.0, 3.0], "wall_time_s": 3.1, "cpu_time_s": 2.6}
    assert E.training_seconds(resumed) == 5.0 and E.training_cpu_seconds(resumed) is None
    diverged_at_once = {"seconds_per_epoch": [], "cpu_seconds_per_epoch": [], "wall_time_s": 3.0,
                        "cpu_time_s": 2.9}
    assert E.training_cpu_seconds(diverged_at_once) is None           # no epoch to divide it over


def test_a_diverging_run_is_recorded_as_such_and_left_out_of_the_means(config, tmp_path):
    text = config.read_text().replace("width = 0.25", 'width = 0.25\noptimizer = "sgd"\nlr = 1e9')
    config.write_text(text.replace('models = ["single", "split"]', 'models = ["split"]'))
    cfg = E.load_config(config, "full")
    files = E.run_grid(cfg, tmp_path / "results", tmp_path / "ckpt", progress=False)
    records = [json.loads(f.read_text()) for f in files]
    assert [r["status"] for r in records] == ["diverged", "diverged"]
    assert all("loss of task" in r["error"] and r["metrics"] == {} for r in records)
    table = E.summarise(records, baseline=None)
    assert table.loc[0, "diverged"] == 2 and table.loc[0, "seeds"] == 0


def test_per_run_deltas_spread_around_the_table_value(config, tmp_path):
    cfg = E.load_config(config, "full")
    E.run_grid(cfg, tmp_path / "results", tmp_path / "ckpt", progress=False)
    results = E.load_results(cfg, tmp_path / "results")
    per_run = E.deltas_per_run(results, "single")
    table = E.summarise(results, "single")
    single = per_run[per_run["model"] == "single"]["delta_mtl_%"]
    assert abs(single.mean()) < 1e-9          # the baseline's seeds straddle its own mean (Δ is linear)
    split = per_run[per_run["model"] == "split"]["delta_mtl_%"]
    assert split.mean() == pytest.approx(float(table.loc[table["model"] == "split", "delta_mtl_%"].iloc[0]))


def test_data_sections_can_set_model_options(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.replace('"other"', '"dwa"') + '\n[data.digits.model_options.split]\nhidden = 8\n')
    cfg = E.load_config(path, "full")
    assert E.run_config(cfg, E.Run("digits", "split", "equal", 0))["options"] == {"hidden": 8}
    assert "model_options" not in E.run_config(cfg, E.Run("digits", "split", "equal", 0))["data"]


def test_a_run_another_grid_trained_with_the_same_settings_is_copied_not_trained(config, tmp_path, capsys,
                                                                                 monkeypatch):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    first = E.load_config(config, "full")
    E.run_grid(first, results, ckpt, progress=False)
    # a second grid: the same data and training under other names, plus one run with other settings
    twin_toml = tmp_path / "twin.toml"
    twin_toml.write_text(config.read_text().replace('name = "unit"', 'name = "twin"')
                         .replace("[data.digits]", "[data.same_digits]")
                         .replace('data = ["digits"]', 'data = ["same_digits"]')
                         .replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    second = E.load_config(twin_toml, "full")
    trained = []
    real_execute = E.runner.execute
    monkeypatch.setattr(E.runner, "execute", lambda cfg, run, *a, **k: (trained.append(run.id),
                                                                         real_execute(cfg, run, *a, **k))[1])
    capsys.readouterr()
    files = E.run_grid(second, results, ckpt, progress=False)
    out = capsys.readouterr().out
    assert sorted(trained) == ["same_digits__single__equal__seed2", "same_digits__split__equal__seed2"]
    assert out.count("result copied") == 4
    copy = json.loads((results / "twin" / "runs" / "same_digits__split__equal__seed0.json").read_text())
    source = json.loads((results / "unit" / "runs" / "digits__split__equal__seed0.json").read_text())
    assert copy["copied_from"] == "unit/digits__split__equal__seed0"
    assert copy["metrics"] == source["metrics"] and copy["history"] == source["history"]
    assert copy["git_commit"] == source["git_commit"] and copy["command"] == source["command"]
    # the copy is a result of its own run: its names, settings and hash
    run = next(r for r in E.grid(second) if r.id == "same_digits__split__equal__seed0")
    assert E.is_done(results / "twin" / "runs" / f"{run.id}.json", E.run_config(second, run))
    assert copy["experiment"] == "twin" and copy["config"]["data_name"] == "same_digits"
    assert len(files) == 6
    # a copy of a copy still names the run that trained
    third = E.load_config(twin_toml, "full")
    third["name"] = "third"
    E.run_grid(third, results, ckpt, progress=False)
    again = json.loads((results / "third" / "runs" / "same_digits__split__equal__seed0.json").read_text())
    assert again["copied_from"] == "unit/digits__split__equal__seed0"


def test_reuse_can_be_turned_off_and_never_crosses_other_settings(config, tmp_path):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    E.run_grid(E.load_config(config, "full"), results, ckpt, progress=False)
    other = E.load_config(config, "full")
    other["name"] = "other"
    run = E.grid(other)[0]
    resolved = E.run_config(other, run)
    assert E.find_twin(results, "other", resolved) is not None
    assert E.find_twin(results, "unit", resolved) is None            # never its own grid
    changed = {**resolved, "train": {**resolved["train"], "lr": 0.5}}
    assert E.find_twin(results, "other", changed) is None           # other settings: no twin
    with pytest.raises(ValueError, match="other settings"):
        E.adopt_twin(E.find_twin(results, "other", resolved), other, E.grid(other)[1])
    files = E.run_grid(other, results, ckpt, progress=False, reuse=False)
    assert not any("copied_from" in json.loads(f.read_text()) for f in files)
