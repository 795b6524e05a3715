"""The extension inside the real WebUI, through its HTTP API and its real script runner."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from webui_server import (ALWAYS_FIRING_MODE, REPO_ROOT, SCRIPT_API_NAME, SCRIPT_TITLE, SD1_BANK, WRONG_FAMILY_BANK,
                          expected_fired_steps, script_args)

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise.webui import infotext, keys  # noqa: E402
from lib_safedenoise.webui.args import ARG_NAMES, GenerationArgs  # noqa: E402

pytestmark = pytest.mark.webui


def ours(webui, infotext: str) -> dict:
    """Our keys of an infotext, as the WebUI's own parser reads them."""
    parsed = webui.parse_infotext(infotext)
    found = {key: value for key, value in parsed.items() if key.startswith(keys.INFOTEXT_KEY)}
    assert found, f"no Safe Denoiser key in the infotext: {infotext}"
    return found


def test_script_is_listed_for_txt2img_and_img2img(webui):
    scripts = webui.get("/sdapi/v1/scripts")
    assert SCRIPT_API_NAME in scripts["txt2img"]
    assert SCRIPT_API_NAME in scripts["img2img"]


def test_script_info_has_the_documented_argument_count(webui):
    infos = [s for s in webui.get("/sdapi/v1/script-info") if s["name"] == SCRIPT_API_NAME]
    assert sorted(s["is_img2img"] for s in infos) == [False, True]
    assert all(s["is_alwayson"] and len(s["args"]) == len(ARG_NAMES) for s in infos)


def test_args_reach_the_script_in_the_documented_order(webui):
    sent = GenerationArgs.from_script_args([True, [SD1_BANK], "0.5", "paper", 2.5, 0.25, 0.75, 0.125])
    result = webui.txt2img(alwayson_scripts={SCRIPT_TITLE: {"args": sent.to_script_args()}})
    found = ours(webui, result.infotexts[0])
    assert keys.INFOTEXT_ERROR_KEY not in found, found
    restored = infotext.parse_infotext(found[keys.INFOTEXT_KEY])
    assert restored.args == sent
    assert SD1_BANK in restored.hashes


def test_infotext_and_report_of_a_corrected_image(webui):
    """Keys parse back through the WebUI's parser; the per-image report in ``info`` agrees with them."""
    window = (0.5, 1.0)
    result = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], window_start=window[0],
                                                        window_end=window[1]))
    parsed = webui.parse_infotext(result.infotexts[0])
    assert parsed[keys.INFOTEXT_FIRED_KEY] == "2-3", result.infotexts[0]
    assert parsed[keys.INFOTEXT_KEY].startswith(f"banks={SD1_BANK}@")
    assert f"mode={ALWAYS_FIRING_MODE}" in parsed[keys.INFOTEXT_KEY]
    assert parsed["Steps"] == "3" and parsed["Seed"] == "1234"  # the WebUI's own keys still parse around ours
    report = result.report
    assert report is not None, f"no report in info.extra_generation_params: {result.info}"
    assert report["problems"] == []
    image = report["images"]["0"]
    assert image["fired"] == "2-3"
    assert [s["step"] for s in image["steps"]] == [1, 2, 3]
    assert [s["step"] for s in image["steps"] if s["fired"]] == expected_fired_steps(3, window)


def test_pasted_infotext_restores_the_settings_through_the_api(webui):
    """The API's ``infotext`` field is the WebUI's paste path: it fills the script's args from the
    ``infotext_fields`` our script declares (modules/api/api.py ``apply_infotext``)."""
    first = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], strengths="0.75", window_end=0.5))
    # Forge's apply_infotext fails on the styles field unless the request sets it: its paste reader returns
    # gradio 4's gr.update() ({"__type__": "update"}), which it does not recognise as an update, and then calls
    # isinstance(value, list[str]) (modules/api/api.py get_field_value).
    again = webui.txt2img(infotext=first.infotexts[0], styles=[])
    assert ours(webui, again.infotexts[0]) == ours(webui, first.infotexts[0])
    np.testing.assert_array_equal(again.images[0], first.images[0])


def test_extension_off_adds_nothing(webui, webui_pool):
    result = webui.txt2img(alwayson_scripts=script_args(enabled=False, banks=[SD1_BANK]))
    assert keys.INFOTEXT_KEY not in result.infotexts[0]
    assert result.report is None
    np.testing.assert_array_equal(result.images[0], webui_pool.fresh_references["Euler a"].images[0])


def test_wrong_latent_family_bank_gives_clear_error_and_generation_completes(webui, webui_pool):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[WRONG_FAMILY_BANK]))
    assert len(result.images) == 1
    found = ours(webui, result.infotexts[0])
    error = found.get(keys.INFOTEXT_ERROR_KEY, "")
    assert WRONG_FAMILY_BANK in error and "sdxl" in error.lower() and "sd1" in error.lower(), found
    assert keys.INFOTEXT_FIRED_KEY not in found
    np.testing.assert_array_equal(result.images[0], webui_pool.fresh_references["Euler a"].images[0])


def test_bad_argument_is_reported_and_generation_completes(webui, webui_pool):
    result = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], window_start=0.9, window_end=0.1))
    found = ours(webui, result.infotexts[0])
    assert "window_start <= window_end" in found.get(keys.INFOTEXT_ERROR_KEY, ""), found
    np.testing.assert_array_equal(result.images[0], webui_pool.fresh_references["Euler a"].images[0])


def test_callbacks_are_gone_after_the_run(webui, webui_pool):
    """After a corrected generation on the eps path (DDIM), uncorrected ones equal the fresh server's
    bit for bit, for DDIM and a k-diffusion sampler."""
    webui.txt2img(sampler_name="DDIM", alwayson_scripts=script_args(banks=[SD1_BANK]))
    for sampler, fresh in webui_pool.fresh_references.items():
        after = webui.txt2img(sampler_name=sampler)
        np.testing.assert_array_equal(after.images[0], fresh.images[0])
        assert after.infotexts[0] == fresh.infotexts[0]
