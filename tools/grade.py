"""Grade student notebooks: run each in a fresh kernel and collect every ``mtlutils.checks`` result.

``make grade SUBMISSIONS=dir`` runs this.  Every ``*.ipynb`` under ``SUBMISSIONS`` (searched
recursively, ``.ipynb_checkpoints`` skipped) is executed top to bottom in its own new Python kernel,
in the notebook's folder, with ``MTL_PROFILE=quick`` (``--profile``) and a time limit for the whole
notebook, kernel start included (``--timeout``, seconds).  A cell that raises does not stop the notebook (a stub that raises
``NotImplementedError`` must not hide the checks after it); a notebook that runs out of time, or
whose kernel dies, is recorded as such and the grading goes on with the next one.

How the checks are collected: the kernel starts with a throwaway IPython profile whose startup file
(``RECORDER`` below) installs an import hook.  When the notebook imports ``mtlutils.checks``, every
public ``check_*`` function of that module is wrapped so that each call made by the notebook (not the
calls one check makes to another) appends one JSON line (check, passed, error, tolerance, message,
seconds) to the file named by ``$MTL_GRADE_LOG``.  ``mtlutils/checks.py`` is not changed, and a result
is recorded whether or not the check prints it (``verbose=False``) and however the notebook imported
it (``mu.checks.check_x``, ``from mtlutils.checks import check_x``).  The kernel imports the
``mtlutils`` of this repository (it is put first on ``PYTHONPATH``).

Which exercise a check belongs to: the last ``{exercise}`` directive in a markdown cell above the cell
that called it, numbered per chapter as the book numbers it ("Exercise 5.1": the chapter number from
the notebook's ``# 5. Title`` or from its file name).  A check that the notebook, or the repository's
chapter of the same file name (``--reference``), calls as ``checks.check_x(...)`` but that never ran
gets a ``NOT RUN`` row, so deleting a check cell does not hide an exercise (a submission renamed
``05_sfg_alice.ipynb`` is matched with the chapter ``05_*.ipynb``).

The CSV (``--out``) has one row per check call and one row per notebook::

    notebook, exercise, label, check, status, error, tolerance, message, seconds

* a check row: ``status`` is ``PASS``, ``FAIL`` or ``NOT RUN``; ``error`` / ``tolerance`` are the
  measured error and the bound it was held to (empty when the check reports none); ``seconds`` is
  the time the check took;
* a notebook row: ``check`` is ``(notebook)``, ``status`` is ``RAN`` (every cell ran without an
  error), ``ERRORS`` (it ran to the end, some cells raised: listed in ``message``), ``TIMEOUT`` or
  ``CRASH`` (the kernel died, would not start, or the file is not a notebook); ``seconds`` is the
  notebook's wall time.

A summary line follows on stdout.  Usage::

    python tools/grade.py SUBMISSIONS [--out grades.csv] [--timeout 900] [--profile quick]
                          [--executed DIR] [--reference notebooks]

``--executed DIR`` also saves every executed notebook (with its outputs) under ``DIR``.  Exit status:
0 when every notebook was graded (whatever the results), 2 when there is nothing to grade.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["notebook", "exercise", "label", "check", "status", "error", "tolerance", "message", "seconds"]
NOTEBOOK_ROW = "(notebook)"

# The startup file of the kernel's throwaway IPython profile. It imports nothing of mtlutils itself
# (the notebook may set MTL_PROFILE before its first import), it only waits for mtlutils.checks.
RECORDER = r'''
"""Installed by tools/grade.py: record every mtlutils.checks result of this kernel in $MTL_GRADE_LOG."""


def _mtl_grade_recorder():
    import functools
    import json
    import os
    import sys
    import time

    log = os.environ.get("MTL_GRADE_LOG")
    if not log:
        return
    depth = [0]  # calls of one check from inside another are not the notebook's

    def write(record):
        with open(log, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def number(value):
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    def wrap(name, check):
        @functools.wraps(check)
        def recorded(*args, **kwargs):
            outer = depth[0] == 0
            depth[0] += 1
            start = time.perf_counter()
            try:
                result = check(*args, **kwargs)
            except BaseException as exc:
                if outer:
                    write({"check": name, "passed": False, "error": None, "tolerance": None,
                           "message": f"the check itself raised {type(exc).__name__}: {exc}",
                           "seconds": time.perf_counter() - start})
                raise
            finally:
                depth[0] -= 1
            if outer:
                passed = getattr(result, "passed", None)
                write({"check": name, "passed": bool(result if passed is None else passed),
                       "error": number(getattr(result, "error", None)),
                       "tolerance": number(getattr(result, "tolerance", None)),
                       "message": str(getattr(result, "message", result)),
                       "seconds": time.perf_counter() - start})
            return result

        recorded._mtl_grade_recorded = True
        return recorded

    def instrument(module):
        for name, value in list(vars(module).items()):
            if (name.startswith("check_") and callable(value) and not getattr(value, "_mtl_grade_recorded", False)
                    and getattr(value, "__module__", None) == module.__name__):
                setattr(module, name, wrap(name, value))

    if "mtlutils.checks" in sys.modules:
        instrument(sys.modules["mtlutils.checks"])
        return

    class Finder:
        """Finds mtlutils.checks with the other finders, then instruments it once it has run."""

        def find_spec(self, fullname, path=None, target=None):
            if fullname != "mtlutils.checks":
                return None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                execute = loader.exec_module

                def exec_module(module):
                    execute(module)
                    instrument(module)

                loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


_mtl_grade_recorder()
del _mtl_grade_recorder
'''

EXERCISE = re.compile(r"^(?:```+|:::+)\{exercise(?:-start)?\}[ \t]*(?P<title>[^\n]*)\n(?P<options>(?:[ \t]*:[\w-]+:[^\n]*\n)*)",
                      re.MULTILINE)
LABEL = re.compile(r"^[ \t]*:label:[ \t]*(\S+)", re.MULTILINE)
CHECK_CALL = re.compile(r"\bchecks\.(check_\w+)\s*\(")
TITLE_NUMBER = re.compile(r"^#[ \t]+(?:chapter[ \t]+)?(\d+)[.:\s]", re.IGNORECASE | re.MULTILINE)
FILE_NUMBER = re.compile(r"^(\d+)_")


@dataclass
class Exercise:
    """An ``{exercise}`` directive of a notebook: its book number ("5.1"), label and title."""

    number: str
    label: str
    title: str


@dataclass
class Graded:
    """What running one notebook gave."""

    name: str
    status: str = "RAN"  # RAN, ERRORS, TIMEOUT, CRASH
    message: str = ""
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per check call, then NOT RUN ones

    def notebook_row(self) -> dict[str, Any]:
        return {"notebook": self.name, "exercise": "", "label": "", "check": NOTEBOOK_ROW, "status": self.status,
                "error": "", "tolerance": "", "message": self.message, "seconds": f"{self.seconds:.1f}"}


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def chapter_number(nb: dict[str, Any], path: Path) -> str | None:
    """The chapter number: from the first ``# N. Title`` heading, else from the file name (``05_sfg``)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            match = TITLE_NUMBER.search(_source(cell))
            if match:
                return str(int(match.group(1)))
    match = FILE_NUMBER.match(path.name)
    return str(int(match.group(1))) if match else None


