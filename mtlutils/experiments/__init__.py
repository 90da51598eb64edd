"""The experiment runner: a grid of (data × model × weighting × seed) from a plain TOML file.

    python -m mtlutils.experiments run experiments/mtan_scenes.toml        # resumable
    python -m mtlutils.experiments aggregate experiments/mtan_scenes.toml  # tables: mean ± std, Δ_MTL
    python -m mtlutils.experiments list experiments/*.toml                 # what a grid contains
    torchrun --nproc_per_node=2 -m mtlutils.experiments run CONFIG         # several processes (DDP)

A config file (see ``experiments/*.toml``) holds

* ``name`` (results go to ``results/<name>/``), ``description``, ``baseline`` (the model that Δ_MTL is
  measured against, usually ``"single"``);
* ``[data.<name>]``: ``kind`` (:data:`DATA_KINDS`) and its options (sizes, classes, ``n_train`` ...),
  optionally ``train`` overrides and ``model_options.<model>`` (model options that depend on the data,
  e.g. a regulariser scaled by the number of training images);
* ``[train]``: ``epochs``, ``batch_size`` (global), ``lr``, ``optimizer``, ``weight_decay``, ``scheduler``
  (``"cosine"``, ``"step"`` or ``"none"``), ``width``, ``last_epochs`` (the protocol: metrics are the mean
  of the last N epochs' validation metrics, as the MTAN paper averages its last 10 epochs);
* ``[models.<name>]`` (optional): ``arch`` plus ``options`` passed to ``models.create`` and ``train``
  overrides; a grid entry that names an architecture directly needs no section;
* ``[grid]``: lists ``data``, ``models``, ``weightings``, ``seeds``; ``keep_models`` (globs over run ids)
  names the runs whose trained weights are kept beside their result (for figures of trained models); models listed in ``single_task``
  (default ``["single", "stan"]``) run with ``equal`` weighting only, since a weighting of one loss per
  network changes nothing but the learning-rate scale; if ``weighted_models`` is given, only those models
  run with every weighting and the others with ``equal`` only (a smaller grid);
* ``[profile.quick]`` / ``[profile.paper]``: nested overrides for a profile (``MTL_PROFILE``).

Checking: the whole file is checked against a schema when it is read (unknown keys, wrong types, unknown
architectures, weightings or data kinds fail before anything trains, naming the key and what was expected).

Each finished run writes ``results/<name>/runs/<run id>.json``: the command, the resolved config and its
hash, the git commit, seed, device, number of processes, library versions, the machine's fingerprint
(:func:`mtlutils.provenance.fingerprint`: what bit-equality of a repeat depends on), wall time, the final metrics
under the stated protocol and the per-epoch history. A run whose file exists with the same config hash is
skipped; a run that another grid trained with the same settings gets a copy of that result (``copied_from``
names it; ``--no-reuse`` trains it anyway); an interrupted run resumes from its checkpoint (``checkpoints/<name>/<run id>.<hash>.pt``,
git-ignored, named by the hash of the run's settings and deleted once the result is written). Only the main
process writes files.

Modules: :mod:`~mtlutils.experiments.config` (files, schema, the grid), :mod:`~mtlutils.experiments.runner`
(training runs, result files), :mod:`~mtlutils.experiments.cli`,
:mod:`~mtlutils.experiments.state` (which runs of a grid have results: chapters judge complete grids only); the cross-run tables live in
:mod:`mtlutils.tables` and the data builders in :mod:`mtlutils.data.builders`.
"""
from __future__ import annotations

from ..data.builders import DATA_KINDS, build_data, input_channels
from ..tables import cell_runs, deltas_per_run, did_not_learn, metric_columns, runs_frame, summarise, verdict
from .config import (DEFAULT_TRAIN, ConfigError, Run, config_hash, grid, load_config, run_config,
                     training_key, validate)
from .runner import (REPO, RESULT_FORMAT, adopt_twin, aggregate, checkpoint_path, execute, find_twin, is_done,
                     keeps_model, load_model,
                     load_results, make_loaders, model_path, protocol_metrics, read_result, run_grid,
                     training_cpu_seconds, training_seconds,
                     write_result)
from .state import (COMPLETE_ENV, GridState, IncompleteResultsError, complete_required, demand_complete,
                    grid_state, pending_markdown)
from .. import distributed

__all__ = ["pending_markdown", "DATA_KINDS", "build_data", "input_channels", "cell_runs", "deltas_per_run", "did_not_learn", "metric_columns",
           "runs_frame", "summarise", "verdict", "DEFAULT_TRAIN", "ConfigError", "Run", "config_hash", "grid",
           "load_config", "run_config", "training_key", "validate", "adopt_twin", "find_twin", "REPO", "RESULT_FORMAT", "aggregate", "checkpoint_path",
           "execute", "is_done", "keeps_model", "load_model", "model_path", "load_results", "make_loaders", "protocol_metrics", "read_result", "run_grid",
           "training_cpu_seconds", "training_seconds",
           "write_result", "COMPLETE_ENV", "GridState", "IncompleteResultsError", "complete_required",
           "demand_complete", "grid_state", "distributed"]
