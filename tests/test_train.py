import math
import os
from pathlib import Path

import pytest
import torch

import mtlutils as mu
from mtlutils.tasks import Task
from mtlutils.train import (CHECKPOINT_FORMAT, History, NonFiniteLossError, load_checkpoint,
                            save_checkpoint)

from conftest import StopAtEpoch, ListLoader, params_equal, small_model


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def run(tasks, loaders, epochs, **kw):
    train, test = loaders
    model = small_model("split", tasks)
    history = mu.fit(model, train, tasks, epochs=epochs, val_data=test, progress=False, device="cpu",
                     scheduler=step_lr, **kw)
    return model, history


def test_history_records_losses_weights_metrics(digit_tasks, tiny_loaders):
    _, history = run(digit_tasks, tiny_loaders, 2)
    assert len(history) == 2 and len(history.seconds) == 2
    for key in ("train/left/loss", "weight/right", "train/left/accuracy", "val/right/loss", "val/right/accuracy"):
        assert len(history.series(key)) == 2
    frame = history.to_frame()
    assert set(frame.columns) == {"epoch", "split", "task", "quantity", "value"}
    assert set(frame["quantity"]) == {"loss", "accuracy", "weight"}
    with pytest.raises(KeyError, match="no 'val/left/mae'"):
        history.series("val/left/mae")


def test_without_train_metrics_the_training_is_the_same_and_only_losses_are_recorded(digit_tasks, tiny_digits):
    runs = [run(digit_tasks, mu.data.loaders(*tiny_digits, batch_size=32, seed=0), 2, seed=3, train_metrics=flag)
            for flag in (True, False)]
    (with_model, with_metrics), (without_model, without) = runs
    assert params_equal(with_model, without_model)
    assert "train/left/accuracy" in with_metrics.rows[0] and "train/left/accuracy" not in without.rows[0]
    for key in without.rows[0]:  # every recorded value (losses, weights, validation) is the same
        assert without.series(key) == with_metrics.series(key), key


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_sgd_updates_equal_the_per_tensor_loop(digit_tasks, tiny_loaders, weight_decay):
    # fit's "sgd" uses the fused (foreach) update; it must give the same weights, bit for bit
    models = []
    for fused in (True, False):
        model = small_model("split", digit_tasks)
        loop = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=weight_decay, foreach=False)
        mu.fit(model, tiny_loaders[0], digit_tasks, epochs=2, optimizer="sgd" if fused else loop, lr=0.05,
               weight_decay=weight_decay, progress=False, device="cpu")
        models.append(model)
    assert params_equal(*models)


def test_training_reduces_the_loss(digit_tasks):
    train = mu.data.multidigits("train", n=512, seed=0)
    loader, _ = mu.data.loaders(train, batch_size=16, seed=0)
    mu.seed_everything(0)
    model = mu.models.create("split", digit_tasks, width=0.5, hidden=32)
    history = mu.fit(model, loader, digit_tasks, epochs=3, lr=3e-3, progress=False, device="cpu")
    for task in ("left", "right"):
        losses = history.series(f"train/{task}/loss")
        assert losses[-1] < 0.8 * losses[0], losses


def test_same_seed_same_history_and_weights(digit_tasks, tiny_digits):
    results = []
    for _ in range(2):
        loaders = mu.data.loaders(*tiny_digits, batch_size=32, seed=0)
        results.append(run(digit_tasks, loaders, 2, seed=5))
    (m1, h1), (m2, h2) = results
    assert h1 == h2 and params_equal(m1, m2)


