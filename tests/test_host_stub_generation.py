"""Whole generations through our AlwaysOn script on the host stub (modules/* as in WebUI v1.10.1), with
the real k-diffusion samplers and the trained digits model as the checkpoint (prompts are class labels)."""

from __future__ import annotations

import json

import pytest
import torch

from lib_safedenoise.banks import fileformat
from lib_safedenoise.webui import host, keys, server, session
from lib_safedenoise.webui.hooks import CFG_HOOKS
from lib_safedenoise.webui.keys import INFOTEXT_ERROR_KEY, INFOTEXT_FIRED_KEY, INFOTEXT_KEY
from tests.host_stub import webui_fixtures as wf

NEGATED = wf.NEGATED_CLASS


@pytest.fixture
def webui(tmp_path):
    return wf.start(tmp_path)


def report_of(response):
    return json.loads(response["info"])["extra_generation_params"][keys.REPORT_KEY]


def window_steps(response, image=0, pass_name="first"):
    """Steps at which the engine evaluated the correction (it records a gate value only inside its window)."""
    steps = report_of(response)["images"][str(image)]["steps"]
    return sorted({s["step"] for s in steps if s["pass"] == pass_name and s["beta"] is not None})


def fired_steps(response, image=0, pass_name="first"):
    steps = report_of(response)["images"][str(image)]["steps"]
    return sorted({s["step"] for s in steps if s["pass"] == pass_name and s["fired"]})


def registered_count(callback) -> int:
    """How many times ``callback`` is registered among the WebUI's script callbacks (any category)."""
    from modules import script_callbacks

    return sum(entry.callback == callback for entries in script_callbacks.callback_map.values() for entry in entries)


def handed_prediction(webui, **request) -> tuple[dict, str]:
    """Generate, and tell from the tensors what the host handed ``on_cfg_after_cfg``: at the last model call
    an x0 prediction is the final latent up to the last step's tiny noise, a noise prediction is not."""
    from modules import script_callbacks

    handed = []
    script_callbacks.on_cfg_after_cfg(lambda params: handed.append(params.x.detach().clone()))
    response = webui.txt2img(**request)
    final = response["p"].latents[-1]
    relative = float((handed[-1] - final).norm() / final.norm())
    return response, "x0" if relative < 0.1 else "eps"


def infotext_params(response, image=0):
    from modules import infotext_utils

    return infotext_utils.parse_generation_parameters(json.loads(response["info"])["infotexts"][image])


# These tests check the generation path (batch layout, steps, x and sigma handed to the engine, the
# reference bank found in the bank folder), not which mode is best (the efficacy benchmark judges that).
EFFICACY_MODE = "reference-memorization"


def test_negated_class_share_drops_against_the_same_seeds_without_the_extension(webui):
    request = dict(prompt=str(NEGATED), seed=100, steps=12, cfg_scale=2.0, sampler_name="Euler", batch_size=16)
    baseline = webui.txt2img(**request)
    negated = webui.txt2img(**request, safe_denoiser=wf.args(mode=EFFICACY_MODE, window_end=1.0))
    base_share, neg_share = wf.class_share(baseline, NEGATED), wf.class_share(negated, NEGATED)
    assert base_share >= 0.8, f"the model should draw the asked class: {base_share}"
    assert neg_share <= base_share - 0.4, (base_share, neg_share)
    params = infotext_params(negated)
    assert params[INFOTEXT_KEY].startswith(f"banks={wf.BANK}@")
    assert f"mode={EFFICACY_MODE};" in params[INFOTEXT_KEY]


def test_default_mode_removes_the_class_with_a_reference_bank_in_the_folder(webui):
    request = dict(prompt=str(NEGATED), seed=100, steps=12, cfg_scale=2.0, sampler_name="Euler", batch_size=16)
    alone = webui.txt2img(**request, safe_denoiser=wf.args(window_end=1.0))
    reference = wf.write_bank(webui.bank_dir, "ordinary-digits", bank=wf.ordinary_latents(), role="reference")
    contrasted = webui.txt2img(**request, safe_denoiser=wf.args(window_end=1.0))
    assert wf.class_share(contrasted, NEGATED) <= 0.2, (wf.class_share(alone, NEGATED),
                                                        wf.class_share(contrasted, NEGATED))
    assert wf.class_share(contrasted, NEGATED) < wf.class_share(alone, NEGATED)
    reference_hash = fileformat.read_metadata(reference).short_hash
    assert f"reference=ordinary-digits@{reference_hash}" in infotext_params(contrasted)[INFOTEXT_KEY]
    assert "reference=" not in infotext_params(alone)[INFOTEXT_KEY]


