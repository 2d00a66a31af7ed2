"""Debian's Chromium driven by Playwright, started once for the UI tests (never
`playwright install`: the browser is the system's /usr/bin/chromium).

The browser lives as long as the module that uses it (tests/test_ui_browser.py, so once per
run), not the whole session: Playwright's sync API keeps an event loop running in the main
thread while it is open, and every later test calling `asyncio.run` would fail."""

from __future__ import annotations

import os
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


def shot(page: Any, name: str, tmp_path: Path) -> None:
    """A full-page screenshot into $PORTWAY_UI_SCREENSHOTS (docs/screenshots/ when the README's
    pictures are renewed), else the test's own folder."""
    folder = (
        Path(os.environ["PORTWAY_UI_SCREENSHOTS"])
        if os.environ.get("PORTWAY_UI_SCREENSHOTS")
        else tmp_path
    )
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def sign_in(browser: Any, url: str, user: tuple[str, str], **ctx: Any) -> Any:
    """A new browser context signed in through the login form; its page on /ui/."""
    context = browser.new_context(**ctx)
    page = context.new_page()
    page.goto(f"{url}/")  # / sends the browser to the UI, the UI to its login form
    assert "/ui/login" in page.url
    page.get_by_label("User name").fill(user[0])
    page.get_by_label("Password").fill(user[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/ui/")
    return page
