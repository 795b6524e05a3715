"""Enforced banks (``--safe-denoiser-enforce`` or the API-restricted setting) apply to every generation,
and none of the routes a user or API client has can switch them off (as far as the host stub models them)."""

from __future__ import annotations

import json

import pytest
import torch

from lib_safedenoise.webui import enforcement, keys, server
from lib_safedenoise.webui.keys import INFOTEXT_ENFORCED_KEY, INFOTEXT_ERROR_KEY, SETTING_ENFORCED_BANKS
from tests.host_stub import webui_fixtures as wf

REQUEST = dict(prompt=str(wf.NEGATED_CLASS), seed=21, steps=6, cfg_scale=2.0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Latents of the same request on a server without enforcement: off, and with the enforced settings."""
    return wf.open_server_latents(tmp_path_factory.mktemp("open"), REQUEST)


@pytest.fixture
def enforced(tmp_path):
    return wf.start(tmp_path, enforce=wf.BANK)


def assert_enforced(response, reference):
    off, on = reference
    latents = response["p"].latents[0]
    assert not torch.equal(latents, off)
    assert torch.equal(latents, on), "the enforced bank must run exactly as the enforced settings say"
    info = json.loads(response["info"])
    assert info["infotexts"][0].count(INFOTEXT_ENFORCED_KEY) == 1


def test_accordion_off_still_applies_the_enforced_bank(enforced, reference):
    assert_enforced(enforced.txt2img(**REQUEST, safe_denoiser=[False]), reference)
    assert_enforced(enforced.txt2img(**REQUEST), reference)  # API request without our args at all


def test_api_args_cannot_weaken_it(enforced, reference):
    weakest = [True, [wf.BANK], "0", "default", 0, 0, 0, 1e9]  # strength 0, empty window, huge threshold
    response = enforced.txt2img(**REQUEST, safe_denoiser=weakest)
    assert_enforced(response, reference)


def test_override_settings_cannot_clear_it(enforced, reference):
    request = dict(REQUEST, override_settings={SETTING_ENFORCED_BANKS: [], "live_previews_enable": True})
    assert_enforced(enforced.txt2img(**request), reference)
    enforced.shared.opts.data[SETTING_ENFORCED_BANKS] = ["other"]  # the settings page (a local operator) can
    assert server.enforced_bank_names() == (wf.BANK, "other")


def test_options_route_cannot_clear_it_nor_disable_the_extension(enforced, reference):
    from modules.api import api

    opts = enforced.shared.opts
    opts.data[SETTING_ENFORCED_BANKS] = [wf.BANK]
    api.set_config({SETTING_ENFORCED_BANKS: [], "disabled_extensions": ["sd-webui-safe-denoiser"],
                    "disable_all_extensions": "extra"})
    assert opts.data[SETTING_ENFORCED_BANKS] == [wf.BANK]
    assert opts.data["disabled_extensions"] == [] and opts.data["disable_all_extensions"] == "none"
    assert_enforced(enforced.txt2img(**REQUEST), reference)


def test_setting_alone_enforces_too(tmp_path, reference):
    webui = wf.start(tmp_path)
    webui.shared.opts.data[SETTING_ENFORCED_BANKS] = [wf.BANK]
    assert_enforced(webui.txt2img(**REQUEST, safe_denoiser=[False]), reference)


def test_pasted_or_api_infotext_cannot_switch_it_off(enforced, reference):
    from modules import infotext_utils

    plain = "3\nSteps: 6, Sampler: Euler, CFG scale: 2, Seed: 21, Size: 64x64"
    values = infotext_utils.paste(enforced.scripts.scripts_txt2img.infotext_fields, plain)
    assert values[0] is False  # the accordion is switched off by the paste ...
    assert_enforced(enforced.txt2img(**REQUEST, safe_denoiser=[False]), reference)  # ... and still enforced
    assert_enforced(enforced.txt2img(**REQUEST, infotext=plain), reference)


def test_enforced_bank_cannot_be_deleted_renamed_or_replaced(enforced):
    for name in (wf.BANK, f" {wf.BANK}.safetensors"):
        with pytest.raises(enforcement.EnforcementError, match="enforced"):
            server.guard_bank_change(name)
    server.guard_bank_change("another-bank")


def test_bank_file_removed_behind_our_back_keeps_the_loaded_copy(enforced, reference):
    assert_enforced(enforced.txt2img(**REQUEST), reference)
    (enforced.bank_dir / f"{wf.BANK}.safetensors").unlink()
    response = enforced.txt2img(**REQUEST)
    assert_enforced(response, reference)
    assert "copy loaded earlier" in json.loads(response["info"])["infotexts"][0]


def test_enforced_bank_missing_from_the_start_stops_the_generation(tmp_path):
    webui = wf.start(tmp_path, enforce="never-built")
    response = webui.txt2img(**REQUEST)
    assert response["images"] == []
    assert "never-built" in json.loads(response["info"])["infotexts"][0]
    assert INFOTEXT_ERROR_KEY in json.loads(response["info"])["infotexts"][0]


def test_live_previews_hidden_when_configured(enforced):
    opts = enforced.shared.opts
    opts.data[keys.SETTING_HIDE_PREVIEWS] = True
    enforced.txt2img(**REQUEST)
    assert enforced.shared.state.previews == []
    assert opts.data["live_previews_enable"] is True  # restored after the generation
    opts.data[keys.SETTING_HIDE_PREVIEWS] = False
    enforced.txt2img(**REQUEST)
    assert enforced.shared.state.previews


def test_launch_flag_lands_where_the_extension_reads_it():
    import argparse
    import importlib.util

    from tests.host_stub.harness import REPO

    spec = importlib.util.spec_from_file_location("preload", REPO / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    cmd_opts = parser.parse_args(["--safe-denoiser-enforce", "nsfw, gore"])
    assert enforcement.merge_enforced_names(getattr(cmd_opts, keys.ENFORCE_CMD_OPT), []) == ("nsfw", "gore")
    with pytest.raises(SystemExit):  # without our preload (extension disabled) the WebUI refuses the flag
        argparse.ArgumentParser().parse_args(["--safe-denoiser-enforce", "nsfw"])
