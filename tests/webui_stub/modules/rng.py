"""Seeded noise: one generator per image of the batch."""
from __future__ import annotations

import torch

from modules import devices, shared


class ImageRNG:
    """`next()` is (B, *shape): the first call each image's seed's initial noise (and torch's global seed set to
    the image's, as the WebUI leaves it), later calls the next draws of the same generators (re-seeded with
    seed + "Eta noise seed delta" when that option is set). Variation seeds, seed resizing and the NV source are
    not in the stand-in."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        if subseed_strength or seed_resize_from_h > 0 or seed_resize_from_w > 0:
            raise NotImplementedError("variation seeds and seed resizing are not in the stand-in")
        self.shape = tuple(int(n) for n in shape)
        self.seeds = list(seeds)
        self.is_first = True
        self.generators = self._generators(0)

    def _generators(self, delta):
        on_cpu = shared.opts.randn_source == "CPU" or devices.device.type == "mps"
        self._device = devices.cpu if on_cpu else devices.device
        return [torch.Generator(self._device).manual_seed(int(seed) + delta) for seed in self.seeds]

    def next(self):
        draws = []
        for seed, generator in zip(self.seeds, self.generators):
            if self.is_first:
                torch.manual_seed(seed)
            draws.append(torch.randn(self.shape, generator=generator, device=self._device).to(devices.device))
        if self.is_first and shared.opts.eta_noise_seed_delta:
            self.generators = self._generators(shared.opts.eta_noise_seed_delta)
        self.is_first = False
        return torch.stack(draws).to(shared.device)