def test_resume_after_a_crash_ends_with_the_uninterrupted_history(digit_tasks, tiny_digits, tmp_path):
    full_model, full = run(digit_tasks, mu.data.loaders(*tiny_digits, batch_size=32, seed=0), 4, seed=1)

    ckpt = tmp_path / "run" / "last.pt"
    train, test = mu.data.loaders(*tiny_digits, batch_size=32, seed=0)

    class Crash(Exception):
        pass

    class CrashingLoader:  # dies in the middle of epoch 3
        def __init__(self, inner):
            self.inner, self.epoch, self.generator = inner, 0, inner.generator

        def __len__(self):
            return len(self.inner)

        def __iter__(self):
            self.epoch += 1
            for i, batch in enumerate(self.inner):
                if self.epoch == 3 and i == 1:
                    raise Crash("power cut")
                yield batch

    with pytest.raises(Crash):
        mu.fit(small_model("split", digit_tasks), CrashingLoader(train), digit_tasks, epochs=4, val_data=test,
               progress=False, device="cpu", scheduler=step_lr, seed=1, checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 2 and len(state["history"]["rows"]) == 2

    resumed_model = small_model("split", digit_tasks, seed=99)  # different init: the checkpoint must win
    resumed = mu.fit(resumed_model, train, digit_tasks, epochs=4, val_data=test, progress=False, device="cpu",
                     scheduler=step_lr, seed=1, checkpoint=ckpt, resume=True)
    assert resumed == full
    assert params_equal(resumed_model, full_model)
    assert load_checkpoint(ckpt)["epoch"] == 4


def test_resume_of_a_finished_run_trains_nothing(digit_tasks, tiny_loaders, tmp_path):
    ckpt = tmp_path / "c.pt"
    model, history = run(digit_tasks, tiny_loaders, 2, checkpoint=ckpt)
    again_model, again = run(digit_tasks, tiny_loaders, 2, checkpoint=ckpt, resume=True)
    assert again == history and params_equal(model, again_model)


def test_non_finite_loss_names_task_and_epoch_and_keeps_checkpoint(tmp_path):
    tasks = [Task("left", "class", 10), Task("size", "regress", 1)]
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(8, 1, 20, 28, generator=gen), "left": torch.randint(0, 10, (8,), generator=gen),
                "size": torch.rand(8, generator=gen)} for _ in range(3)]

    def poison(epoch, index, batch):
        if epoch == 2 and index == 1:
            batch = dict(batch, size=torch.full((8,), math.nan))
        return batch

    ckpt = tmp_path / "c.pt"
    with pytest.raises(NonFiniteLossError, match=r"loss of task 'size' is nan at epoch 2, step 2.*kept"):
        mu.fit(small_model("split", tasks), ListLoader(batches, poison), tasks, epochs=3, progress=False,
               device="cpu", checkpoint=ckpt)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    good = {"format": CHECKPOINT_FORMAT, "epoch": 1, "w": torch.arange(3.0)}
    save_checkpoint(good, path)

    def broken_save(obj, handle, *a, **k):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert os.listdir(tmp_path) == ["c.pt"], "no temporary file may be left behind"


def test_checkpoints_load_with_weights_only(digit_tasks, tiny_loaders, tmp_path):
    ckpt = tmp_path / "c.pt"
    run(digit_tasks, tiny_loaders, 1, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)  # raises if anything but tensors and plain data is inside
    assert set(state) >= {"model", "optimizer", "weighting", "history", "epoch"}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mtlutils checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_missing_target_and_bad_arguments_are_clear(digit_tasks):
    batches = [{"image": torch.rand(4, 1, 20, 28), "left": torch.randint(0, 10, (4,))}]
    model = small_model("split", digit_tasks)
    with pytest.raises(KeyError, match=r"no target for task\(s\) \['right'\]"):
        mu.fit(model, ListLoader(batches), digit_tasks, epochs=1, progress=False, device="cpu")
    with pytest.raises(TypeError, match="batches must be dicts"):
        mu.fit(model, ListLoader([(torch.rand(4, 1, 20, 28), 0)]), digit_tasks, epochs=1, progress=False,
               device="cpu")
    with pytest.raises(ValueError, match="epochs must be"):
        mu.fit(model, ListLoader(batches), digit_tasks, epochs=0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        mu.fit(model, ListLoader(batches), digit_tasks, optimizer="lbfgs", progress=False, device="cpu")
    with pytest.raises(ValueError, match="weighting is for tasks"):
        mu.fit(model, ListLoader(batches), digit_tasks, mu.weighting.create("equal", ["left"]), device="cpu")


def test_evaluate_is_batch_size_independent(digit_tasks, tiny_digits):
    _, test = tiny_digits
    model = small_model("split", digit_tasks)
    a = mu.evaluate(model, torch.utils.data.DataLoader(test, batch_size=64), digit_tasks)
    b = mu.evaluate(model, torch.utils.data.DataLoader(test, batch_size=7), digit_tasks)
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)


