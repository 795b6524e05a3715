"""Banks from a prompt, end to end on the host stub: the service generates through the stub's txt2img
processing (modules/processing.py as in A1111 v1.10.1, the real k-diffusion samplers, the digits model as the
checkpoint, prompts are class labels), keeps the final latents and writes the bank; the HTTP route on top."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_safedenoise.banks import fileformat, metadata
from lib_safedenoise.banks.errors import BankError, BankExistsError, BankFormatError
from lib_safedenoise.webui import api, host, prompt_bank
from lib_safedenoise.webui.enforcement import EnforcementError
from lib_safedenoise.webui.prompt_bank import GenerationCancelled, PromptBankRequest
from tests.host_stub import webui_fixtures as wf

REQUEST = dict(steps=8, cfg_scale=2.0, sampler_name="Euler", seed=100)


def service_of(webui) -> api.BankService:
    return api.BankService(api.Backend.from_host())


def txt2img_latents(webui, prompt: str, count: int, **request) -> torch.Tensor:
    """The same samples as a plain API txt2img request makes them (all in one batch)."""
    return webui.txt2img(prompt=prompt, batch_size=count, width=64, height=64, **request)["p"].latents[0]


def bank_file(webui, name: str):
    return webui.bank_dir / f"{name}{fileformat.BANK_SUFFIX}"


def decoded_class_share(latents: torch.Tensor, digit: int) -> float:
    model, evaluator = wf._checkpoint()
    with torch.no_grad():
        pixels = torch.clamp((model.decode_first_stage(latents.float()) + 1) / 2, 0, 1)
        predictions, _, _ = evaluator.judge(pixels)
    return float((predictions == digit).float().mean())


@pytest.fixture
def webui(tmp_path):
    return wf.start(tmp_path)


def test_bank_holds_the_models_own_samples_of_the_prompt_and_a_card_to_rebuild_it(webui):
    """Half of the samples (the first) at CFG 1, the rest at the requested CFG; no batch mixes the two."""
    calls = []
    report = service_of(webui).build_from_prompt(
        PromptBankRequest(name="threes", prompt=str(wf.NEGATED_CLASS), samples=6, batch_size=4, **REQUEST),
        progress=lambda done, total, label: calls.append((done, total)))
    assert report.bank_count == 6 and calls == [(3, 6), (6, 6)]
    bank = fileformat.load_bank(bank_file(webui, "threes"), name="threes")
    meta = fileformat.read_metadata(bank_file(webui, "threes"))
    assert meta.role == "negation" and meta.encode_mode == metadata.GENERATED and meta.count == 6
    assert meta.generation == {
        "prompt": "3", "negative_prompt": "", "styles": [], "prompt_used": "3", "negative_prompt_used": "",
        "model": "digits", "model_hash": "d16175", "sampler": "Euler", "scheduler": "", "steps": 8,
        "cfg_scale": 2.0, "unguided_samples": 3, "width": 64, "height": 64, "batch_size": 4, "seed": 100,
        "samples": 6, "host": "a1111", "enforced": []}
    # the recorded settings make the same samples again, through the WebUI's own txt2img
    again = torch.cat([txt2img_latents(webui, "3", 3, **{**REQUEST, "cfg_scale": 1.0}),
                       txt2img_latents(webui, "3", 3, **{**REQUEST, "seed": 103})])
    torch.testing.assert_close(bank.latents.float(), again, atol=2e-3, rtol=2e-3)
    assert decoded_class_share(bank.latents, wf.NEGATED_CLASS) >= 0.8


def test_styles_in_effect_apply_and_are_recorded(webui):
    from modules import shared, styles

    shared.prompt_styles.styles["digit three"] = styles.PromptStyle("digit three", "{prompt}3", "")
    service_of(webui).build_from_prompt(PromptBankRequest(name="styled", prompt="", styles=("digit three",),
                                                          samples=4, unguided_share=0.0, **REQUEST))
    meta = fileformat.read_metadata(bank_file(webui, "styled"))
    assert meta.generation["styles"] == ["digit three"] and meta.generation["prompt_used"] == "3"
    bank = fileformat.load_bank(bank_file(webui, "styled"), name="styled")
    torch.testing.assert_close(bank.latents.float(), txt2img_latents(webui, "3", 4, **REQUEST), atol=2e-3,
                               rtol=2e-3)


def test_the_one_click_reference_takes_generic_prompts_in_turn_named_for_its_latent_space(webui):
    """The one-click request: the generic prompts, all guided, role reference; its prompts are taken one per
    batch (on the digits checkpoint, prompts are digit labels, so the test lists digits)."""
    asked = prompt_bank.as_one_click_reference(PromptBankRequest(name="mine", prompt="3", samples=7, **REQUEST))
    assert (asked.name, asked.prompt, asked.role, asked.unguided_share) == ("", "", "reference", 0.0)
    assert asked.prompts == prompt_bank.GENERIC_PROMPTS and asked.samples == 7
    digits_prompts = ("0", "1", "2")
    report = service_of(webui).build_from_prompt(dataclasses.replace(asked, prompts=digits_prompts, samples=8,
                                                                     batch_size=2))
    assert report.path.endswith(f"{prompt_bank.reference_bank_name('digits')}{fileformat.BANK_SUFFIX}")
    meta = fileformat.read_metadata(report.path)
    assert meta.role == "reference" and meta.generation["unguided_samples"] == 0
    assert meta.generation["prompts"] == ["0", "1", "2"] and meta.generation["prompts_used"] == ["0", "1", "2"]
    bank = fileformat.load_bank(report.path, name="r")
    in_turn = [txt2img_latents(webui, text, 2, **{**REQUEST, "seed": 100 + 2 * i})
               for i, text in enumerate(("0", "1", "2", "0"))]
    torch.testing.assert_close(bank.latents.float(), torch.cat(in_turn), atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="either one prompt or a list"):
        PromptBankRequest(name="x", prompt="3", prompts=("4",))
    with pytest.raises(ValueError, match="at most 16384 characters in all"):
        PromptBankRequest(name="x", prompts=("7" * 9000, "8" * 9000))
    with pytest.raises(ValueError, match="unguided_share must be a number from 0.0 to 1.0"):
        PromptBankRequest(name="x", prompt="3", unguided_share=1.5)


def test_an_existing_bank_is_refused_before_generating_and_replaced_only_when_asked(webui):
    path = bank_file(webui, wf.BANK)
    before = path.read_bytes()
    calls = []
    service = service_of(webui)
    with pytest.raises(BankExistsError, match="already exists"):
        service.build_from_prompt(PromptBankRequest(name=wf.BANK, prompt="3", samples=4, **REQUEST),
                                  progress=lambda *a: calls.append(a))
    assert calls == [] and path.read_bytes() == before
    report = service.build_from_prompt(PromptBankRequest(name=wf.BANK, prompt="3", samples=4, overwrite=True,
                                                         **REQUEST))
    assert report.bank_count == 4 and path.read_bytes() != before


def leftovers(webui) -> list:
    return sorted(p.name for p in webui.bank_dir.iterdir())


def test_a_cancel_stops_the_running_sampling_and_writes_nothing(webui):
    from modules import script_callbacks

    service = service_of(webui)
    calls = {"n": 0}

    def cancel_mid_batch(params):  # the tab's Cancel button, pressed during the second batch's sampling
        calls["n"] += 1
        if calls["n"] == 8 + 3:
            assert service.cancel_builds() == 1

    script_callbacks.on_cfg_denoiser(cancel_mid_batch)
    before = leftovers(webui)
    with pytest.raises(GenerationCancelled, match="cancelled after 2 of 20 samples; nothing was written"):
        service.build_from_prompt(PromptBankRequest(name="cancelled", prompt="3", samples=20, batch_size=2,
                                                    **REQUEST))
    assert calls["n"] == 11, "the sampling stopped at the step after the cancel"
    assert leftovers(webui) == before


def test_the_webui_interrupt_button_stops_the_build_with_nothing_written(webui):
    from modules import script_callbacks, shared

    script_callbacks.on_cfg_denoiser(lambda params: shared.state.interrupt())
    before = leftovers(webui)
    with pytest.raises(BankError, match="interrupted after 0 of 4 samples"):
        service_of(webui).build_from_prompt(PromptBankRequest(name="x", prompt="3", samples=4, **REQUEST))
    assert leftovers(webui) == before


def test_on_an_enforced_server_the_samples_are_generated_with_the_enforced_correction(tmp_path):
    """Both parts, the unguided one (CFG 1) included."""
    request = dict(prompt="3", steps=8, sampler_name="Euler", batch_size=2, width=64, height=64)
    parts = [wf.open_server_latents(tmp_path / f"open-{seed}", dict(request, seed=seed, cfg_scale=scale))
             for seed, scale in ((100, 1.0), (102, 2.0))]
    open_latents, enforced_latents = (torch.cat(latents) for latents in zip(*parts))
    webui = wf.start(tmp_path / "enforced", enforce=wf.BANK)
    service_of(webui).build_from_prompt(PromptBankRequest(name="threes", prompt="3", samples=4, **REQUEST))
    meta = fileformat.read_metadata(bank_file(webui, "threes"))
    assert meta.generation["enforced"] == [wf.BANK]
    bank = fileformat.load_bank(bank_file(webui, "threes"), name="threes").latents.float()
    torch.testing.assert_close(bank, enforced_latents, atol=2e-3, rtol=2e-3)
    assert (bank - open_latents).flatten(1).abs().amax(1).min() > 0.05, "the enforced correction changed every sample"


def test_on_an_enforced_server_a_correction_that_cannot_run_writes_nothing(tmp_path):
    webui = wf.start(tmp_path, enforce="missing-bank")
    before = leftovers(webui)
    with pytest.raises(EnforcementError, match="the enforced correction did not run"):
        service_of(webui).build_from_prompt(PromptBankRequest(name="threes", prompt="3", samples=4, **REQUEST))
    assert leftovers(webui) == before
    with pytest.raises(EnforcementError, match="enforced"):
        service_of(webui).build_from_prompt(PromptBankRequest(name="Missing-Bank", prompt="3", samples=4,
                                                              overwrite=True, **REQUEST))


def test_forge_loads_its_checkpoint_for_a_prompt_bank_before_the_first_generation(tmp_path):
    from modules import sd_models

    from tests.host_stub.harness import StubWebUI

    (tmp_path / "banks").mkdir()
    model = wf.load_sd_model()
    webui = StubWebUI(model, tmp_path / "banks", forge=True, lazy=True)
    webui.bank_dir = tmp_path / "banks"
    report = service_of(webui).build_from_prompt(PromptBankRequest(name="threes", prompt="3", samples=2,
                                                                   **REQUEST))
    assert report.bank_count == 2 and sd_models.model_data.sd_model is model
    assert fileformat.read_metadata(report.path).generation["host"] == "forge"


@pytest.mark.parametrize("field, value, message", [
    ("samples", 0, "samples must be a whole number from 1"), ("batch_size", 2.5, "batch_size must be a whole"),
    ("width", 60, "multiple of 8"), ("role", "other", "role must be one of"), ("seed", -2, "seed must be"),
    ("sampler_name", " ", "sampler_name must name")])
def test_bad_requests_are_refused_with_the_reason(field, value, message):
    with pytest.raises(ValueError, match=message):
        PromptBankRequest(name="x", **{field: value})


def test_a_generation_record_is_checked_on_write_and_read():
    record = {"prompt": "a cat", "seed": 1, "styles": ["s"], "cfg_scale": 7.0, "scheduler": None}
    assert metadata.validate_generation(record) == record
    for bad in ({"prompt": {"nested": 1}}, {"seed": float("nan")}, ["not", "an", "object"],
                {"prompt": "x" * metadata.MAX_GENERATION_CHARS}):
        with pytest.raises(BankFormatError):
            metadata.validate_generation(bad)


# --------------------------------------------------------------------------- the HTTP route

def client_of(webui, **cmd_opts) -> TestClient:
    from modules import shared

    for key, value in cmd_opts.items():
        setattr(shared.cmd_opts, key, value)
    app = FastAPI()
    app.add_api_route("/sdapi/v1/options", lambda: {}, methods=["GET"])
    api.register_routes(app, service_of(webui), host.api_auth_dependencies(app))
    return TestClient(app)


ROUTE = f"{api.ROUTE_PREFIX}/banks/from-prompt"


def test_the_route_builds_a_bank_and_follows_the_bank_api_conventions(webui):
    client = client_of(webui, disable_extension_access=False, api_auth=None)
    body = {"name": "threes", "prompt": "3", "samples": 3, "batch_size": 2, "description": "threes as drawn",
            **REQUEST}
    response = client.post(ROUTE, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "threes" and response.json()["bank_count"] == 3
    inspected = client.get(f"{api.ROUTE_PREFIX}/banks/threes").json()
    assert inspected["card"]["description"] == "threes as drawn"
    assert inspected["metadata"]["generation"]["seed"] == 100 and inspected["role"] == "negation"
    again = client.post(ROUTE, json=body)
    assert again.status_code == 400 and "already exists" in again.json()["detail"]["error"]
    bad = client.post(ROUTE, json=body | {"name": "other", "samples": 0})
    assert bad.status_code == 400 and "samples must be" in bad.json()["detail"]["error"]
    assert sorted(b["name"] for b in client.get(f"{api.ROUTE_PREFIX}/banks").json()) == [wf.BANK, "threes"]


def test_the_route_makes_an_unnamed_promptless_reference_the_one_click_one(webui):
    """As the tab's button: no name, role reference and no prompt means the generic prompts (which the digits
    checkpoint cannot read: its prompts are digit labels, so the first one is refused by name); given
    prompts are taken in turn, with the share at CFG 1 as asked."""
    client = client_of(webui, disable_extension_access=False, api_auth=None)
    one_click = client.post(ROUTE, json={"name": "", "role": "reference", "samples": 2, **REQUEST})
    assert one_click.status_code == 400
    assert repr(prompt_bank.GENERIC_PROMPTS[0]) in one_click.json()["detail"]["error"]
    listed = client.post(ROUTE, json={"name": "", "role": "reference", "prompts": ["4", "5"], "samples": 4,
                                      "batch_size": 2, "unguided_share": 0.5, **REQUEST})
    assert listed.status_code == 200, listed.text
    generation = client.get(f"{api.ROUTE_PREFIX}/banks/{listed.json()['name']}").json()["metadata"]["generation"]
    assert generation["prompts_used"] == ["4", "5"] and generation["unguided_samples"] == 2


def test_the_route_refuses_enforced_names_and_exposed_servers(tmp_path):
    webui = wf.start(tmp_path, enforce=wf.BANK)
    client = client_of(webui, disable_extension_access=False, api_auth=None)
    refused = client.post(ROUTE, json={"name": wf.BANK.upper(), "prompt": "3", "samples": 1, "overwrite": True})
    assert refused.status_code == 403 and "enforced" in refused.json()["detail"]
    exposed = client_of(webui, disable_extension_access=True, api_auth=None)
    answer = exposed.post(ROUTE, json={"name": "threes", "prompt": "3", "samples": 1})
    assert answer.status_code == 403 and "--api-auth" in answer.json()["detail"]
    assert not bank_file(webui, "threes").exists()


def test_a_failing_generation_is_reported_and_writes_nothing(webui):
    before = leftovers(webui)
    with pytest.raises(BankError, match=r"the generation failed after 0 of 2 samples \(KeyError: 'No such sampler'"):
        service_of(webui).build_from_prompt(PromptBankRequest(name="x", prompt="3", samples=2,
                                                              **REQUEST | {"sampler_name": "No such sampler"}))
    assert leftovers(webui) == before


def test_a_merge_keeps_the_generation_record_only_when_every_input_shares_it(tmp_path):
    from lib_safedenoise.banks import builder, spaces

    space = spaces.latent_space("digits")
    latents = torch.randn(3, space.channels, 8, 8, generator=torch.Generator().manual_seed(0))
    record = {"prompt": "3", "seed": 1, "samples": 3}
    for name, generation in (("a", record), ("b", record), ("c", record | {"prompt": "4"})):
        builder.write_generated_bank(latents, tmp_path / name, space=space, generation=generation)
    with pytest.raises(BankExistsError):
        builder.write_generated_bank(latents, tmp_path / "a", space=space, generation=record)
    assert builder.merge_banks([tmp_path / "a.safetensors", tmp_path / "b.safetensors"],
                               tmp_path / "ab.safetensors").generation == record
    assert builder.merge_banks([tmp_path / "a.safetensors", tmp_path / "c.safetensors"],
                               tmp_path / "ac.safetensors").generation == {}
