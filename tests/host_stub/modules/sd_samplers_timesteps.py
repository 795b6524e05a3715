"""Follows modules/sd_samplers_timesteps.py and sd_samplers_timesteps_impl.py (DDIM with ``eta_ddim``, PLMS):
the model output is a noise prediction, the "sigma" handed around is the integer timestep (as a float
tensor), ``CFGDenoiserTimesteps.get_pred_x0`` converts with ``alphas_cumprod``, timesteps are
``range(0, 1000, 1000 // steps) + 1``. DDIM calls the model ``len(timesteps) - 1`` times, once a step;
PLMS calls it once more, twice in its first step (a pseudo improved-Euler step that evaluates the model
again at the next timestep), then once a step with an Adams-Bashforth combination of up to four noise
predictions. Both call the step callback once a step with the step's x0 prediction.
UniPC (modules/models/diffusion/uni_pc) is not reproduced here: the real-WebUI suite (tests/webui) runs it.
"""

from __future__ import annotations

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.shared import opts


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


def _schedule(timesteps):
    """``alpha_bar`` at each timestep and at the one before it (``alpha_bar`` of timestep 0 first)."""
    alphas_cumprod = shared.sd_model.alphas_cumprod
    return alphas_cumprod[timesteps], alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()


def _ddim_step(x, e_t, a_t, a_prev, sigma_t=0.0):
    """x0 from the noise prediction, then the DDIM move to ``a_prev`` (``sigma_t``: fresh noise's share)."""
    pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
    x_prev = a_prev ** 0.5 * pred_x0 + (1. - a_prev - sigma_t ** 2) ** 0.5 * e_t
    if sigma_t > 0:
        x_prev = x_prev + sigma_t * torch.randn_like(x)
    return x_prev, pred_x0


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, eta=0.0):
    alphas, alphas_prev = _schedule(timesteps)
    s_in = x.new_ones((x.shape[0]))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        sigma_t = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        x, pred_x0 = _ddim_step(x, e_t, a_t, a_prev, sigma_t)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


# Adams-Bashforth weights of the current and the earlier noise predictions, by how many earlier ones exist
_ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None):
    alphas, alphas_prev = _schedule(timesteps)
    s_in = x.new_ones((x.shape[0]))
    earlier = []  # the last noise predictions, newest first
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        a_t, a_prev = alphas[index].item(), alphas_prev[index].item()
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        if not earlier:  # no history yet: average with the prediction at the next timestep
            x_next, _ = _ddim_step(x, e_t, a_t, a_prev)
            e_next = model(x_next, timesteps[max(index - 1, 0)].item() * s_in, **extra_args)
            e_combined = (e_t + e_next) / 2
        else:
            weights = _ADAMS_BASHFORTH[len(earlier)]
            e_combined = sum(w * e for w, e in zip(weights, [e_t, *earlier]))
        x, pred_x0 = _ddim_step(x, e_combined, a_t, a_prev)
        earlier = [e_t, *earlier][:3]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)  # the sampling function itself, as modules/sd_samplers_timesteps.py passes it
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
        # DDIM's eta: the request's, else the "eta_ddim" setting (Sampler.initialize's eta_option_field)
        eta = {"eta": self.p.eta if getattr(self.p, "eta", None) is not None else opts.eta_ddim} \
            if self.func is ddim else {}
        return self.func(self.model_wrap_cfg, x, timesteps, extra_args=self.sampler_extra_args,
                         callback=self.callback_state, **eta)


samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model),
                                   aliases, {})
    for label, funcname, aliases in (("DDIM", ddim, ["ddim"]), ("PLMS", plms, ["plms"]))
]