def exercises_by_cell(nb: dict[str, Any], path: Path) -> dict[int, Exercise]:
    """For every cell index, the last exercise stated at or above it (cells above the first have none)."""
    chapter = chapter_number(nb, path)
    current: Exercise | None = None
    count = 0
    where: dict[int, Exercise] = {}
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            for match in EXERCISE.finditer(_source(cell)):
                options = match.group("options")
                if ":nonumber:" in options:
                    number = ""
                else:
                    count += 1
                    number = f"{chapter}.{count}" if chapter else str(count)
                label = LABEL.search(options)
                current = Exercise(number, label.group(1) if label else "", match.group("title").strip())
        if current is not None:
            where[index] = current
    return where


def checks_called(nb: dict[str, Any]) -> dict[str, int]:
    """``{check name: index of the first code cell that calls it}`` (calls written ``checks.check_x(``)."""
    found: dict[str, int] = {}
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            for name in CHECK_CALL.findall(_source(cell)):
                found.setdefault(name, index)
    return found


def _read_new(log: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    if not log.exists():
        return [], offset
    with log.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    records = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]
    return records, offset + len(complete)


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return ""
    value = float(value)
    return str(value) if not math.isfinite(value) else format(value, spec)


def _error_summary(errors: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"cell {index}: {text}" for index, text in errors[:3])
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return f"{len(errors)} cell(s) raised: {shown}{more}"


