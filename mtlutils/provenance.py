"""Provenance of a run, and the rule that decides how closely a repeat must match it.

On a CPU the same seed gives the same numbers *on the same machine, software and thread count*: PyTorch,
oneDNN and MKL choose their kernels by the processor's instruction set at run time, a different thread count
splits sums differently, and another torch build or another version of the code may change the order of
floating-point operations. In a short training run such differences of the last bit grow, step after step,
to the size of the spread over seeds.

So every result file records what bit-equality depends on (:func:`fingerprint`), and a repeat of a
committed run is judged by :func:`compare_repeat` under one of two rules:

* **exact**: every recorded item matches (machine, instruction set, torch build, thread count, processes,
  device, and the code itself, by a hash of the package's sources, which identifies the code that ran even
  when the commit was marked ``+dirty``): the metrics must be *equal*;
* **tolerance**: anything differs (or was not recorded): each metric must lie within ``k`` standard
  deviations over the committed seeds of the same cell (or within a stated relative tolerance when there
  is only one seed). The reasons (which items differ) are part of the answer.
"""
from __future__ import annotations

import hashlib
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

PACKAGE = Path(__file__).resolve().parent
# The instruction-set flags that decide which kernels oneDNN, MKL and ATen run (x86 and Arm).
_ISA_PREFIXES = ("sse", "ssse", "avx", "amx", "fma", "f16c", "vnni", "bf16", "asimd", "sve", "sme", "neon")
_NOT_ISA = {"smep", "smap"}   # x86 security features that share a prefix with Arm's SME
# The items of a fingerprint that must match for the exact rule, in the order reasons are reported.
EXACT_KEYS = ("cpu", "isa", "cpu_capability", "torch", "torch_build", "numpy", "threads", "processes",
              "device", "code")
RESULTS_DIR = "results"      # the runner's output folder, ignored when deciding whether a commit is dirty
DEFAULT_SPREAD_K = 2.0       # tolerance rule: |repeat - committed| <= k * std over the committed seeds
DEFAULT_REL_TOL = 0.10       # ... or, with a single committed seed, 10 % of the committed value


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_description() -> tuple[str, str]:
    """``(cpu model, instruction-set flags)``: the model name with family/model/stepping where known, and
    the sorted instruction-set extensions the kernels can choose from (space separated)."""
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model name") or platform.processor() or platform.machine()
    ident = "/".join(info[k] for k in ("cpu family", "model", "stepping") if k in info)
    flags = (info.get("flags") or info.get("Features") or "").split()
    isa = " ".join(sorted(f for f in set(flags) if f.startswith(_ISA_PREFIXES) and f not in _NOT_ISA))
    return (f"{name} ({ident})" if ident else name), isa


def code_hash() -> str:
    """SHA-256 (first 16 hex digits) of every Python source file of the package, read at the first call
    (the runner calls it when it is imported, so it names the code the process runs even if the files
    change later).

    Two runs with the same hash ran the same training code whatever the git commit (a commit that only
    changes prose or results keeps it)."""
    global _CODE_HASH
    if _CODE_HASH is None:
        _CODE_HASH = _read_code_hash()
    return _CODE_HASH


def _read_code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def git_commit(repo: Path | None = None) -> str:
    """The commit this process's code came from: ``HEAD`` (with ``+dirty`` when tracked files outside
    ``results/`` differed from it) at the first call (the runner calls it when it is imported), so that a
    commit made while a long run trains is not credited with that run; ``"unknown"`` outside git."""
    repo = repo or PACKAGE.parent
    if repo not in _COMMITS:
        _COMMITS[repo] = _read_git_commit(repo)
    return _COMMITS[repo]


def _read_git_commit(repo: Path) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # Result files are the runner's own output (a finished grid rewrites its summary.csv): they do
        # not change the code, so they do not make the commit dirty for the runs trained after them.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){RESULTS_DIR}"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit or "unknown") + ("+dirty" if commit and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Python, PyTorch, NumPy and mtlutils versions."""
    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "mtlutils": __version__}


def fingerprint(device: torch.device | str = "cpu", processes: int = 1) -> dict[str, Any]:
    """Everything bit-equality of a training run depends on besides its settings and seed.

    ``cpu`` model, ``isa`` flags, ``cpu_capability`` (the kernel family ATen dispatches to), ``torch``
    version, ``torch_build`` (a hash of the build configuration: BLAS, oneDNN, compiler), ``numpy``,
    ``threads``, ``processes``, ``device`` (with the GPU's name on CUDA), ``code`` (:func:`code_hash`)."""
    cpu, isa = cpu_description()
    device = torch.device(device)
    dev = str(device)
    if device.type == "cuda" and torch.cuda.is_available():
        dev += f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    return {
        "cpu": cpu, "isa": isa, "cpu_capability": capability, "torch": torch.__version__,
        "torch_build": hashlib.sha256(torch.__config__.show().encode()).hexdigest()[:16],
        "numpy": np.__version__, "threads": torch.get_num_threads(), "processes": processes, "device": dev,
        "code": code_hash(),
    }


