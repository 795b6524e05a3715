"""Mode registry, parameter documentation, and each mode's formula on small banks."""

import math

import pytest
import torch

from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.kernel import log_kernel_density, pruning, unsafe_denoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import (DEFAULT_MODE, MODES, Step, channel_moments, gaussian_log_density, held_posterior,
                                   item_spread_sq, replaced_share, resolve_mode, channel_normalized)


def bank_and_inputs(seed=0, count=40, batch=3):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, 4, 8, 8, generator=generator)
    x0_hat = torch.randn(batch, 4, 8, 8, generator=generator)
    x = x0_hat + 2.0 * torch.randn(batch, 4, 8, 8, generator=generator)
    return LatentBank("bank", latents), x0_hat, x


def test_default_alias_resolves_to_a_concrete_mode_and_unknown_names_list_valid_ones():
    assert resolve_mode("default") == DEFAULT_MODE == "posterior-replace"
    assert all(resolve_mode(name) == name for name in MODES)
    with pytest.raises(ValueError, match="valid modes: default, posterior, posterior-replace, contrastive, paper, reference"):
        resolve_mode("nonsense")


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_documents_its_parameters(name):
    mode = MODES[name]
    assert mode.summary and mode.correct.__doc__ and mode.bandwidth_doc and mode.threshold_doc
    assert 0 <= mode.window[0] <= mode.window[1] <= 1
    assert set(mode.option_docs) == set(mode.options)
    assert mode.reference_bank in ("unused", "optional")
    assert mode.accepts_channel_normalized == name.startswith("reference")


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_is_called_the_same_way(name):
    """One signature: the step, the bank, its strength, the settings, the reference bank and the memory,
    the last two passed to every mode (the engine has no per-mode call)."""
    bank, x0_hat, x = bank_and_inputs(batch=2)
    mode = MODES[name]
    reference = torch.randn(5, 4, 8, 8) if mode.reference_bank == "optional" else None
    step = Step(x0_hat.flatten(1), x.flatten(1), torch.tensor([2.0, 1.0]), tuple(x0_hat.shape), 0.0, (0, 1))
    effect = mode.correct(step, bank.latents, 1.0, mode.settings(), reference=reference, memory={})
    assert effect.delta.shape == (2, 4 * 8 * 8) and effect.fired.shape == effect.beta.shape == (2,)


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


@pytest.mark.parametrize("with_reference, handover", [(True, 0.0), (True, 0.25), (True, 4.0), (False, 0.25)])
def test_posterior_mode_swaps_the_unsafe_denoiser_weighted_by_the_posterior(with_reference, handover):
    """x0_hat + r (E_s - x0_hat) + (1 - r) w (E_s - E_u), w = gain * strength * pi: E_u, E_s smoothed-kernel
    denoisers at x; pi judged at x0_hat (kernels noised to tau) with a reference bank, at x against the
    Gaussian background without. The replaced share r = min(1, w) sigma^2 / (sigma^2 + handover v)
    (1 - pi(E_s)), pi(E_s) judged at E_s as at x0_hat; without a reference bank, or with handover 0, r = 0
    (the swap alone)."""
    bank, x0_hat, x = bank_and_inputs(count=30)
    fresh = torch.randn(10, 4, 8, 8, generator=torch.Generator().manual_seed(5)) + 1.0  # apart from the bank
    given = LatentBank("other", torch.cat([bank.latents[:10] + 0.3, fresh]), role="reference")
    spread, sigma, strength, gain, prior, temperature, coarseness = 0.4, 1.5, 0.5, 3.0, 0.7, 2.0, 2.5
    engine = SafeDenoiser([(bank, strength)], mode="posterior", window=(0, 1), threshold=0.0, bandwidth=spread,
                          reference=given if with_reference else None,
                          options={"gain": gain, "prior_odds": prior, "temperature": temperature,
                                   "prediction_spread": coarseness, "handover": handover})
    other = LatentBank("other", fresh, role="reference")  # what is left once the bank claims its 10 near twins
    out = engine.correct_x0(x0_hat, x, sigma, 0, 1)
    h = math.sqrt(sigma ** 2 + spread ** 2)

    def kernel_denoiser(items):
        return (sigma / h) ** 2 * unsafe_denoiser(x, h, items) + (spread / h) ** 2 * x

    mean, var = channel_moments(bank.latents)
    if with_reference:
        v = float(var.mean()) * coarseness
        tau_h = math.sqrt(v * sigma ** 2 / (v + sigma ** 2) + spread ** 2)
        log_u, log_s = log_kernel_density(x0_hat, tau_h, bank), log_kernel_density(x0_hat, tau_h, other)
        safe = kernel_denoiser(other)
    else:
        log_u = log_kernel_density(x, h, bank)
        log_s = gaussian_log_density(x.flatten(1), x.shape, mean, var, torch.full((3,), sigma))
        shrink = (var / (var + sigma ** 2))[None, :, None, None]
        safe = mean[None, :, None, None] + shrink * (x - mean[None, :, None, None])
    pi = torch.sigmoid(math.log(prior) + (log_u - log_s) / temperature)
    weight = gain * strength * pi
    replaced = torch.zeros_like(pi)
    if with_reference and handover:
        unsafe_at_safe = torch.sigmoid(math.log(prior) + (log_kernel_density(safe, tau_h, bank)
                                                          - log_kernel_density(safe, tau_h, other)) / temperature)
        replaced = weight.clamp(max=1) * sigma ** 2 / (sigma ** 2 + handover * float(var.mean())) * (1 - unsafe_at_safe)
    r, w = replaced[:, None, None, None], weight[:, None, None, None]
    expected = x0_hat + r * (safe - x0_hat) + (1 - r) * w * (safe - kernel_denoiser(bank))
    if with_reference and handover:
        assert float(replaced.max()) > 0.05  # the replacement is exercised
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert [r[0].beta for r in engine.report.images.values()] == pytest.approx(pi.tolist(), rel=1e-4, abs=1e-6)
    off = SafeDenoiser([(bank, strength)], mode="posterior", window=(0, 1), threshold=1.01,
                       reference=other if with_reference else None)
    assert torch.equal(off.correct_x0(x0_hat, x, sigma, 0, 1), x0_hat)  # pi never reaches 1.01


