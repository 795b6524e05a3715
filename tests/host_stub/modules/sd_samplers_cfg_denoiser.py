"""Follows modules/sd_samplers_cfg_denoiser.py ``CFGDenoiser.forward`` (A1111 v1.10.1) and, with
``shared.forge``, Forge's rewrite of it (lllyasviel/stable-diffusion-webui-forge, same file, dfdcbab6).

A1111: the model input is ``[cond rows of image 0 (one per AND sub-prompt), ..., cond rows of image B-1,
uncond rows (= x)]``; ``on_cfg_denoiser`` sees that batch; "Skip Early CFG" / NGMS then drop the uncond
rows and fake them from the cond rows after the model call; ``on_cfg_denoised`` sees the model output;
the live preview is stored *before* ``on_cfg_after_cfg``, which gets the CFG-combined result (x0 for
k-diffusion, eps for the timestep samplers); ``step`` counts calls.

Forge: ``on_cfg_denoiser`` sees the un-batched x and sigma; no ``on_cfg_denoised``; for DDIM the
timestep becomes a real sigma and x a VE latent before the callbacks, ``on_cfg_after_cfg`` gets x0 and
the eps the sampler needs is derived from it afterwards.
"""

from __future__ import annotations

import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import (AfterCFGCallbackParams, CFGDenoisedParams, CFGDenoiserParams,
                                      cfg_after_cfg_callback, cfg_denoised_callback, cfg_denoiser_callback)
from modules.shared import opts, state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0
        self.mask_before_denoising = False
        self.classic_ddim_eps_estimation = False  # Forge: set for the timestep samplers
        self._forge_wrap = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond=None):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        if shared.forge:
            return self._forward_forge(x, sigma, uncond, cond, cond_scale, s_min_uncond)

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        if self.mask_before_denoising and self.mask is not None:
            x = x * self.nmask + self.init_latent * self.mask

        batch_size = len(conds_list)
        repeats = [len(conds_list[i]) for i in range(batch_size)]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])

        denoiser_params = CFGDenoiserParams(x_in, None, sigma_in, state.sampling_step, state.sampling_steps,
                                            tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x_in, sigma_in = denoiser_params.x, denoiser_params.sigma
        tensor, uncond = denoiser_params.text_cond, denoiser_params.text_uncond

        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]

        cond_in = tensor if skip_uncond else torch.cat([tensor, uncond])
        x_out = self.inner_model(x_in, sigma_in, cond={"c_crossattn": [cond_in], "c_concat": [None]})

        denoised_image_indexes = [x[0][0] for x in conds_list]
        if skip_uncond:
            fake_uncond = torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])
            x_out = torch.cat([x_out, fake_uncond])

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)
        if not self.mask_before_denoising and self.mask is not None:
            denoised = denoised * self.nmask + self.init_latent * self.mask

        self.sampler.last_latent = self.get_pred_x0(torch.cat([x_in[i:i + 1] for i in denoised_image_indexes]),
                                                    torch.cat([x_out[i:i + 1] for i in denoised_image_indexes]),
                                                    sigma)
        sd_samplers_common.store_latent(self.get_pred_x0(x, denoised, sigma))

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1
        return denoised

    def _forward_forge(self, x, sigma, uncond, cond, cond_scale, s_min_uncond):
        if self.classic_ddim_eps_estimation:
            acd = self.alphas
            fake_sigmas = ((1 - acd) / acd) ** 0.5
            sigma = fake_sigmas[sigma.round().long().clip(0, int(fake_sigmas.shape[0]) - 1)]
            x = x * ((sigma ** 2.0 + 1.0) ** 0.5)[:, None, None, None]

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        if self.mask is not None:
            x = x * self.nmask + (self.init_latent + sigma[:, None, None, None] * torch.randn_like(x)) * self.mask

        denoiser_params = CFGDenoiserParams(x, None, sigma, state.sampling_step, state.sampling_steps, tensor,
                                            uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x, sigma = denoiser_params.x, denoiser_params.sigma
        if opts.skip_early_cond > 0 and self.step / self.total_steps <= opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond

        repeats = [len(c) for c in conds_list]
        x_in = torch.cat([x[i:i + 1].expand(n, *x.shape[1:]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([sigma[i:i + 1].expand(n) for i, n in enumerate(repeats)] + [sigma])
        x_out = self._denoised_ve(x_in, sigma_in, torch.cat([tensor, uncond]))
        denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale)
        if self.mask is not None:
            denoised = denoised * self.nmask + self.init_latent * self.mask

        self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(denoised)
        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x
        self.step += 1
        if self.classic_ddim_eps_estimation:
            return (x - denoised) / sigma[:, None, None, None]
        return denoised

    def _denoised_ve(self, x_in, sigma_in, cond_in):
        """x0 from a VE input (x = x0 + sigma * eps), as Forge's predictor computes it for every sampler."""
        if self._forge_wrap is None:
            from lib_safedenoise.bench import kdiffusion

            self._forge_wrap = kdiffusion.external().CompVisDenoiser(shared.sd_model)
        return self._forge_wrap(x_in, sigma_in, cond=cond_in)
