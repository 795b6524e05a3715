"""Follows modules/sd_samplers.py ``create_sampler``: the sampler's ``config`` is its ``SamplerData``."""

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion, *sd_samplers_timesteps.samplers_data_timesteps]
all_samplers_map = {x.name: x for x in all_samplers}


def create_sampler(name, model):
    config = all_samplers_map[name]
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