def test_replaced_shares_of_several_banks_add_up_to_at_most_one():
    """Every bank replaces by the same E_s, so within one step the first banks' shares leave the rest only
    what is left of 1 (a second identical bank then adds only its swap, never a second replacement)."""
    bank, x0_hat, x = bank_and_inputs(count=20, batch=3)
    reference = torch.randn(20, 4, 8, 8, generator=torch.Generator().manual_seed(9)) + 2.0
    step = Step(x0_hat.flatten(1), x.flatten(1), torch.full((3,), 5.0), tuple(x0_hat.shape))
    safe = reference[:3].flatten(1)
    tau, weight = torch.full((3,), 0.5), torch.tensor([3.0, 0.6, 0.0])
    options = {**MODES["posterior"].options, "handover": 0.25}
    first = replaced_share(step, bank.latents, reference, 0.1, safe, tau, weight, 1.0, options)
    second = replaced_share(step, bank.latents, reference, 0.1, safe, tau, weight, 1.0, options)
    assert float(first[0]) > 0.9 and 0.5 < float(first[1]) < 0.6 and float(first[2]) == 0
    torch.testing.assert_close(second, torch.minimum(first, 1 - first))
    assert bool(((first + second) <= 1 + 1e-6).all())


@pytest.mark.parametrize("mode", ["posterior", "posterior-replace"])
def test_posterior_reads_the_banks_at_x_only_when_some_image_fires(mode):
    """With a reference bank the posterior is judged at x0_hat; the swap's kernels at x (and, replacing, the
    judgement of E_s) run only where it acts, and the reported distance is then x0_hat's to the nearest
    negation item."""
    bank, x0_hat, x = bank_and_inputs(count=30, batch=2)
    reference = LatentBank("ref", torch.randn(30, 4, 8, 8, generator=torch.Generator().manual_seed(3)) + 3.0,
                           role="reference")
    reads = {}
    for threshold in (1.01, 0.0):  # pi never reaches 1.01; everything acts at 0
        engine = SafeDenoiser([(bank, 1.0)], mode=mode, window=(0, 1), threshold=threshold,
                              reference=reference)
        with pruning(None):  # every pass reads the whole bank twice (two sweeps)
            engine.correct_x0(x0_hat, x, 1.5, 0, 1)
        record = engine.report.images[0][-1]
        reads[threshold] = (record.banks[0]["bytes_read"], record.reference["bytes_read"])
        nearest = torch.cdist(x0_hat.flatten(1), bank.latents.flatten(1)).amin(1)
        assert [r[0].nearest_distance for r in engine.report.images.values()] == pytest.approx(nearest.tolist(),
                                                                                              rel=1e-4)
    twice = (2 * bank.latents.numel() * 4, 2 * reference.latents.numel() * 4)
    assert reads[1.01] == twice
    if mode == "posterior":  # firing adds the kernels at x
        assert reads[0.0] == tuple(2 * read for read in twice)
    else:  # and at E_s (whose second sweep may skip chunks where every weight vanishes: ``kernel._exact``)
        assert all(2 * read < fired <= 3 * read for read, fired in zip(twice, reads[0.0]))


