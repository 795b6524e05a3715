"""The correction fires in its window for every kind of sampler path the WebUI has, and changes the output."""

from __future__ import annotations

import numpy as np
import pytest

from webui_server import A1111, FORGE, SD1_BANK, expected_fired_steps, script_args

pytestmark = pytest.mark.webui

WINDOW = (0.0, 0.5)  # of 3 steps: steps 1 and 2 (progress 0 and 0.5)

# k-diffusion first order, k-diffusion second order (two model calls per step), and the timestep samplers
# DDIM and UniPC: A1111 hands their CFG callbacks eps (CFGDenoiserTimesteps), Forge and reForge turn the timestep
# into a sigma first and hand them x0 like every other sampler (CFGDenoiser.forward, classic_ddim_eps_estimation).
SAMPLERS = ["Euler a", "Heun", "DDIM", "UniPC"]
TIMESTEP_SAMPLERS = {"DDIM", "UniPC"}


# Mean absolute pixel change (of 255 levels) a correction must at least make. Generations are deterministic
# (fixed seed, CPU); the random-weights checkpoint's corrections measured 0.47-0.84 here.
MIN_MEAN_CHANGE = 0.1


def fired_steps(report: dict, image: str, pass_name: str = "first") -> list[int]:
    """Sampler steps that fired (a second-order sampler reports both model calls of a step)."""
    return sorted({s["step"] for s in report["images"][image]["steps"] if s["pass"] == pass_name and s["fired"]})


def steps_run(report: dict, image: str, pass_name: str = "first") -> list[int]:
    return sorted({s["step"] for s in report["images"][image]["steps"] if s["pass"] == pass_name})


def assert_changed(corrected: np.ndarray, plain: np.ndarray) -> None:
    difference = np.abs(corrected.astype(int) - plain.astype(int)).mean()
    assert difference > MIN_MEAN_CHANGE, f"the corrected image differs from the plain one by {difference:.3f} levels"


def plain_image(webui, webui_pool, sampler: str) -> np.ndarray:
    fresh = webui_pool.fresh_references.get(sampler)
    return (fresh or webui.txt2img(sampler_name=sampler)).images[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_correction_fires_in_the_configured_window_and_changes_the_image(webui, webui_pool, webui_config, sampler):
    result = webui.txt2img(sampler_name=sampler, alwayson_scripts=script_args(
        banks=[SD1_BANK], window_start=WINDOW[0], window_end=WINDOW[1]))
    report = result.report
    assert report is not None and report["problems"] == [], result.info
    eps_path = webui_config.kind == A1111 and sampler in TIMESTEP_SAMPLERS
    assert report["prediction"] == {"first": "eps" if eps_path else "x0"}
    assert steps_run(report, "0") == [1, 2, 3]
    assert fired_steps(report, "0") == expected_fired_steps(3, WINDOW) == [1, 2]
    assert report["images"]["0"]["fired"] == "1-2"
    assert "Safe Denoiser fired: 1-2" in result.infotexts[0]
    if webui_config.ckpt is not None:
        assert_changed(result.images[0], plain_image(webui, webui_pool, sampler))


def test_off_and_zero_strength_are_bit_identical(webui, webui_pool, needs_checkpoint):
    plain = webui_pool.fresh_references["Euler a"].images[0]
    zero = webui.txt2img(alwayson_scripts=script_args(banks=[SD1_BANK], strengths="0"))
    off = webui.txt2img(alwayson_scripts=script_args(enabled=False, banks=[SD1_BANK]))
    np.testing.assert_array_equal(zero.images[0], plain)
    np.testing.assert_array_equal(off.images[0], plain)


def test_hires_fix_corrects_both_passes(webui, webui_config):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
             "denoising_strength": 0.5}
    if webui_config.kind == FORGE:  # its hires pass reads this list, which the API leaves None (processing.py)
        hires["hr_additional_modules"] = ["Use same choices"]
    result = webui.txt2img(**hires, alwayson_scripts=script_args(banks=[SD1_BANK], window_end=WINDOW[1]))
    report = result.report
    assert report is not None and report["problems"] == [], result.info
    assert fired_steps(report, "0") == [1, 2]
    hires_steps = steps_run(report, "0", "hires")
    assert hires_steps, f"no hires-pass model calls in the report: {report}"
    assert hires_steps == list(range(1, len(hires_steps) + 1))
    assert fired_steps(report, "0", "hires") == expected_fired_steps(len(hires_steps), WINDOW)
    assert report["images"]["0"]["fired"].startswith("1-2, hires ")
    assert "Safe Denoiser fired: \"1-2, hires " in result.infotexts[0]


def test_batch_of_two_reports_and_corrects_each_image(webui, webui_config):
    result = webui.txt2img(batch_size=2, alwayson_scripts=script_args(banks=[SD1_BANK], window_end=WINDOW[1]))
    report = result.report
    assert report is not None and sorted(report["images"]) == ["0", "1"]
    for index in ("0", "1"):
        assert fired_steps(report, index) == [1, 2]
    assert len(result.infotexts) == 2 and all("Safe Denoiser fired: 1-2" in text for text in result.infotexts)
    if webui_config.ckpt is not None:
        plain = webui.txt2img(batch_size=2)
        for corrected, original in zip(result.images, plain.images):
            assert_changed(corrected, original)


def test_img2img_corrects_the_steps_it_runs(webui, webui_pool, webui_config):
    init = webui_pool.fresh_references["Euler a"].raw["images"][0]
    request = {"init_images": [init], "denoising_strength": 0.75, "steps": 4}
    result = webui.img2img(**request, alwayson_scripts=script_args(banks=[SD1_BANK], window_end=WINDOW[1]))
    report = result.report
    assert report is not None and report["problems"] == [], result.info
    run = steps_run(report, "0")
    assert run == list(range(1, len(run) + 1)) and len(run) >= 2
    assert fired_steps(report, "0") == expected_fired_steps(len(run), WINDOW)
    if webui_config.ckpt is not None:
        assert_changed(result.images[0], webui.img2img(**request).images[0])