@pytest.mark.parametrize("sampler, steps, expected", [
    ("Euler", 10, [1, 2, 3, 4, 5]),  # window (0, 0.5) of 10 steps: progress i/9 <= 0.5
    ("Heun", 5, [1, 2, 3]),  # second order: two model calls a step, the window still counts steps
    ("DPM++ 2M", 9, [1, 2, 3, 4, 5]),
    ("DDIM", 10, [1, 2, 3, 4, 5]),  # eps path (integer timesteps as "sigma")
    ("PLMS", 10, [1, 2, 3, 4, 5]),  # eps path, one extra model call in its first step
])
def test_window_is_evaluated_at_its_steps_for_each_sampler_kind(webui, sampler, steps, expected):
    response, handed = handed_prediction(webui, prompt=str(NEGATED), seed=3, steps=steps, sampler_name=sampler,
                                         cfg_scale=2.0, safe_denoiser=wf.args(window_end=0.5))
    assert window_steps(response) == expected, report_of(response)
    assert handed == ("eps" if sampler in ("DDIM", "PLMS") else "x0")
    assert report_of(response)["prediction"] == {"first": handed}
    fired = fired_steps(response)
    assert fired and set(fired) <= set(expected)
    assert infotext_params(response)[INFOTEXT_FIRED_KEY] == session.format_steps(fired)


def test_plms_counts_its_two_first_step_calls_as_one_sampler_step(webui):
    response = webui.txt2img(prompt=str(NEGATED), seed=3, steps=10, sampler_name="PLMS", cfg_scale=2.0,
                             safe_denoiser=wf.args(window_end=1.0))
    steps = [s["step"] for s in report_of(response)["images"]["0"]["steps"] if s["pass"] == "first"]
    assert steps == [1, 1, 2, 3, 4, 5, 6, 7, 8, 9]  # 9 sampler steps, as DDIM's ``len(timesteps) - 1``


def test_batch_count_and_size_number_images_across_batches(webui):
    response = webui.txt2img(prompt=str(NEGATED), seed=5, steps=4, batch_size=2, n_iter=2, cfg_scale=2.0,
                             safe_denoiser=wf.args(window_end=1.0))
    assert sorted(report_of(response)["images"]) == ["0", "1", "2", "3"]
    for image in range(4):
        assert window_steps(response, image) == [1, 2, 3, 4]
        assert infotext_params(response, image)[INFOTEXT_FIRED_KEY] == \
            session.format_steps(fired_steps(response, image))
    alone = webui.txt2img(prompt=str(NEGATED), seed=7, steps=4, cfg_scale=2.0, safe_denoiser=wf.args(window_end=1.0))
    # image 2 (batch 1, row 0) is the image of seed 5 + 2 made on its own, correction included
    torch.testing.assert_close(response["p"].latents[1][0], alone["p"].latents[0][0], atol=1e-4, rtol=1e-4)


def test_hires_pass_has_its_own_window_over_its_own_steps(webui):
    response = webui.txt2img(prompt=str(NEGATED), seed=6, steps=8, cfg_scale=2.0, enable_hr=True, hr_scale=2.0,
                             hr_second_pass_steps=4, denoising_strength=0.5, safe_denoiser=wf.args(window_end=0.5))
    assert window_steps(response, pass_name="first") == [1, 2, 3, 4]  # i/7 <= 0.5
    assert window_steps(response, pass_name="hires") == [1, 2]  # i/3 <= 0.5
    assert response["p"].latents[0].shape[-1] == 16  # the bank was resized to the upscaled latent
    expected = (f"{session.format_steps(fired_steps(response))}, "
                f"hires {session.format_steps(fired_steps(response, pass_name='hires'))}")
    assert infotext_params(response)[INFOTEXT_FIRED_KEY] == expected


