"""Cross-run tables: the plateau criterion and the last-quarter gain, on hand-made histories."""
import pytest

from mtlutils import tables


def _history(values_miou, values_err):
    return [{"epoch": i + 1, "val/seg/miou": m, "val/depth/abs_err": e, "val/seg/loss": 1.0}
            for i, (m, e) in enumerate(zip(values_miou, values_err))]


def test_last_quarter_gain_is_signed_by_the_metric_direction():
    h = _history([10, 20, 30, 40, 50, 50, 51, 52], [1.0, 0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.5])
    gains = tables.last_quarter_gain(h)       # 8 epochs: from the end of epoch 6 to the end of epoch 8
    assert gains["seg/miou"] == pytest.approx(100 * 2 / 50)
    assert gains["depth/abs_err"] == pytest.approx(100 * 0.1 / 0.6)    # an error that fell is a gain
    assert "seg/loss" not in gains


def test_plateau_holds_only_when_every_metric_gains_less_than_the_threshold():
    def run(seed, miou):
        return {"config": {"model": "single", "weighting": "equal", "data_name": "d"}, "seed": seed,
                "status": "finished", "history": _history(miou, [1.0] * len(miou))}

    flat = run(0, [10, 20, 30, 30.1])
    rising = run(1, [10, 20, 30, 33])
    table = tables.plateau([flat, rising], "single")
    assert table.loc[("d", 0), "plateau"] and not table.loc[("d", 1), "plateau"]
    assert table.loc[("d", 1), "largest gain metric"] == "seg/miou"
    with pytest.raises(ValueError, match="no finished run"):
        tables.plateau([flat], "mtan")


def test_verdict_rule_and_refusals():
    """The claim rule on hand-made cases, and a clear error where a NaN would read as 'within the spread'."""
    from mtlutils.tables import verdict
    assert verdict(2.0, 0.5, 1.0, 0.25) == "held"
    assert verdict(1.0, 0.5, 2.0, 0.25) == "reversed"
    assert verdict(1.75, 0.5, 1.0, 0.25) == "within the spread"        # gap equal to the spread
    assert verdict(1.0, 0.1, 2.0, 0.1, higher_is_better=False) == "held"
    for args in [(float("nan"), 0.1, 1.0, 0.1), (1.0, float("nan"), 1.0, 0.1), (1.0, 0.1, 1.0, float("nan"))]:
        with pytest.raises(ValueError, match="NaN"):
            verdict(*args)
    with pytest.raises(ValueError, match="negative"):
        verdict(1.0, -0.1, 1.0, 0.1)


def test_did_not_learn_flags_a_finished_run_whose_losses_stayed_flat():
    from mtlutils.tables import did_not_learn

    def run(seg, normal, status="finished"):
        return {"status": status, "history": [{"epoch": e + 1, "train/seg/loss": s, "train/normal/loss": n}
                                              for e, (s, n) in enumerate(zip(seg, normal))]}

    flat = run([2.8, 2.293, 2.285, 2.278], [0.456, 0.419, 0.419, 0.419])   # a collapsed run (values of one)
    assert did_not_learn(flat)
    learning = run([2.6, 2.09, 1.95, 1.03], [0.43, 0.37, 0.34, 0.18])
    assert not did_not_learn(learning)
    one_task_learns = run([2.8, 2.29, 2.28, 2.28], [0.45, 0.40, 0.30, 0.20])
    assert not did_not_learn(one_task_learns)
    assert not did_not_learn(run([2.8, 2.29, 2.28], [0.4, 0.4, 0.4], status="diverged"))
    assert not did_not_learn(run([2.8, 2.29], [0.4, 0.4]))           # too short to tell
    assert did_not_learn(run([2.8, 2.29, 2.30], [0.4, 0.4, 0.4]), tolerance=0.01)
    assert not did_not_learn(run([2.8, 2.29, 2.20], [0.4, 0.4, 0.4]), tolerance=0.01)


def test_metrics_better_counts_strict_wins_in_each_direction():
    reference = {"seg/miou": 20.0, "depth/abs_err": 0.5, "normal/mean": 30.0}
    metrics = list(reference)
    assert tables.metrics_better(reference, reference, metrics) == 0      # a tie is not a win
    row = {"seg/miou": 21.0, "depth/abs_err": 0.5, "normal/mean": 31.0}   # better, tie, worse
    assert tables.metrics_better(row, reference, metrics) == 1
    row = {"seg/miou": 19.0, "depth/abs_err": 0.4, "normal/mean": 29.0}   # worse, better, better
    assert tables.metrics_better(row, reference, metrics) == 2


def test_largest_weight_change_reads_finished_runs_of_one_weighting():
    def run(weighting, status, weights):
        return {"config": {"weighting": weighting}, "status": status,
                "history": [{"epoch": e, **{f"weight/{t}": w for t, w in ws.items()}}
                            for e, ws in enumerate(weights, 1)]}
    runs = [run("dwa", "finished", [{"a": 1.0, "b": 1.0}, {"a": 1.2, "b": 0.8}]),
            run("dwa", "diverged", [{"a": 3.0, "b": -1.0}]),          # not finished: ignored
            run("uncertainty", "finished", [{"a": 0.1, "b": 1.9}])]    # another weighting
    assert tables.largest_weight_change(runs, "dwa") == pytest.approx(0.2)
    assert tables.largest_weight_change(runs, "uncertainty") == pytest.approx(0.9)
    assert tables.largest_weight_change(runs, "equal") is None


def test_floor_margins_judge_every_seed_and_sign_by_direction():
    # floor: miou 2 (higher is better), abs_err 1.0 (lower is better), a zero-floor metric left out
    floor = {"seg/miou": 2.0, "depth/abs_err": 1.0, "normal/within_11.25": 0.0}
    runs = [{"seed": s, "status": "finished",
             "metrics": {"seg/miou": m, "depth/abs_err": e, "normal/within_11.25": 5.0}}
            for s, m, e in [(0, 10.0, 0.5), (1, 12.0, 0.6), (2, 2.1, 0.9)]]
    runs.append({"seed": 3, "status": "diverged", "metrics": {}})
    per_seed, worst = tables.floor_margins(runs, floor)
    assert len(per_seed) == 3 * 2                        # finished runs x metrics with a non-zero floor
    worst = worst.set_index("metric")
    assert worst.loc["seg/miou", "seed"] == 2
    assert worst.loc["seg/miou", "margin %"] == pytest.approx(100 * 0.1 / 2.0)
    assert worst.loc["depth/abs_err", "seed"] == 2
    assert worst.loc["depth/abs_err", "margin %"] == pytest.approx(100 * 0.1 / 1.0)  # lower error: positive
    # the mean over seeds would hide seed 2: far above 10 % for both metrics
    mean_miou = sum(r["metrics"]["seg/miou"] for r in runs[:3]) / 3
    assert 100 * (mean_miou - 2.0) / 2.0 > 10 > worst.loc["seg/miou", "margin %"]
