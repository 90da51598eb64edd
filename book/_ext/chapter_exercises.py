"""Number sphinx-exercise exercises per chapter: "Exercise 5.1", "Exercise 5.2", ... in chapter 5.

sphinx-exercise registers ``{exercise}`` as an enumerable node, so Sphinx numbers exercises with the
figures (``numfig``): one counter per section-number prefix of length ``numfig_secnum_depth``. The book's
toctree is not numbered (the chapter titles carry their own numbers, "5. Stochastic Filter Groups"), so
every exercise has the empty prefix and the counter runs across the whole book ("Exercise 16" in
chapter 5). Numbering the toctree would fix the prefix but also prepend a second number to every title.

This extension runs after Sphinx has assigned the numbers (``env-get-updated``, after the toctree
collector) and renumbers the exercises of each chapter page as ``(chapter, k)``, k counting from 1 in
the order of the page. The chapter number is the leading number of the page title ("5. ..." or
"Chapter 5 ..."), else the leading digits of the file name ("notebooks/05_sfg"); a page with neither
keeps Sphinx's number. Cross-references (``{numref}``), the exercise titles and the "Solution to
Exercise 5.1" titles all read the same table (``env.toc_fignumbers``), so they stay consistent.
"""
from __future__ import annotations

import re
from typing import Any

TITLE_NUMBER = re.compile(r"^\s*(?:chapter\s+)?(\d+)(?:[.:]|\s)", re.IGNORECASE)
FILE_NUMBER = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def chapter_number(env: Any, docname: str) -> int | None:
    """The chapter number of a page: from its title, else its file name; None for other pages."""
    title = env.titles.get(docname)
    if title is not None:
        match = TITLE_NUMBER.match(title.astext())
        if match:
            return int(match.group(1))
    match = FILE_NUMBER.search(docname)
    return int(match.group(1)) if match else None


def renumber_exercises(app: Any, env: Any) -> list[str]:
    """Rewrite the exercise numbers of every chapter page; return the pages whose numbers changed."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        numbers = by_type.get("exercise")
        chapter = chapter_number(env, docname) if numbers else None
        if chapter is None:
            continue
        # Sphinx fills this dict while walking the page, so its order is the order of the page.
        renumbered = {ident: (chapter, k) for k, ident in enumerate(numbers, start=1)}
        if renumbered != numbers:
            numbers.update(renumbered)
            changed.append(docname)
    return changed


def setup(app: Any) -> dict[str, Any]:
    # After the toctree collector's handler (priority 500), which assigns the book-wide numbers.
    app.connect("env-get-updated", renumber_exercises, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
