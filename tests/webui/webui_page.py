"""The real WebUI's page in headless Debian Chromium (never a downloaded browser), for the opt-in suite."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ACCORDION = "#safe_denoiser_txt2img"


@contextlib.contextmanager
def opened_page(webui, timeout_ms: int):
    """The WebUI's txt2img page, loaded until the extension's accordion is attached; every wait on it times
    out after ``timeout_ms``. Skips the test where Playwright or Chromium is missing."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_ms)
            page.goto(webui.url, wait_until="load", timeout=timeout_ms)
            page.wait_for_selector(ACCORDION, state="attached")
            yield page
        finally:
            browser.close()
