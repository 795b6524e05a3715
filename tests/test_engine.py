"""SafeDenoiser: window, adapters, batches, several banks, reports and errors."""

import json
import math

import pytest
import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.bench import kdiffusion
from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.kernel import log_kernel_density
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import DEFAULT_MODE
from lib_safedenoise.core.schedule import SamplerSteps, in_window, step_progress, validate_window, window_steps


def make_bank(seed=0, count=30, shape=(4, 8, 8), name="bank", **kwargs):
    return LatentBank(name, torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed)), **kwargs)


def inputs(seed=1, batch=3, shape=(4, 8, 8), sigma=1.0):
    generator = torch.Generator().manual_seed(seed)
    x0_hat = torch.randn(batch, *shape, generator=generator)
    return x0_hat, x0_hat + sigma * torch.randn(batch, *shape, generator=generator)


def always_on(bank=None, **kwargs):
    """Default mode with a gate that always opens (a tiny threshold and a large prior)."""
    return SafeDenoiser([(bank or make_bank(), 1.0)], window=(0, 1), threshold=1e-30,
                        options={"prior_odds": 1e30, "gain": 0.5}, **kwargs)


def test_schedule_window_is_a_fraction_of_the_steps_run():
    assert step_progress(0, 1) == 0.0 and step_progress(9, 10) == 1.0 and step_progress(3, 7) == 0.5
    assert window_steps(10, (0.0, 0.5)) == [0, 1, 2, 3, 4]
    assert window_steps(50, (0.0, 0.22)) == list(range(11))
    assert in_window(0, 1, (0.0, 0.0)) and not in_window(0, 1, (0.1, 1.0))
    with pytest.raises(ValueError):
        validate_window((0.6, 0.2))
    with pytest.raises(ValueError):
        step_progress(10, 10)


def test_outside_the_window_returns_the_input_itself():
    x0_hat, x = inputs()
    engine = SafeDenoiser([(make_bank(), 1.0)], window=(0.5, 1.0), threshold=0.0)
    assert engine.correct_x0(x0_hat, x, 1.0, 0, 10) is x0_hat
    assert all(records == [records[0]] and not records[0].fired for records in engine.report.images.values())
    assert engine.report.images[0][0].beta is None


def test_per_image_independence_in_a_batch():
    bank = make_bank()
    sigma = torch.tensor([1.5, 2.0, 2.5, 3.0])
    x0_hat, x = inputs(batch=4, sigma=sigma.view(4, 1, 1, 1))
    eta = math.exp(-float(log_kernel_density(x, sigma, bank).median()))  # paper mode: beta of order 1
    for mode in ("contrastive", "paper", "reference"):
        def engine():
            return SafeDenoiser([(bank, eta if mode == "paper" else 1.0)], mode=mode, window=(0, 1),
                                threshold=-1e9 if mode == "reference" else None)
        together = engine().correct_x0(x0_hat, x, sigma, 0, 1)
        alone = torch.cat([engine().correct_x0(x0_hat[i:i + 1], x[i:i + 1], sigma[i:i + 1], 0, 1) for i in range(4)])
        assert not torch.equal(together, x0_hat)
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)  # paper mode's beta reaches 1e13 here


def test_images_that_do_not_fire_keep_their_exact_values():
    bank = make_bank()
    x0_hat, x = inputs(batch=2)
    x = torch.cat([bank.latents[:1] + 0.01, x[1:] + 50.0])  # one next to the bank, one far away
    engine = SafeDenoiser([(bank, 1.0)], window=(0, 1), bandwidth=0.1)
    out = engine.correct_x0(x0_hat, x, 0.1, 0, 1)
    assert engine.report.fired_steps() == {0: [0], 1: []}
    assert torch.equal(out[1], x0_hat[1]) and not torch.equal(out[0], x0_hat[0])


def test_several_banks_add_their_corrections_each_with_its_strength():
    """Banks of different concepts: each image is claimed by one bank (its posterior near 1, the other's near 0),
    and the corrections add, each with its bank's strength."""
    first, second = make_bank(seed=2, name="first"), make_bank(seed=3, name="second")
    second = LatentBank("second", second.latents + 40.0)  # another concept, far from the first
    x0_hat, _ = inputs(batch=2)
    x = torch.stack([first.latents[0], second.latents[0]]) + 0.05 * x0_hat
    options = {"gain": 0.5}

    def run(banks):
        return SafeDenoiser(banks, window=(0, 1), bandwidth=0.5, options=options).correct_x0(x0_hat, x, 1.0, 0, 1)

    both, only_first, only_second = run([(first, 1.0), (second, 0.5)]), run([(first, 1.0)]), run([(second, 0.5)])
    assert not torch.equal(only_first[0], x0_hat[0]) and not torch.equal(only_second[1], x0_hat[1])
    torch.testing.assert_close(both - x0_hat, (only_first - x0_hat) + (only_second - x0_hat), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run([(first, 1.0), (second, 0.0)]), only_first)


