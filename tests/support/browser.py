"""Headless Chromium (Debian's `chromium`, `make system-deps`) driven through its command line.

`--dump-dom` prints the DOM after the page's scripts ran and `--screenshot` writes a PNG; with
`--virtual-time-budget` Chromium lets the page's timers and fetches run first (virtual time only
advances while nothing is pending, so an app that loads its data over the network has rendered it by
then). Each call uses a fresh profile directory and turns off everything that would reach the
internet (sync, component updates, background networking, QUIC): nothing is downloaded at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tests.support.binaries import require_binary

FLAGS = (
    "--headless",
    "--no-sandbox",  # running as root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
WINDOW = (1400, 900)
BUDGET_MS = 20_000


@dataclass(frozen=True)
class Page:
    """A rendered page: its DOM after scripts ran, the visible text, and the images it shows."""

    url: str
    dom: str
    text: str
    images: list[dict[str, str]]  # the attributes of each <img>


class _Reader(HTMLParser):
    """Visible text (outside script/style) and <img> attributes of a DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.images: list[dict[str, str]] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        if tag == "img":
            self.images.append({name: value or "" for name, value in attrs})

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden and data.strip():
            self.text.append(data.strip())


def _chromium(url: str, output: list[str], window: tuple[int, int], budget_ms: int) -> str:
    binary = require_binary("chromium")
    profile = Path(tempfile.mkdtemp(prefix="mlstack-chromium-"))
    try:
        result = subprocess.run(
            [
                str(binary),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}",
                f"--virtual-time-budget={budget_ms}",
                *output,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url} ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def render(url: str, window: tuple[int, int] = WINDOW, budget_ms: int = BUDGET_MS) -> Page:
    """The page at `url` once its scripts and fetches ran: DOM, visible text and images."""
    dom = _chromium(url, ["--dump-dom"], window, budget_ms)
    reader = _Reader()
    reader.feed(dom)
    return Page(url, dom, " ".join(reader.text), reader.images)


def screenshot(url: str, path: Path, window: tuple[int, int] = WINDOW, budget_ms: int = BUDGET_MS) -> Path:
    """A PNG of the page's viewport (`window` in CSS pixels) once its scripts and fetches ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _chromium(url, [f"--screenshot={path}"], window, budget_ms)
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot of {url} to {path}")
    return path
