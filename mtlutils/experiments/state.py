"""How far a grid has trained: the chapters read a grid's results whole, or say that it is still training.

The grids of ``experiments/`` take hours (``make reproduce``); the book is built while they train and
after. A chapter asks :func:`grid_state` which runs have a result, prints :meth:`GridState.describe`, and
draws its tables, verdicts and findings only from a complete grid (:attr:`GridState.complete`); otherwise
it shows :meth:`GridState.pending_markdown` in their place. Nothing is judged on part of a grid.

``MTL_RESULTS_COMPLETE=1`` turns a missing run into an error (:func:`demand_complete`), for a build that must
show every result (after ``make reproduce``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .config import Run, grid
from .runner import load_results, training_cpu_seconds, training_seconds

COMPLETE_ENV = "MTL_RESULTS_COMPLETE"


class IncompleteResultsError(RuntimeError):
    """A grid lacks results where a complete set was demanded (``MTL_RESULTS_COMPLETE=1``)."""


@dataclass(frozen=True)
class GridState:
    """The planned runs of one grid and the result files found for them (same config hash only)."""

    name: str
    planned: tuple[Run, ...]
    runs: tuple[dict[str, Any], ...]

    @property
    def done_ids(self) -> set[str]:
        return {r["run"] for r in self.runs}

    @property
    def missing(self) -> list[str]:
        """Run ids without a result, in grid order."""
        done = self.done_ids
        return [run.id for run in self.planned if run.id not in done]

    @property
    def complete(self) -> bool:
        return not self.missing

    def cells_complete(self, data: Iterable[str] | None = None, models: Iterable[str] | None = None) -> bool:
        """True if every planned run of the given data sections and models has a result."""
        data, models = (set(data) if data else None), (set(models) if models else None)
        done = self.done_ids
        return all(run.id in done for run in self.planned
                   if (data is None or run.data in data) and (models is None or run.model in models))

    def describe(self) -> str:
        """One line: runs with a result out of the planned ones, and the training time they took."""
        hours = sum(training_seconds(r) for r in self.runs) / 3600
        state = "complete" if self.complete else "incomplete: `make reproduce` trains the missing runs"
        return (f"grid {self.name}: {len(self.runs)} of {len(self.planned)} runs have a result "
                f"({hours:.1f} run-hours); {state}")

    def core_hours_left(self) -> float | None:
        """CPU time the missing runs would take, in hours of one thread, at the mean CPU time of the
        finished runs (:func:`training_cpu_seconds`; ``None`` before any run has a known one). Cells differ
        in cost (models, steps), so this is a rough guide; ``benchmarks/estimate_reproduce.py`` measures
        every cell."""
        times = [t for t in map(training_cpu_seconds, self.runs) if t]
        if not times:
            return None
        return len(self.missing) * sum(times) / len(times) / 3600

    def pending_markdown(self, what: str = "This section") -> str:
        """Markdown that stands in for results drawn from this incomplete grid (:func:`pending_markdown`)."""
        return pending_markdown([self], what)


def _command(names: Sequence[str]) -> str:
    files = " ".join(f"experiments/{name}.toml" for name in names)
    return f"`make reproduce EXPERIMENTS=\"{files}\"`" if len(names) > 1 else \
        f"`make reproduce EXPERIMENTS={files}`"


def pending_markdown(states: Sequence[GridState], what: str = "This section") -> str:
    """Markdown that stands in for results drawn from one or more grids that are not all complete: what is
    missing, the command that trains it, and a rough cost. Only the incomplete ones of ``states`` are
    named; ``ValueError`` if every one is complete (there is nothing pending to say)."""
    waiting = [state for state in states if not state.complete]
    if not waiting:
        raise ValueError(f"pending_markdown: every grid of {[s.name for s in states]} is complete")
    hours = [state.core_hours_left() for state in waiting]
    cost = ("" if None in hours else
            f" At the mean CPU time of the finished runs, the missing ones take about {sum(hours):.1f} "
            "core-hours (`make reproduce` runs one process per core).")
    if len(waiting) == 1:
        state = waiting[0]
        example = ", ".join(f"`{m}`" for m in state.missing[:2])
        found = (f"the complete grid `{state.name}`, which has results for {len(state.runs)} of its "
                 f"{len(state.planned)} runs so far (missing, for example, {example})")
    else:
        found = "the complete grids " + ", ".join(
            f"`{state.name}` ({len(state.runs)} of {len(state.planned)} runs)" for state in waiting[:-1])
        last = waiting[-1]
        found += f" and `{last.name}` ({len(last.runs)} of {len(last.planned)} runs)"
    return (f"**Pending.** {what} reads {found}. Nothing is judged on part of a grid: train "
            f"{'it' if len(waiting) == 1 else 'them'} with {_command([s.name for s in waiting])} "
            "(resumable; `make reproduce` trains every grid) and build the book again." + cost)


def grid_state(cfg: Mapping[str, Any], results_root: Path | None = None) -> GridState:
    """The state of grid ``cfg`` (a loaded config) under ``results_root`` (default ``results/``)."""
    return GridState(str(cfg["name"]), tuple(grid(cfg)), tuple(load_results(cfg, results_root)))


def complete_required() -> bool:
    """True when the environment demands complete results (``MTL_RESULTS_COMPLETE=1``)."""
    return os.environ.get(COMPLETE_ENV, "") == "1"


def demand_complete(state: GridState) -> None:
    """Raise :class:`IncompleteResultsError` if results must be complete and ``state`` is not."""
    if complete_required() and not state.complete:
        raise IncompleteResultsError(
            f"{state.name}: {len(state.missing)} of {len(state.planned)} runs have no result "
            f"(e.g. {state.missing[:3]}); run `make reproduce`, or unset {COMPLETE_ENV} to build with the "
            "sections of incomplete grids marked pending")
