"""Tables across runs, shared by the runner and the chapters: one row per run, mean ± std over seeds,
Δ_MTL against a baseline, and the claim rule of the reproduction chapter.

A run is a result dict (see :mod:`mtlutils.experiments`) with ``config`` (``data_name``, ``model``,
``weighting``), ``seed``, ``parameters``, ``status``, ``seconds_per_epoch`` and ``metrics``
(``<task>/<metric>``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .metrics import delta_mtl


def cell_runs(results: Sequence[Mapping[str, Any]], like: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The results of the same cell as ``like`` (same data, model and weighting; every seed)."""
    key = tuple(like["config"][k] for k in ("data_name", "model", "weighting"))
    return [r for r in results if tuple(r["config"][k] for k in ("data_name", "model", "weighting")) == key]


def runs_frame(results: Sequence[Mapping[str, Any]]):
    """One row per run: ``data``, ``model``, ``weighting``, ``seed``, ``parameters``, ``diverged`` (0/1),
    ``seconds_per_epoch`` and the metrics (``<task>/<metric>``, empty for a diverged run)."""
    import pandas as pd

    if not results:
        raise ValueError("no results to summarise: run the grid first")
    records = [{"data": r["config"]["data_name"], "model": r["config"]["model"],
                "weighting": r["config"]["weighting"], "seed": r["seed"], "parameters": r["parameters"],
                "diverged": int(r.get("status") == "diverged"),
                "seconds_per_epoch": float(np.mean(r["seconds_per_epoch"])) if r["seconds_per_epoch"] else np.nan,
                **r["metrics"]} for r in results]
    return pd.DataFrame.from_records(records)


def metric_columns(frame) -> list[str]:
    """The metric columns (``<task>/<metric>``, not their `` std``) of a :func:`runs_frame` or
    :func:`summarise` table."""
    return [c for c in frame.columns if "/" in c and not c.endswith(" std")]


def _delta(row: Mapping[str, float], base: Mapping[str, float], metrics: Sequence[str]) -> float:
    """Δ_MTL over the metrics with a finite, non-zero baseline (a relative change needs one)."""
    usable = [m for m in metrics if math.isfinite(row[m]) and math.isfinite(base[m]) and base[m] != 0]
    return delta_mtl({m: row[m] for m in usable}, {m: base[m] for m in usable}) if usable else float("nan")


def metrics_better(row: Mapping[str, float], reference: Mapping[str, float], metrics: Sequence[str]) -> int:
    """On how many of ``metrics`` (``<task>/<metric>`` names) ``row`` is *strictly* better than
    ``reference``, in each metric's direction (:data:`mtlutils.metrics.HIGHER_IS_BETTER`): a tie is not
    a win, so a row compared with itself scores 0."""
    from .metrics import HIGHER_IS_BETTER

    def better(name: str) -> bool:
        a, b = row[name], reference[name]
        return a > b if HIGHER_IS_BETTER[name.split("/")[-1]] else a < b

    return sum(better(m) for m in metrics)


def verdict(a_mean: float, a_std: float, b_mean: float, b_std: float, higher_is_better: bool = True) -> str:
    """The claim rule of the reproduction chapter for "A is better than B", from means and standard
    deviations over seeds: ``"held"`` if A's mean is better by more than ``a_std + b_std``, ``"reversed"``
    if worse by more than that, ``"within the spread"`` otherwise (a gap equal to the spread included).

    A NaN argument (a cell without finished runs, or a single seed's std left as NaN) raises
    :class:`ValueError`: compared with NaN every test is false, which would read as "within the spread"
    without any evidence. A caller that fills a single seed's std with 0 (as :func:`summarise` does) gets
    a verdict with no spread: check the number of seeds first."""
    values = {"a_mean": a_mean, "a_std": a_std, "b_mean": b_mean, "b_std": b_std}
    missing = [name for name, value in values.items() if math.isnan(value)]
    if missing:
        raise ValueError(f"verdict: {', '.join(missing)} is NaN (a cell without finished runs, or the std of "
                         f"a single seed); a claim needs the mean and spread of at least 2 seeds per side")
    if a_std < 0 or b_std < 0:
        raise ValueError(f"verdict: a standard deviation cannot be negative (a_std={a_std}, b_std={b_std})")
    gap = (a_mean - b_mean) if higher_is_better else (b_mean - a_mean)
    spread = a_std + b_std
    if gap > spread:
        return "held"
    if gap < -spread:
        return "reversed"
    return "within the spread"


