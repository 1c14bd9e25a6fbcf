"""Debian's headless Chromium under playwright, shared by tests/test_web.py and bench/map_render.py.

``executable_path`` points at the distribution's browser (``apt-get install chromium``; .ci/run
installs it): playwright never downloads one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """The browser's path, or a one-line error saying how to install it."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError("this needs Debian's chromium: apt-get install -y chromium "
                           "(.ci/run installs it)")
    return CHROMIUM


@contextlib.asynccontextmanager
async def chromium(user_data: Path) -> AsyncIterator[Any]:
    """A persistent headless Chromium context with its profile in ``user_data``."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            str(user_data), executable_path=chromium_path(), headless=True, args=FLAGS,
            viewport={"width": 1700, "height": 820})
        try:
            yield context
        finally:
            await context.close()
