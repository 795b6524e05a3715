"""Follows modules/sd_samplers_common.py: ``SamplerData.total_steps`` doubles for second-order samplers,
``setup_img2img_steps``, ``Sampler.callback_state`` (sets ``state.sampling_step`` after each step's model
call), ``launch_sampling`` (sets ``denoiser.steps``/``total_steps``, swallows ``InterruptedException``) and
``initialize`` (resets ``denoiser.step``), and ``images_tensor_to_samples`` (the full VAE's encoding; the
TAESD approximation is not stubbed)."""

from __future__ import annotations

from collections import namedtuple

import torch

from modules import shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def images_tensor_to_samples(image, approximation=None, model=None):
    """image[0, 1] -> latent, one image at a time as the WebUI does."""
    from modules import devices

    if approximation not in (None, 0):
        raise NotImplementedError("the host stub encodes with the full VAE only")
    if model is None:
        model = shared.sd_model
    image = image.to(devices.device, dtype=devices.dtype_vae)
    image = image * 2 - 1
    if len(image) > 1:
        return torch.stack([model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0]
                            for img in image])
    return model.get_first_stage_encoding(model.encode_first_stage(image))


class InterruptedException(BaseException):
    pass


def store_latent(decoded):
    """The live preview: what the user sees while sampling (taken before on_cfg_after_cfg)."""
    if opts.live_previews_enable and opts.show_progress_every_n_steps > 0 \
            and state.sampling_step % opts.show_progress_every_n_steps == 0:
        state.previews.append(decoded.detach().clone())


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.config: SamplerData = None
        self.last_latent = None
        self.s_min_uncond = None
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.stop_at = None

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def start(self, p, x, steps, conditioning, unconditional_conditioning, run, *, init_latent=None):
        """What every ``sample``/``sample_img2img`` of the real samplers does around its sampler call: bind
        ``p``, keep the latent to return on interruption (img2img: the init latent), build the CFG
        denoiser's extra args, then ``launch_sampling`` of ``run(x)``."""
        self.initialize(p)
        if init_latent is not None:
            self.model_wrap_cfg.init_latent = init_latent
        self.last_latent = x if init_latent is None else init_latent
        self.sampler_extra_args = {"cond": conditioning, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}
        return self.launch_sampling(steps, lambda: run(x))

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        return {}