@dataclass
class RepeatCheck:
    """The outcome of :func:`compare_repeat`: which rule applied, why, and whether the repeat passed."""

    rule: str                        # "exact" or "tolerance"
    reasons: list[str]               # why that rule (the items that differ, or "all recorded items match")
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)   # per metric: committed, repeat, |diff|, allowed

    def explain(self) -> str:
        """A few lines for a reader: the rule, the reasons, and each metric with its allowed difference."""
        head = {"exact": "exact rule: the metrics must be equal",
                "tolerance": "tolerance rule: each metric must lie within the committed seeds' spread"}[self.rule]
        lines = [f"{head} ({'PASS' if self.passed else 'FAIL'})", "  because: " + "; ".join(self.reasons)]
        for row in self.rows:
            lines.append(f"  {row['metric']:<22} committed {row['committed']:<12.6g} repeat {row['repeat']:<12.6g}"
                         f" |diff| {row['diff']:<10.3g} allowed {row['allowed']:.3g} ({row['basis']})"
                         + ("" if row["ok"] else "  <- outside"))
        return "\n".join(lines)


def _recorded(result: Mapping[str, Any]) -> dict[str, Any] | None:
    return result.get("fingerprint")


def exact_rule_reasons(committed: Mapping[str, Any], repeat: Mapping[str, Any]) -> list[str]:
    """Why the exact rule does *not* apply to this pair of result files (empty list: it applies)."""
    a, b = _recorded(committed), _recorded(repeat)
    if a is None:
        return ["the committed run records no fingerprint (made before fingerprints were recorded)"]
    if b is None:
        return ["the repeat records no fingerprint"]
    reasons = [f"{key}: {a.get(key)!r} vs {b.get(key)!r}" for key in EXACT_KEYS if a.get(key) != b.get(key)]
    pa, pb = committed.get("precision", "fp32"), repeat.get("precision", "fp32")
    if pa != pb:
        reasons.append(f"precision: {pa!r} vs {pb!r}")
    return reasons


def compare_repeat(committed: Mapping[str, Any], repeat: Mapping[str, Any],
                   seed_runs: Sequence[Mapping[str, Any]] = (), k: float = DEFAULT_SPREAD_K,
                   rel_tol: float = DEFAULT_REL_TOL) -> RepeatCheck:
    """Judge a repeated run against the committed one (both result dicts with ``metrics``).

    ``seed_runs`` are the committed runs of the same cell (same settings, every seed, ``committed``
    included); their sample standard deviation per metric sets the tolerance rule's allowance ``k * std``.
    With fewer than two finite values, the allowance is ``rel_tol * |committed value|``."""
    metrics_a, metrics_b = committed.get("metrics") or {}, repeat.get("metrics") or {}
    if set(metrics_a) != set(metrics_b):
        return RepeatCheck("tolerance", [f"different metrics: {sorted(metrics_a)} vs {sorted(metrics_b)}"], False)
    reasons = exact_rule_reasons(committed, repeat)
    rule = "tolerance" if reasons else "exact"
    rows = []
    for metric in metrics_a:
        va, vb = float(metrics_a[metric]), float(metrics_b[metric])
        diff = abs(va - vb) if math.isfinite(va) and math.isfinite(vb) else math.inf
        if rule == "exact":
            allowed, basis, ok = 0.0, "bit-equal", va == vb or (math.isnan(va) and math.isnan(vb))
        else:
            values = [float(r["metrics"][metric]) for r in seed_runs if metric in (r.get("metrics") or {})]
            values = [v for v in values if math.isfinite(v)]
            if len(values) >= 2:
                std = float(np.std(values, ddof=1))
                allowed, basis = k * std, f"{k:g} x std of {len(values)} seeds"
            else:
                allowed, basis = rel_tol * abs(va), f"{rel_tol:.0%} of the committed value"
            ok = diff <= allowed
        rows.append({"metric": metric, "committed": va, "repeat": vb, "diff": diff, "allowed": allowed,
                     "basis": basis, "ok": ok})
    return RepeatCheck(rule, reasons or ["all recorded items match"], all(r["ok"] for r in rows), rows)


_CODE_HASH: str | None = None
_COMMITS: dict[Path, str] = {}