def test_posterior_judges_a_few_specific_images_at_the_reference_banks_resolution():
    """Five unrelated images lie far apart, so their own estimated spread is wide; judged with it, a copy of
    one of them would lose to ordinary images that merely resemble it, by (D/2) log(h_u^2 / h_s^2) nats of
    normalisers. Both densities use the reference bank's spread: a near-copy is recognised, an ordinary
    image is not."""
    generator = torch.Generator().manual_seed(3)
    specific = LatentBank("specific", torch.randn(5, 4, 8, 8, generator=generator))
    centres = torch.randn(40, 1, 4, 8, 8, generator=generator)
    clusters = centres + 0.1 * torch.randn(40, 5, 4, 8, 8, generator=generator)
    clusters[0] = specific.latents[2] + 0.3 * torch.randn(5, 4, 8, 8, generator=generator)  # look-alikes
    ordinary = LatentBank("ordinary", clusters.flatten(0, 1), role="reference")
    assert item_spread_sq(specific.latents) > 50 * item_spread_sq(ordinary.latents)
    engine = SafeDenoiser([(specific, 1.0)], mode="posterior", reference=ordinary, options={"hold": 0.0})
    copy = specific.latents[2:3] + 0.05 * torch.randn(1, 4, 8, 8, generator=generator)
    other = ordinary.latents[7:8] + 0.05 * torch.randn(1, 4, 8, 8, generator=generator)
    queries = torch.cat([copy, other])
    sigma = 0.3
    engine.correct_x0(queries, queries + sigma * torch.randn(queries.shape, generator=generator), sigma, 0, 1)
    v = float(channel_moments(specific.latents)[1].mean())
    h = math.sqrt(v * sigma ** 2 / (v + sigma ** 2) + item_spread_sq(ordinary.latents))
    expected = torch.sigmoid(log_kernel_density(queries, h, specific) - log_kernel_density(queries, h, ordinary))
    betas = [records[0].beta for records in engine.report.images.values()]
    assert betas == pytest.approx(expected.tolist(), abs=1e-4)
    assert betas[0] > 0.99 and betas[1] < 0.01


def test_held_posterior_decays_with_its_half_life_per_image():
    memory = {}

    def held(pi, progress, ids=(5, 7), half_life=0.1):
        step = Step(torch.zeros(len(ids), 1), torch.zeros(len(ids), 1), torch.ones(len(ids)), (len(ids), 1, 1, 1),
                    progress, ids)
        return held_posterior(torch.tensor(pi), step, memory, half_life).tolist()

    assert held([0.9, 0.1], 0.0) == pytest.approx([0.9, 0.1])
    assert held([0.0, 0.3], 0.1) == pytest.approx([0.45, 0.3])  # one half-life later
    assert held([0.0, 0.0], 0.1) == pytest.approx([0.45, 0.3])  # a second-order step's second evaluation
    assert held([0.2, 0.0], 0.3, ids=(5, 9)) == pytest.approx([0.2, 0.0])  # 0.45 / 4 < 0.2; 9 has no past
    assert held([0.0, 0.0], 0.0) == pytest.approx([0.0, 0.0])  # progress went back: a new trajectory
    assert held([0.0], 0.1, half_life=0.0, ids=(5,)) == [0.0]