def kernel_environment(log: Path, ipython_dir: Path, profile: str) -> dict[str, str]:
    """The kernel's environment: ours, plus the profile, the log, the recorder and this repository first."""
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-mtl-grade.py").write_text(RECORDER, encoding="utf-8")
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env.update({
        "MTL_PROFILE": profile,
        "MTL_GRADE_LOG": str(log),
        "IPYTHONDIR": str(ipython_dir),
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
    })
    return env


def _where(index: int) -> str:
    return f"in cell {index}" if index >= 0 else "while the kernel started"


async def _execute(nb: Any, folder: Path, env: dict[str, str], log: Path, timeout_s: float,
                   graded: Graded, at_cell: dict[int, list[dict[str, Any]]]) -> None:
    """Run ``nb`` cell by cell in a new kernel, the whole of it within ``timeout_s``; fill ``graded``."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    client = NotebookClient(nb, timeout=max(1, int(timeout_s)), kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(folder)}}, startup_timeout=120,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no TCP warning per notebook
    deadline = time.monotonic() + timeout_s
    errors: list[tuple[int, str]] = []
    offset = 0
    index = -1
    try:
        async with client.async_setup_kernel(env=env):
            # nbclient turns SIGINT/SIGTERM into "shut the kernel down" and carries on; grading is stopped
            # by them instead (the kernel exits with its parent).
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            for index, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CellTimeoutError(f"no time left before cell {index}")
                client.timeout = max(1, math.ceil(remaining))
                await client.async_execute_cell(cell, index)
                records, offset = _read_new(log, offset)
                at_cell.setdefault(index, []).extend(records)
                for output in cell.get("outputs", []):
                    if output.get("output_type") == "error":
                        errors.append((index, f"{output.get('ename', '')}: {output.get('evalue', '')}"[:160]))
    except CellTimeoutError:
        graded.status = "TIMEOUT"
        graded.message = f"stopped after {timeout_s:g} s, {_where(index)}"
    except DeadKernelError as exc:
        graded.status = "CRASH"
        graded.message = f"the kernel died, {_where(index)}: {str(exc).splitlines()[0] if str(exc) else 'no reason'}"
    except Exception as exc:  # noqa: BLE001 - a notebook that cannot be run is recorded, not fatal
        graded.status = "CRASH"
        first = str(exc).splitlines()[0] if str(exc) else ""
        graded.message = f"could not run, {_where(index)}: {type(exc).__name__}: {first}"[:300]
    records, offset = _read_new(log, offset)  # a result written just before a timeout or crash
    if records:
        at_cell.setdefault(index, []).extend(records)
    if errors:
        summary = _error_summary(errors)
        if graded.status == "RAN":
            graded.status, graded.message = "ERRORS", summary
        else:
            graded.message += f"; before that {summary}"


def grade_notebook(path: Path, name: str, timeout_s: float = 900.0, profile: str = "quick",
                   reference: Path | None = None, executed_dir: Path | None = None) -> Graded:
    """Run one notebook in a fresh kernel and return its check rows and its own status."""
    import nbformat

    graded = Graded(name)
    start = time.monotonic()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # noqa: BLE001 - not a notebook: recorded as a crash
        graded.status, graded.message = "CRASH", f"not a readable notebook: {type(exc).__name__}: {exc}"[:300]
        return graded
    where = exercises_by_cell(nb, path)
    none = Exercise("", "", "")
    expected = {check: where.get(index, none) for check, index in checks_called(nb).items()}
    if reference is not None and reference.is_file():
        ref_nb = json.loads(reference.read_text(encoding="utf-8"))
        ref_where = exercises_by_cell(ref_nb, reference)
        for check, index in checks_called(ref_nb).items():
            expected.setdefault(check, ref_where.get(index, none))
    at_cell: dict[int, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="mtl-grade-") as tmp:
        log = Path(tmp) / "checks.jsonl"
        env = kernel_environment(log, Path(tmp) / "ipython", profile)
        asyncio.run(_execute(nb, path.parent, env, log, timeout_s, graded, at_cell))
    graded.seconds = time.monotonic() - start
    ran: set[str] = set()
    for index in sorted(at_cell):
        exercise = where.get(index, none)
        for record in at_cell[index]:
            ran.add(record["check"])
            graded.rows.append({
                "notebook": name, "exercise": exercise.number and f"Exercise {exercise.number}",
                "label": exercise.label, "check": record["check"],
                "status": "PASS" if record.get("passed") else "FAIL",
                "error": _fmt(record.get("error")), "tolerance": _fmt(record.get("tolerance"), ".0e"),
                "message": str(record.get("message", ""))[:500], "seconds": f"{float(record.get('seconds', 0)):.2f}",
            })
    for check, exercise in expected.items():
        if check in ran:
            continue
        why = {"TIMEOUT": "the notebook timed out first", "CRASH": "the notebook crashed first"}.get(
            graded.status, "the notebook never called it")
        graded.rows.append({
            "notebook": name, "exercise": exercise.number and f"Exercise {exercise.number}", "label": exercise.label,
            "check": check, "status": "NOT RUN", "error": "", "tolerance": "", "message": why, "seconds": "",
        })
    if executed_dir is not None:
        target = executed_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    return graded


def reference_for(path: Path, reference_dir: Path) -> Path | None:
    """The chapter a submission is a version of: the one of the same file name, else the only one whose
    number starts the submission's name (``05_sfg_alice.ipynb`` -> ``05_sfg.ipynb``); None if neither."""
    same = reference_dir / path.name
    if same.is_file():
        return same
    match = FILE_NUMBER.match(path.name)
    if not match:
        return None
    candidates = list(reference_dir.glob(f"{match.group(1)}_*.ipynb"))
    return candidates[0] if len(candidates) == 1 else None