def test_img2img_window_is_relative_to_the_steps_actually_run(webui):
    init = wf.heldout_latents(NEGATED, 1)
    response = webui.img2img(init, prompt=str(NEGATED), seed=8, steps=20, denoising_strength=0.5, cfg_scale=2.0,
                             safe_denoiser=wf.args(window_end=0.5))
    # t_enc = int(0.5 * 20) = 10; the sampler runs t_enc + 1 = 11 steps; i/10 <= 0.5 holds for 6 of them
    assert [s["step"] for s in report_of(response)["images"]["0"]["steps"]] == list(range(1, 12))
    assert window_steps(response) == [1, 2, 3, 4, 5, 6]


def test_and_prompts_and_skip_early_cfg_keep_images_and_rows_apart(webui):
    webui.shared.opts.data["skip_early_cond"] = 0.3  # the uncond rows are dropped in the first 30% of calls
    with_and = webui.txt2img(prompt=f"{NEGATED} AND 1:0.5", seed=9, steps=6, batch_size=2, cfg_scale=2.0,
                             safe_denoiser=wf.args(window_end=1.0))
    report = report_of(with_and)
    assert sorted(report["images"]) == ["0", "1"] and not report["problems"]
    plain = webui.txt2img(prompt=f"{NEGATED} AND 1:0.5", seed=9, steps=6, batch_size=2, cfg_scale=2.0)
    assert not torch.equal(with_and["p"].latents[0], plain["p"].latents[0])


def test_live_previews_are_taken_before_the_correction(webui):
    request = dict(prompt=str(NEGATED), seed=10, steps=6, cfg_scale=2.0)
    webui.txt2img(**request)
    previews_off = list(webui.shared.state.previews)
    response = webui.txt2img(**request, safe_denoiser=wf.args(window_end=1.0))
    assert fired_steps(response)[:1] == [1]
    assert torch.equal(webui.shared.state.previews[0], previews_off[0])  # step 1 fired, its preview is raw
    assert not torch.equal(webui.shared.state.previews[-1], previews_off[-1])


def test_callbacks_registered_once_for_both_tabs_and_gone_after_the_run(webui):
    from modules import script_callbacks

    counts = []
    script_callbacks.on_cfg_after_cfg(
        lambda params: counts.append(registered_count(CFG_HOOKS.on_cfg_after_cfg)))
    webui.txt2img(prompt=str(NEGATED), seed=11, steps=3, safe_denoiser=wf.args())
    assert counts and set(counts) == {1}  # the img2img instance never registered a second copy
    assert registered_count(CFG_HOOKS.on_cfg_denoiser) == 0
    assert registered_count(CFG_HOOKS.on_cfg_after_cfg) == 0


def test_a_crash_mid_sampling_leaves_nothing_behind(webui, tmp_path, monkeypatch):
    request = dict(prompt=str(NEGATED), seed=12, steps=5, cfg_scale=2.0, sampler_name="Euler a")
    model = webui.shared.sd_model
    calls = {"n": 0}
    original = model.apply_model

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "apply_model", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        webui.txt2img(**request, safe_denoiser=wf.args(window_end=1.0))
    monkeypatch.undo()
    assert registered_count(CFG_HOOKS.on_cfg_after_cfg) == 1  # postprocess never ran
    from modules import script_callbacks

    during = []
    script_callbacks.on_cfg_denoiser(
        lambda params: during.append(registered_count(CFG_HOOKS.on_cfg_denoiser)))
    after_crash = webui.txt2img(**request)
    assert during and set(during) == {0}  # the next generation's process removed the leftovers first
    assert registered_count(CFG_HOOKS.on_cfg_after_cfg) == 0
    fresh = wf.start(tmp_path / "fresh").txt2img(**request)
    assert torch.equal(after_crash["p"].latents[0], fresh["p"].latents[0])