def test_posterior_engine_holds_each_banks_posterior_across_steps():
    """Through the engine: an image judged unsafe at step 0 and safe at step 1 keeps the decayed posterior,
    per bank and per image id; a run without hold drops it."""
    generator = torch.Generator().manual_seed(4)
    bank = LatentBank("bank", torch.randn(6, 4, 8, 8, generator=generator))
    ordinary = LatentBank("ordinary", 3 + torch.randn(30, 4, 8, 8, generator=generator), role="reference")
    unsafe_like, safe_like = bank.latents[:1].clone(), ordinary.latents[:1].clone()
    betas = {}
    for hold in (0.0, 0.5):
        engine = SafeDenoiser([(bank, 1.0)], mode="posterior", reference=ordinary, options={"hold": hold})
        engine.correct_x0(unsafe_like, unsafe_like, 0.2, 0, 11, image_ids=[3])
        engine.correct_x0(safe_like, safe_like, 0.2, 1, 11, image_ids=[3])
        betas[hold] = [record.beta for record in engine.report.images[3]]
    assert betas[0.0][0] > 0.99 and betas[0.0][1] < 1e-6
    assert betas[0.5][1] == pytest.approx(betas[0.5][0] * 0.5 ** (0.1 / 0.5), rel=1e-5)


def test_contrastive_against_itself_gives_the_prior_odds():
    """Same bank as negation and reference: the likelihood ratio is 1, so beta = strength * prior odds.
    (The engine would drop every item of such a reference, as the negation bank claims them all: the mode
    itself is called here.)"""
    bank, x0_hat, x = bank_and_inputs()
    mode = MODES["contrastive"]
    sigma = 2.0
    step = Step(x0_hat.flatten(1), x.flatten(1), torch.full((3,), sigma), tuple(x0_hat.shape), 0.0, (0, 1, 2))
    effect = mode.correct(step, bank.latents, 0.5, mode.settings(bandwidth=0.4, options={"prior_odds": 0.6}),
                          reference=bank.latents.clone(), memory={})
    beta = 0.5 * 0.6
    h_sq = sigma ** 2 + 0.4 ** 2
    unsafe = (sigma ** 2 / h_sq) * unsafe_denoiser(x, math.sqrt(h_sq), bank) + (0.4 ** 2 / h_sq) * x
    torch.testing.assert_close((x0_hat.flatten(1) + effect.delta).reshape(x0_hat.shape),
                               x0_hat + beta * (x0_hat - unsafe), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(effect.beta, torch.full((3,), beta), rtol=1e-5, atol=0)


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


def released_sums(queries, bank, bandwidth):
    """The released gate quantity, restated in float64: ``sum_n exp(-|q - x_n| / (2 h^2)) + 1e-8``."""
    distance = torch.cdist(queries.flatten(1).double(), bank.flatten(1).double())
    return (-distance / (2 * bandwidth ** 2)).exp().sum(1) + 1e-8


def test_reference_mode_calibrates_its_threshold_like_the_released_code():
    """The gate opens where the sum exceeds the calibrated threshold minus the margin 1.6; the threshold is
    the minimum sum over the bank noised to SD-v1's DDPM timestep 1 (``alpha_bar_1``, eps from a CPU
    generator seeded 42). Two queries straddle that cut by 0.15, so a threshold off by more fails."""
    bank, _, _ = bank_and_inputs(count=30)
    normalized = channel_normalized(bank.latents)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar_1 = float((1 - betas[:2]).prod())
    eps = torch.randn(normalized.shape, generator=torch.Generator().manual_seed(42))
    noisy = alpha_bar_1 ** 0.5 * normalized + (1 - alpha_bar_1) ** 0.5 * eps
    cut = float(released_sums(noisy, normalized, 3.15).min()) - 1.6
    start, far = normalized[0], 3 * torch.randn(normalized.shape[1:], generator=torch.Generator().manual_seed(8))

    def query_with_sum(target):  # bisect along the segment from a bank item (high sum) to a far point (low)
        low, high = 0.0, 1.0
        for _ in range(60):
            middle = (low + high) / 2
            if float(released_sums((start + middle * (far - start))[None], normalized, 3.15)) > target:
                low = middle
            else:
                high = middle
        return start + low * (far - start)

    queries = torch.stack([query_with_sum(cut + 0.15), query_with_sum(cut - 0.15)])
    engine = SafeDenoiser([(bank, 1.0)], mode="reference", window=(0, 1))
    engine.correct_x0(queries, queries, 1.0, 0, 1)
    records = [r[0] for r in engine.report.images.values()]
    assert [r.fired for r in records] == [True, False]
    assert [r.beta for r in records] == pytest.approx(released_sums(queries, normalized, 3.15).tolist(), rel=1e-5)