def test_banks_of_one_concept_correct_as_much_as_the_strongest_bank():
    """Two banks that both claim an image (posterior near 1 each) would swap twice; the stronger one claims
    the posterior first and the other gets what it left, so a copy of the bank beside it changes nothing,
    whichever comes first in the list."""
    bank = make_bank(seed=2)
    copy = LatentBank("copy", bank.latents.clone())
    x0_hat, x = inputs()
    options = {"prior_odds": 1e30, "gain": 0.5}

    def run(banks):
        engine = SafeDenoiser(banks, window=(0, 1), options=options)
        return engine.correct_x0(x0_hat, x, 1.0, 0, 1), engine.report

    once, _ = run([(bank, 1.0)])
    twice, report = run([(bank, 1.0), (copy, 1.0)])
    torch.testing.assert_close(twice, once)
    assert all(bank_record["fired"] for record in report.images.values() for bank_record in record[0].banks)
    torch.testing.assert_close(run([(copy, 0.2), (bank, 1.0)])[0], once)  # the weak bank first: still the strong one


def test_noise_prediction_adapter_round_trips_exactly_when_nothing_fires():
    alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, 0)
    eps, x = inputs()
    engine = SafeDenoiser([(make_bank(), 1.0)], window=(0.5, 1.0))
    assert engine.correct_eps(eps, x, 981.0, alphas_cumprod, 0, 10) is eps
    gated = SafeDenoiser([(make_bank(), 1.0)], window=(0, 1), threshold=1e30)  # in window, gate never opens
    assert gated.correct_eps(eps, x, torch.tensor([981.0, 501.0, 21.0]), alphas_cumprod, 0, 10) is eps


