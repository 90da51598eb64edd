"""Tests for tools/check_book.py on a tiny static site written into tmp_path.

No Jupyter Book build is needed: the pages are hand-written HTML.  Skipped when
Playwright or Debian's Chromium (/usr/bin/chromium) is not installed.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="check-book needs the playwright package (pip install playwright)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("check-book needs Debian's Chromium at /usr/bin/chromium", allow_module_level=True)

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_book.py"
_spec = importlib.util.spec_from_file_location("check_book", TOOL)
assert _spec and _spec.loader
check_book = importlib.util.module_from_spec(_spec)
sys.modules["check_book"] = check_book
_spec.loader.exec_module(check_book)

# A 1x1 PNG.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def page(body: str, head: str = "") -> str:
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title>{head}</head><body>{body}</body></html>"


# Each faulty page, and a piece of the reason the checker must give for it.
FAULTS: dict[str, tuple[str, str]] = {
    "broken_image.html": (page('<img src="img/missing.png" alt="x">'), "broken image: img/missing.png"),
    "corrupt_image.html": (page('<img src="img/corrupt.png" alt="x">'), "broken image: img/corrupt.png"),
    "raw_math.html": (
        page(r'<p>Inline <span class="math notranslate nohighlight">\(x\)</span>.</p>'),
        "unrendered math",
    ),
    "external_fetch.html": (
        page('<script>fetch("https://example.com/x.js").catch(() => {});</script>'),
        "external request blocked: fetch https://example.com/x.js",
    ),
    "external_script.html": (
        page('<script src="https://example.com/x.js"></script>'),
        "external request blocked: script https://example.com/x.js",
    ),
    "external_websocket.html": (
        page('<script>try { new WebSocket("wss://example.com/socket"); } catch (e) {}</script>'),
        "external request blocked: websocket wss://example.com/socket",
    ),
    "console_error.html": (page('<script>console.error("x")</script>'), "console error: x"),
    "page_error.html": (page('<script>throw new Error("boom")</script>'), "uncaught page error: Error: boom"),
    "missing_page.html": (page('<a href="sub/nope.html">x</a>'), "broken link 'sub/nope.html': no file sub/nope.html"),
    "missing_anchor.html": (
        page('<a href="index.html#nowhere">x</a>'),
        "broken link 'index.html#nowhere': no element with id 'nowhere' in index.html",
    ),
}


LONG_LINE = "model = create('mtan', tasks, " + ", ".join(f"option_{i}={i}" for i in range(40)) + ")"

# Horizontal overflow, in the shapes Jupyter Book writes: a cell's input, a cell's output, a table in a
# scrolling holder, and a code block folded in <details> (unfolded before measuring).
OVERFLOWS: dict[str, tuple[str, str]] = {
    "overflow_code.html": (
        page(f'<div class="cell"><div class="cell_input"><div class="highlight"><pre>{LONG_LINE}</pre></div></div></div>'),
        "horizontal overflow at 1280 px: code cell input",
    ),
    "overflow_output.html": (
        page(
            '<div class="cell"><div class="cell_output"><div class="output stream">'
            f'<pre style="overflow: hidden">epoch 1: {"loss 0.123456 " * 40}</pre></div></div></div>'
        ),
        'horizontal overflow at 1280 px: cell output',
    ),
    "overflow_table.html": (
        page(
            '<div style="width: 400px; overflow-x: auto"><table><tr>'
            + "".join(f'<td style="white-space: nowrap">column number {i}</td>' for i in range(12))
            + "</tr></table></div>"
        ),
        'horizontal overflow at 1280 px: table',
    ),
    "overflow_folded.html": (
        page(f"<details><summary>Show code</summary><pre>{LONG_LINE}</pre></details>"),
        "horizontal overflow at 1280 px: code block",
    ),
}
FAULTS.update(OVERFLOWS)


def write_site(root: Path) -> None:
    """A clean two-page site (with an asset folder that must not count as pages)."""
    (root / "img").mkdir(parents=True)
    (root / "img" / "pixel.png").write_bytes(PIXEL_PNG)
    (root / "img" / "corrupt.png").write_bytes(b"not a png")
    (root / "sub").mkdir()
    (root / "_static").mkdir()
    (root / "_static" / "template.html").write_text("{{ not a page }}")
    (root / "index.html").write_text(
        page(
            '<h1 id="top-title">Home</h1><img src="img/pixel.png" alt="pixel">'
            '<a href="sub/page.html#part">part</a> <a href="sub/">folder index</a> '
            '<a href="#top-title">self</a> <a href="https://example.org/elsewhere">external, not followed</a> '
            '<a href="mailto:someone@example.org">mail</a>'
            "<pre>code may show \\(TeX\\)</pre>"
            # long lines that wrap, a narrow table and a hidden block do not overflow
            f'<div class="cell"><div class="cell_input"><pre style="white-space: pre-wrap">{LONG_LINE}</pre></div>'
            '<div class="cell_output"><div class="output"><pre>short output</pre></div></div></div>'
            "<table><tr><td>a</td><td>b</td></tr></table>"
            f'<pre style="display: none">{LONG_LINE}</pre>'
        )
    )
    (root / "sub" / "page.html").write_text(page('<h2 id="part">Part</h2><a href="../index.html">home</a>'))
    (root / "sub" / "index.html").write_text(page("<p>folder index</p>"))


def run_main(
    html: Path, shots: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    code = check_book.main(["--html", str(html), "--screenshots", str(shots), "--timeout", "10", *extra])
    return code, capsys.readouterr().out


def test_clean_site_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "html"
    write_site(html)
    code, out = run_main(html, tmp_path / "shots", capsys)
    assert code == 0, out
    assert "check-book: 3 pages, 0 failed" in out
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == ["index.png", "sub__index.png", "sub__page.png"]


def test_faults_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "html"
    write_site(html)
    for name, (text, _) in FAULTS.items():
        (html / name).write_text(text)
    code, out = run_main(html, tmp_path / "shots", capsys)
    assert code == 1, out
    assert f"check-book: {3 + len(FAULTS)} pages, {len(FAULTS)} failed" in out
    blocks = _blocks(out)
    for name, (_, reason) in FAULTS.items():
        assert blocks[name][0] == "FAIL", out
        assert any(reason in line for line in blocks[name][1]), f"{name}: expected {reason!r} in\n{out}"
    for clean in ("index.html", "sub/index.html", "sub/page.html"):
        assert blocks[clean] == ("OK", []), out
    # an overflowing block is named by its first characters
    assert any(LONG_LINE[:40] in line for line in blocks["overflow_code.html"][1]), out
    assert f"{len(OVERFLOWS)} blocks overflow at 1280 px on {len(OVERFLOWS)} pages (--overflow fail)" in out


def test_overflow_can_warn_or_be_off(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "html"
    write_site(html)
    (html / "overflow_code.html").write_text(OVERFLOWS["overflow_code.html"][0])
    code, out = run_main(html, tmp_path / "shots", capsys, "--overflow", "warn")
    assert code == 0, out
    assert "OK   overflow_code.html" in out
    assert any(line.strip().startswith("! horizontal overflow at 1280 px: code cell input") for line in out.splitlines())
    assert "check-book: 4 pages, 0 failed; 1 blocks overflow at 1280 px on 1 pages (--overflow warn)" in out
    code, out = run_main(html, tmp_path / "shots", capsys, "--overflow", "off", "--width", "1600")
    assert code == 0 and "overflow" not in out.replace("overflow_code.html", ""), out


def test_missing_html_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = check_book.main(["--html", str(tmp_path / "absent")])
    assert code == 2
    assert "make book" in capsys.readouterr().err


def _blocks(out: str) -> dict[str, tuple[str, list[str]]]:
    """Parse the report into {page: (status, [problem lines])}."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in out.splitlines():
        if line.startswith(("OK ", "FAIL ")):
            status, current = line.split()[:2]
            blocks[current] = (status, [])
        elif line.strip().startswith("- ") and current:
            blocks[current][1].append(line.strip()[2:])
    return blocks
