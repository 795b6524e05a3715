"""Banks from a prompt in the real WebUI: the loaded checkpoint draws the prompt through the WebUI's own txt2img
processing, the bank keeps the latents, and a generation then uses the bank. Once through the bank API
(``POST /safe-denoiser/v1/banks/from-prompt``), once through the tab's "From a prompt" section on the real
page (the README's quick start: type what to avoid, build, tick; its screenshots go to
``artifacts/screenshots/``, ignored by git; the README shows copies in ``docs/screenshots/``)."""

from __future__ import annotations

import sys
import time

import pytest

from webui_page import opened_page
from webui_server import REPO_ROOT, script_args

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise.banks import fileformat, metadata  # noqa: E402
from lib_safedenoise.webui.api import ROUTE_PREFIX  # noqa: E402
from lib_safedenoise.webui.prompt_bank import GENERIC_PROMPTS, reference_bank_name  # noqa: E402

pytestmark = pytest.mark.webui

SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
TAB = "#safe_denoiser_tab"
PAGE_TIMEOUT_MS = 300_000
# the suite's small request (webui_server.base_payload): 64x64, 3 steps
SMALL = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 7, "sampler_name": "Euler"}


def from_prompt(webui, **body) -> dict:
    response = webui.post(f"{ROUTE_PREFIX}/banks/from-prompt", {**SMALL, "overwrite": True, **body})
    assert response.status_code == 200, f"{response.text}\n--- server log ---\n{webui.log_tail()}"
    return response.json()


def test_bank_from_a_prompt_through_the_api_then_a_generation_avoids_it(webui, needs_checkpoint):
    name = "webui-suite-from-prompt"
    report = from_prompt(webui, name=name, prompt="a red car", negative_prompt="blurry", samples=3, batch_size=2,
                         seed=7)
    assert report["name"] == name and report["bank_count"] == 3
    meta = fileformat.read_metadata(webui.bank_dir / f"{name}.safetensors")
    assert meta.encode_mode == metadata.GENERATED and meta.role == "negation"
    assert meta.latent_space == "sd1" and meta.shape == (3, 4, 8, 8)
    generation = meta.generation
    assert (generation["prompt"], generation["negative_prompt"], generation["seed"], generation["samples"]) == \
        ("a red car", "blurry", 7, 3)
    assert generation["sampler"] == "Euler" and generation["steps"] == 3 and generation["width"] == 64
    assert generation["model"] and generation["model_hash"] and generation["enforced"] == []
    assert generation["host"] == webui.config.kind
    latents = fileformat.load_bank(webui.bank_dir / f"{name}.safetensors").latents.float()
    assert latents.std() > 0 and not (latents[0] == latents[1]).all(), "three different samples"
    # the same seeds and settings make the same latents again
    again = from_prompt(webui, name=name + "-again", prompt="a red car", negative_prompt="blurry", samples=3,
                        batch_size=3, seed=7)
    rebuilt = fileformat.load_bank(webui.bank_dir / f"{again['name']}.safetensors").latents.float()
    assert (rebuilt - latents).abs().max() < 0.05
    # generate with it
    plain = webui.txt2img(prompt="a red car", seed=7)
    avoided = webui.txt2img(prompt="a red car", seed=7, alwayson_scripts=script_args(banks=[name]))
    assert avoided.report["problems"] == [] and avoided.report["images"]["0"]["fired"] == "1-3"
    assert abs(avoided.images[0].astype(int) - plain.images[0].astype(int)).max() > 0


def test_one_click_reference_of_the_models_own_samples(webui, needs_checkpoint):
    """The one-click reference bank: samples of the generic prompts, role reference, named for the latent space, and
    listed as fitting the loaded model (which items of it the default mode keeps is the engine's filter's
    business: against the suite's random negation bank it may claim them all)."""
    report = from_prompt(webui, name="", role="reference", samples=2, seed=11)
    name = reference_bank_name("sd1")
    assert report["name"] == name
    meta = fileformat.read_metadata(webui.bank_dir / f"{name}.safetensors")
    assert meta.role == "reference" and meta.generation["prompt"] == "" and meta.count == 2
    assert meta.generation["prompts"] == list(GENERIC_PROMPTS) and meta.generation["unguided_samples"] == 0
    assert meta.generation["prompts_used"] == [GENERIC_PROMPTS[0]]  # 2 samples: one batch
    try:
        listed = {bank["name"]: bank for bank in webui.get(f"{ROUTE_PREFIX}/banks")}
        assert listed[name]["compatible"] is True and listed[name]["role"] == "reference"
        result = webui.txt2img(alwayson_scripts=script_args(banks=["webui-suite-sd1"], mode="default"))
        assert result.report["problems"] == [] and result.report["failed"] is None
    finally:
        (webui.bank_dir / f"{name}.safetensors").unlink()  # other tests expect no reference bank


@pytest.fixture
def page(webui):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with opened_page(webui, PAGE_TIMEOUT_MS) as loaded:
        yield loaded


def test_quick_start_type_what_to_avoid_build_tick(page, webui, needs_checkpoint):
    """The README's quick start on the real page: a bank from a prompt in the tab, then ticked in txt2img."""
    name = "red-cars"
    target = webui.bank_dir / f"{name}.safetensors"
    target.unlink(missing_ok=True)
    page.locator("#tabs > .tab-nav button", has_text="Safe Denoiser").click()
    page.locator(f"{TAB}_prompt textarea").fill("a red car")
    page.locator(f"{TAB}_samples input").fill("4")
    page.locator(f"{TAB}_prompt_name input").fill(name)
    page.locator(f"{TAB}_prompt_sampling .label-wrap").first.click()
    for field, value in (("steps", "3"), ("width", "64"), ("height", "64"), ("seed", "7")):
        page.locator(f"{TAB}_prompt_{field} input").first.fill(value)
    page.locator(f"{TAB}_prompt_build").click()
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert target.is_file(), f"no bank; report: {page.locator(f'{TAB}_prompt_report').first.inner_text()}"
    page.wait_for_function(f"document.querySelector('{TAB}_prompt_report')?.innerText?.includes('Bank {name}')")
    assert "4 / 4 samples" in page.locator(f"{TAB}_prompt_progress").first.inner_text()
    assert name in page.locator(f"{TAB}_table").first.inner_text()
    meta = fileformat.read_metadata(target)
    assert meta.count == 4 and meta.generation["prompt"] == "a red car"
    assert (meta.generation["steps"], meta.generation["width"], meta.generation["seed"]) == (3, 64, 7)
    page.locator(f"{TAB}_from_prompt").first.screenshot(path=str(SCREENSHOTS / "quick_start_build.png"))
    # tick: txt2img, the accordion on, the bank chosen
    page.locator("#tabs > .tab-nav button", has_text="txt2img").click()
    page.click("#safe_denoiser_txt2img-visible-checkbox")
    page.click("#safe_denoiser_txt2img .label-wrap")
    page.click("#safe_denoiser_txt2img_banks_refresh")
    page.click("#safe_denoiser_txt2img_banks input")
    page.locator("#safe_denoiser_txt2img_banks ul.options li", has_text=name).click()
    page.click("#txt2img_prompt textarea")  # close the option list
    page.locator("#txt2img_prompt textarea").fill("a red car")
    slider = page.locator("#safe_denoiser_txt2img_strength_0")
    slider.wait_for()
    assert name in slider.inner_text()
    page.locator("#safe_denoiser_txt2img").first.screenshot(path=str(SCREENSHOTS / "quick_start_tick.png"))
