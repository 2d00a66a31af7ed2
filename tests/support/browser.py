"""Debian's Chromium driven by Playwright, started once for the UI tests (never
`playwright install`: the browser is the system's /usr/bin/chromium).

The browser lives as long as the module that uses it (tests/test_ui_browser.py, so once per
run), not the whole session: Playwright's sync API keeps an event loop running in the main
thread while it is open, and every later test calling `asyncio.run` would fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser for the UI tests; each test opens its own context (its own cookies).
    Playwright's `launch` gives the browser a fresh user-data folder of its own."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} missing: run scripts/install-test-deps.sh (chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
