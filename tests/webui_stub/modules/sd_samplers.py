"""The sampler registry: every sampler by name, the visible ones, and a sampler for a model."""
from __future__ import annotations

from modules import sd_samplers_kdiffusion, sd_samplers_timesteps, shared

all_samplers = sd_samplers_kdiffusion.samplers_data_k_diffusion + sd_samplers_timesteps.samplers_data_timesteps
all_samplers_map = {data.name: data for data in all_samplers}


def find_sampler_config(name):
    return all_samplers[0] if name is None else all_samplers_map.get(name)


def create_sampler(name, model):
    config = find_sampler_config(name)
    if config is None:
        raise ValueError(f"bad sampler name: {name}")
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def visible_sampler_names():
    hidden = set(shared.opts.hide_samplers)
    return [data.name for data in all_samplers if data.name not in hidden]