def test_history_state_round_trip():
    h = History(rows=[{"epoch": 1.0, "train/a/loss": 0.5}], seconds=[1.2])
    assert History.from_state(h.state()) == h
    assert History(rows=h.rows, seconds=[9.9]) == h  # wall time does not take part in equality
    timed = History(rows=h.rows, seconds=[1.2], cpu_seconds=[1.1])
    assert History.from_state(timed.state()).cpu_seconds == [1.1]
    old = {k: v for k, v in timed.state().items() if k != "cpu_seconds"}   # a checkpoint from before
    assert History.from_state(old).cpu_seconds == []


class HookedModel(torch.nn.Module):
    """A small split network with the optional hooks of fit: parameter groups, a regulariser and a step
    callback."""

    def __init__(self, tasks):
        super().__init__()
        self.net = small_model("split", tasks)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.steps_seen: list[int] = []

    def forward(self, x):
        return {k: v * self.scale for k, v in self.net(x).items()}

    def param_groups(self, lr):
        return [{"params": self.net.parameters(), "lr": lr}, {"params": [self.scale], "lr": 10 * lr}]

    def regularization(self):
        return 0.1 * self.scale ** 2

    def on_train_step(self, step):
        self.steps_seen.append(step)


def test_model_hooks_param_groups_regularization_and_global_step(digit_tasks, tiny_loaders):
    train, test = tiny_loaders
    model = HookedModel(digit_tasks)
    history = mu.fit(model, train, digit_tasks, epochs=2, lr=1e-3, progress=False, device="cpu")
    steps = len(train)
    assert model.steps_seen == list(range(2 * steps)), "global step counted over epochs"
    reg = history.series("train/model/regularization")
    assert len(reg) == 2 and all(0.0 < r < 0.1 for r in reg)
    # the regulariser's gradient reaches the parameter: without task losses it would pull scale to 0
    assert float(model.scale.detach()) != 0.5

    # the model's groups are used: the second group has 10x the learning rate
    model2 = HookedModel(digit_tasks)
    captured = {}

    def capture_scheduler(opt):
        captured["lrs"] = [g["lr"] for g in opt.param_groups]
        return torch.optim.lr_scheduler.StepLR(opt, step_size=10)

    mu.fit(model2, train, digit_tasks, epochs=1, lr=2e-3, progress=False, device="cpu", scheduler=capture_scheduler)
    assert captured["lrs"] == [2e-3, 2e-2]


def test_resume_with_a_step_hook_restarts_at_the_right_global_step(digit_tasks, tiny_loaders, tmp_path):
    train, _ = tiny_loaders
    ckpt = tmp_path / "h.pt"
    first = HookedModel(digit_tasks)
    with pytest.raises(KeyboardInterrupt):
        mu.fit(first, train, digit_tasks, epochs=2, progress=False, device="cpu", checkpoint=ckpt,
               callbacks=[StopAtEpoch(2)])
    again = HookedModel(digit_tasks)
    mu.fit(again, train, digit_tasks, epochs=2, progress=False, device="cpu", checkpoint=ckpt, resume=True)
    assert again.steps_seen == list(range(len(train), 2 * len(train)))


def test_a_training_step_reads_the_device_at_most_once(digit_tasks, monkeypatch):
    """Host synchronisations (item, float, bool, int, tolist, numpy of a tensor) per training step:
    counted over runs of 3 and 6 steps, so that per-epoch reads cancel out. Reads made inside PyTorch's
    own optimisers are not counted: Adam's step counter lives on the host (a CPU tensor) on every device,
    so reading it never waits for a GPU. (Metrics of the training batches, ``train_metrics=True``, are
    accumulated on the host and read every step; the grids turn them off.)"""
    import sys

    torch_dir = str(Path(torch.__file__).parent)
    gen = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(8, 1, 20, 28, generator=gen), "left": torch.randint(0, 10, (8,), generator=gen),
                "right": torch.randint(0, 10, (8,), generator=gen)} for _ in range(6)]
    calls = {"n": 0}
    for name in ("item", "__float__", "__bool__", "__int__", "tolist", "numpy"):
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, **k):
            if not sys._getframe(1).f_code.co_filename.startswith(torch_dir):
                calls["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def reads(steps):
        model = small_model("split", digit_tasks)
        calls["n"] = 0
        mu.fit(model, ListLoader(batches[:steps]), digit_tasks, epochs=1, progress=False, device="cpu",
               train_metrics=False)
        return calls["n"]

    per_step = (reads(6) - reads(3)) / 3
    assert per_step <= 1, f"{per_step} host synchronisations per step"
