"""What the thin glue hands in (`WebUIEnv`: the WebUI's objects), one generated image's job and its outcome,
the keys the WebUI sees (the script's title, the infotext entries) and the error a refinement that cannot run raises."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import torch

from lib_handrefiner.webui.backend import backend_for
from lib_handrefiner.webui.folders import ModelFolders

SCRIPT_TITLE = "HandRefiner"                  # the script's title: the `alwayson_scripts` key
RESULT_KEY = "HandRefiner result"             # infotext entry with what happened to the image
MODEL_USED_KEY = "HandRefiner model used"     # infotext entry: the inpainting checkpoint HandRefiner chose itself


class HandRefinerFailure(RuntimeError):
    """A refinement that could not run (bad model choice, missing file); the message says what to do."""


@dataclass
class WebUIEnv:
    sd_model: Callable[[], Any]               # -> shared.sd_model (read at use: it changes when the user switches)
    device: Any                               # modules.devices.device
    dtype: torch.dtype                        # modules.devices.dtype_unet
    autocast: Callable[[], ContextManager]    # the WebUI's sampling precision context
    torch_gc: Callable[[], None]
    folders: ModelFolders
    state: Any = None                         # shared.state (None: the API, no progress bar)
    total_tqdm: Any = None
    keep_models_on_device: bool = False       # False: HandRefiner's own models go back to the CPU after each image
    offload_to_cpu: bool = False              # --lowvram / --medvram
    devices: Any = None                       # modules.devices (dtype_vae, without_autocast)
    opts: Any = None                          # shared.opts
    sampling: Any = None                      # sampling.WebUIModules: the WebUI's own samplers (None: none)
    prompt_parser: Any = None                 # modules.prompt_parser
    extra_networks: Any = None                # modules.extra_networks (parse_prompt)
    backend: Callable[[Any], Any] = backend_for   # loaded model -> its backend adapter (backend.py)


@dataclass
class ImageJob:
    """One generated image of a WebUI job."""
    image: Any                                # PIL image
    prompt: str
    negative_prompt: str
    seed: int
    p: Any = None                             # the job's StableDiffusionProcessing


@dataclass
class ImageOutcome:
    image: Any                                # the refined image, or the input when nothing was done
    message: str
    refined: bool
    infotext: Dict[str, Any] = field(default_factory=dict)
    previews: List[Tuple[str, Any]] = field(default_factory=list)   # (suffix, PIL image)


def job_for_image(p: Any, image: Any) -> ImageJob:
    """The prompt, negative prompt and seed of the image `p.batch_index` of the current batch."""
    i = int(getattr(p, "batch_index", 0) or 0)
    seeds = getattr(p, "seeds", None) or []
    if i < len(seeds):
        seed = seeds[i]
    else:
        index = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + i
        all_seeds = getattr(p, "all_seeds", None) or [getattr(p, "seed", -1)]
        seed = all_seeds[min(index, len(all_seeds) - 1)]
    return ImageJob(image=image, prompt=_pick(getattr(p, "prompts", None), i, getattr(p, "prompt", "")),
                    negative_prompt=_pick(getattr(p, "negative_prompts", None), i, getattr(p, "negative_prompt", "")),
                    seed=int(seed), p=p)


def _pick(items: Optional[Sequence[str]], i: int, fallback: Any) -> str:
    if items:
        return str(items[min(i, len(items) - 1)])
    return fallback if isinstance(fallback, str) else (fallback[0] if fallback else "")
