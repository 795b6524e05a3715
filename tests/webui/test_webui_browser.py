"""The real WebUI page in headless Chromium: only it has the real InputAccordion and ``onUiLoaded``.

Screenshots go to ``artifacts/webui/`` (ignored by git).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from webui_page import ACCORDION, opened_page
from webui_server import REPO_ROOT

pytestmark = [pytest.mark.webui, pytest.mark.browser]

ARTIFACTS = REPO_ROOT / "artifacts" / "webui"
TAB = "#safe_denoiser_tab"
PAGE_TIMEOUT_MS = 180_000


@pytest.fixture
def loaded_page(webui):
    """The txt2img page, loaded, and a function returning what the server logged since it was requested."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_before = len(webui.log())
    with opened_page(webui, PAGE_TIMEOUT_MS) as page:
        yield page, lambda: webui.log()[log_before:]


def test_accordion_renders_in_txt2img_and_hints_load(loaded_page):
    page, server_log_since_load = loaded_page
    accordion = page.locator(ACCORDION)
    accordion.scroll_into_view_if_needed()
    assert accordion.is_visible()
    assert "Safe Denoiser" in accordion.inner_text()
    page.screenshot(path=str(ARTIFACTS / "txt2img-accordion.png"), full_page=True)
    assert page.evaluate("typeof safeDenoiserConfirmDelete") == "function"
    # onUiLoaded sets the hints as title attributes once the page has been built
    page.wait_for_function("document.querySelector('#safe_denoiser_txt2img_banks')?.title?.length > 0")
    assert "Negation banks" in page.locator("#safe_denoiser_txt2img_banks").get_attribute("title")
    # the page's load events (the settings values among them) ran without a server-side error
    page.wait_for_timeout(5000)
    assert "Traceback" not in server_log_since_load(), server_log_since_load()[-3000:]


def test_tab_builds_a_bank_from_uploaded_files(loaded_page, webui, tmp_path):
    page, _ = loaded_page
    name = "webui-suite-browser"
    generator = np.random.default_rng(9)
    uploads = []
    for i in range(2):
        path = tmp_path / f"upload-{i}.png"
        Image.fromarray(generator.integers(0, 256, (64, 64, 3), np.uint8)).save(path)
        uploads.append(str(path))
    page.locator("#tabs > .tab-nav button", has_text="Safe Denoiser").click()
    page.locator(f"{TAB}_name").locator("input, textarea").first.fill(name)
    page.locator(f"{TAB}_files input[type=file]").set_input_files(uploads)
    page.locator(f"{TAB}_files").get_by_text("upload-1").first.wait_for()  # gradio has received the uploads
    page.locator(f"{TAB}_build").click()
    target = webui.bank_dir / f"{name}.safetensors"
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert target.is_file(), f"no bank file after the build; report: {page.locator(f'{TAB}_report').inner_text()}"
    page.wait_for_function(f"document.querySelector('{TAB}_report')?.innerText?.includes('Bank {name}')")
    page.screenshot(path=str(ARTIFACTS / "tab-built-bank.png"), full_page=True)
    assert name in page.locator(f"{TAB}_table").inner_text()
