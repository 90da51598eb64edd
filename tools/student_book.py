"""The student edition of the book: every chapter replaced by its student version, solutions hidden.

Usage: python tools/student_book.py SRC_DIR   (called by `make book-student`; then build SRC_DIR)
       python tools/student_book.py --check HTML_DIR   (fails if any solution text, marker or solution
                                                        directive is in the HTML)

Pages for instructors only (``INSTRUCTOR_PAGES``: reference results, model answers, rubrics) are left out
of the student edition: not copied, and removed from its table of contents.

Why not only sphinx-exercise's ``hide_solutions``: with gated solutions ({solution-start} ...
{solution-end} around code cells) sphinx-exercise 1.x drops the start marker but leaves the cells and
an end node that the HTML writer cannot render (the build crashes). Building from the student
notebooks shows readers exactly what students get: the exercise, a stub and the self-check.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from mtlutils.assignments import generate, leftover_markers, solution_regions  # noqa: E402

# Book pages (paths without suffix, as in _toc.yml) that only the instructors' edition has.
INSTRUCTOR_PAGES = ("book/instructors",)


def without_pages(toc: Any, pages: tuple[str, ...]) -> Any:
    """A copy of a _toc.yml structure without the entries whose ``file`` is one of ``pages``."""
    if isinstance(toc, list):
        return [without_pages(item, pages) for item in toc
                if not (isinstance(item, dict) and str(item.get("file", "")).removesuffix(".md") in pages)]
    if isinstance(toc, dict):
        return {key: without_pages(value, pages) for key, value in toc.items()}
    return toc


def make_source(target: Path) -> None:
    """Write a book source tree for the student edition into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copytree(REPO / "book", target / "book")
    for page in INSTRUCTOR_PAGES:
        for path in (target / page).parent.glob(Path(page).name + ".*"):
            path.unlink()
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    (target / "_toc.yml").write_text(yaml.safe_dump(without_pages(toc, INSTRUCTOR_PAGES), sort_keys=False),
                                     encoding="utf-8")
    (target / "data").mkdir()
    shutil.copy(REPO / "data" / "README.md", target / "data" / "README.md")  # included by book/datasets.md
    for folder in ("experiments", "results"):   # the reproduction chapter reads them (../experiments, ../results)
        if (REPO / folder).exists():
            shutil.copytree(REPO / folder, target / folder)
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
    config.setdefault("sphinx", {}).setdefault("config", {})["hide_solutions"] = True
    config["title"] = f"{config.get('title', 'mtl-book')} (student edition)"
    (target / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    chapters = sorted((REPO / "notebooks").glob("*.ipynb"))
    generate(chapters, target / "notebooks")
    print(f"student edition source: {target} ({len(chapters)} chapters)")


def page_text(page: str) -> str:
    """The visible text of an HTML page: scripts and styles dropped, tags removed (code is split into
    highlighted spans), entities unescaped."""
    page = re.sub(r"<(script|style)\b.*?</\1\s*>", "", page, flags=re.DOTALL | re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def check_html(html_dir: Path) -> int:
    """Exit status 1 if a solution line of any chapter, or anything that looks like a solution marker or
    directive, or an instructors' page, appears in the built student HTML."""
    pages = {p.stem: page_text(p.read_text(encoding="utf-8")) for p in (html_dir / "notebooks").glob("*.html")}
    leaks = [f"{page}: an instructors' page in the student edition" for page in INSTRUCTOR_PAGES
             if (html_dir / f"{page}.html").exists()]
    for chapter in sorted((REPO / "notebooks").glob("*.ipynb")):
        page = pages.get(chapter.stem)
        if page is None:
            leaks.append(f"{chapter.stem}: no page built")
            continue
        for region in solution_regions(json.loads(chapter.read_text(encoding="utf-8"))):
            for line in region.splitlines():
                if len(line.strip()) > 12 and line.strip() in page:
                    leaks.append(f"{chapter.stem}: solution line in the student page: {line.strip()!r}")
        for _, line in leftover_markers(page):
            leaks.append(f"{chapter.stem}: solution marker or directive in the student page: {line.strip()[:120]!r}")
    for leak in leaks:
        print(leak)
    print(f"student edition: {len(pages)} chapter pages checked, {len(leaks)} problems")
    return 1 if leaks else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check_html(Path(sys.argv[2])))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    make_source(Path(sys.argv[1]))
