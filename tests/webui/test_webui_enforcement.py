"""Enforced banks (launch flag and setting) cannot be switched off through API args, settings or the bank API,
nor by a request's out-of-range strength or a bad reference bank in the bank folder: the enforced correction
runs, or no image comes back; never the unprotected image."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from webui_server import (EXTENSION_LINK_NAME, REPO_ROOT, SD1_BANK, Generation, base_payload, script_args,
                          write_bank, write_nan_bank)

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise.webui import infotext, keys  # noqa: E402
from lib_safedenoise.webui.api import ROUTE_PREFIX  # noqa: E402
from lib_safedenoise.core.modes import DEFAULT_MODE  # noqa: E402

pytestmark = pytest.mark.webui

SETTING_BANK = "webui-suite-sd1-setting"
ENFORCE_FLAG = "--safe-denoiser-enforce"  # registered by the repository's preload.py


@pytest.fixture
def enforced_webui(webui_pool, webui_config):
    if webui_config.ckpt is not None:
        webui_pool.unprotected_reference()  # from the default server, before it is replaced
    write_bank(webui_pool.data_dir / "models" / "safe-denoiser", SETTING_BANK, "sd1", seed=11)
    return webui_pool.start(extra_args=(ENFORCE_FLAG, SD1_BANK),
                            settings={keys.SETTING_ENFORCED_BANKS: SETTING_BANK})


def setting_still_enforces(webui) -> bool:
    """Whether the setting's bank is still enforced, as the bank API sees the live setting. (Forge's
    ``GET /sdapi/v1/options`` leaves out options registered after its API models were built, ours among them.)"""
    listed = {bank["name"]: bank for bank in webui.get(f"{ROUTE_PREFIX}/banks")}
    return listed[SETTING_BANK]["enforced"]


def evaluated_steps(report: dict) -> list[int]:
    """Steps of image 0 at which some engine computed its gate (``beta`` is None outside every window)."""
    return [s["step"] for s in report["images"]["0"]["steps"] if s["beta"] is not None]


def enforced_banks(webui, text: str) -> list[str]:
    value = webui.parse_infotext(text)[keys.INFOTEXT_ENFORCED_KEY]
    return list(infotext.parse_infotext(value).args.banks)


def protected_or_refused(webui, webui_pool, webui_config, payload: dict, *, reported=()) -> Generation | None:
    """The rule for requests and bank folders that try to break enforcement: either the enforced correction ran
    (the infotext names both enforced banks; with a real checkpoint, the image differs from the one the
    unprotected server gave for the same request) and every string of ``reported`` appears in the infotext or
    the report, or no image came back and the answer says why. The generation, or None when refused."""
    response = webui.generate_response("/sdapi/v1/txt2img", base_payload(payload))
    if response.status_code != 200 or not response.json().get("images"):
        text = response.text.lower()
        assert "safe denoiser" in text or "enforce" in text, (
            f"refused without a clear error: {response.status_code} {response.text[:2000]}")
        return None
    result = Generation.from_response(response)
    assert sorted(enforced_banks(webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK]), result.infotexts
    if webui_config.ckpt is not None:  # the empty checkpoint gives uniform grey whatever runs
        unprotected = webui_pool.unprotected_reference().images[0]
        assert not np.array_equal(result.images[0], unprotected), (
            "the enforcing server gave the unprotected image: the enforced correction did not run\n"
            + result.infotexts[0])
    said = result.infotexts[0] + json.dumps(result.report)
    for text in reported:
        assert text in said, f"{text!r} is not reported: {said[:3000]}"
    return result


def test_enforced_correction_changes_the_image(enforced_webui, webui_pool, webui_config, needs_checkpoint):
    """What the tests below rely on: with the extension off in the request, the enforcing server's image is not
    the unprotected server's."""
    protected_or_refused(enforced_webui, webui_pool, webui_config,
                         {"alwayson_scripts": script_args(enabled=False)})


