"""Mixed precision: what "auto" picks, what is refused, what is recorded, and that a bf16 run learns as
well as a float32 one (within the spread over seeds)."""
from __future__ import annotations

import statistics

import pytest
import torch

import mtlutils as mu
from mtlutils import precision as P
from mtlutils.train import CheckpointError

from conftest import StopAtEpoch, small_model


def test_auto_picks_bf16_only_where_it_is_fast(monkeypatch):
    monkeypatch.setattr(P, "bf16_is_fast", lambda device: False)
    assert P.resolve("auto", "cpu") == "fp32"
    monkeypatch.setattr(P, "bf16_is_fast", lambda device: True)
    assert P.resolve("auto", "cpu") == "bf16"
    assert P.resolve("fp32", "cpu") == "fp32" and P.resolve("bf16", "cpu") == "bf16"


def test_the_cpu_probe_reads_the_processor_flags(monkeypatch):
    import mtlutils.provenance as prov

    monkeypatch.setattr(prov, "cpu_description", lambda: ("x", "avx2 avx512f fma"))
    assert not P.bf16_is_fast("cpu")
    monkeypatch.setattr(prov, "cpu_description", lambda: ("x", "avx2 avx512_bf16"))
    assert P.bf16_is_fast("cpu")
    assert not P.bf16_is_fast("meta")


def test_fp16_needs_cuda_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        P.resolve("fp16", "cpu")
    with pytest.raises(ValueError, match="valid choices"):
        P.resolve("half", "cpu")


def test_precision_is_recorded_and_part_of_the_checkpoint_settings(digit_tasks, tiny_loaders, tmp_path):
    train, test = tiny_loaders
    ckpt = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        mu.fit(small_model("split", digit_tasks), train, digit_tasks, epochs=2, progress=False, device="cpu",
               precision="bf16", checkpoint=ckpt, callbacks=[StopAtEpoch(2)])
    history = mu.fit(small_model("split", digit_tasks), train, digit_tasks, epochs=2, progress=False,
                     device="cpu", precision="bf16", checkpoint=ckpt, resume=True, val_data=test)
    assert history.precision == "bf16" and len(history) == 2
    with pytest.raises(CheckpointError, match="precision 'bf16'.*'fp32'"):
        mu.fit(small_model("split", digit_tasks), train, digit_tasks, epochs=2, progress=False, device="cpu",
               checkpoint=ckpt, resume=True)


def test_a_bf16_run_reaches_the_float32_metrics_within_the_seed_spread():
    """Hard sharing on small scenes, 3 seeds each way: every metric's bf16 mean lies within twice the
    larger standard deviation over seeds (plus 2 % of the value) of the float32 mean."""
    train = mu.data.make_scenes(96, size=(32, 32), classes=7, seed=0, split="train")
    val = mu.data.make_scenes(48, size=(32, 32), classes=7, seed=0, split="val")
    tasks = [mu.tasks.seg_task(7), mu.TASKS["depth"]]
    results = {"fp32": [], "bf16": []}
    for precision in results:
        for seed in range(3):
            loaders = mu.data.loaders(train, val, batch_size=16, seed=seed)
            mu.seed_everything(seed)
            model = mu.models.create("split", tasks, width=0.125)
            history = mu.fit(model, loaders[0], tasks, epochs=4, lr=3e-3, val_data=loaders[1], progress=False,
                             device="cpu", seed=seed, precision=precision, train_metrics=False)
            results[precision].append({k: v for k, v in history.last().items()
                                       if k.startswith("val/") and not k.endswith("loss")})
    for key in results["fp32"][0]:
        a, b = ([r[key] for r in results[p]] for p in ("fp32", "bf16"))
        spread = 2 * max(statistics.stdev(a), statistics.stdev(b)) + 0.02 * abs(statistics.mean(a))
        assert abs(statistics.mean(a) - statistics.mean(b)) <= spread, (key, a, b)
    # and the run learned something (a tie between two untrained models would prove nothing)
    assert statistics.mean(r["val/seg/pixacc"] for r in results["bf16"]) > 40
