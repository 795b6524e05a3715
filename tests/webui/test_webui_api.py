"""The extension inside the real WebUI, through its HTTP API and its real script runner."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import SD1_BANK, WRONG_FAMILY_BANK
from webui_server import REPO_ROOT, SCRIPT_API_NAME, SCRIPT_TITLE, expected_fired_steps, script_args

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise import extension  # noqa: E402
from lib_safedenoise.generation_args import GenerationArgs  # noqa: E402

pytestmark = pytest.mark.webui


def test_script_is_listed_for_txt2img_and_img2img(webui):
    scripts = webui.get("/sdapi/v1/scripts")
    assert SCRIPT_API_NAME in scripts["txt2img"]
    assert SCRIPT_API_NAME in scripts["img2img"]


def test_script_info_lists_the_documented_arguments(webui):
    info = next(s for s in webui.get("/sdapi/v1/script-info") if s["name"] == SCRIPT_API_NAME and not s["is_img2img"])
    assert info["is_alwayson"]
    assert len(info["args"]) == 8  # generation_args.ARG_NAMES


def test_args_reach_the_script_in_the_documented_order(webui):
    sent = GenerationArgs.from_script_args(
        [True, [SD1_BANK], "0.5", "paper", 2.5, 0.25, 0.75, 0.125])
    result = webui.txt2img(alwayson_scripts={SCRIPT_TITLE: {"args": sent.to_script_args()}})
    parsed = webui.parse_infotext(result.infotexts[0])
    restored = extension.parse_infotext(parsed[extension.INFOTEXT_KEY])
    assert restored.args == sent
    assert SD1_BANK in restored.hashes


def test_infotext_keys_parse_back_through_the_webui_parser(webui):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], window_end=0.5))
    infotext = result.infotexts[0]
    parsed = webui.parse_infotext(infotext)
    assert parsed[extension.INFOTEXT_FIRED_KEY] == "1-2"
    value = parsed[extension.INFOTEXT_KEY]
    assert f"{extension.INFOTEXT_KEY}: " in infotext and "mode=paper" in value and f"banks={SD1_BANK}@" in value
    assert parsed["Steps"] == "4" and parsed["Seed"] == "1234"  # the WebUI's own keys still parse around ours


def test_pasted_infotext_restores_the_settings_through_the_api(webui):
    """The API's ``infotext`` field is the WebUI's paste path: it fills the script's args from the
    ``infotext_fields`` our script declares (modules/api/api.py ``apply_infotext``)."""
    first = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], strengths="0.75", window_end=0.5))
    again = webui.txt2img(infotext=first.infotexts[0])
    key = extension.INFOTEXT_KEY
    assert webui.parse_infotext(again.infotexts[0])[key] == webui.parse_infotext(first.infotexts[0])[key]
    np.testing.assert_array_equal(again.images[0], first.images[0])


def test_per_image_report_comes_back_in_info(webui):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], window_start=0.5, window_end=1.0))
    report = result.report
    assert report is not None, f"no report in info.extra_generation_params: {result.info}"
    assert report["problems"] == []
    image = report["images"]["0"]
    assert image["fired"] == "3-4"
    assert [s["step"] for s in image["steps"] if s["fired"]] == expected_fired_steps(4, (0.5, 1.0))


def test_extension_off_adds_nothing(webui):
    result = webui.txt2img(alwayson_scripts=script_args(enabled=False, banks=[SD1_BANK]))
    assert extension.INFOTEXT_KEY not in result.infotexts[0]
    assert result.report is None
    np.testing.assert_array_equal(result.images[0], webui_pool_reference(webui, "Euler a").images[0])


def test_wrong_latent_family_bank_gives_clear_error_and_generation_completes(webui):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[WRONG_FAMILY_BANK]))
    assert len(result.images) == 1
    parsed = webui.parse_infotext(result.infotexts[0])
    error = parsed.get(extension.INFOTEXT_ERROR_KEY, "")
    assert WRONG_FAMILY_BANK in error and "sdxl" in error.lower() and "sd1" in error.lower(), error
    assert extension.INFOTEXT_FIRED_KEY not in parsed
    np.testing.assert_array_equal(result.images[0], webui_pool_reference(webui, "Euler a").images[0])


def test_bad_argument_is_reported_and_generation_completes(webui):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], window_start=0.9, window_end=0.1))
    parsed = webui.parse_infotext(result.infotexts[0])
    assert "window_start <= window_end" in parsed[extension.INFOTEXT_ERROR_KEY]
    np.testing.assert_array_equal(result.images[0], webui_pool_reference(webui, "Euler a").images[0])


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_callbacks_are_gone_after_the_run(webui, webui_pool, sampler):
    """After corrected generations, one with the extension off equals the fresh server's image bit for bit."""
    webui.txt2img(sampler_name=sampler, alwayson_scripts=script_args(banks=[SD1_BANK]))
    after = webui.txt2img(sampler_name=sampler)
    np.testing.assert_array_equal(after.images[0], webui_pool.fresh_references[sampler].images[0])
    assert after.infotexts[0] == webui_pool.fresh_references[sampler].infotexts[0]


def webui_pool_reference(webui, sampler):
    return webui.reference_for(sampler)