@pytest.mark.parametrize("strength", ["1e300", "nan"])
def test_out_of_range_strength_cannot_switch_enforcement_off(enforced_webui, webui_pool, webui_config, strength):
    """A request strength that no correction can use (overflow, NaN) is the request's error, shown in the
    infotext; the enforced banks still apply at their own strength."""
    result = protected_or_refused(enforced_webui, webui_pool, webui_config,
                                  {"alwayson_scripts": script_args(banks=[SD1_BANK], strengths=strength)})
    if result is not None:
        parsed = enforced_webui.parse_infotext(result.infotexts[0])
        assert keys.INFOTEXT_ERROR_KEY in parsed, result.infotexts[0]
        assert "strength" in parsed[keys.INFOTEXT_ERROR_KEY].lower(), parsed[keys.INFOTEXT_ERROR_KEY]


@pytest.fixture(params=["nan-latents", "damaged-data"])
def bad_reference_bank(request, enforced_webui):
    """A bank of role ``reference`` in the enforcing server's bank folder that cannot be used: NaN latents, or
    a file whose data no longer matches its recorded hash (bytes overwritten after writing). Removed afterwards."""
    name = f"webui-suite-bad-reference-{request.param}"
    if request.param == "nan-latents":
        path = write_nan_bank(enforced_webui.bank_dir, name, "sd1", role="reference")
    else:
        path = write_bank(enforced_webui.bank_dir, name, "sd1", role="reference", seed=13)
        data = bytearray(path.read_bytes())
        data[-256:] = bytes(256)  # the last latents become zeros: the header still parses, the hash does not match
        path.write_bytes(bytes(data))
    yield name
    path.unlink(missing_ok=True)


def test_bad_reference_bank_cannot_switch_enforcement_off(enforced_webui, webui_pool, webui_config,
                                                          bad_reference_bank):
    """The enforced correction runs without the bad bank and says it skipped it, or no image comes back."""
    protected_or_refused(enforced_webui, webui_pool, webui_config,
                         {"alwayson_scripts": script_args(enabled=False)}, reported=[bad_reference_bank])


def test_enforced_banks_apply_when_the_request_turns_the_extension_off(enforced_webui):
    result = enforced_webui.txt2img(alwayson_scripts=script_args(enabled=False))
    assert sorted(enforced_banks(enforced_webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK])
    assert result.report is not None and evaluated_steps(result.report) == [1, 2, 3]  # default window 0-1 of 3


def test_request_settings_cannot_weaken_enforced_banks(enforced_webui):
    weak = script_args(banks=[SD1_BANK], strengths="0", window_start=0.0, window_end=0.0, mode="paper",
                       threshold=1e9)
    result = enforced_webui.txt2img(alwayson_scripts=weak)
    args = infotext.parse_infotext(
        enforced_webui.parse_infotext(result.infotexts[0])[keys.INFOTEXT_ENFORCED_KEY]).args
    assert set(args.strengths) == {1.0} and (args.window_start, args.window_end) == (0.0, 1.0)
    assert args.mode == DEFAULT_MODE and args.threshold < 0


def test_override_settings_cannot_switch_enforcement_off(enforced_webui):
    result = enforced_webui.txt2img(override_settings={
        keys.SETTING_ENFORCED_BANKS: "", "disabled_extensions": [EXTENSION_LINK_NAME],
        "disable_all_extensions": "all"}, override_settings_restore_afterwards=False)
    assert sorted(enforced_banks(enforced_webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK])
    assert setting_still_enforces(enforced_webui)
    assert EXTENSION_LINK_NAME not in enforced_webui.get("/sdapi/v1/options").get("disabled_extensions", [])


def test_options_route_cannot_switch_enforcement_off(enforced_webui):
    enforced_webui.post("/sdapi/v1/options", {keys.SETTING_ENFORCED_BANKS: "",
                                              "disabled_extensions": [EXTENSION_LINK_NAME]})
    assert setting_still_enforces(enforced_webui)
    assert EXTENSION_LINK_NAME not in enforced_webui.get("/sdapi/v1/options").get("disabled_extensions", [])
    result = enforced_webui.txt2img()
    assert sorted(enforced_banks(enforced_webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK])


@pytest.mark.parametrize("bank", [SD1_BANK, SETTING_BANK])
def test_enforced_bank_cannot_be_deleted_through_the_api(enforced_webui, bank):
    response = enforced_webui.client.delete(f"/safe-denoiser/v1/banks/{bank}")
    assert response.status_code == 403, response.text
    assert (enforced_webui.bank_dir / f"{bank}.safetensors").is_file()