def deltas_per_run(results: Sequence[Mapping[str, Any]], baseline: str = "single"):
    """:func:`runs_frame` with a ``delta_mtl_%`` column: each run against the ``baseline`` model's mean
    over seeds (same data, equal weighting), so that the spread of Δ_MTL over seeds can be read."""
    frame = runs_frame(results)
    metrics = metric_columns(frame)
    means = frame[frame["diverged"] == 0].groupby(["data", "model", "weighting"])[metrics].mean()
    deltas = []
    for _, row in frame.iterrows():
        key = (row["data"], baseline, "equal")
        deltas.append(_delta(row, means.loc[key], metrics) if key in means.index and not row["diverged"]
                      else float("nan"))
    frame["delta_mtl_%"] = deltas
    return frame


def summarise(results: Sequence[Mapping[str, Any]], baseline: str | None = "single"):
    """A table with one row per (data, model, weighting): mean and std over seeds of every metric,
    the number of seeds that finished and that diverged, parameters, seconds per epoch, and Δ_MTL (in %) of
    the means against the ``baseline`` model of the same data (equal weighting). Diverged runs have no
    metrics and do not enter the means; a metric whose baseline mean is 0 (no relative change defined)
    is left out of Δ_MTL."""
    frame = runs_frame(results)
    metric_cols = metric_columns(frame)
    keys = ["data", "model", "weighting"]
    grouped = frame.groupby(keys, sort=False)
    table = grouped[metric_cols].mean()
    std = grouped[metric_cols].std(ddof=1).fillna(0.0)
    table = table.join(std.add_suffix(" std"))
    # seeds that count: per cell, the fewest finite values of any metric (a finished run has them all)
    table["seeds"] = grouped[metric_cols].count().min(axis=1) if metric_cols else 0
    table["diverged"] = grouped["diverged"].sum()
    table["parameters"] = grouped["parameters"].first()
    table["seconds_per_epoch"] = grouped["seconds_per_epoch"].mean()
    if baseline is not None:
        table["delta_mtl_%"] = [_delta(row, table.loc[(data, baseline, "equal")], metric_cols)
                                if (data, baseline, "equal") in table.index else float("nan")
                                for (data, _, _), row in table.iterrows()]
    return table.reset_index()


def last_quarter_gain(history: Sequence[Mapping[str, float]], fraction: float = 0.25) -> dict[str, float]:
    """How much each validation metric improved over the last ``fraction`` of training, in % of its value
    at the start of that stretch (positive = better, whatever the metric's direction).

    ``history`` is a result's per-epoch rows (``val/<task>/<metric>``). With E epochs the stretch runs
    from the end of epoch ``E - round(fraction * E)`` to the end of epoch E."""
    from .metrics import HIGHER_IS_BETTER

    epochs = len(history)
    if epochs < 2:
        raise ValueError("the plateau needs at least two epochs of history")
    back = max(1, round(fraction * epochs))
    start, end = history[epochs - 1 - back], history[-1]
    gains = {}
    for key in start:
        if not key.startswith("val/") or key.endswith("/loss"):
            continue
        a, b = start[key], end[key]
        sign = 1.0 if HIGHER_IS_BETTER[key.split("/")[-1]] else -1.0
        gains[key[4:]] = 100.0 * sign * (b - a) / abs(a) if a else float("nan")
    return gains


