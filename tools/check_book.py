"""Check every page of the built book in a real (headless) browser, offline.

``make check-book`` runs this after ``make book``.  It serves ``_build/html``
from a small HTTP server on 127.0.0.1 (a thread of this script), opens each
HTML page in Debian's Chromium through Playwright, and fails a page when:

1. it contains math that MathJax did not typeset (an element ``.math`` with no
   ``mjx-container`` inside, raw ``\\(`` / ``\\[`` TeX left in the visible
   text, or a MathJax error box);
2. an image is broken (its request failed or it decodes to nothing);
3. a link inside the book points to a missing file, or to a ``#fragment``
   that is not an id on the target page (links to other hosts are not
   followed);
4. the browser logs a console error, or a script throws an uncaught error;
5. the page tries to reach anything other than the local server (such
   requests are aborted and listed; ``data:`` and ``blob:`` URLs are fine);
6. a block is wider than its box (horizontal overflow), measured with the
   browser window ``--width`` pixels wide (default 1280): a code cell's input,
   an output of a cell, any other code block, or a table whose content is
   wider than the box that holds it by more than ``--overflow-tolerance``
   pixels (default 2) is cut at the right edge or needs a scrollbar.  Folded
   parts (hidden inputs, solution dropdowns) are unfolded before measuring.
   Each such block is named by its first characters.  ``--overflow warn``
   lists them without failing the page, ``--overflow off`` skips the check.

A full-page screenshot of every page is saved to the screenshots folder as
``<path relative to the html folder, "/" replaced by "__", without .html>.png``.

Usage::

    python tools/check_book.py [--html _build/html] [--screenshots _build/screenshots]
                               [--timeout 30] [--jobs 4] [--chromium /usr/bin/chromium]
                               [--overflow fail|warn|off] [--width 1280] [--overflow-tolerance 2]

It needs the Python package ``playwright`` (its own browsers are not used, so
no ``playwright install``) and Chromium (``apt-get install chromium``).

Exit status: 0 if every page is fine, 1 if any page failed, 2 if the book (or
the browser) is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Flags for Debian's Chromium: no sandbox (we may run as root in a container),
# no GPU, and none of Chromium's own background traffic (update checks, sync,
# field trials...).  The host resolver rule makes every name except 127.0.0.1
# unresolvable, so nothing can leave the machine even if it bypassed the
# request interception below.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]

# Sphinx output folders that hold assets (and Jinja templates named *.html
# under _static), not pages of the book.
ASSET_DIRS = {"_static", "_sources", "_images", "_downloads"}

# Runs in the page once it has loaded: waits for MathJax and the images, then
# reports what the Python side needs to judge the page.
PAGE_PROBE_JS = r"""
async (timeoutMs) => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const deadline = Date.now() + timeoutMs;
  const out = {mathjax: "absent", math: 0, untypeset: [], rawTex: [], mathErrors: [],
               brokenImages: [], links: [], ids: []};

  // MathJax 3 replaces MathJax.startup.promise while it starts, so wait until
  // the promise we awaited is still the current one.
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    out.mathjax = "done";
    let promise = null;
    while (promise !== mj.startup.promise) {
      promise = mj.startup.promise;
      const state = await Promise.race([
        promise.then(() => "done", (err) => "failed: " + err),
        sleep(Math.max(0, deadline - Date.now())).then(() => "timed out"),
      ]);
      if (state !== "done") { out.mathjax = state; break; }
    }
  } else if (mj) {
    out.mathjax = "not loaded";  // only the configuration object is there
  }

  const maths = [...document.querySelectorAll("span.math, div.math")];
  out.math = maths.length;
  for (const el of maths) {
    if (!el.querySelector("mjx-container")) out.untypeset.push(el.textContent.trim().slice(0, 60));
  }
  for (const el of document.querySelectorAll("mjx-merror")) {
    out.mathErrors.push((el.getAttribute("data-mjx-error") || el.textContent).slice(0, 80));
  }

  // TeX delimiters left in text the reader sees (code blocks may show TeX on purpose).
  const skip = "script, style, noscript, template, textarea, pre, code, .highlight, mjx-container";
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.nodeValue;
    if (!/\\\(|\\\[|\\begin\{/.test(text)) continue;
    if (node.parentElement && node.parentElement.closest(skip)) continue;
    out.rawTex.push(text.trim().slice(0, 60));
  }

  // Images: load lazy ones now, wait for all, then try to decode them.
  const images = [...document.images];
  for (const img of images) img.loading = "eager";
  await Promise.all(images.map((img) => img.complete ? null : new Promise((resolve) => {
    img.addEventListener("load", resolve, {once: true});
    img.addEventListener("error", resolve, {once: true});
    setTimeout(resolve, Math.max(0, deadline - Date.now()));
  })));
  for (const img of images) {
    if (img.naturalWidth > 0) continue;
    // An SVG without a size can report 0 and still be fine: decode() tells.
    const ok = await img.decode().then(() => true, () => false);
    if (!ok) out.brokenImages.push(img.getAttribute("src") || "(no src)");
  }

  out.links = [...document.querySelectorAll("a[href]")].map(
    (a) => ({href: a.href, raw: a.getAttribute("href")}));
  out.ids = [...document.querySelectorAll("[id], a[name]")].map((el) => el.id || el.getAttribute("name"));
  return out;
}
"""


# Runs after the screenshot: unfolds what is folded, then measures every block
# a reader may have to scroll sideways.  Blocks are taken outermost first (a
# cell's input, each output of a cell, then code blocks and tables elsewhere);
# one inside a block already taken is not reported again.  A block overflows
# when it, or anything inside it, holds content wider than its own box
# (scrollWidth > clientWidth; this holds for clipped, scrolling and spilling
# boxes alike), or when a table is wider than the box that holds it.
OVERFLOW_PROBE_JS = r"""
(tolerance) => {
  for (const el of document.querySelectorAll("details")) el.open = true;
  for (const el of document.querySelectorAll(".toggle-hidden")) el.classList.remove("toggle-hidden");
  const root = document.querySelector("article") || document.querySelector("main") || document.body;
  const kinds = [
    ["code cell input", ".cell_input"],
    ["cell output", ".cell_output > *"],
    ["code block", "pre"],
    ["table", "table"],
  ];
  const taken = [];
  const out = [];
  // Inline boxes (typeset math above all: MathJax glyphs overhang their box by a few pixels) are not
  // blocks a reader scrolls; their overflow shows up in the block that holds them.
  const excess = (el) => {
    if (el.clientWidth <= 0 || el.closest("mjx-container, .math")) return 0;
    if (getComputedStyle(el).display.startsWith("inline")) return 0;
    return el.scrollWidth - el.clientWidth;
  };
  for (const [kind, selector] of kinds) {
    for (const block of root.querySelectorAll(selector)) {
      if (taken.some((outer) => outer.contains(block))) continue;
      taken.push(block);
      if (!block.getClientRects().length) continue;  // not displayed
      let worst = excess(block);
      let box = block.clientWidth;
      for (const inner of block.querySelectorAll("*")) {
        const e = excess(inner);
        if (e > worst) { worst = e; box = inner.clientWidth; }
      }
      if (kind === "table" && block.parentElement) {
        const holder = block.parentElement;
        const e = Math.max(excess(holder), block.offsetWidth - holder.clientWidth);
        if (e > worst) { worst = e; box = holder.clientWidth; }
      }
      if (worst > tolerance) {
        out.push({kind, excess: Math.round(worst), box: Math.round(box),
                  text: (block.innerText || block.textContent || "").replace(/\s+/g, " ").trim().slice(0, 60)});
      }
    }
  }
  return out;
}
"""

OVERFLOW_MODES = ("fail", "warn", "off")


@dataclass
class PageReport:
    """What went wrong on one page (nothing, if ``problems`` is empty)."""

    page: str
    problems: list[str] = field(default_factory=list)
    note: str = ""
    warnings: list[str] = field(default_factory=list)  # reported, but the page still passes
    overflows: int = 0  # blocks wider than their box (failures or warnings, by --overflow)

    @property
    def ok(self) -> bool:
        return not self.problems


class _QuietHandler(SimpleHTTPRequestHandler):
    """Static file handler that does not log every request to stderr."""

    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".svg": "image/svg+xml",
        ".woff": "font/woff",
        ".woff2": "font/woff2",
    }

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer:
    """Serve a folder on 127.0.0.1 (free port) from a background thread."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.origin = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _IdCollector(HTMLParser):
    """Collect every ``id`` (and ``<a name>``) of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and (key == "id" or (tag == "a" and key == "name")):
                self.ids.add(value)


class LinkChecker:
    """Resolve same-origin links to files under the html folder."""

    def __init__(self, root: Path, origin: str) -> None:
        self.root = root.resolve()
        self.netloc = urlsplit(origin).netloc
        self._ids: dict[Path, set[str]] = {}

    def ids_of(self, path: Path) -> set[str]:
        if path not in self._ids:
            parser = _IdCollector()
            parser.feed(path.read_text(encoding="utf-8", errors="replace"))
            self._ids[path] = parser.ids
        return self._ids[path]

    def problem(self, href: str, raw: str, page: Path, page_ids: set[str]) -> str | None:
        """Return why ``href`` (absolute, as the browser resolved it) is broken, or None."""
        url = urlsplit(href)
        if url.scheme not in ("http", "https") or url.netloc != self.netloc:
            return None  # mailto:, javascript:, other hosts: not followed
        target = (self.root / unquote(url.path).lstrip("/")).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(self.root):
            return f"broken link {raw!r}: points outside the book"
        if not target.is_file():
            return f"broken link {raw!r}: no file {target.relative_to(self.root).as_posix()}"
        fragment = unquote(url.fragment)
        # "#" and "#top" are fine without an element (HTML scrolls to the top).
        if not fragment or fragment == "top" or target.suffix not in (".html", ".htm"):
            return None
        ids = page_ids if target == page else self.ids_of(target)
        if fragment not in ids:
            where = target.relative_to(self.root).as_posix()
            return f"broken link {raw!r}: no element with id {fragment!r} in {where}"
        return None


def find_pages(html_dir: Path) -> list[Path]:
    """All HTML pages of the book, relative to ``html_dir``, in a stable order."""
    pages = [
        path.relative_to(html_dir)
        for path in html_dir.rglob("*.html")
        if path.relative_to(html_dir).parts[0] not in ASSET_DIRS
    ]
    return sorted(pages, key=lambda p: p.as_posix())


def screenshot_name(page: Path) -> str:
    """``chapter/intro.html`` -> ``chapter__intro.png``."""
    return page.with_suffix("").as_posix().replace("/", "__") + ".png"


def _has_meta_refresh(path: Path) -> bool:
    head = path.read_text(encoding="utf-8", errors="replace")[:4096].lower()
    return 'http-equiv="refresh"' in head or "http-equiv='refresh'" in head


async def check_page(
    context: Any,
    server: LocalServer,
    links: LinkChecker,
    html_dir: Path,
    page: Path,
    screenshot: Path | None,
    timeout_s: float,
    overflow: str = "fail",
    viewport_width: int = 1280,
    overflow_tolerance: float = 2.0,
) -> PageReport:
    """Open one page in a fresh tab of ``context`` and judge it.

    ``overflow`` (``fail``, ``warn`` or ``off``) says what a block wider than its box is; the page is
    measured as ``context`` shows it (``viewport_width`` only names that width in the messages).
    """
    report = PageReport(page.as_posix())
    problems = report.problems
    origin = server.origin

    def is_local(url: str) -> bool:
        return url.startswith(origin + "/") or url == origin

    def short(url: str) -> str:
        return url.replace(origin + "/", "")

    # Every request of the page (and of its frames and workers) passes here.
    async def on_route(route: Any) -> None:
        url = route.request.url
        if is_local(url) or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            problems.append(f"external request blocked: {route.request.resource_type} {url}")
            await route.abort("blockedbyclient")

    async def on_websocket(ws: Any) -> None:
        if is_local(ws.url.replace("ws://", "http://", 1)):
            ws.connect_to_server()
        else:
            problems.append(f"external request blocked: websocket {ws.url}")
            await ws.close()

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            where = short(msg.location.get("url", "")) if msg.location else ""
            problems.append(f"console error: {msg.text}" + (f" ({where})" if where else ""))

    def on_page_error(err: Any) -> None:
        problems.append(
            f"uncaught page error: {err.name}: {err.message}" if err.name else f"uncaught page error: {err.message}"
        )

    def on_response(response: Any) -> None:
        if is_local(response.url) and response.status >= 400:
            problems.append(f"HTTP {response.status} for {short(response.url)}")

    def on_request_failed(request: Any) -> None:
        if is_local(request.url):  # external ones were aborted by us and listed above
            problems.append(f"request failed: {short(request.url)} ({request.failure})")

    await context.route("**/*", on_route)
    await context.route_web_socket("**/*", on_websocket)
    tab = await context.new_page()
    tab.on("console", on_console)
    tab.on("pageerror", on_page_error)
    tab.on("response", on_response)
    tab.on("requestfailed", on_request_failed)
    timeout_ms = timeout_s * 1000
    url = f"{origin}/{page.as_posix()}"
    try:
        await tab.goto(url, wait_until="load", timeout=timeout_ms)
        if _has_meta_refresh(html_dir / page):  # e.g. Jupyter Book's index.html
            await tab.wait_for_url(lambda u: u != url, timeout=timeout_ms)
            await tab.wait_for_load_state("load", timeout=timeout_ms)
            report.note = "redirects to " + short(tab.url)
        try:  # let late requests (scripts fetching things after load) show up
            await tab.wait_for_load_state("networkidle", timeout=min(timeout_ms, 5000))
        except Exception:  # a page that keeps polling is judged by what it did so far
            pass
        probe: dict[str, Any] = await tab.evaluate(PAGE_PROBE_JS, timeout_ms)
        final_path = (html_dir / unquote(urlsplit(tab.url).path).lstrip("/")).resolve()
        _judge_probe(probe, report, links, final_path)
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            await tab.screenshot(path=str(screenshot), full_page=True, timeout=timeout_ms)
        if overflow != "off":
            blocks = await tab.evaluate(OVERFLOW_PROBE_JS, overflow_tolerance)
            _judge_overflow(blocks, report, overflow, viewport_width)
    except Exception as err:  # Playwright errors: timeouts, crashed page, ...
        problems.append(f"could not check page: {str(err).splitlines()[0]}")
    finally:
        await context.unroute_all(behavior="ignoreErrors")
        await tab.close()
    return report


def _quote(text: str) -> str:
    """Quote page text for the report without doubling its backslashes (as repr would)."""
    return '"' + " ".join(text.split()) + '"'


def _judge_overflow(blocks: list[dict[str, Any]], report: PageReport, mode: str, width: int) -> None:
    report.overflows = len(blocks)
    target = report.problems if mode == "fail" else report.warnings
    for block in blocks:
        target.append(
            f"horizontal overflow at {width} px: {block['kind']} {block['excess']} px wider than its "
            f"{block['box']} px box: {_quote(block['text'])}"
        )


def _judge_probe(probe: dict[str, Any], report: PageReport, links: LinkChecker, page_file: Path) -> None:
    problems = report.problems
    if probe["untypeset"]:
        state = probe["mathjax"] if probe["mathjax"] != "absent" else "MathJax not on the page"
        problems.append(
            f"unrendered math: {len(probe['untypeset'])} of {probe['math']} math elements not typeset "
            f"(MathJax: {state}), e.g. {_quote(probe['untypeset'][0])}"
        )
    elif probe["math"] and probe["mathjax"] not in ("done",):
        problems.append(f"unrendered math: MathJax {probe['mathjax']}")
    if probe["rawTex"]:
        problems.append(f"raw TeX visible in the page text: {_quote(probe['rawTex'][0])}")
    for error in probe["mathErrors"]:
        problems.append(f"MathJax error: {error}")
    for src in probe["brokenImages"]:
        problems.append(f"broken image: {src}")
    seen: set[str] = set()
    for link in probe["links"]:
        if link["href"] in seen:
            continue
        seen.add(link["href"])
        problem = links.problem(link["href"], link["raw"], page_file, set(probe["ids"]))
        if problem:
            problems.append(problem)


async def check_book(
    html_dir: Path,
    screenshots_dir: Path | None,
    timeout_s: float = 30.0,
    chromium: str = DEFAULT_CHROMIUM,
    jobs: int = 4,
    on_report: Callable[[PageReport], None] = lambda report: None,
    overflow: str = "fail",
    viewport_width: int = 1280,
    overflow_tolerance: float = 2.0,
) -> list[PageReport]:
    """Check every page under ``html_dir``, ``jobs`` pages at a time.

    Returns one report per page in the order of ``find_pages``, and hands each
    to ``on_report`` in that order as soon as it (and those before it) are done.
    """
    from playwright.async_api import async_playwright

    html_dir = html_dir.resolve()
    reports: list[PageReport] = []
    with LocalServer(html_dir) as server:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            links = LinkChecker(html_dir, server.origin)
            slots = asyncio.Semaphore(max(1, jobs))

            async def check(page: Path) -> PageReport:
                async with slots:
                    # A fresh context per page: no state (storage, cache) leaks between pages.
                    context = await browser.new_context(
                        service_workers="block", viewport={"width": viewport_width, "height": 900}
                    )
                    try:
                        shot = screenshots_dir / screenshot_name(page) if screenshots_dir else None
                        return await check_page(
                            context, server, links, html_dir, page, shot, timeout_s,
                            overflow, viewport_width, overflow_tolerance,
                        )
                    finally:
                        await context.close()

            tasks = [asyncio.create_task(check(page)) for page in find_pages(html_dir)]
            try:
                for task in tasks:
                    reports.append(await task)
                    on_report(reports[-1])
            finally:  # on an error, stop the other pages before the browser goes
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await browser.close()
    return reports


def print_report(report: PageReport) -> None:
    """One line per page, then one indented line per problem."""
    note = f" ({report.note})" if report.note else ""
    print(f"{'OK  ' if report.ok else 'FAIL'} {report.page}{note}", flush=True)
    for problem in report.problems:
        print(f"       - {problem}", flush=True)
    for warning in report.warnings:
        print(f"       ! {warning}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=Path("_build/html"), help="built book (default: %(default)s)")
    parser.add_argument(
        "--screenshots",
        type=Path,
        default=Path("_build/screenshots"),
        help="where to save screenshots (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds allowed per page step (default: %(default)s)"
    )
    parser.add_argument("--jobs", type=int, default=4, help="pages checked at the same time (default: %(default)s)")
    parser.add_argument("--chromium", default=DEFAULT_CHROMIUM, help="Chromium executable (default: %(default)s)")
    parser.add_argument(
        "--overflow",
        choices=OVERFLOW_MODES,
        default="fail",
        help="a code, output or table block wider than its box: fail the page, warn (list it, pass), or off "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--width", type=int, default=1280, help="browser window width in pixels, for every page (default: %(default)s)"
    )
    parser.add_argument(
        "--overflow-tolerance",
        type=float,
        default=2.0,
        help="pixels a block may exceed its box before it counts as overflowing (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    if not args.html.is_dir():
        print(f"check-book: {args.html} not found; build the book first with `make book`", file=sys.stderr)
        return 2
    if not find_pages(args.html):
        print(f"check-book: no HTML pages in {args.html}; build the book first with `make book`", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"check-book: no Chromium at {args.chromium} (apt-get install -y chromium)", file=sys.stderr)
        return 2
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("check-book: the Python package playwright is missing (pip install playwright)", file=sys.stderr)
        return 2

    reports = asyncio.run(
        check_book(
            args.html, args.screenshots, args.timeout, args.chromium, args.jobs, on_report=print_report,
            overflow=args.overflow, viewport_width=args.width, overflow_tolerance=args.overflow_tolerance,
        )
    )
    failed = sum(not report.ok for report in reports)
    summary = f"check-book: {len(reports)} pages, {failed} failed"
    if args.overflow != "off":
        blocks = sum(report.overflows for report in reports)
        pages = sum(bool(report.overflows) for report in reports)
        summary += (f"; {blocks} blocks overflow at {args.width} px on {pages} pages"
                    f" (--overflow {args.overflow})")
    print(summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