def test_an_error_in_another_extensions_callback_does_not_stop_ours(webui):
    from modules import script_callbacks

    def broken(params):
        raise ValueError("another extension's bug")

    script_callbacks.on_cfg_denoiser(broken)
    response = webui.txt2img(prompt=str(NEGATED), seed=13, steps=4, safe_denoiser=wf.args(window_end=1.0))
    assert window_steps(response) == [1, 2, 3, 4]
    assert any("cfg_denoiser_callback" in line for line in webui.errors.recorded)


def test_wrong_latent_space_bank_is_reported_and_the_generation_completes(webui):
    wf.write_bank(webui.bank_dir, "sdxl-faces", space="sdxl")
    response = webui.txt2img(prompt=str(NEGATED), seed=14, steps=4,
                             safe_denoiser=[True, ["sdxl-faces"], "1", "default", 0, 0, 0.5, -1])
    assert len(response["images"]) == 1
    message = infotext_params(response)[INFOTEXT_ERROR_KEY]
    assert "sdxl-faces" in message and "SDXL" in message and "digits" in message
    off = webui.txt2img(prompt=str(NEGATED), seed=14, steps=4)
    assert torch.equal(response["p"].latents[0], off["p"].latents[0])


def test_sd3_like_16_channel_model_refuses_a_4_channel_bank_clearly(webui):
    webui.shared.sd_model = wf.SixteenChannelModel(webui.shared.sd_model)
    response = webui.txt2img(prompt=str(NEGATED), seed=15, steps=3, width=32, height=32,
                             safe_denoiser=wf.args())
    assert response["p"].latents[0].shape[1] == 16
    message = infotext_params(response)[INFOTEXT_ERROR_KEY]
    assert wf.BANK in message and "SD3" in message


def test_unknown_bank_and_bad_args_are_reported_not_raised(webui):
    response = webui.txt2img(prompt="1", seed=16, steps=3, safe_denoiser=[True, ["no-such-bank"]])
    assert "no-such-bank" in infotext_params(response)[INFOTEXT_ERROR_KEY]
    response = webui.txt2img(prompt="1", seed=16, steps=3, safe_denoiser=[True, [wf.BANK], "1", "m", 0, 0.9, 0.1])
    assert "window_start <= window_end" in infotext_params(response)[INFOTEXT_ERROR_KEY]


def test_infotext_round_trip_restores_the_accordion_and_reproduces_the_image(webui):
    request = dict(prompt=str(NEGATED), seed=17, steps=6, cfg_scale=2.0)
    first = webui.txt2img(**request, safe_denoiser=wf.args(strength=0.7, window_end=0.4))
    infotext = json.loads(first["info"])["infotexts"][0]
    from modules import infotext_utils

    runner = webui.scripts.scripts_txt2img
    values = infotext_utils.paste(runner.infotext_fields, infotext)
    again = webui.txt2img(**request, safe_denoiser=values)
    assert torch.equal(first["p"].latents[0], again["p"].latents[0])
    through_api = webui.txt2img(**request, infotext=infotext)  # the API's "infotext" field
    assert torch.equal(first["p"].latents[0], through_api["p"].latents[0])
    plain = json.loads(webui.txt2img(**request)["info"])["infotexts"][0]
    assert infotext_utils.paste(runner.infotext_fields, plain)[0] is False


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_forge_layout(tmp_path, sampler):
    """Forge: un-batched x, no on_cfg_denoised, x0 for every sampler, sampling under inference_mode."""
    forge = wf.start(tmp_path, forge=True)
    assert host.host_kind() == host.FORGE
    try:
        request = dict(prompt=str(NEGATED), seed=18, steps=6, cfg_scale=2.0, sampler_name=sampler)
        response, handed = handed_prediction(forge, **request, safe_denoiser=wf.args(window_end=0.5))
        assert window_steps(response) == [1, 2, 3] and fired_steps(response)
        assert handed == "x0"  # DDIM included: the stub's Forge layout hands x0 to the callback
        assert report_of(response)["prediction"] == {"first": handed}
        off = forge.txt2img(**request)
        assert not torch.equal(response["p"].latents[0], off["p"].latents[0])
    finally:
        wf.start(tmp_path / "a1111")
    assert host.host_kind() == host.A1111


