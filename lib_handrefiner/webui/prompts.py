"""The hands' prompts through the WebUI's own prompt machinery, for HandRefiner's DDIM pass.

The WebUI's `modules.prompt_parser` and `modules.extra_networks` are handed in (nothing here imports the WebUI);
the prompt's vectors come from the loaded model's conditioning (`ldm.get_learned_conditioning`, the WebUI's
hijacked text encoder: emphasis, textual-inversion embeddings, prompts of any length in 75-token chunks, Clip
skip). What is done as the WebUI does, and why:

- Each prompt is encoded on its own, as the WebUI encodes a job's prompt and its negative. With the "Original"
  emphasis the WebUI rescales the vectors to the mean of their batch, so a prompt encoded in one batch with its
  negative would give `(word:1.3)` another weight than the WebUI's own image had.
- Prompt editing `[from:to:when]` and alternation `[a|b]` are resolved as the WebUI's CFG denoiser resolves them at
  the last step of a pass of HandRefiner's `steps`: the hand pass is a new sampling pass over the finished image,
  whose content is what the prompt says at the end (`[dog:cat:0.5]` → cat); switching prompts within the short
  hand pass would push the hand towards content the image no longer has. Integer steps in `when` count the hand
  pass's steps.
- `AND` joins prompts (composable diffusion): each part keeps its `:weight` and the sampler sums their guidance,
  as the WebUI's combine_denoised does.
- A prompt and negative of different lengths (over 75 tokens: several 77-token chunks) are padded to one length
  with the empty prompt's vectors, as the WebUI's CFG denoiser pads when it batches them (pad_cond).
- Extra-network tags (`<lora:name:0.8>`) are taken out, as the WebUI takes them out before encoding; the networks
  themselves stay active for the whole job, so the hand pass runs with them.
"""
from __future__ import annotations

from typing import Any, Callable, List, Tuple

import torch

from lib_handrefiner.sampler import PromptConditioning

PromptEncoder = Callable[[str, str], PromptConditioning]   # (prompt, negative prompt) -> conditioning


class WebUIPromptEncoder:
    """(prompt, negative) → PromptConditioning through the WebUI model `ldm`'s conditioning."""

    def __init__(self, ldm: Any, prompt_parser: Any, extra_networks: Any, steps: int,
                 use_old_scheduling: bool = False) -> None:
        self.ldm, self.parser, self.extra_networks = ldm, prompt_parser, extra_networks
        self.steps, self.use_old_scheduling = int(steps), bool(use_old_scheduling)

    @property
    def last_step(self) -> int:
        return self.steps - 1   # the CFG denoiser's step counter on its last call

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str) -> PromptConditioning:
        parser = self.parser
        positive = parser.SdConditioning([strip_extra_networks(self.extra_networks, prompt)])
        negative = parser.SdConditioning([strip_extra_networks(self.extra_networks, negative_prompt)],
                                         is_negative_prompt=True)
        c = parser.get_multicond_learned_conditioning(self.ldm, positive, self.steps, None, self.use_old_scheduling)
        conds_list, cond = parser.reconstruct_multicond_batch(c, self.last_step)
        uc = parser.get_learned_conditioning(self.ldm, negative, self.steps, None, self.use_old_scheduling)
        uncond = parser.reconstruct_cond_batch(uc, self.last_step)
        if isinstance(cond, dict) or isinstance(uncond, dict):
            raise TypeError("the loaded model's conditioning is SDXL's (a dict); it cannot drive an SD 1.x UNet")
        cond, uncond = pad_to_same_length(cond, uncond, empty_prompt(self.ldm))
        return PromptConditioning(cond, uncond, tuple(float(w) for _, w in conds_list[0]))


class OwnPromptEncoder:
    """For a loaded model that cannot encode for an SD 1.x UNet (SDXL): the chosen SD 1.x checkpoint's own CLIP
    (`sd.encode_text`, 77 tokens). Prompt editing, alternation, AND and extra-network tags are resolved with the
    WebUI's parser as WebUIPromptEncoder does; emphasis brackets are removed and their words kept (no weights);
    embeddings are not applied (those of an SDXL model do not fit SD 1.x's CLIP)."""

    def __init__(self, sd: Any, prompt_parser: Any, extra_networks: Any, steps: int,
                 use_old_scheduling: bool = False) -> None:
        self.sd, self.parser, self.extra_networks = sd, prompt_parser, extra_networks
        self.steps, self.use_old_scheduling = int(steps), bool(use_old_scheduling)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str) -> PromptConditioning:
        parts, weights = self.parts(prompt)
        negative = self._at_last_step(strip_extra_networks(self.extra_networks, negative_prompt))
        return PromptConditioning(self.sd.encode_text(parts), self.sd.encode_text([negative]), weights)

    def parts(self, prompt: str) -> Tuple[List[str], Tuple[float, ...]]:
        """The texts the CLIP sees for `prompt`, one per AND part, and their weights."""
        indexes, flat, _ = self.parser.get_multicond_prompt_list([strip_extra_networks(self.extra_networks, prompt)])
        texts = [self._at_last_step(flat[i]) for i, _ in indexes[0]]
        return texts, tuple(float(w) for _, w in indexes[0])

    def _at_last_step(self, text: str) -> str:
        schedule = self.parser.get_learned_conditioning_prompt_schedules([text], self.steps, None,
                                                                         self.use_old_scheduling)[0]
        resolved = next((t for end, t in schedule if self.steps - 1 <= end), schedule[-1][1])
        return "".join(piece if weight != -1 else " " for piece, weight in self.parser.parse_prompt_attention(resolved))


class WithPromptEncoder:
    """An SDModel whose prompts go through `encoder` (the sampler calls `encode_prompts`); everything else is
    `sd`'s."""

    def __init__(self, sd: Any, encoder: PromptEncoder) -> None:
        self.sd = sd
        self.encode_prompts = encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sd, name)


def strip_extra_networks(extra_networks: Any, prompt: str) -> str:
    return extra_networks.parse_prompt(prompt)[0] if extra_networks is not None else prompt


def empty_prompt(ldm: Any) -> torch.Tensor:
    """The empty prompt's vectors (1, 77, C), which the WebUI keeps as `cond_stage_model_empty_prompt`."""
    empty = getattr(ldm, "cond_stage_model_empty_prompt", None)
    return empty if empty is not None else ldm.get_learned_conditioning([""])


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor, empty: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The shorter of (N, T, C) `cond` and (1, T', C) `uncond` gets whole empty-prompt chunks appended."""
    chunks = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
    empty = empty.to(cond.device, cond.dtype)
    if chunks > 0:
        uncond = torch.cat([uncond, empty.repeat(uncond.shape[0], chunks, 1)], dim=1)
    elif chunks < 0:
        cond = torch.cat([cond, empty.repeat(cond.shape[0], -chunks, 1)], dim=1)
    return cond, uncond
