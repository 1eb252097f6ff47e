"""A real browser for tests: Debian's `chromium` driven by Playwright (which cannot download its own
browsers here), held to loopback, and small PNG screenshots for the docs."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Chromium reaches for outside hosts on its own (updates, safe browsing, fonts): every name it resolves
# fails but loopback's. (One argv element: the shell's quotes of the documented form are not part of it.)
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
PANEL = {"width": 1366, "height": 768}

_MISSING = (
    "{what} is missing: the console's browser tests drive Debian's Chromium with Playwright. Install the "
    "peers with `make peers` (apt-get install chromium) and the Python package with `pip install "
    "playwright` (its own browser downloads are not needed)"
)


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError(_MISSING.format(what="the chromium executable"))
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright `Browser`), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AssertionError(_MISSING.format(what="the playwright Python package")) from None
    args = [LOOPBACK_ONLY, "--disable-background-networking", "--disable-component-update", "--no-first-run"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def save_screenshot(page: Any, directory: Path, name: str) -> Path:
    """The page at panel size as a small PNG (256 colours: the docs commit them) in `directory`."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=False)))
    target = directory / f"{name}.png"
    image.convert("RGB").quantize(colors=256).save(target, optimize=True)
    return target
