"""Experiment grids as plain TOML: reading, profiles, the schema check, the grid's runs and their settings.

A grid file is checked as a whole when it is read (:func:`load_config`): an unknown key or section, a value
of the wrong type, an unknown architecture, weighting, data kind or option fails *before anything trains*,
with one :class:`ConfigError` that lists every problem by its key path and says what was expected.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import weighting as W
from ..config import PROFILE, PROFILES
from ..data.builders import DATA_KINDS, HEAD_BIAS

DEFAULT_TRAIN: dict[str, Any] = {"epochs": 10, "batch_size": 16, "lr": 1e-3, "optimizer": "adam",
                                 "weight_decay": 0.0, "scheduler": "cosine", "width": 1.0, "last_epochs": 1,
                                 "grad_clip": None}
OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "step", "none")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ConfigError(ValueError):
    """An experiment config that cannot run; the message lists every problem found."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# type name -> (test, what was expected)
TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int>=0": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "int>=1": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "int>=2": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "num>0": (lambda v: _is_num(v) and v > 0, "a finite number > 0"),
    "num>=0": (lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    "fraction": (lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    "str": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "name": (lambda v: isinstance(v, str) and bool(NAME.match(v)) and ".." not in v,
             "a name of letters, digits, '_', '-', '.' (no '/', no '..')"),
    "strings": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
                "a non-empty list of strings"),
    "seeds": (lambda v: isinstance(v, list) and bool(v) and all(_is_int(x) and x >= 0 for x in v),
              "a non-empty list of integers >= 0"),
    "size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x > 0 for x in v),
             "[height, width]: two positive integers"),
    "table": (lambda v: isinstance(v, dict), "a table"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "any": (lambda v: True, "anything"),
}
TRAIN_KEYS = {"epochs": "int>=1", "batch_size": "int>=1", "lr": "num>0", "optimizer": tuple(OPTIMIZERS),
              "weight_decay": "num>=0", "scheduler": tuple(SCHEDULERS), "width": "num>0", "last_epochs": "int>=1",
              "grad_clip": "num>0", "train_metrics": "bool", "precision": ("fp32", "bf16", "fp16", "auto")}
TOP_KEYS = {"name": "name", "description": "str", "baseline": "str", "data": "table", "train": "table",
            "models": "table", "grid": "table", "weighting_options": "table", "profile": "table"}
GRID_KEYS = {"data": "strings", "models": "strings", "weightings": "strings", "seeds": "seeds",
             "single_task": "strings", "weighted_models": "strings", "keep_models": "strings"}
MODEL_KEYS = {"arch": "str", "options": "table", "train": "table"}


def _check_table(table: Mapping[str, Any], schema: Mapping[str, Any], where: str, errors: list[str]) -> None:
    """Append to ``errors`` every unknown key and every value of the wrong type (choices: a tuple)."""
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key not in schema:
            errors.append(f"{path}: unknown key; valid keys here: {sorted(schema)}")
            continue
        spec = schema[key]
        if isinstance(spec, tuple):
            if value not in spec:
                errors.append(f"{path}: expected one of {list(spec)}, got {value!r}")
        elif not TYPES[spec][0](value):
            errors.append(f"{path}: expected {TYPES[spec][1]}, got {value!r} ({type(value).__name__})")