def did_not_learn(result: Mapping[str, Any], tolerance: float = 0.01) -> bool:
    """Whether a *finished* run stalled: every task's training loss at the last epoch lies within
    ``tolerance`` (relative) of its value at epoch 2 (after the first epoch's fall to a constant
    prediction). Such a run has finite metrics, so the claim rule counts it, though it never trained: a
    chapter should say so. False for diverged runs, runs of fewer than 3 epochs, and runs whose history
    has no training losses."""
    history = result.get("history") or []
    if result.get("status") != "finished" or len(history) < 3:
        return False
    keys = [k for k in history[-1] if k.startswith("train/") and k.endswith("/loss")]
    if not keys:
        return False
    return all(abs(history[-1][k] - history[1][k]) <= tolerance * abs(history[1][k]) for k in keys)


def largest_weight_change(results: Sequence[Mapping[str, Any]], weighting: str = "dwa") -> float | None:
    """The largest ``|λ_t − 1|`` of the task weights (``weight/<task>`` in the history) over every epoch,
    task and *finished* run trained with ``weighting``; ``None`` when no such run recorded its weights.
    For DWA (MTAN paper, eq. 7) a value near 0 means the run trained nearly as equal weighting does."""
    gaps = [abs(value - 1.0) for r in results
            if r["config"].get("weighting") == weighting and r.get("status") == "finished"
            for row in r.get("history") or [] for key, value in row.items() if key.startswith("weight/")]
    return max(gaps) if gaps else None


def plateau(results: Sequence[Mapping[str, Any]], model: str, threshold: float = 2.0):
    """The plateau criterion of the reproduction chapter for one grid: for every run of ``model`` (the
    single-task baseline, equal weighting), the largest improvement of any validation metric over the last
    quarter of training (:func:`last_quarter_gain`); the criterion holds when it is below ``threshold`` %
    for every run. Returns a table with one row per (data, seed): ``epochs``, the worst metric, its gain
    and whether it is below the threshold."""
    import pandas as pd

    rows = []
    for r in results:
        if r["config"]["model"] != model or r["config"]["weighting"] != "equal" or r.get("status") != "finished":
            continue
        gains = last_quarter_gain(r["history"])
        worst = max(gains, key=lambda k: gains[k])
        rows.append({"data": r["config"]["data_name"], "seed": r["seed"], "epochs": len(r["history"]),
                     "largest gain metric": worst, "largest gain %": gains[worst],
                     "plateau": gains[worst] < threshold})
    if not rows:
        raise ValueError(f"no finished run of {model!r} with equal weighting in these results")
    return pd.DataFrame(rows).set_index(["data", "seed"])


def floor_margins(results: Sequence[Mapping[str, Any]], floor: Mapping[str, float]):
    """How far each run lies above the floor: for every finished run and every metric of ``floor`` (the
    scores of a prediction that ignores the input, e.g. :func:`mtlutils.baselines.constant_predictor_scores`),
    the relative change of the run's metric against the floor's, in % and signed so that positive is
    better (Δ_MTL of one metric). One row per (seed, metric), then the worst seed per metric: a seed that
    did not learn a metric hides in a mean over seeds, so each seed is judged on its own. Metrics whose
    floor is 0 (no relative change defined) are left out. Returns ``(per_seed, worst)``; ``worst`` has one
    row per metric with the seed that is lowest above the floor."""
    import pandas as pd

    columns = ["metric", "seed", "margin %"]
    rows = [{"metric": metric, "seed": r["seed"], "margin %": delta_mtl({metric: r["metrics"][metric]},
                                                                      {metric: value})}
            for r in results if r.get("status", "finished") == "finished"
            for metric, value in floor.items() if value and metric in r["metrics"]]
    per_seed = pd.DataFrame(rows, columns=columns)
    worst = per_seed.loc[per_seed.groupby("metric", sort=False)["margin %"].idxmin()].reset_index(drop=True)
    return per_seed, worst
