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


ONE_RANK_DIVERGES = """
import json, math, sys
import torch
import mtlutils as mu
from mtlutils import distributed
from mtlutils.train import NonFiniteLossError

device = distributed.setup()
rank, _ = distributed.world()
tasks = [mu.Task("left", "class", 10), mu.Task("size", "regress", 1)]
g = torch.Generator().manual_seed(0)
batches = [{"image": torch.rand(8, 1, 20, 28, generator=g), "left": torch.randint(0, 10, (8,), generator=g),
            "size": torch.rand(8, generator=g)} for _ in range(3)]
if rank == 1:   # only this process sees a bad target, in epoch 2, step 2
    batches = [dict(b) for b in batches]
    poisoned = dict(batches[1], size=torch.full((8,), math.nan))
class Data:
    epoch = 0
    def __len__(self):
        return len(batches)
    def __iter__(self):
        self.epoch += 1
        for i, b in enumerate(batches):
            yield poisoned if (rank == 1 and self.epoch == 2 and i == 1) else b
torch.manual_seed(0)
model = distributed.prepare_model(mu.models.create("split", tasks, width=0.25), device)
try:
    mu.fit(model, Data(), tasks, epochs=3, progress=False, device=device)
    out = {"raised": False}
except NonFiniteLossError as err:
    out = {"raised": True, "epoch": err.epoch, "step": err.step, "task": err.task, "epochs_kept": len(err.history)}
with open(sys.argv[1] + f".{rank}", "w") as handle:
    json.dump(out, handle)
distributed.cleanup()
"""


def test_one_diverging_process_stops_every_process_on_the_same_step(tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(ONE_RANK_DIVERGES)
    out = tmp_path / "outcome"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1))
    assert rank0["raised"] and rank1["raised"], (rank0, rank1)
    assert (rank0["epoch"], rank0["step"]) == (rank1["epoch"], rank1["step"]) == (2, 2)
    assert rank1["task"] == "size" and rank0["task"] is None      # rank 0 learns it from the all-reduce
    assert rank0["epochs_kept"] == rank1["epochs_kept"] == 1