def test_noise_prediction_adapter_matches_the_x0_correction_in_ve_terms():
    alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0)
    bank = make_bank()
    eps, x_vp = inputs()
    timestep = 801
    alpha_bar = float(alphas_cumprod[timestep])
    new_eps = always_on(bank).correct_eps(eps, x_vp, float(timestep), alphas_cumprod, 0, 1)
    x0_hat = (x_vp - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar ** 0.5
    sigma = ((1 - alpha_bar) / alpha_bar) ** 0.5  # VE sigma; x_ve = x_vp / sqrt(alpha_bar) = x_vp * sqrt(1 + sigma^2)
    corrected = always_on(bank).correct_x0(x0_hat, x_vp * math.sqrt(1 + sigma ** 2), sigma, 0, 1)
    torch.testing.assert_close((x_vp - (1 - alpha_bar) ** 0.5 * new_eps) / alpha_bar ** 0.5, corrected,
                               rtol=1e-4, atol=1e-4)
    assert not torch.equal(new_eps, eps)


def test_dtype_and_device_are_kept_and_half_banks_work():
    bank = LatentBank("half", make_bank().latents.half())
    x0_hat, x = inputs()
    out = always_on(bank).correct_x0(x0_hat.half(), x.half(), 1.0, 0, 1)
    assert out.dtype == torch.float16 and out.device == x0_hat.device and torch.isfinite(out).all()
    full = always_on(LatentBank("full", bank.latents.float())).correct_x0(x0_hat.half().float(), x.half().float(), 1.0, 0, 1)
    torch.testing.assert_close(out.float(), full, rtol=2e-3, atol=2e-3)


def test_banks_are_adapted_to_the_latent_size_and_released():
    bank = make_bank(shape=(4, 16, 16))
    x0_hat, x = inputs(shape=(4, 8, 12))
    engine = always_on(bank)
    assert engine.correct_x0(x0_hat, x, 1.0, 0, 1).shape == x0_hat.shape
    assert bank._views
    engine.release()
    assert not bank._views


def test_report_names_the_concrete_mode_and_version_and_serialises():
    x0_hat, x = inputs(batch=2)
    engine = always_on()
    for step in range(3):
        engine.correct_x0(x0_hat, x, 1.0, step, 3, image_ids=[7, 8])
    assert engine.mode_name == DEFAULT_MODE and engine.version == ENGINE_VERSION
    data = json.loads(json.dumps(engine.report.to_dict()))
    assert data["mode"] == DEFAULT_MODE and data["engine_version"] == ENGINE_VERSION
    assert "default" not in json.dumps(data)
    assert sorted(data["images"]) == ["7", "8"] and [r["step"] for r in data["images"]["7"]] == [0, 1, 2]
    assert set(data["images"]["7"][0]) >= {"step", "fired", "beta", "nearest_distance"}
    assert engine.report.fired_steps() == {7: [0, 1, 2], 8: [0, 1, 2]}


def test_clear_errors():
    x0_hat, x = inputs()
    with pytest.raises(ValueError, match=r"\(30, 3, 8, 8\).*\(3, 4, 8, 8\)"):
        always_on(make_bank(shape=(3, 8, 8))).correct_x0(x0_hat, x, 1.0, 0, 1)
    for bad in (float("nan"), float("inf")):
        broken = x0_hat.clone()
        broken[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match="x0_hat contains NaN or Inf"):
            always_on().correct_x0(broken, x, 1.0, 0, 1)
    with pytest.raises(ValueError, match="sigma contains NaN"):
        always_on().correct_x0(x0_hat, x, float("nan"), 0, 1)
    with pytest.raises(ValueError, match="channel-normalised"):
        SafeDenoiser([(make_bank(channel_normalized=True), 1.0)], mode="contrastive")
    SafeDenoiser([(make_bank(channel_normalized=True), 1.0)], mode="reference")  # accepted there
    with pytest.raises(ValueError, match="does not use a reference bank"):
        SafeDenoiser([(make_bank(), 1.0)], mode="paper", reference=make_bank(role="reference"))
    with pytest.raises(ValueError, match="no option"):
        SafeDenoiser([(make_bank(), 1.0)], options={"nonsense": 1})
    with pytest.raises(ValueError, match="window"):
        SafeDenoiser([(make_bank(), 1.0)], window=(0.8, 0.2))
    with pytest.raises(ValueError, match="strength"):
        SafeDenoiser([(make_bank(), -1.0)])
    with pytest.raises(ValueError, match="unknown Safe Denoiser mode"):
        SafeDenoiser([(make_bank(), 1.0)], mode="defaults")


def test_window_counts_sampler_steps_with_a_second_order_sampler():
    """Real k-diffusion Heun: two model evaluations per step share one step, so the window is not shifted."""
    sampling = kdiffusion.sampling()
    steps, window = 8, (0.0, 0.5)
    bank = make_bank(shape=(4, 4, 4))
    engine = SafeDenoiser([(bank, 1.0)], window=window, threshold=1e-30, options={"prior_odds": 1e30, "gain": 0.5})
    counter, seen, callbacks = SamplerSteps(evaluations_per_step=2), [], []

    def model(x, sigma):
        step = counter.next_step()
        seen.append(step)
        return engine.correct_x0(0.5 * x, x, sigma, step, steps)

    sigmas = sampling.get_sigmas_karras(steps, 0.1, 10.0)
    sampling.sample_heun(model, 10 * torch.randn(1, 4, 4, 4), sigmas, disable=True,
                         callback=lambda info: callbacks.append((info["i"], seen[-1])))
    assert seen == [i for i in range(steps) for _ in range(2 if sigmas[i + 1] > 0 else 1)]
    assert all(i == step for i, step in callbacks)  # k-diffusion's own step index agrees
    assert sorted(set(engine.report.fired_steps()[0])) == window_steps(steps, window) == [0, 1, 2, 3]


def test_speed_benchmark_quick_run_writes_its_json(tmp_path):
    """Smoke test of ``python -m lib_safedenoise.bench speed --quick``: structure and positive numbers only."""
    import subprocess
    import sys

    path = tmp_path / "speed.json"
    subprocess.run([sys.executable, "-m", "lib_safedenoise.bench", "speed", "--quick", "--json", str(path)],
                   check=True, capture_output=True, timeout=300)
    data = json.loads(path.read_text())
    assert data["engine_version"] == ENGINE_VERSION and data["default_mode"] == DEFAULT_MODE
    assert data["device"] == "cpu" and data["cases"]
    for case in data["cases"]:
        assert set(case) >= {"shape", "bank_size", "batch", "ours_s", "released_s", "memory_bound_s"}
        assert case["ours_s"] > 0 and case["memory_bound_s"] > 0 and case["released_s"] > 0
        assert len(case["shape"]) == 3 and case["bank_size"] >= 1 and case["batch"] >= 1


@pytest.mark.parametrize("mode", ["posterior", "posterior-replace", "contrastive", "paper", "reference",
                                  "reference-memorization", "reference-copro"])
def test_every_mode_handles_tiny_duplicated_and_half_banks_in_sd3_sized_latents(mode):
    """M = 1, a bank of one item repeated, fp16; latents 16 x 128 x 128 (squared distances ~1e6)."""
    generator = torch.Generator().manual_seed(8)
    item = torch.randn(1, 16, 128, 128, generator=generator)
    x0_hat = item + 0.5 * torch.randn(2, 16, 128, 128, generator=generator)
    x = x0_hat + 3.0 * torch.randn(2, 16, 128, 128, generator=generator)
    for latents in (item, item.repeat(3, 1, 1, 1), item.half()):
        engine = SafeDenoiser([(LatentBank("tiny", latents), 1.0)], mode=mode, window=(0, 1))
        out = engine.correct_x0(x0_hat, x, 3.0, 0, 1)
        assert torch.isfinite(out).all()
        assert all(math.isfinite(r[0].nearest_distance) for r in engine.report.images.values())
