"""Several processes (torchrun + DistributedDataParallel on CPUs with Gloo) give the run of one process with
the same global batch.

Tolerance: the training losses agree to 1e-5 relative and the validation metrics to 1e-3 relative. They are
not bit-identical because the two runs add the same numbers in a different order (a convolution over 8
images twice instead of 16 once; batch statistics summed over processes in float64).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlutils.distributed import ShardedBatchSampler

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
name = "tiny"
[data.digits]
kind = "multidigits"
n_train = 64
n_val = 48
[train]
epochs = 2
batch_size = 16
lr = 2e-3
width = 0.25
[grid]
data = ["digits"]
models = ["mtan"]
weightings = ["uncertainty"]
seeds = [3]
"""


def test_sharded_batches_are_the_global_batches_split_between_processes():
    def batches(rank, world):
        return list(ShardedBatchSampler(37, 8, torch.Generator().manual_seed(1), rank=rank, world_size=world))

    one = batches(0, 1)
    two = [batches(r, 2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 5
    for whole, a, b in zip(one, *two):
        assert whole == a + b and abs(len(a) - len(b)) <= 1
    assert sorted(i for batch in one for i in batch) == list(range(37))
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ShardedBatchSampler(10, 3, torch.Generator(), rank=0, world_size=2)


def _run(tmp_path: Path, processes: int) -> dict:
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    out = tmp_path / f"results{processes}"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
        if processes > 1 else [sys.executable]
    command = launcher + ["-m", "mtlutils.experiments", "run", str(config), "--profile", "full", "--results",
                          str(out), "--checkpoints", str(tmp_path / f"ckpt{processes}"), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MTL_DATA=str(tmp_path / "data"))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted((out / "tiny" / "runs").iterdir())
    assert [f.name for f in files] == ["digits__mtan__uncertainty__seed3.json"], files  # rank 0 wrote, once
    return json.loads(files[0].read_text())


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["history"]) == len(two["history"]) == 2
    for row1, row2 in zip(one["history"], two["history"]):
        assert row1.keys() == row2.keys()
        for key in row1:
            tol = 1e-5 if key.startswith("train/") else 1e-3
            assert row2[key] == pytest.approx(row1[key], rel=tol, abs=1e-6), key
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-3), key
    # the loss fell, so the comparison is between runs that learned something
    losses = [row["train/left/loss"] for row in one["history"]]
    assert losses[1] < losses[0]
