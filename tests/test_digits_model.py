"""The digits latent diffusion model of the efficacy benchmark: data split, exact encoder, SD schedule,
the real k-diffusion wrapper and samplers, the committed checkpoints' quality, the evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib_safedenoise.bench import digits, kdiffusion
from lib_safedenoise.bench.digits import checkpoints, data, train
from lib_safedenoise.bench.digits.sampling import ddim_timesteps


def test_split_is_disjoint_complete_stratified_and_stable():
    split = digits.digit_split()
    parts = [set(split.train), set(split.heldout), set(split.evaluator)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(range(1797))
    _, labels = digits.all_digits()
    for indices, share in zip((split.train, split.heldout, split.evaluator), data.SPLIT_FRACTIONS.values()):
        counts = np.bincount(labels[indices].numpy(), minlength=10)
        assert np.all(np.abs(counts - share * np.bincount(labels.numpy())) <= 2)
    data.digit_split.cache_clear()
    again = digits.digit_split()
    assert again.fingerprint() == split.fingerprint()
    assert all(np.array_equal(a, b) for a, b in zip(
        (again.train, again.heldout, again.evaluator), (split.train, split.heldout, split.evaluator)))


def test_committed_checkpoints_are_safetensors_of_this_split():
    for kind, name in checkpoints.FILES.items():
        path = checkpoints.WEIGHTS_DIR / name
        assert path.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then a JSON header
        metadata = checkpoints.read_metadata(path)
        assert metadata["kind"] == kind
        assert metadata["split"] == digits.digit_split().fingerprint()
        assert path.stat().st_size < 4_000_000


def test_checkpoint_of_another_split_is_refused(tmp_path):
    model = digits.load_model()
    path = tmp_path / "denoiser.safetensors"
    checkpoints.save_checkpoint(model, path, {**model.metadata, "split": "0" * 16})
    with pytest.raises(ValueError, match="data split"):
        checkpoints.load_diffusion(path)
    with pytest.raises(ValueError, match="not a 'memorizer'"):
        checkpoints.load_diffusion(checkpoints.WEIGHTS_DIR / "denoiser.safetensors", "memorizer")


def test_encoder_is_exactly_invertible_at_every_size():
    pixels, _ = digits.all_digits()
    latents = digits.encode(pixels)
    assert latents.shape == (1797, 4, 8, 8)
    assert torch.allclose(digits.decode(latents), pixels, atol=1e-6)
    assert latents.min() >= -1 and latents.max() <= 1
    assert not torch.allclose(latents[:, 0], latents[:, 3])  # four distinct views, like SD's channels
    other = torch.rand(3, 1, 16, 12, generator=torch.Generator().manual_seed(0))
    assert digits.encode(other).shape == (3, 4, 16, 12)
    assert torch.allclose(digits.decode(digits.encode(other)), other, atol=1e-6)


def test_decode_of_any_latent_is_the_least_squares_image():
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    projected = digits.encode(digits.decode(z))
    assert torch.allclose(digits.encode(digits.decode(projected)), projected, atol=1e-5)
    # the residual is orthogonal to every encodable latent
    other = digits.encode(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    assert abs(float(((z - projected) * other).sum())) < 1e-3


def test_schedule_is_sd_scaled_linear():
    alphas_cumprod = digits.DigitsLatentDiffusion().alphas_cumprod
    assert alphas_cumprod.dtype == torch.float32 and alphas_cumprod.shape == (1000,)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    assert np.allclose(alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-5)
    assert alphas_cumprod[-1].item() == pytest.approx(0.0046, abs=1e-4)  # SD-v1's final alpha_bar


def test_compvis_denoiser_wraps_it_like_sd():
    model = digits.load_model()
    denoiser = kdiffusion.external().CompVisDenoiser(model)
    # SD-v1's sigma range as the WebUI reports it
    assert denoiser.sigma_min.item() == pytest.approx(0.0292, abs=1e-3)
    assert denoiser.sigma_max.item() == pytest.approx(14.6146, abs=1e-3)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 2.0, 10.0])
    cond = model.get_learned_conditioning(["3", "digit seven", ""])
    assert cond.shape == (3, 1, 11)
    denoised = denoiser(x, sigma, cond=cond)
    eps = model.apply_model(x / (sigma ** 2 + 1).sqrt()[:, None, None, None], denoiser.sigma_to_t(sigma),
                            {"c_crossattn": [cond]})
    assert torch.allclose(denoised, x - sigma[:, None, None, None] * eps, atol=1e-5)


def test_prompts_parse_to_labels():
    assert [digits.parse_label(p) for p in ("7", "a seven", "Digit 0", "", None, 4)] == [7, 7, 0, None, None, 4]
    for bad in ("12", "3 and 4", "a cat", 10):
        with pytest.raises(ValueError):
            digits.parse_label(bad)


@pytest.mark.parametrize("sampler", list(digits.SAMPLERS))
def test_every_sampler_draws_the_asked_digit(sampler):
    model, evaluator = digits.load_model(), digits.load_evaluator()
    labels = [d for d in range(10) for _ in range(6)]
    latents = digits.sample(model, labels, sampler=sampler, steps=20, cfg_scale=2.0, seed=5)
    predictions, _, _ = evaluator.judge(digits.decode(latents).clamp(0, 1))
    assert (predictions == torch.tensor(labels)).float().mean() >= 0.9


def test_sampling_is_seeded_and_fully_convolutional():
    model = digits.load_model()
    first = digits.sample(model, 4, batch=3, seed=11, steps=8, sampler="euler_a")
    assert torch.equal(first, digits.sample(model, 4, batch=3, seed=11, steps=8, sampler="euler_a"))
    assert not torch.equal(first, digits.sample(model, 4, batch=3, seed=12, steps=8, sampler="euler_a"))
    wide = digits.sample(model, [1, None], seed=0, steps=8, size=(16, 24))
    assert wide.shape == (2, 4, 16, 24) and torch.isfinite(wide).all()
    assert model.decode_first_stage(wide).shape == (2, 1, 16, 24)


def test_after_cfg_sees_every_sampler_step_and_steers_the_result():
    model = digits.load_model()
    calls = []

    def record(denoised, x, sigma, step, total):
        calls.append((step, total, sigma[0].item(), denoised.shape, x.shape))
        return denoised

    plain = digits.sample(model, [2, 5], sampler="heun", steps=6, seed=3)
    hooked = digits.sample(model, [2, 5], sampler="heun", steps=6, seed=3, after_cfg=record)
    assert torch.equal(plain, hooked)
    assert [c[0] for c in calls] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]  # last Heun step: one evaluation
    assert {c[1] for c in calls} == {6} and calls[0][3] == calls[0][4] == (2, 4, 8, 8)
    target = digits.encode(digits.subset("heldout", digit=8)[0][:2])
    steered = digits.sample(model, [2, 5], sampler="euler", steps=10, seed=3,
                            after_cfg=lambda d, x, s, i, n: target)
    assert torch.allclose(steered, target, atol=1e-4)


def test_ddim_hooks_eps_at_the_webui_timesteps():
    model = digits.load_model()
    seen = []

    def record(eps, x, t, step, total):
        seen.append((int(t[0]), step, total))
        return eps

    digits.sample(model, [1], sampler="ddim", steps=10, seed=0, after_cfg_eps=record)
    assert seen == [(t, i, 9) for i, t in enumerate(ddim_timesteps(10).flip(0)[:-1].tolist())]
    assert seen[0][0] == 901 and seen[-1][0] == 101  # the WebUI never calls the model at t = 1
    seen.clear()
    digits.sample(model, [1], sampler="ddim", steps=12, seed=0, after_cfg_eps=record)
    assert [t for t, _, _ in seen] == list(range(997, 1, -83)) and seen[-1][1:] == (11, 12)
    with pytest.raises(ValueError, match="after_cfg_eps"):
        digits.sample(model, [1], sampler="ddim", steps=4, after_cfg=lambda *a: a[0])


def test_negative_label_conditions_the_uncond_branch():
    model, evaluator = digits.load_model(), digits.load_evaluator()
    latents = digits.sample(model, None, batch=60, seed=1, cfg_scale=3.0, negative_labels=[9] * 60)
    predictions, _, _ = evaluator.judge(digits.decode(latents).clamp(0, 1))
    plain, _, _ = evaluator.judge(digits.decode(digits.sample(model, None, batch=60, seed=1)).clamp(0, 1))
    assert (plain == 9).sum() >= 6
    assert (predictions == 9).float().mean() <= 0.02


def test_evaluator_accuracy_on_heldout_digits():
    pixels, labels = digits.subset("heldout")
    predictions, confidences, features = digits.load_evaluator().judge(pixels)
    assert (predictions == labels).float().mean() >= 0.97
    assert features.shape == (len(pixels), 64)


def test_frechet_distance_matches_the_fid_formula():
    import scipy.linalg

    generator = np.random.default_rng(0)
    a = generator.normal(size=(400, 6))
    b = generator.normal(size=(300, 6)) @ np.diag([1, 2, 1, 1, 0.5, 1]) + 0.3
    covariance_a, covariance_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(covariance_a + covariance_b
                - 2 * scipy.linalg.sqrtm(covariance_a @ covariance_b).real))
    assert digits.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert digits.frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)
    assert digits.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError):
        digits.frechet_distance(a, b[:, :3])


def test_near_duplicate_distance_separates_distinct_digits():
    pixels, _ = digits.all_digits()
    distances = digits.pixel_distances(pixels, pixels)
    distances[distances == 0] = float("inf")
    assert digits.near_duplicate_distance() < distances.min().item()


def _class_accuracy(model, evaluator, per_class=30, seed=7) -> float:
    labels = [d for d in range(10) for _ in range(per_class)]
    latents = digits.sample(model, labels, steps=20, cfg_scale=2.0, seed=seed)
    predictions, _, _ = evaluator.judge(digits.decode(latents).clamp(0, 1))
    return (predictions == torch.tensor(labels)).float().mean().item()


def _memorised_rate(memorizer, samples=200, seed=7) -> float:
    pixels, labels = digits.memorizer_subset()
    chosen = [labels[i % len(labels)].item() for i in range(samples)]
    latents = digits.sample(memorizer, chosen, steps=20, cfg_scale=2.0, seed=seed)
    distances = digits.pixel_distances(digits.decode(latents).clamp(0, 1), pixels).min(dim=1).values
    return (distances < digits.near_duplicate_distance()).float().mean().item()


def test_committed_models_quality():
    assert _class_accuracy(digits.load_model(), digits.load_evaluator(), per_class=20) >= 0.95
    assert _memorised_rate(digits.load_memorizer(), samples=100) >= 0.5


@pytest.mark.slow
def test_training_script_reproduces_the_committed_quality(tmp_path):
    assert train.main(["--out", str(tmp_path)]) == 0
    fresh_evaluator = checkpoints.load_classifier(tmp_path / "evaluator.safetensors")
    pixels, labels = digits.subset("heldout")
    assert (fresh_evaluator.judge(pixels)[0] == labels).float().mean() >= 0.97
    evaluator = digits.load_evaluator()
    fresh = _class_accuracy(checkpoints.load_diffusion(tmp_path / "denoiser.safetensors"), evaluator)
    committed = _class_accuracy(digits.load_model(), evaluator)
    assert fresh >= 0.95 and fresh >= committed - 0.03
    memorizer = checkpoints.load_diffusion(tmp_path / "memorizer.safetensors", "memorizer")
    assert _memorised_rate(memorizer) >= 0.5


def test_training_is_deterministic():
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        train.deterministic()
        pixels, labels = digits.subset("train")
        runs = [train.train_denoiser(pixels[:64], labels[:64], seed=3, iterations=4, batch=16) for _ in range(2)]
        classifiers = [digits.evaluator.train_classifier(pixels[:64], labels[:64], seed=3, iterations=4)
                       for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    for first, second in (runs, classifiers):
        for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(runs[0].model.head.weight, torch.zeros_like(runs[0].model.head.weight))
