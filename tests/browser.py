"""Headless Chromium for the tests that look at pages (report.html, the demo page).

Debian's `chromium` package (``apt-get install -y chromium``); the tests skip, saying so,
without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = Path(tmp) / "chromium-profile"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def screenshot(url: str, out: Path, tmp: Path, size: str = "1200,2000", wait_ms: int = 0) -> Path:
    """A PNG of ``url`` at ``size`` (``wait_ms``: virtual time for its scripts to run first)."""
    extra = [f"--virtual-time-budget={wait_ms}"] if wait_ms else []
    proc = _run(tmp, *extra, f"--screenshot={out}", f"--window-size={size}", url)
    assert Path(out).is_file(), f"no screenshot (rc {proc.returncode}): {proc.stderr[-1500:]}"
    return Path(out)


def dump_dom(url: str, tmp: Path, wait_ms: int = 5000) -> str:
    """The DOM of ``url`` after its scripts ran for ``wait_ms`` of virtual time."""
    proc = _run(tmp, f"--virtual-time-budget={wait_ms}", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-1500:]
    return proc.stdout


def distinct_colours(png: Path) -> int:
    """How many colours a screenshot holds (a blank or error page has a handful)."""
    from PIL import Image

    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20
