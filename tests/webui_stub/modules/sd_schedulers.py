"""Schedule types (a subset of the WebUI's): Automatic leaves the choice to the sampler."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import k_diffusion.sampling


@dataclass
class _Scheduler:
    name: str
    label: str
    function: Optional[Callable]
    need_inner_model: bool = False


def _uniform(n, sigma_min, sigma_max, inner_model, device):
    return inner_model.get_sigmas(n).to(device)


schedulers = [_Scheduler("automatic", "Automatic", None),
              _Scheduler("uniform", "Uniform", _uniform, need_inner_model=True),
              _Scheduler("karras", "Karras", k_diffusion.sampling.get_sigmas_karras),
              _Scheduler("exponential", "Exponential", k_diffusion.sampling.get_sigmas_exponential)]
schedulers_map = {key: s for s in schedulers for key in (s.name, s.label)}
