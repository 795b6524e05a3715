"""Follows modules/processing.py: ``process_images`` (before_process, override_settings applied with
``opts.set(..., is_api=True)`` and restored afterwards) and ``process_images_inner`` (seeds, scripts.process
before ``p.init``, per batch: before_process_batch, process_batch, setup_conds, sample, decode,
postprocess_batch, postprocess_batch_list (which may change the batch's list of images), one infotext per
image built with the *batch's* prompts and a batch-local index, then ``Processed`` and scripts.postprocess
once; an exception skips postprocess). Txt2img's hires fix runs a second sampler over the upscaled latent
with ``is_hr_pass`` set and ``before_hr`` called first.
Forge (dfdcbab6, same file) samples under ``torch.inference_mode()`` where A1111 uses ``torch.no_grad()``.
``StableDiffusionProcessing`` takes the real dataclass's field names (``sd_model``, ``styles``, ``subseed``,
``do_not_save_samples``, ...); ``setup_prompts`` applies ``styles`` through ``shared.prompt_styles``, and
``process_images_inner`` records the checkpoint's name and short hash on ``p`` first."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from modules import infotext_utils, prompt_parser, sd_samplers, shared
from modules.shared import opts, state

opt_C = 4
opt_f = 8


class ImageRNG:
    """modules/rng.py: each image's noise comes from its own seed, whatever the batch."""

    def __init__(self, shape, seeds):
        self.shape, self.seeds, self.calls = tuple(shape), list(seeds), 0

    def next(self):
        noises = [torch.randn(self.shape, generator=torch.Generator().manual_seed(int(seed) + 7919 * self.calls))
                  for seed in self.seeds]
        self.calls += 1
        return torch.stack(noises)


