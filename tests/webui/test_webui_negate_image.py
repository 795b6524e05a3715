""""Negate this image" in the real WebUI: the route adds images the WebUI generated and saved to a negation bank
(encoded by the real VAE), refuses files outside the WebUI's image folders, and the bank then drives a
generation; in headless Chromium the gallery's button adds a generated image on the WebUI's own page.

Screenshots go to ``artifacts/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from webui_page import opened_page
from webui_server import REPO_ROOT, script_args

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise.banks import fileformat  # noqa: E402
from lib_safedenoise.webui.api import ROUTE_PREFIX  # noqa: E402
from lib_safedenoise.webui.negate_image import ROUTE  # noqa: E402

pytestmark = pytest.mark.webui

NEGATE = f"{ROUTE_PREFIX}{ROUTE}"
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
PAGE_TIMEOUT_MS = 300_000


def saved_outputs(webui) -> set[Path]:
    """The images in the WebUI's txt2img output folder (``outdir_txt2img_samples``: <data dir>/outputs/...)."""
    return set((webui.data_dir / "outputs" / "txt2img-images").glob("**/*.png"))


def generate_and_save(webui, seed: int) -> Path:
    before = saved_outputs(webui)
    webui.txt2img(seed=seed, save_images=True)
    new = saved_outputs(webui) - before
    assert len(new) == 1, f"expected one saved image, found {sorted(new)}"
    return new.pop()


def test_generated_images_go_to_a_bank_that_then_drives_a_generation(webui):
    name = "webui-suite-negated"
    first, second = generate_and_save(webui, 11), generate_and_save(webui, 12)
    created = webui.post(NEGATE, {"bank": name, "path": str(first)})
    assert created.status_code == 200, created.text
    assert created.json()["created"] is True and created.json()["count"] == 1
    # the URL the page shows the second image under (gradio's file= route, A1111's ?mtime)
    url = f"{webui.url}/file={second}?{second.stat().st_mtime}"
    appended = webui.post(NEGATE, {"bank": name, "path": url})
    assert appended.status_code == 200, appended.text
    assert appended.json()["created"] is False and appended.json()["count"] == 2
    meta = fileformat.read_metadata(webui.bank_dir / f"{name}.safetensors")
    assert (meta.latent_space, meta.role, meta.count) == ("sd1", "negation", 2)
    # a server file outside the WebUI's image folders is never read, whatever it is
    for outside in (webui.data_dir / "config.json", webui.bank_dir / f"{name}.safetensors"):
        refused = webui.post(NEGATE, {"bank": name, "path": str(outside)})
        assert refused.status_code == 400 and "not an image this WebUI wrote" in refused.text, refused.text
    assert fileformat.read_metadata(webui.bank_dir / f"{name}.safetensors").count == 2
    result = webui.txt2img(alwayson_scripts=script_args(banks=[name]))
    assert result.report["problems"] == [] and result.report["images"]["0"]["fired"] != "none"


@pytest.mark.browser
def test_the_gallery_button_adds_a_generated_image_on_the_webui_page(webui):
    name = "webui-suite-gallery"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with opened_page(webui, PAGE_TIMEOUT_MS) as page:
        button = page.locator("#safe_denoiser_txt2img_negate_image")
        button.wait_for(state="attached")
        assert page.locator("#image_buttons_txt2img #safe_denoiser_txt2img_negate_image").count() == 1
        page.locator("#txt2img_prompt textarea").fill("a cat")
        for slider, value in (("steps", "3"), ("width", "64"), ("height", "64")):
            box = page.locator(f"#txt2img_{slider} input[type=number]")
            box.fill(value)
            box.press("Enter")
        page.locator("#txt2img_generate").click()
        page.locator("#txt2img_gallery img").first.wait_for()
        page.wait_for_function("!document.querySelector('#txt2img_interrupt')?.offsetParent")
        questions = []

        def answer(dialog):
            questions.append(dialog.message)
            dialog.accept(name)

        page.once("dialog", answer)
        button.click()
        log = page.locator("#html_log_txt2img").first
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while "Added" not in log.inner_text() and time.monotonic() < deadline:
            time.sleep(1)
        page.screenshot(path=str(SCREENSHOTS / f"webui-{webui.config.kind}-negate-this-image.png"), full_page=True)
        assert f'a new negation bank "{name}"' in log.inner_text(), log.inner_text()
        assert len(questions) == 1 and "Negate this image" in questions[0]
        assert "webui-suite-sd1 (6)" in questions[0]  # the negation banks it may go to are named
    meta = fileformat.read_metadata(webui.bank_dir / f"{name}.safetensors")
    assert (meta.latent_space, meta.role, meta.count) == ("sd1", "negation", 1)
