"""The ``reference`` modes reproduce the authors' released code (MingyuKim87/Safe_Denoiser).

``golden/reference_kernel.safetensors`` holds fixed inputs and what the released ``kernel_fast`` class
computed on them (regenerate with ``golden/make_golden.py``); ``golden/released_configs.json`` holds every
per-task value of the released configs at the same commit (scale, sigma, threshold, margin, gate, window),
with the files they come from. We also compare against an independent re-statement of the released
formulation: the unsquared-distance kernel over the bank augmented with a column of ones, so that one
weighted sum gives both the numerator and the denominator.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import MODES, RELEASED_EPSILON, channel_normalized, released_threshold
from lib_safedenoise.core.schedule import window_steps

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = load_file(str(GOLDEN_DIR / "reference_kernel.safetensors"))
SCALE, MARGIN = GOLDEN["scale_margin"].tolist()
RELEASED = json.loads((GOLDEN_DIR / "released_configs.json").read_text(encoding="utf-8"))
OUR_TASKS = {name: task for name, task in RELEASED["tasks"].items() if task["mode"] is not None}


def golden_bank() -> LatentBank:
    return LatentBank("golden", GOLDEN["bank"], channel_normalized=True)


def restated(x0_hat, bank, bandwidth, scale):
    """The released formulation, one image at a time, with its M x (D+1) kernel-weighted augmented bank."""
    items = bank.flatten(1).double()
    augmented = torch.cat([items, torch.ones(len(items), 1, dtype=torch.float64)], 1)
    out, sums = [], []
    for image in x0_hat.flatten(1).double():
        distance = torch.cdist(image[None], items)[0]
        kernel = (-distance[:, None].repeat(1, augmented.shape[1]) / (2 * bandwidth ** 2)).exp() * augmented
        totals = kernel.sum(0)
        denominator = totals[-1] + 1e-8
        out.append(image - scale * totals[:-1] / denominator)
        sums.append(denominator)
    return torch.stack(out).reshape(x0_hat.shape), torch.stack(sums)


@pytest.mark.parametrize("index", range(3))
def test_calibrated_threshold_matches_released(index):
    bandwidth = float(GOLDEN["bandwidths"][index])
    ours = released_threshold(GOLDEN["noisy"], GOLDEN["bank"], bandwidth)
    assert ours == pytest.approx(float(GOLDEN[f"threshold_{index}"]), rel=1e-5)


@pytest.mark.parametrize("index", range(3))
def test_reference_correction_matches_released_batch_of_one(index):
    bandwidth = float(GOLDEN["bandwidths"][index])
    threshold = float(GOLDEN[f"threshold_{index}"])
    for row, query in enumerate(GOLDEN["queries"]):
        engine = SafeDenoiser([(golden_bank(), 1.0)], mode="reference", bandwidth=bandwidth,
                              threshold=threshold, window=(0, 1), options={"scale": SCALE, "margin": MARGIN})
        out = engine.correct_x0(query[None], query[None], 1.0, 0, 1)
        record = engine.report.images[0][0]
        assert record.fired == bool(GOLDEN[f"fired_{index}"][row])
        assert record.beta == pytest.approx(float(GOLDEN[f"denominator_{index}"][row]), rel=1e-5, abs=1e-12)
        expected = GOLDEN[f"corrected_{index}"][row] if record.fired else query
        torch.testing.assert_close(out[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", range(3))
def test_ungated_unsafe_estimate_matches_released(index):
    bandwidth = float(GOLDEN["bandwidths"][index])
    engine = SafeDenoiser([(golden_bank(), 1.0)], mode="reference-copro", bandwidth=bandwidth,
                          window=(0, 1), options={"scale": 1.0})
    queries = GOLDEN["queries"]
    unsafe = queries - engine.correct_x0(queries, queries, 1.0, 0, 1)
    torch.testing.assert_close(unsafe, GOLDEN[f"unsafe_{index}"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["reference", "reference-memorization", "reference-copro"])
def test_batch_equals_restatement_image_by_image(mode):
    generator = torch.Generator().manual_seed(3)
    raw_bank = torch.randn(40, 4, 16, 16, generator=generator)  # not normalised: the mode normalises it
    x0_hat = torch.cat([torch.randn(3, 4, 16, 16, generator=generator),
                        channel_normalized(raw_bank[:2]) + 0.05 * torch.randn(2, 4, 16, 16, generator=generator)])
    settings = MODES[mode]
    engine = SafeDenoiser([(LatentBank("raw", raw_bank), 1.0)], mode=mode, window=(0, 1), threshold=-1e9)
    out = engine.correct_x0(x0_hat, x0_hat, 2.0, 0, 1)
    expected, sums = restated(x0_hat, channel_normalized(raw_bank), settings.bandwidth, settings.options["scale"])
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    assert [r[0].beta for r in engine.report.images.values()] == pytest.approx(sums.tolist(), rel=1e-5)


def released_steps(task: dict) -> list[int]:
    """The steps of the released 50-step run at which the task's window corrects."""
    window = task["window"]
    if window["on"] == "step index":
        return [i for i in range(RELEASED["sampling"]["num_inference_steps"]) if window["from"] <= i <= window["to"]]
    return [i for i, t in enumerate(RELEASED["sampling"]["timesteps"]) if window["from"] <= t <= window["to"]]


def test_every_mode_of_the_released_code_has_its_task_and_the_golden_data_its_settings():
    assert sorted({task["mode"] for task in OUR_TASKS.values()}) == sorted(
        name for name in MODES if name.startswith("reference"))
    assert RELEASED["commit"] in (GOLDEN_DIR / "make_golden.py").read_text(encoding="utf-8")
    assert sorted(GOLDEN["bandwidths"].tolist()) == sorted({task["sigma_used"] for task in OUR_TASKS.values()})
    assert (SCALE, MARGIN) == (RELEASED["tasks"]["nudity"]["scale"], RELEASED["tasks"]["nudity"]["beta_threshold_margin"])


@pytest.mark.parametrize("task_name", sorted(OUR_TASKS))
def test_mode_defaults_are_the_released_per_task_values(task_name):
    task = OUR_TASKS[task_name]
    mode = MODES[task["mode"]]
    assert mode.options["scale"] == task["scale"]
    assert mode.bandwidth == task["sigma_used"]
    assert window_steps(RELEASED["sampling"]["num_inference_steps"], mode.window) == released_steps(task)
    if task["gated"]:
        assert mode.threshold == task["beta_threshold"]  # None: calibrated as the released code does
        assert mode.options["margin"] == task["beta_threshold_margin"]
    else:  # the gate sum_n w_n + 1e-8 > threshold - margin is always open
        assert mode.threshold is not None and mode.threshold - mode.options["margin"] < RELEASED_EPSILON