class StableDiffusionProcessing:
    def __init__(self, *, sd_model=None, prompt="", negative_prompt="", styles=None, seed=1, subseed=-1,
                 subseed_strength=0, steps=20, cfg_scale=7.0, sampler_name="Euler", scheduler=None, batch_size=1,
                 n_iter=1, width=64, height=64, do_not_save_samples=False, do_not_save_grid=False,
                 override_settings=None, override_settings_restore_afterwards=True, s_min_uncond=0.0, eta=None,
                 scripts=None, script_args=None):
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.styles = [] if styles is None else styles
        self.subseed, self.subseed_strength, self.scheduler = subseed, subseed_strength, scheduler
        self.do_not_save_samples, self.do_not_save_grid = do_not_save_samples, do_not_save_grid
        self.seed, self.steps, self.cfg_scale, self.sampler_name = seed, steps, cfg_scale, sampler_name
        self.batch_size, self.n_iter, self.width, self.height = batch_size, n_iter, width, height
        self.override_settings = dict(override_settings or {})
        self.override_settings_restore_afterwards = override_settings_restore_afterwards
        self.s_min_uncond = s_min_uncond
        self.eta = eta  # DDIM's eta; None: the "eta_ddim" setting
        self.scripts, self.script_args = scripts, list(script_args or [])
        self.extra_generation_params: dict = {}
        self.is_hr_pass = False
        self.iteration = 0
        self.batch_index = 0
        self.sd_model = shared.sd_model if sd_model is None else sd_model
        self.sd_model_name = self.sd_model_hash = None  # set by process_images_inner
        self.is_api = False  # the API sets it before script_args, so only non-UI script setup hooks run
        self.sampler = None
        self.denoising_strength = None
        self.latents: list[torch.Tensor] = []  # stub only: each batch's final latents, for bit-exact checks

    @property
    def latent_shape(self):
        return getattr(shared.sd_model, "latent_channels", opt_C), self.height // opt_f, self.width // opt_f

    def setup_prompts(self):
        count = self.batch_size * self.n_iter
        self.all_prompts = [self.prompt] * count
        self.all_negative_prompts = [self.negative_prompt] * count
        self.all_prompts = [shared.prompt_styles.apply_styles_to_prompt(x, self.styles) for x in self.all_prompts]
        self.all_negative_prompts = [shared.prompt_styles.apply_negative_styles_to_prompt(x, self.styles)
                                     for x in self.all_negative_prompts]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def setup_conds(self):
        self.c = prompt_parser.get_multicond_learned_conditioning(shared.sd_model, self.prompts)
        self.uc = prompt_parser.get_learned_conditioning(shared.sd_model, self.negative_prompts)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def close(self):
        self.sampler = None
        self.c = None
        self.uc = None


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    def __init__(self, *, enable_hr=False, hr_scale=2.0, hr_second_pass_steps=0, denoising_strength=0.7, **kwargs):
        super().__init__(**kwargs)
        self.enable_hr, self.hr_scale, self.hr_second_pass_steps = enable_hr, hr_scale, hr_second_pass_steps
        self.denoising_strength = denoising_strength if enable_hr else None

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            self.extra_generation_params["Hires upscale"] = self.hr_scale
            self.extra_generation_params["Denoising strength"] = self.denoising_strength
            if self.hr_second_pass_steps:
                self.extra_generation_params["Hires steps"] = self.hr_second_pass_steps

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        samples = self.sampler.sample(self, self.rng.next(), conditioning, unconditional_conditioning)
        if not self.enable_hr or state.interrupted:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        self.is_hr_pass = True
        size = (int(samples.shape[-2] * self.hr_scale), int(samples.shape[-1] * self.hr_scale))
        samples = F.interpolate(samples, size=size, mode="bilinear")
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        noise = ImageRNG(samples.shape[1:], self.seeds).next()
        if self.scripts is not None:
            self.scripts.before_hr(self)
        samples = self.sampler.sample_img2img(self, samples, noise, self.c, self.uc,
                                              steps=self.hr_second_pass_steps or self.steps)
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, *, init_latents=None, denoising_strength=0.75, mask=None, **kwargs):
        super().__init__(**kwargs)
        self.init_latents = init_latents  # stub: the encoded init images, one per image of a batch
        self.denoising_strength = denoising_strength
        self.image_mask = mask

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.init_latent = self.init_latents
        if self.image_mask is not None:
            self.mask = self.image_mask.expand_as(self.init_latent)
            self.nmask = 1 - self.mask

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        return self.sampler.sample_img2img(self, self.init_latent, self.rng.next(), conditioning,
                                           unconditional_conditioning)


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", infotexts=None):
        self.images = images_list
        self.info = info
        self.infotexts = infotexts or [info] * len(images_list)
        self.extra_generation_params = p.extra_generation_params
        self.all_prompts = p.all_prompts
        self.all_seeds = p.all_seeds
        self.all_subseeds = p.all_seeds
        self.batch_size = p.batch_size
        self.seed = seed

    def js(self):
        obj = {"seed": self.seed, "all_seeds": self.all_seeds, "extra_generation_params": self.extra_generation_params,
               "infotexts": self.infotexts}
        return json.dumps(obj, default=lambda o: None)

    def infotext(self, p, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        **p.extra_generation_params,
    }
    for key, value in generation_params.items():
        try:
            if isinstance(value, list):
                generation_params[key] = value[index]
            elif callable(value):
                generation_params[key] = value(**locals())
        except Exception:
            from modules import errors

            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            generation_params[key] = None
    generation_params_text = ", ".join([k if k == v else f"{k}: {infotext_utils.quote(v)}"
                                        for k, v in generation_params.items() if v is not None])
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{generation_params_text}".strip()


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    stored_opts = {k: opts.data[k] if k in opts.data else opts.get_default(k)
                   for k in p.override_settings.keys() if k in opts.data}
    try:
        for k, v in p.override_settings.items():
            opts.set(k, v, is_api=True, run_callbacks=False)
        if shared.forge:  # Forge's manage_model_and_prompt_cache: the checkpoint loads on the first generation
            from modules import sd_models

            p.sd_model, _ = sd_models.forge_model_reload()
        res = process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for k, v in stored_opts.items():
                setattr(opts, k, v)
    return res


def process_images_inner(p):
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.setup_prompts()
    p.all_seeds = [int(p.seed) + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts, output_images = [], []
    with torch.inference_mode() if shared.forge else torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_seeds)
        if state.job_count == -1:
            state.job_count = p.n_iter
        for n in range(p.n_iter):
            p.iteration = n
            if state.interrupted or state.stopping_generation:
                break
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.seeds
            p.rng = ImageRNG(p.latent_shape, p.seeds)
            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds,
                               subseeds=p.subseeds, subseed_strength=0, prompts=p.prompts)
            p.latents.append(samples.detach().clone())
            x_samples = torch.clamp((p.sd_model.decode_first_stage(samples) + 1.0) / 2.0, min=0.0, max=1.0)
            if p.scripts is not None:
                from modules import scripts

                p.scripts.postprocess_batch(p, x_samples, batch_number=n)
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples = batch_params.images

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt,
                                       index=index, all_negative_prompts=p.negative_prompts)

            for i, image in enumerate(x_samples):
                p.batch_index = i
                infotexts.append(infotext(i))
                output_images.append(image)
        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))

    res = Processed(p, output_images, seed=p.all_seeds[0], info=infotexts[0], infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
