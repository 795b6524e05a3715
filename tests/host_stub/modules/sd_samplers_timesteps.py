"""Follows modules/sd_samplers_timesteps.py and sd_samplers_timesteps_impl.py (DDIM): the model output
is a noise prediction, the "sigma" handed around is the integer timestep (as a float tensor),
``CFGDenoiserTimesteps.get_pred_x0`` converts with ``alphas_cumprod``, timesteps are
``range(0, 1000, 1000 // steps) + 1`` and the DDIM loop calls the model ``len(timesteps) - 1`` times."""

from __future__ import annotations

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(sd_samplers_cfg_denoiser.CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True
        self.classic_ddim_eps_estimation = shared.forge

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None):
    alphas_cumprod = shared.sd_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()
    s_in = x.new_ones((x.shape[0]))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
        x = a_prev ** 0.5 * pred_x0 + (1. - a_prev) ** 0.5 * e_t
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.func = ddim
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None,
                       image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        alphas_cumprod = shared.sd_model.alphas_cumprod
        xi = x * alphas_cumprod[timesteps[t_enc]].sqrt() + noise * (1 - alphas_cumprod[timesteps[t_enc]]).sqrt()
        return self.start(p, xi, t_enc + 1, conditioning, unconditional_conditioning,
                          lambda start: self.run_timesteps(start, timesteps[:t_enc]), init_latent=x)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        return self.start(p, x, steps, conditioning, unconditional_conditioning,
                          lambda start: self.run_timesteps(start, timesteps))

    def run_timesteps(self, x, timesteps):
        return self.func(self.model_wrap_cfg, x, timesteps, extra_args=self.sampler_extra_args,
                         callback=self.callback_state)


samplers_data_timesteps = [
    sd_samplers_common.SamplerData("DDIM", lambda model: CompVisSampler("ddim", model), ["ddim"], {}),
]
