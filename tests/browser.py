"""Debian's headless Chromium under playwright, shared by tests/test_web.py and bench/map_render.py.

``executable_path`` points at the distribution's browser (``apt-get install chromium``; .ci/run
installs it): playwright never downloads one.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    """The browser's path. Under pytest a missing browser skips the test (fails it when
    ORBITMESH_REQUIRE_TOOLS=1, as in CI); a benchmark stops with the install hint."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if "_pytest" in sys.modules:
        from tests.conftest import require_tool

        return require_tool(CHROMIUM, "chromium", "the live map's browser test")
    raise SystemExit("this needs Debian's chromium: apt-get install -y chromium")


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
