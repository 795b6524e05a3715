"""The engine on a CUDA device, as the WebUI runs it: float16 latents on the GPU, banks stored on the CPU
and hosted on the device per generation. Skipped where torch sees no CUDA device (CI has none); run with
``python -m pytest tests/test_cuda.py`` on a machine with one.

What must hold there: the correction on the device is the CPU's for the same inputs in the same dtype
(float32, and float16 as the WebUI's half-precision models give it), returned in the input's dtype and
device, with the same steps fired; certified pruning on the device gives what the full pass gives; the
DDIM (eps) adapter works with its timestep table on the device."""

from __future__ import annotations

import json

import pytest
import torch

from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.kernel import CHUNK_BYTES, DEVICE_CHUNK_BYTES, chunk_bytes, kernel_pass, pruning
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import DEFAULT_MODE, MODES, sd1_alpha_bar, takes_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPE = (4, 64, 64)  # SD1 latents
SIGMAS = (14.6, 7.0, 3.5, 1.6, 0.8, 0.35, 0.1)


def _clustered(count: int, centres: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(centres), (count,), generator=generator)
    return centres[picks] + 0.3 * torch.randn(count, *SHAPE, generator=generator)


@pytest.fixture(scope="module")
def banks():
    centres = torch.randn(40, *SHAPE, generator=torch.Generator().manual_seed(0))
    negation = LatentBank("negation", _clustered(600, centres[:20], 1))
    reference = LatentBank("reference", _clustered(600, centres[20:], 2), role="reference")
    return negation, reference


def _trajectory(engine: SafeDenoiser, x0: torch.Tensor, noise: torch.Tensor, device, dtype) -> list[torch.Tensor]:
    outputs = []
    for step, sigma in enumerate(SIGMAS):
        x = (x0 + sigma * noise).to(device, dtype)
        x0_hat = (x0 + 0.3 * sigma / (1 + sigma ** 2) ** 0.5 * noise.flip(0)).to(device, dtype)
        corrected = engine.correct_x0(x0_hat, x, sigma, step, len(SIGMAS))
        assert corrected.dtype == dtype and corrected.device == x0_hat.device and corrected.shape == x0_hat.shape
        outputs.append(corrected.float().cpu())
    return outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_cuda_correction_is_the_cpu_one(banks, mode, dtype):
    """Same inputs, same dtype on both devices. (Not float16 against float32: the posterior is a sharp
    function of ``|x - x_n|^2 / sigma^2`` over 16,384 values, so float16 rounding of the inputs and the
    bank alone moves it, on any device.)"""
    negation, reference = banks
    generator = torch.Generator().manual_seed(3)
    # two images near the negation bank (the correction fires), two near the reference (it should not)
    x0 = torch.cat([negation.latents[:2], reference.latents[:2]]) + 0.1 * torch.randn(4, *SHAPE, generator=generator)
    noise = torch.randn(4, *SHAPE, generator=generator)

    def run(device):
        engine = SafeDenoiser([(negation, 1.0)], mode=mode, reference=reference if takes_reference(mode) else None)
        return _trajectory(engine, x0, noise, device, dtype), engine.report.fired_steps()

    cpu, cpu_fired = run("cpu")
    gpu, gpu_fired = run("cuda")
    assert gpu_fired == cpu_fired
    if mode in ("posterior", DEFAULT_MODE):  # the synthetic banks are scaled for these modes' kernels
        assert any(cpu_fired.values())
    # the GPU sums float32 in another order; the posterior amplifies that (a log-odds error of 1e-2 moves
    # pi by 2.5e-3, times a gain of 5): 5e-3 of the scale, where a wrong device or dtype path errs by 1e-1
    for step, (expected, got) in enumerate(zip(cpu, gpu)):
        scale = max(expected.abs().max().item(), 1.0)
        assert (got - expected).abs().max().item() <= 5e-3 * scale, f"step {step}"


def test_pruning_on_cuda_gives_the_full_pass(banks):
    negation, reference = banks
    big = LatentBank("big", torch.cat([negation.latents] * 8) + 0.05 * torch.randn(4800, *SHAPE,
                                                                               generator=torch.Generator().manual_seed(4)))
    x0 = big.latents[:2] + 0.1 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(6))
    with pruning(None):
        full = _trajectory(SafeDenoiser([(big, 1.0)], reference=reference), x0, noise, "cuda", torch.float32)
    with pruning(1e-3, min_items=1):
        pruned = _trajectory(SafeDenoiser([(big, 1.0)], reference=reference), x0, noise, "cuda", torch.float32)
    for expected, got in zip(full, pruned):
        assert torch.allclose(got, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_eps_adapter_on_cuda_matches_the_cpu(banks):
    negation, reference = banks
    alphas_cumprod = torch.tensor([sd1_alpha_bar(t) for t in range(1000)], dtype=torch.float32)
    x0 = negation.latents[:2] + 0.1 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(8))
    a = alphas_cumprod[600]
    x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    results = []
    for device in ("cpu", "cuda"):
        engine = SafeDenoiser([(negation, 1.0)], reference=reference)
        out = engine.correct_eps(eps.to(device, torch.float16), x.to(device, torch.float16), 600.0,
                                 alphas_cumprod.to(device), 5, 20)
        assert out.dtype == torch.float16 and out.device.type == device
        results.append(out.float().cpu())
    assert not torch.equal(results[0], eps.half().float())  # it fired
    assert (results[1] - results[0]).abs().max().item() <= 2e-3 * results[0].abs().max().item()


def test_speed_benchmark_times_the_gpu(tmp_path):
    from lib_safedenoise.bench import speed

    path = tmp_path / "speed.json"
    assert speed.main(["--quick", "--device", "cuda", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["device"] == "cuda" and data["device_name"] == torch.cuda.get_device_name()
    assert all(case["ours_s"] > 0 and case["memory_bound_s"] > 0 for case in data["cases"])


def test_a_gpu_sweep_takes_large_chunks_and_gives_the_small_chunk_result():
    assert chunk_bytes(torch.device("cuda")) == DEVICE_CHUNK_BYTES > chunk_bytes(torch.device("cpu")) == CHUNK_BYTES
    generator = torch.Generator().manual_seed(9)
    bank = torch.randn(3000, 4, 32, 32, generator=generator).cuda()  # 49 MB: 3 CPU chunks, 1 GPU chunk
    x = bank[:2] + 0.3 * torch.randn(2, 4, 32, 32, generator=generator).cuda()
    large = kernel_pass(x, 8.0, bank)
    small = kernel_pass(x, 8.0, bank, chunk_rows=64)
    torch.testing.assert_close(large.log_weight_sum, small.log_weight_sum, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(large.mean, small.mean, rtol=1e-4, atol=1e-4)
