from __future__ import annotations

import torch

from modules import devices, shared


def randn(seed, shape, generator=None):
    """Sets the global torch seed to `seed`, then draws (from `generator` when given)."""
    manual_seed(seed)
    if shared.opts.randn_source == "CPU" or devices.device.type == 'mps':
        return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)
    return torch.randn(shape, device=devices.device, generator=generator)


def randn_without_seed(shape, generator=None):
    if shared.opts.randn_source == "CPU" or devices.device.type == 'mps':
        return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)
    return torch.randn(shape, device=devices.device, generator=generator)


def manual_seed(seed):
    torch.manual_seed(seed)


def create_generator(seed):
    device = devices.cpu if shared.opts.randn_source == "CPU" or devices.device.type == 'mps' else devices.device
    return torch.Generator(device).manual_seed(int(seed))


class ImageRNG:
    """One generator per image of the batch, seeded with the image's seed: `next()` gives (B, *shape), the
    first call the initial noise, later calls more noise from the same generators. (The stand-in leaves out
    variation seeds, seed resizing and the NV source.)"""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        assert not subseed_strength and seed_resize_from_h <= 0 and seed_resize_from_w <= 0, "not in the stand-in"
        self.shape = tuple(map(int, shape))
        self.seeds = seeds
        self.generators = [create_generator(seed) for seed in seeds]
        self.is_first = True

    def first(self):
        xs = [randn(seed, self.shape, generator=generator) for seed, generator in zip(self.seeds, self.generators)]
        eta_noise_seed_delta = shared.opts.eta_noise_seed_delta or 0
        if eta_noise_seed_delta:
            self.generators = [create_generator(seed + eta_noise_seed_delta) for seed in self.seeds]
        return torch.stack(xs).to(shared.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([randn_without_seed(self.shape, generator=g) for g in self.generators]).to(shared.device)
