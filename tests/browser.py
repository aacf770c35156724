"""Headless Chromium for tests: screenshot a local page, or dump its DOM after its scripts ran.

Debian's `chromium` package (`make chromium` installs it). WebGL (which deck.gl needs) runs on the
CPU through SwiftShader; every run gets a fresh profile and no network side traffic.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")
# WebGL comes from SwiftShader (ANGLE on Vulkan, on the CPU). Chromium 156's headless mode falls back to it
# by itself; the two SwiftShader flags ask for it explicitly, as Chrome is retiring that automatic fallback.
# `--disable-software-rasterizer` must never be added: it removes WebGL and deck.gl draws nothing.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium_binary() -> str:
    """Path of the Chromium executable; a RuntimeError naming the install command when there is none."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise RuntimeError(
        "headless Chromium not found: run `make chromium` (or `apt-get install chromium`) to install it"
    )


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900, wait_ms: int = 8000) -> Path:
    """Render `page` in a `width`×`height` window, let its scripts run for `wait_ms`, save a PNG."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    _run(page, [f"--screenshot={png.resolve()}", f"--window-size={width},{height}"], wait_ms)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {page} to {png}")
    return png


def dump_dom(page: Path, wait_ms: int = 5000) -> str:
    """The serialized DOM of `page` after its scripts ran for `wait_ms`."""
    return _run(page, ["--dump-dom"], wait_ms)


def _run(page: Path, extra: list[str], wait_ms: int) -> str:
    """Run Chromium once on `page` with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="thinklens-chromium-") as profile:
        command = [
            chromium_binary(),
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={wait_ms}",
            *extra,
            Path(page).resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60 + 3 * wait_ms / 1000)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode} on {page}: {result.stderr[-2000:]}")
    return result.stdout
