"""Mode registry, parameter documentation, and each mode's formula on small banks."""

import math

import pytest
import torch

from lib_safedenoise.engine import SafeDenoiser
from lib_safedenoise.kernel import kernel_pass, log_kernel_density, unsafe_denoiser
from lib_safedenoise.latent_bank import LatentBank
from lib_safedenoise.modes import (DEFAULT_MODE, MODES, channel_moments, gaussian_log_density, item_spread_sq,
                                   released_calibration_noise, released_threshold, resolve_mode, channel_normalized)


def bank_and_inputs(seed=0, count=40, batch=3):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, 4, 8, 8, generator=generator)
    x0_hat = torch.randn(batch, 4, 8, 8, generator=generator)
    x = x0_hat + 2.0 * torch.randn(batch, 4, 8, 8, generator=generator)
    return LatentBank("bank", latents), x0_hat, x


def test_default_alias_resolves_to_a_concrete_mode_and_unknown_names_list_valid_ones():
    assert resolve_mode("default") == DEFAULT_MODE == "posterior"
    assert all(resolve_mode(name) == name for name in MODES)
    with pytest.raises(ValueError, match="valid modes: default, posterior, contrastive, paper, reference"):
        resolve_mode("nonsense")


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_documents_its_parameters(name):
    mode = MODES[name]
    assert mode.summary and mode.correct.__doc__ and mode.bandwidth_doc and mode.threshold_doc
    assert 0 <= mode.window[0] <= mode.window[1] <= 1
    assert set(mode.option_docs) == set(mode.options)
    assert mode.reference_bank in ("unused", "optional")
    assert mode.accepts_channel_normalized == name.startswith("reference")


def test_released_windows_cover_the_released_steps_of_50():
    from lib_safedenoise.schedule import window_steps
    assert window_steps(50, MODES["reference"].window) == list(range(11))              # t in [780, 1000]
    assert window_steps(50, MODES["reference-memorization"].window) == list(range(12))  # i <= 11
    assert window_steps(50, MODES["reference-copro"].window) == list(range(10))        # t in [800, 1000]


def test_paper_mode_is_theorem_form_with_eta_times_kernel_density():
    bank, x0_hat, x = bank_and_inputs()
    sigma = torch.tensor([1.5, 2.0, 3.0])
    eta = math.exp(-float(log_kernel_density(x, sigma, bank).median()))  # beta of order 1: the density is ~e^-500
    engine = SafeDenoiser([(bank, eta)], mode="paper", window=(0, 1))
    out = engine.correct_x0(x0_hat, x, sigma, 0, 1)
    beta = eta * log_kernel_density(x, sigma, bank).double().exp()
    expected = x0_hat + beta.float()[:, None, None, None] * (x0_hat - unsafe_denoiser(x, sigma, bank))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert [r[0].beta for r in engine.report.images.values()] == pytest.approx(beta.tolist(), rel=1e-4)
    assert 0.1 < float(beta.median()) < 10


def test_paper_mode_gate_is_on_log_density():
    bank, x0_hat, x = bank_and_inputs()
    log_p = log_kernel_density(x, 2.0, bank)
    cut = float(log_p.median())
    engine = SafeDenoiser([(bank, math.exp(-cut))], mode="paper", window=(0, 1), threshold=cut)
    out = engine.correct_x0(x0_hat, x, 2.0, 0, 1)
    fired = [records[0].fired for records in engine.report.images.values()]
    assert fired == (log_p >= cut).tolist()
    for row, did in enumerate(fired):
        assert torch.equal(out[row], x0_hat[row]) != did


@pytest.mark.parametrize("with_reference", [True, False])
def test_posterior_mode_swaps_the_unsafe_denoiser_weighted_by_the_posterior(with_reference):
    """x0_hat + gain * strength * pi * (E_s - E_u): E_u, E_s smoothed-kernel denoisers at x; pi judged at
    x0_hat (kernels noised to tau) with a reference bank, at x against the Gaussian background without."""
    bank, x0_hat, x = bank_and_inputs(count=30)
    other = LatentBank("other", bank.latents[:20] + 0.3, role="reference")
    spread, sigma, strength, gain, prior, temperature = 0.4, 1.5, 0.5, 3.0, 0.7, 2.0
    engine = SafeDenoiser([(bank, strength)], mode="posterior", window=(0, 1), threshold=0.0, bandwidth=spread,
                          reference=other if with_reference else None,
                          options={"gain": gain, "prior_odds": prior, "temperature": temperature})
    out = engine.correct_x0(x0_hat, x, sigma, 0, 1)
    h = math.sqrt(sigma ** 2 + spread ** 2)

    def kernel_denoiser(items):
        return (sigma / h) ** 2 * unsafe_denoiser(x, h, items) + (spread / h) ** 2 * x

    mean, var = channel_moments(bank.latents)
    if with_reference:
        v = float(var.mean())
        tau_h = math.sqrt(v * sigma ** 2 / (v + sigma ** 2) + spread ** 2)
        log_u, log_s = log_kernel_density(x0_hat, tau_h, bank), log_kernel_density(x0_hat, tau_h, other)
        safe = kernel_denoiser(other)
    else:
        log_u = log_kernel_density(x, h, bank)
        log_s = gaussian_log_density(x.flatten(1), x.shape, mean, var, torch.full((3,), sigma))
        shrink = (var / (var + sigma ** 2))[None, :, None, None]
        safe = mean[None, :, None, None] + shrink * (x - mean[None, :, None, None])
    pi = torch.sigmoid(math.log(prior) + (log_u - log_s) / temperature)
    expected = x0_hat + (gain * strength * pi)[:, None, None, None] * (safe - kernel_denoiser(bank))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert [r[0].beta for r in engine.report.images.values()] == pytest.approx(pi.tolist(), rel=1e-4, abs=1e-6)
    off = SafeDenoiser([(bank, strength)], mode="posterior", window=(0, 1), threshold=1.01,
                       reference=other if with_reference else None)
    assert torch.equal(off.correct_x0(x0_hat, x, sigma, 0, 1), x0_hat)  # pi never reaches 1.01