def _keywords(fn: Callable[..., Any]) -> set[str]:
    return {p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _model_option_names(arch: str) -> set[str]:
    """Options a ``[models.<name>] options`` table may set for ``arch``: the architecture's own
    (``OPTIONS``) and every backbone's (``in_channels``, ``hidden``, ...; ``width`` comes from ``train``)."""
    from ..models import ARCHS, BACKBONES

    cls, _ = ARCHS[arch]
    names = set(getattr(cls, "OPTIONS", ()))
    for build in BACKBONES.values():
        names |= _keywords(build)
    return names - {"width", "wide", "deep"}


def validate(cfg: Mapping[str, Any], source: str = "config") -> None:
    """Check a config (profile already applied) against the schema; raise :class:`ConfigError` listing
    every problem. Called by :func:`load_config`."""
    from ..models import ARCHS

    errors: list[str] = []
    _check_table(cfg, TOP_KEYS, "", errors)
    for key in ("name", "data", "grid"):
        if key not in cfg:
            errors.append(f"{key}: missing (every config needs 'name', '[data.<name>]' and '[grid]')")
    if errors:
        raise ConfigError(f"{source}:\n  " + "\n  ".join(errors))
    _check_table(cfg.get("train", {}), TRAIN_KEYS, "train", errors)
    data = cfg["data"]
    for name, section in data.items():
        where = f"data.{name}"
        if not isinstance(section, dict):
            errors.append(f"{where}: expected a table")
            continue
        kind = section.get("kind")
        if kind not in DATA_KINDS:
            errors.append(f"{where}.kind: expected one of {sorted(DATA_KINDS)}, got {kind!r}")
            continue
        schema = {"kind": "str", "tasks": "strings", "head_bias": tuple(HEAD_BIAS), "train": "table",
                  "model_options": "table", **DATA_KINDS[kind].options}
        _check_table(section, schema, where, errors)
        _check_table(section.get("train", {}), TRAIN_KEYS, f"{where}.train", errors)
        for model, options in section.get("model_options", {}).items():
            if not isinstance(options, dict):
                errors.append(f"{where}.model_options.{model}: expected a table")
    models = cfg.get("models", {})
    for name, spec in models.items():
        where = f"models.{name}"
        if not isinstance(spec, dict):
            errors.append(f"{where}: expected a table")
            continue
        _check_table(spec, MODEL_KEYS, where, errors)
        arch = spec.get("arch", name)
        if arch not in ARCHS:
            errors.append(f"{where}.arch: unknown architecture {arch!r}; valid choices: {sorted(ARCHS)}")
            continue
        valid = _model_option_names(arch)
        _check_table(spec.get("options", {}), {k: "any" for k in valid}, f"{where}.options", errors)
        _check_table(spec.get("train", {}), TRAIN_KEYS, f"{where}.train", errors)
    g = cfg["grid"]
    _check_table(g, GRID_KEYS, "grid", errors)
    for key in ("data", "models"):
        if key not in g:
            errors.append(f"grid.{key}: missing")
    for key in GRID_KEYS:
        values = g.get(key, [])
        if isinstance(values, list):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                errors.append(f"grid.{key}: lists {twice} twice")
    for d in g.get("data", []) if isinstance(g.get("data"), list) else []:
        if d not in data:
            errors.append(f"grid.data: {d!r} has no [data.{d}] section")
    model_names = g.get("models", []) if isinstance(g.get("models"), list) else []
    for m in model_names:
        if m not in models and m not in ARCHS:
            errors.append(f"grid.models: {m!r} is neither a [models.{m}] section nor an architecture "
                          f"({sorted(ARCHS)})")
    for w in g.get("weightings", []) if isinstance(g.get("weightings"), list) else []:
        if w not in W.WEIGHTINGS:
            errors.append(f"grid.weightings: unknown weighting {w!r}; valid choices: {sorted(W.WEIGHTINGS)}")
    for key in ("single_task", "weighted_models"):
        extra = [m for m in g.get(key, []) if m not in model_names] if key == "weighted_models" else []
        if extra:
            errors.append(f"grid.{key}: {extra} are not in grid.models")
    for w, options in cfg.get("weighting_options", {}).items():
        if w not in W.WEIGHTINGS:
            errors.append(f"weighting_options.{w}: unknown weighting; valid choices: {sorted(W.WEIGHTINGS)}")
        elif isinstance(options, dict):
            valid = _keywords(W.WEIGHTINGS[w].__init__) - {"self", "task_names", "tasks"}
            _check_table(options, {k: "any" for k in valid}, f"weighting_options.{w}", errors)
    if errors:
        raise ConfigError(f"{source}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def _apply_profile(raw: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a ``[profile.<name>]`` table into the config. A data section whose ``kind`` the profile
    changes (e.g. the scenes -> the real NYUv2) is *replaced* by the profile's section, so that no option
    of the generated data set is carried over to a data set that has no use for it."""
    override = copy.deepcopy(dict(override))
    replaced = {}
    for name, section in dict(override.get("data", {})).items():
        base = raw.get("data", {}).get(name, {})
        if isinstance(section, dict) and "kind" in section and section["kind"] != base.get("kind"):
            replaced[name] = override["data"].pop(name)
    cfg = _merge(dict(raw), override)
    if replaced:
        cfg.setdefault("data", {}).update(replaced)
    return cfg


def load_config(path: str | os.PathLike, profile: str | None = None) -> dict[str, Any]:
    """Read a config file, apply the overrides of ``profile`` (default: the active profile) and check
    the result against the schema (:func:`validate`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment config at {path}")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    profile = profile or PROFILE
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    overrides = raw.pop("profile", {})
    unknown = set(overrides) - set(PROFILES)
    if unknown:
        raise ConfigError(f"{path}: [profile.*] sections must be one of {PROFILES}, got {sorted(unknown)}")
    cfg = _apply_profile(raw, overrides.get(profile, {}))
    validate(cfg, str(path))
    cfg["profile"] = profile
    cfg["source"] = str(path)
    return cfg


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    data: str
    model: str
    weighting: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.data}__{self.model}__{self.weighting}__seed{self.seed}"


def grid(cfg: Mapping[str, Any]) -> list[Run]:
    """Every run of the config, in order (data, model, weighting, seed). Models listed in ``single_task``
    (default ``["single", "stan"]``) run with ``equal`` only; with ``weighted_models``, only those models
    run with every weighting."""
    g = cfg["grid"]
    single = set(g.get("single_task", ["single", "stan"]))
    weighted = set(g.get("weighted_models", g["models"]))
    runs = []
    for data in g["data"]:
        for model in g["models"]:
            for weighting in g.get("weightings", ["equal"]):
                if weighting != "equal" and (model in single or model not in weighted):
                    continue
                for seed in g.get("seeds", [0]):
                    runs.append(Run(data, model, weighting, int(seed)))
    return runs


def run_config(cfg: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The resolved settings of one run (what its result file records and what its hash covers)."""
    spec = dict(cfg.get("models", {}).get(run.model, {}))
    data_section = cfg["data"][run.data]
    arch = spec.get("arch", run.model)
    train = _merge(DEFAULT_TRAIN, cfg.get("train", {}))
    train = _merge(train, spec.get("train", {}))
    train = _merge(train, data_section.get("train", {}))
    data = {k: v for k, v in data_section.items() if k not in ("train", "model_options")}
    options = _merge(spec.get("options", {}), data_section.get("model_options", {}).get(run.model, {}))
    return {"experiment": cfg["name"], "run": run.id, "data_name": run.data, "data": data, "model": run.model,
            "arch": arch, "options": options, "weighting": run.weighting,
            "weighting_options": cfg.get("weighting_options", {}).get(run.weighting, {}), "seed": run.seed,
            "train": train, "profile": cfg["profile"]}


def config_hash(resolved: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of a run's resolved settings: a result or checkpoint counts for a run only
    if its hash matches."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


# the names a run carries in its grid; everything else decides what it trains
NAMING_KEYS = ("experiment", "run", "data_name")


def training_key(resolved: Mapping[str, Any]) -> str:
    """:func:`config_hash` of a run's settings without its names (grid, run id, data section): two runs of
    different grids with the same key train the same network on the same data in the same way, so one
    result serves both (the runner copies it instead of training twice)."""
    return config_hash({k: v for k, v in resolved.items() if k not in NAMING_KEYS})
