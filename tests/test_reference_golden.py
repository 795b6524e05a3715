"""The ``reference`` modes reproduce the authors' released kernel (MingyuKim87/Safe_Denoiser).

``golden/reference_kernel.safetensors`` holds fixed inputs and what the released ``kernel_fast`` class
computed on them (regenerate with ``golden/make_golden.py``). We also compare against an independent
re-statement of the released formulation written from the paper notes (section 4).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import MODES, channel_normalized, released_threshold

GOLDEN = load_file(str(Path(__file__).parent / "golden" / "reference_kernel.safetensors"))
SCALE, MARGIN = GOLDEN["scale_margin"].tolist()


def golden_bank() -> LatentBank:
    return LatentBank("golden", GOLDEN["bank"], channel_normalized=True)


def restated(x0_hat, bank, bandwidth, scale):
    """The released formulation from the notes, one image at a time, with its B x M x (D+1) tensor."""
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


def test_released_per_task_defaults():
    assert (MODES["reference"].bandwidth, MODES["reference"].options) == (3.15, {"scale": 0.33, "margin": 1.6})
    assert MODES["reference"].threshold is None  # calibrated
    assert (MODES["reference-memorization"].bandwidth, MODES["reference-memorization"].options["scale"]) == (13.15, 0.69)
    assert (MODES["reference-copro"].bandwidth, MODES["reference-copro"].options["scale"]) == (1.0, 0.03)
