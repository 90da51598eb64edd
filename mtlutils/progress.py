"""A progress bar that reads well both in a terminal and in the rendered book.

* In a terminal it is a plain ``tqdm`` bar (stderr, redrawn in place).
* In a Jupyter kernel it is one HTML line shown with ``display(..., display_id=True)`` and updated in
  place. When the book executes a notebook, the executor applies each update to the stored output, so
  the page shows the bar's final state: one line, rendered without any JavaScript. (Plain tqdm there
  leaves one line per redraw, and tqdm's widget needs JavaScript from a CDN, blank offline.)

Set ``MTL_PROGRESS=0`` to silence all bars.
"""
from __future__ import annotations

import html
import os
import sys
import time
from typing import Any


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (notebook, JupyterLab, nbval, jupyter-book execution)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and getattr(ip, "kernel", None) is not None


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def _fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Progress over ``total`` steps. Use as a context manager or call :meth:`close` at the end.

    ``update(n, **postfix)`` advances by ``n`` steps and shows ``postfix`` (e.g. running losses);
    ``set_description(text)`` changes the label (e.g. ``"epoch 3/10"``).
    """

    def __init__(self, total: int, desc: str = "", enabled: bool | None = None,
                 refresh_seconds: float = 0.5, initial: int = 0) -> None:
        if enabled is None:
            enabled = os.environ.get("MTL_PROGRESS", "1") not in ("0", "false", "off")
        self.total = max(int(total), 0)
        self.desc = desc
        self.n = max(int(initial), 0)   # a resumed run starts where it stopped
        self.postfix: dict[str, Any] = {}
        self.enabled = enabled
        self.refresh_seconds = refresh_seconds
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._handle = None
        self._tqdm = None
        if not enabled:
            return
        if _in_kernel():
            from IPython.display import HTML, display

            self._handle = display(HTML(self._html()), display_id=True)
        else:
            from tqdm import tqdm

            interval = 0.1 if sys.stderr.isatty() else 10.0  # CI logs: a line every 10 s at most
            self._tqdm = tqdm(total=self.total, desc=desc, mininterval=interval, dynamic_ncols=True,
                              file=sys.stderr, initial=self.n)

    # -- rendering -------------------------------------------------------------------------------
    def _text(self) -> str:
        frac = self.n / self.total if self.total else 1.0
        width = 20
        filled = int(round(frac * width))
        bar = "█" * filled + "·" * (width - filled)
        elapsed = time.perf_counter() - self._start
        post = "  ".join(f"{k}={_fmt_value(v)}" for k, v in self.postfix.items())
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{bar} {100 * frac:3.0f}% {self.n}/{self.total} [{_fmt_time(elapsed)}] {post}".rstrip()

    def _html(self) -> str:
        frac = self.n / self.total if self.total else 1.0
        colour = "#2e7d32" if self.n >= self.total else "#1565c0"
        elapsed = time.perf_counter() - self._start
        post = " &nbsp; ".join(f"{html.escape(str(k))}={html.escape(_fmt_value(v))}"
                               for k, v in self.postfix.items())
        head = f"<b>{html.escape(self.desc)}</b> " if self.desc else ""
        return (
            '<div class="mtl-progress" style="font-family:monospace;font-size:0.85em;line-height:1.6">'
            f"{head}<span style=\"display:inline-block;width:12em;height:0.8em;background:#ddd;"
            f"vertical-align:middle;border-radius:2px\"><span style=\"display:block;height:100%;"
            f"width:{100 * frac:.1f}%;background:{colour};border-radius:2px\"></span></span> "
            f"{100 * frac:3.0f}% {self.n}/{self.total} [{_fmt_time(elapsed)}] {post}</div>"
        )

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < self.refresh_seconds:
            return
        self._last_draw = now
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self._html()))

    # -- public API ------------------------------------------------------------------------------
    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` steps; keyword arguments replace the shown postfix values."""
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        if self._tqdm is not None:
            if postfix:
                self._tqdm.set_postfix({k: _fmt_value(v) for k, v in self.postfix.items()}, refresh=False)
            self._tqdm.update(n)
        else:
            self._draw()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._tqdm is not None:
            self._tqdm.set_description(desc, refresh=False)

    def close(self) -> None:
        """Draw the final state."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self._handle is not None:
            self._draw(force=True)
            self._handle = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __str__(self) -> str:
        return self._text()