def test_contrastive_against_itself_gives_the_prior_odds():
    """Same bank as negation and reference: the likelihood ratio is 1, so beta = strength * prior odds."""
    bank, x0_hat, x = bank_and_inputs()
    reference = LatentBank("same", bank.latents, role="reference")
    engine = SafeDenoiser([(bank, 0.5)], mode="contrastive", window=(0, 1), reference=reference, bandwidth=0.4,
                          options={"prior_odds": 0.6})
    sigma = 2.0
    out = engine.correct_x0(x0_hat, x, sigma, 0, 1)
    beta = 0.5 * 0.6
    h_sq = sigma ** 2 + 0.4 ** 2
    unsafe = (sigma ** 2 / h_sq) * unsafe_denoiser(x, math.sqrt(h_sq), bank) + (0.4 ** 2 / h_sq) * x
    torch.testing.assert_close(out, x0_hat + beta * (x0_hat - unsafe), rtol=1e-5, atol=1e-5)
    assert all(r[0].beta == pytest.approx(beta, rel=1e-5) for r in engine.report.images.values())


def test_contrastive_knobs_cap_temperature_strength_threshold():
    bank, x0_hat, _ = bank_and_inputs(count=20)
    near = bank.latents[:3] + 0.05 * torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(9))

    def betas(strength=1.0, **options):
        engine = SafeDenoiser([(bank, strength)], mode="contrastive", window=(0, 1),
                              threshold=options.pop("threshold", None), options=options)
        out = engine.correct_x0(x0_hat, near, 0.1, 0, 1)
        fired = [r[0].fired for r in engine.report.images.values()]
        assert fired == [not torch.equal(a, b) for a, b in zip(out, x0_hat)]
        return torch.tensor([r[0].beta if r[0].fired else 0.0 for r in engine.report.images.values()])

    assert torch.allclose(betas(), torch.full((3,), 4.0))  # near the bank the odds are enormous: capped at 4
    assert torch.allclose(betas(cap=100.0), torch.full((3,), 100.0))
    assert (betas(temperature=1e6, cap=1e9) < 10).all()  # a high temperature flattens the log ratio
    assert (betas(strength=0.0) == 0).all()
    small = betas(temperature=1e6, cap=1e9)
    gated = betas(temperature=1e6, cap=1e9, threshold=float(small.max()) * 2)
    assert (gated == 0).all()


def test_gaussian_background_log_density_is_the_per_channel_gaussian():
    bank, _, x = bank_and_inputs()
    mean, var = channel_moments(bank.latents)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    ours = gaussian_log_density(x.flatten(1), x.shape, mean, var, sigma)
    expected = torch.stack([torch.distributions.Normal(mean[None, :, None, None],
                                                       (var + s ** 2).sqrt()[None, :, None, None]).log_prob(x[i:i + 1]).sum()
                            for i, s in enumerate(sigma)])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-3)


def test_item_spread_recovers_the_within_cluster_spread_in_high_dimension():
    generator = torch.Generator().manual_seed(6)
    centres = 3 * torch.randn(10, 4, 16, 16, generator=generator)
    for count, spread in ((200, 0.5), (40, 0.2)):
        items = centres.repeat(count // 10, 1, 1, 1) + spread * torch.randn(count, 4, 16, 16, generator=generator)
        assert item_spread_sq(items) == pytest.approx(spread ** 2, rel=0.2)
    assert item_spread_sq(centres[:1]) == 0.0


def test_reference_mode_calibrates_its_threshold_like_the_released_code():
    bank, x0_hat, x = bank_and_inputs(count=30)
    normalized = channel_normalized(bank.latents)
    expected = released_threshold(released_calibration_noise(normalized), normalized, 3.15)
    near = normalized[:2] + 0.01
    engine = SafeDenoiser([(bank, 1.0)], mode="reference", window=(0, 1))
    engine.correct_x0(torch.cat([x0_hat, near]), torch.cat([x, near]), 1.0, 0, 1)
    sums = [r[0].beta for r in engine.report.images.values()]
    fired = [r[0].fired for r in engine.report.images.values()]
    assert fired == [s > expected - 1.6 for s in sums]
    assert fired[-2:] == [True, True] and not all(fired)
    # the same sums as the released kernel (unsquared distance at x0_hat, bandwidth 3.15)
    stats = kernel_pass(near, 3.15, normalized, squared=False)
    assert sums[-2:] == pytest.approx((stats.log_weight_sum.exp() + 1e-8).tolist(), rel=1e-5)
