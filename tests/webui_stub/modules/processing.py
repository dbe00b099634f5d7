from __future__ import annotations

from typing import Any, Dict, List, Optional


class StableDiffusionProcessing:
    """The fields HandRefiner reads or writes, with the WebUI's names."""

    def __init__(self, prompt: str = "", negative_prompt: str = "", seed: int = -1, batch_size: int = 1,
                 n_iter: int = 1, outpath_samples: Optional[str] = None, do_not_save_samples: bool = False,
                 extra_generation_params: Optional[Dict[str, Any]] = None):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.seed = seed
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.outpath_samples = outpath_samples
        self.do_not_save_samples = do_not_save_samples
        self.extra_generation_params = dict(extra_generation_params or {})
        self.comments: Dict[str, int] = {}
        self.scripts = None
        self.script_args: List[Any] = []
        self.all_prompts: List[str] = []
        self.all_negative_prompts: List[str] = []
        self.all_seeds: List[int] = []
        self.prompts: List[str] = []
        self.negative_prompts: List[str] = []
        self.seeds: List[int] = []
        self.iteration = 0
        self.batch_index = 0

    def comment(self, text):
        self.comments[text] = 1

    def save_samples(self) -> bool:
        return self.outpath_samples is not None and not self.do_not_save_samples


class Processed:
    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None,
                 all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None,
                 comments=""):
        self.images = images_list
        self.seed = seed
        self.info = info
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.infotexts = infotexts or [info] * len(images_list)
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
