"""Follows modules/sd_samplers_kdiffusion.py: k-diffusion samplers (the real ``k_diffusion.sampling``
functions) around ``CFGDenoiserKDiffusion``, whose inner model is ``k_diffusion.external.CompVisDenoiser``
(so the CFG result is the x0 prediction and sigma is a real sigma); img2img/hires run ``t_enc + 1`` steps."""

from __future__ import annotations

import torch

from lib_safedenoise.bench import kdiffusion
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared

samplers_k_diffusion = [
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Euler a", "sample_euler_ancestral", ["k_euler_a"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = kdiffusion.external().CompVisDenoiser(shared.sd_model)
        return self.model_wrap


class TorchHijack:
    """modules/sd_samplers_common.py: ancestral noise comes from the images' seeds, not the global RNG."""

    def __init__(self, p):
        self.generators = [torch.Generator().manual_seed(int(seed) + 1) for seed in p.seeds]

    def __getattr__(self, item):
        if item == "randn_like":
            return self.randn_like
        return getattr(torch, item)

    def randn_like(self, x):
        return torch.stack([torch.randn(x.shape[1:], generator=g) for g in self.generators]).to(x)


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = getattr(kdiffusion.sampling(), funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def initialize(self, p):
        kdiffusion.sampling().torch = TorchHijack(p)
        return super().initialize(p)

    def get_sigmas(self, p, steps):
        if self.config.options.get("scheduler") == "karras":
            sigma_min, sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
            return kdiffusion.sampling().get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max)
        return self.model_wrap.get_sigmas(steps).cpu()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        return self.start(p, x + noise * sigma_sched[0], t_enc + 1, conditioning, unconditional_conditioning,
                          lambda xi: self.run_sigmas(xi, sigma_sched), init_latent=x)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        return self.start(p, x * sigmas[0], steps, conditioning, unconditional_conditioning,
                          lambda xi: self.run_sigmas(xi, sigmas))

    def run_sigmas(self, x, sigmas):
        return self.func(self.model_wrap_cfg, x, sigmas, extra_args=self.sampler_extra_args, disable=True,
                         callback=self.callback_state)


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model),
                                   aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]