def test_xyz_axes_are_registered_and_override_the_accordion(webui):
    request = dict(prompt=str(NEGATED), seed=19, steps=6, cfg_scale=2.0)
    cell = webui.xyz_cell("[Safe Denoiser] Window", "0-1", safe_denoiser=wf.args(window_end=0.25), **request)
    assert window_steps(cell) == [1, 2, 3, 4, 5, 6]
    assert "window=0-1" in infotext_params(cell)[INFOTEXT_KEY]
    cell = webui.xyz_cell("[Safe Denoiser] Strength", "0", safe_denoiser=wf.args(), **request)
    off = webui.txt2img(**request)
    assert torch.equal(cell["p"].latents[0], off["p"].latents[0])  # strength 0 from the axis: no change
    mode_axis = webui.xyz_cell("[Safe Denoiser] Mode", "paper", safe_denoiser=wf.args(), **request)["axis"]
    assert "paper" in mode_axis.choices() and wf.BANK in webui.xyz_cell(
        "[Safe Denoiser] Bank", wf.BANK, safe_denoiser=wf.args(), **request)["axis"].choices()


def test_bank_copies_exist_only_while_the_generation_runs(webui):
    from modules import script_callbacks

    bank = server.bank_store().load(wf.BANK, space_id="digits")  # the cached object the generation uses
    during = []
    script_callbacks.on_cfg_after_cfg(lambda params: during.append(len(bank._views)))
    webui.txt2img(prompt=str(NEGATED), seed=20, steps=4, safe_denoiser=wf.args(window_end=1.0))
    assert max(during) >= 1  # adapted to the generation's device, dtype and latent size
    assert bank._views == {}  # and released by postprocess


def test_a_generation_nested_in_another_keeps_both_corrected(webui):
    """ADetailer-style passes run the whole processing again from inside a generation's postprocessing."""
    from modules import processing, scripts

    class NestedPass(scripts.Script):
        inner = None

        def title(self):
            return "nested pass"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def postprocess_batch(self, p, *args, images, batch_number):
            if batch_number == 0 and not getattr(p, "nested", False):
                inner = processing.StableDiffusionProcessingImg2Img(
                    init_latents=p.latents[-1][:1], prompt=p.prompt, seed=30, steps=4, denoising_strength=0.5,
                    cfg_scale=2.0, scripts=p.scripts, script_args=p.script_args)
                inner.nested = True
                NestedPass.inner = processing.process_images(inner)

    runner = webui.scripts.scripts_txt2img
    nested = NestedPass()
    nested.args_from = nested.args_to = len(runner.inputs)
    runner.alwayson_scripts.append(nested)
    response = webui.txt2img(prompt=str(NEGATED), seed=31, steps=4, n_iter=2, cfg_scale=2.0,
                             safe_denoiser=wf.args(window_end=1.0))
    assert NestedPass.inner is not None
    assert window_steps(response, image=1) == [1, 2, 3, 4]  # the outer batch after the nested pass
    inner_report = json.loads(NestedPass.inner.js())["extra_generation_params"][keys.REPORT_KEY]
    assert [s["step"] for s in inner_report["images"]["0"]["steps"]] == [1, 2, 3]
    assert registered_count(CFG_HOOKS.on_cfg_after_cfg) == 0


def test_sdnext_is_detected_and_declared_unsupported(webui, monkeypatch):
    """SD.Next has modules/scripts_manager.py and no longer ships modules/sd_samplers_cfg_denoiser.py."""
    import importlib.machinery
    import sys
    import types

    manager = types.ModuleType("modules.scripts_manager")
    manager.__spec__ = importlib.machinery.ModuleSpec("modules.scripts_manager", None)
    monkeypatch.setitem(sys.modules, "modules.scripts_manager", manager)
    monkeypatch.setitem(sys.modules, "modules.sd_samplers_cfg_denoiser", None)
    host.host_kind.cache_clear()
    try:
        assert host.host_kind() == host.SDNEXT
        assert "SD.Next is not supported" in host.unsupported_host_message()
    finally:
        monkeypatch.undo()
        host.host_kind.cache_clear()
    assert host.host_kind() == host.A1111 and host.unsupported_host_message() is None
