"""Enforced banks (launch flag and setting) cannot be switched off through API args, settings or the bank API."""

from __future__ import annotations

import sys

import pytest

from webui_server import EXTENSION_LINK_NAME, REPO_ROOT, SD1_BANK, script_args, write_bank

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise import extension  # noqa: E402
from lib_safedenoise.api import ROUTE_PREFIX  # noqa: E402
from lib_safedenoise.modes import DEFAULT_MODE  # noqa: E402

pytestmark = pytest.mark.webui

SETTING_BANK = "webui-suite-sd1-setting"
ENFORCE_FLAG = "--safe-denoiser-enforce"  # registered by the repository's preload.py


@pytest.fixture
def enforced_webui(webui_pool):
    write_bank(webui_pool.data_dir / "models" / "safe-denoiser", SETTING_BANK, "sd1", seed=11)
    return webui_pool.start(extra_args=(ENFORCE_FLAG, SD1_BANK),
                            settings={extension.SETTING_ENFORCED_BANKS: SETTING_BANK})


def setting_still_enforces(webui) -> bool:
    """Whether the setting's bank is still enforced, as the bank API sees the live setting. (Forge's
    ``GET /sdapi/v1/options`` leaves out options registered after its API models were built, ours among them.)"""
    listed = {bank["name"]: bank for bank in webui.get(f"{ROUTE_PREFIX}/banks")}
    return listed[SETTING_BANK]["enforced"]


def evaluated_steps(report: dict) -> list[int]:
    """Steps of image 0 at which some engine computed its gate (``beta`` is None outside every window)."""
    return [s["step"] for s in report["images"]["0"]["steps"] if s["beta"] is not None]


def enforced_banks(webui, infotext: str) -> list[str]:
    value = webui.parse_infotext(infotext)[extension.INFOTEXT_ENFORCED_KEY]
    return list(extension.parse_infotext(value).args.banks)


def test_enforced_banks_apply_when_the_request_turns_the_extension_off(enforced_webui):
    result = enforced_webui.txt2img(alwayson_scripts=script_args(enabled=False))
    assert sorted(enforced_banks(enforced_webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK])
    assert result.report is not None and evaluated_steps(result.report) == [1, 2, 3]  # default window 0-1 of 3


def test_request_settings_cannot_weaken_enforced_banks(enforced_webui):
    weak = script_args(banks=[SD1_BANK], strengths="0", window_start=0.0, window_end=0.0, mode="paper",
                       threshold=1e9)
    result = enforced_webui.txt2img(alwayson_scripts=weak)
    args = extension.parse_infotext(
        enforced_webui.parse_infotext(result.infotexts[0])[extension.INFOTEXT_ENFORCED_KEY]).args
    assert set(args.strengths) == {1.0} and (args.window_start, args.window_end) == (0.0, 1.0)
    assert args.mode == DEFAULT_MODE and args.threshold < 0


def test_override_settings_cannot_switch_enforcement_off(enforced_webui):
    result = enforced_webui.txt2img(override_settings={
        extension.SETTING_ENFORCED_BANKS: "", "disabled_extensions": [EXTENSION_LINK_NAME],
        "disable_all_extensions": "all"}, override_settings_restore_afterwards=False)
    assert sorted(enforced_banks(enforced_webui, result.infotexts[0])) == sorted([SD1_BANK, SETTING_BANK])
    assert setting_still_enforces(enforced_webui)
    assert EXTENSION_LINK_NAME not in enforced_webui.get("/sdapi/v1/options").get("disabled_extensions", [])


def test_options_route_cannot_switch_enforcement_off(enforced_webui):
    enforced_webui.post("/sdapi/v1/options", {extension.SETTING_ENFORCED_BANKS: "",
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
