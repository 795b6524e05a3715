"""Sampling the digits model the way the WebUI samples SD: the real k-diffusion samplers around the real
``CompVisDenoiser``, under a CFG wrapper shaped like the WebUI's ``CFGDenoiser`` (cond rows first, then
uncond rows, one batched model call, ``uncond + scale * (cond - uncond)``), plus a DDIM loop in eps space
like the WebUI's timestep samplers. Hooks see what the WebUI's ``on_cfg_after_cfg`` callback sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lib_safedenoise.bench import kdiffusion
from lib_safedenoise.core.schedule import SamplerSteps

# after_cfg(denoised x0 [B,C,H,W], x [B,C,H,W], sigma [B], step_index, total_steps) -> denoised
AfterCFG = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]
# after_cfg_eps(eps [B,C,H,W], x [B,C,H,W], timestep [B], step_index, total_steps) -> eps
AfterCFGEps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    function: str
    karras: bool = False  # the WebUI's default scheduler for the sampler
    evaluations_per_step: int = 1
    ancestral: bool = False


SAMPLERS = {
    "euler": SamplerSpec("sample_euler"),
    "euler_a": SamplerSpec("sample_euler_ancestral", ancestral=True),
    "heun": SamplerSpec("sample_heun", evaluations_per_step=2),
    "dpmpp_2m": SamplerSpec("sample_dpmpp_2m", karras=True),
    "ddim": SamplerSpec("ddim"),
}


class CFGDenoiser(nn.Module):
    """Classifier-free guidance over a k-diffusion denoiser, one model call per evaluation."""

    def __init__(self, inner: nn.Module, steps: SamplerSteps, total_steps: int, after_cfg: AfterCFG | None):
        super().__init__()
        self.inner = inner
        self.steps = steps
        self.total_steps = total_steps
        self.after_cfg = after_cfg

    def forward(self, x, sigma, cond, uncond, cond_scale):
        step = self.steps.next_step()
        batch = x.shape[0]
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        denoised = out[batch:] + cond_scale * (out[:batch] - out[batch:])
        if self.after_cfg is not None:
            denoised = self.after_cfg(denoised, x, sigma, step, self.total_steps)
        return denoised


def ddim_timesteps(steps: int) -> torch.Tensor:
    """The WebUI's DDIM timesteps, lowest first: ``clip(range(0, 1000, 1000 // steps) + 1, 0, 999)``
    (modules/sd_samplers_timesteps.py ``get_timesteps``). When 1000 is not a multiple of ``steps`` there
    are more than ``steps`` of them."""
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def sample_ddim(model, x: torch.Tensor, steps: int, cond, uncond, cond_scale: float,
                after_cfg_eps: AfterCFGEps | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from pure noise ``x`` (unit variance), as the WebUI runs it
    (modules/sd_samplers_timesteps_impl.py ``ddim``): the model is called at every timestep but the
    lowest, ``len(timesteps) - 1`` times, and the loop ends at the lowest timestep (t = 1), not at t = 0.
    Differentiable: it records gradients exactly when the caller has them enabled."""
    alphas_cumprod = model.alphas_cumprod.double()
    timesteps = ddim_timesteps(steps)
    total = len(timesteps) - 1
    batch = x.shape[0]
    for step in range(total):
        index = total - step
        t = torch.full((batch,), float(timesteps[index]), device=x.device)
        out = model.apply_model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps = out[batch:] + cond_scale * (out[:batch] - out[batch:])
        if after_cfg_eps is not None:
            eps = after_cfg_eps(eps, x, t, step, total)
        a_t, a_prev = alphas_cumprod[timesteps[index]].item(), alphas_cumprod[timesteps[index - 1]].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * eps
    return x


def _labels(labels, batch: int | None) -> list:
    if labels is None or isinstance(labels, (int, str)):
        if batch is None:
            raise ValueError("pass a list of labels, or batch= with a single label")
        return [labels] * batch
    return list(labels)


@torch.no_grad()
def sample(model, labels: Sequence | int | None, *, sampler: str = "euler", steps: int = 20,
           cfg_scale: float = 2.0, seed: int = 0, after_cfg: AfterCFG | None = None,
           after_cfg_eps: AfterCFGEps | None = None, negative_labels: Sequence | int | None = None,
           size: tuple[int, int] = (8, 8), batch: int | None = None) -> torch.Tensor:
    """Latents ``[B, 4, H, W]`` sampled for ``labels`` (one per image; None = unconditional).

    ``negative_labels`` conditions the uncond branch (the negative-prompt analogue; default: null label).
    ``after_cfg`` hooks the CFG-combined x0 of the k-diffusion samplers; ``after_cfg_eps`` the CFG-combined
    eps of ``ddim``. The starting noise and every ancestral draw come from ``seed`` alone, so two calls with
    the same arguments and batch differ only through their hooks.
    """
    labels = _labels(labels, batch)
    negatives = _labels(negative_labels, len(labels))
    if len(negatives) != len(labels):
        raise ValueError(f"{len(negatives)} negative labels for {len(labels)} labels")
    return sample_conditioned(model, model.get_learned_conditioning(labels),
                              model.get_learned_conditioning(negatives), sampler=sampler, steps=steps,
                              cfg_scale=cfg_scale, seed=seed, after_cfg=after_cfg, after_cfg_eps=after_cfg_eps,
                              size=size)


def sample_conditioned(model, cond: torch.Tensor, uncond: torch.Tensor, *, sampler: str = "euler",
                       steps: int = 20, cfg_scale: float = 2.0, seed: int = 0, after_cfg: AfterCFG | None = None,
                       after_cfg_eps: AfterCFGEps | None = None, size: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """``sample`` from conditioning tensors ``[B, 1, 11]`` (any real vectors, not only one-hot labels).

    Differentiable: with gradients enabled (``sample`` disables them) the whole sampler is recorded, so a
    loss on the latents back-propagates to ``cond``, ``uncond`` and anything the hooks depend on. The
    k-diffusion samplers are decorated with ``torch.no_grad()``; their undecorated function
    (``__wrapped__``, the same code) is called instead, so with gradients off the result is the same
    computation, bit for bit, as the WebUI's.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    is_ddim = sampler == "ddim"
    if (after_cfg is not None and is_ddim) or (after_cfg_eps is not None and not is_ddim):
        raise ValueError("after_cfg hooks x0 (k-diffusion samplers); after_cfg_eps hooks eps (ddim only)")
    if cond.shape != uncond.shape or cond.ndim != 3:
        raise ValueError(f"cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} must both be [B, 1, width]")
    spec = SAMPLERS[sampler]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = torch.randn(len(cond), model.latent_channels, *size).to(device=model.device, dtype=model.dtype)
        if is_ddim:
            return sample_ddim(model, noise, steps, cond, uncond, cfg_scale, after_cfg_eps)
        denoiser = kdiffusion.external().CompVisDenoiser(model)
        k_sampling = kdiffusion.sampling()
        if spec.karras:
            sigmas = k_sampling.get_sigmas_karras(steps, denoiser.sigma_min.item(), denoiser.sigma_max.item(),
                                                  device=model.device)
        else:
            sigmas = denoiser.get_sigmas(steps)
        guided = CFGDenoiser(denoiser, SamplerSteps(spec.evaluations_per_step), steps, after_cfg)
        extra_args = {"cond": cond, "uncond": uncond, "cond_scale": cfg_scale}
        function = getattr(k_sampling, spec.function)
        function = getattr(function, "__wrapped__", function)
        return function(guided, noise * sigmas[0], sigmas, extra_args=extra_args, disable=True)