def find_notebooks(folder: Path) -> list[Path]:
    """Every notebook under ``folder`` (or ``folder`` itself if it is one), checkpoints skipped, sorted."""
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def grade(submissions: Path, out: Path, timeout_s: float = 900.0, profile: str = "quick",
          reference_dir: Path | None = REPO / "notebooks", executed_dir: Path | None = None,
          echo: bool = True) -> list[dict[str, Any]]:
    """Grade every notebook under ``submissions``, write the CSV to ``out``; return its rows."""
    notebooks = find_notebooks(submissions)
    base = submissions if submissions.is_dir() else submissions.parent
    rows: list[dict[str, Any]] = []
    results: list[Graded] = []
    for path in notebooks:
        name = path.relative_to(base).as_posix()
        reference = reference_for(path, reference_dir) if reference_dir is not None else None
        graded = grade_notebook(path, name, timeout_s, profile, reference, executed_dir)
        results.append(graded)
        rows.extend(graded.rows)
        rows.append(graded.notebook_row())
        if echo:
            counts = {s: sum(r["status"] == s for r in graded.rows) for s in ("PASS", "FAIL", "NOT RUN")}
            print(f"{graded.status:7} {name}: {counts['PASS']} pass, {counts['FAIL']} fail, {counts['NOT RUN']} not "
                  f"run ({graded.seconds:.0f} s){' - ' + graded.message if graded.message else ''}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if echo:
        print(summary_line(results, out), flush=True)
    return rows


def summary_line(results: list[Graded], out: Path) -> str:
    checks = [row for graded in results for row in graded.rows]
    count = {s: sum(row["status"] == s for row in checks) for s in ("PASS", "FAIL", "NOT RUN")}
    states = {s: sum(g.status == s for g in results) for s in ("RAN", "ERRORS", "TIMEOUT", "CRASH")}
    ran = ", ".join(f"{n} {s.lower()}" for s, n in states.items() if n)
    return (f"grade: {len(results)} notebooks ({ran or 'none'}); {len(checks)} checks: {count['PASS']} PASS, "
            f"{count['FAIL']} FAIL, {count['NOT RUN']} NOT RUN; CSV: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("submissions", type=Path, help="a folder of student notebooks (searched recursively), or one")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"), help="the CSV to write (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds allowed for each whole notebook (default: %(default)s)")
    parser.add_argument("--profile", default="quick", help="MTL_PROFILE of the kernels (default: %(default)s)")
    parser.add_argument("--reference", type=Path, default=REPO / "notebooks",
                        help="the chapters, whose checks every submission of the same file name must run "
                             "(default: this repository's notebooks/; 'none' to skip)")
    parser.add_argument("--executed", type=Path, default=None, help="also save the executed notebooks here")
    args = parser.parse_args(argv)
    if not args.submissions.exists():
        print(f"grade: {args.submissions} does not exist", file=sys.stderr)
        return 2
    if not find_notebooks(args.submissions):
        print(f"grade: no notebooks (*.ipynb) under {args.submissions}", file=sys.stderr)
        return 2
    reference = None if str(args.reference).lower() == "none" else args.reference
    grade(args.submissions, args.out, args.timeout, args.profile, reference, args.executed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
