"""The tiny test checkpoint in the shape of the WebUI's `shared.sd_model` (an ldm LatentDiffusion), as far as
HandRefiner uses it: `model.diffusion_model` (the UNet), `apply_model(x, t, cond)` with ldm's cond dict,
`get_learned_conditioning` through `cond_stage_model` as the WebUI's hijack makes it (emphasis, textual-inversion
embeddings, 75-token chunks; `cond_stage_model_empty_prompt`), `encode_first_stage` (a
DiagonalGaussianDistribution), `get_first_stage_encoding`, `decode_first_stage`, `alphas_cumprod`, `scale_factor`,
and the attributes the WebUI's samplers and processing read (`cond_stage_key`, `parameterization`,
`is_sdxl_inpaint`, `dtype`, `first_stage_model.dtype`). The networks are lib_handrefiner.sd_model's real ldm ones;
the VAE decodes to NaNs in float16 (the SD 1.x VAE's half-precision overflow, always here). `TinySDXL` is an
SDXL-shaped model HandRefiner's SD 1.x pass cannot use.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from modules import prompt_parser, shared
from torch import nn


class _DiffusionWrapper(nn.Module):
    def __init__(self, unet: nn.Module, conditioning_key: str) -> None:
        super().__init__()
        self.diffusion_model, self.conditioning_key = unet, conditioning_key

    def forward(self, x, t, c_concat: list = None, c_crossattn: list = None):
        context = torch.cat(c_crossattn, 1)
        if self.conditioning_key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=context)
        return self.diffusion_model(x, t, context=context)


class _FirstStage(nn.Module):
    def __init__(self, sd) -> None:
        super().__init__()
        self.encoder, self.decoder = sd.encoder, sd.decoder
        self.quant_conv, self.post_quant_conv = sd.quant_conv, sd.post_quant_conv

    def encode(self, x):
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z):
        if self.post_quant_conv.weight.dtype == torch.float16:
            # The SD 1.x VAE overflows in half precision on some pictures (NaNs: a black image unless the WebUI
            # upcasts and decodes again); this stand-in always does.
            return torch.full((z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8), float("nan"), dtype=torch.float16)
        return self.decoder(self.post_quant_conv(z))

    @property
    def dtype(self):
        return next(self.parameters()).dtype


class _PromptChunk:
    def __init__(self):
        self.tokens: List[int] = []
        self.multipliers: List[float] = []
        self.fixes: List[tuple] = []      # (offset in the chunk's tokens, embedding vectors)


class _CustomWordsTextEncoder(nn.Module):
    """The WebUI's hijacked SD 1.x text encoder (sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords), as documented:
    a prompt's (word:1.3) weights (opts.emphasis "Original": the vectors multiplied, then rescaled to the mean the
    chunk batch had before; "None": the brackets are text), textual-inversion embeddings named in the prompt
    (their vectors in place of the name's tokens), and 75-token chunks each encoded as 77 tokens (start, 75,
    end) and concatenated; the prompts of one batch are padded to the same number of chunks with empty ones."""

    chunk_length = 75

    def __init__(self, tokenizer, transformer, embeddings: Dict[str, torch.Tensor]):
        super().__init__()
        self.tokenizer, self.transformer, self.embeddings = tokenizer, transformer, embeddings
        self.id_start, self.id_end = tokenizer.bos_token_id, tokenizer.eos_token_id

    def _embedding_at(self, tokens, position):
        for name, vectors in sorted(self.embeddings.items(), key=lambda item: -len(item[0])):
            ids = self.tokenizer(name, add_special_tokens=False)["input_ids"]
            if tokens[position:position + len(ids)] == ids:
                return vectors, len(ids)
        return None, 0

    def empty_chunk(self):
        return self._padded(_PromptChunk())

    def _padded(self, chunk):
        """start, the chunk's tokens, end tokens up to 77 (weight 1 for the added ones)."""
        fill = self.chunk_length + 1 - len(chunk.tokens)
        chunk.tokens = [self.id_start, *chunk.tokens, *[self.id_end] * fill]
        chunk.multipliers = [1.0, *chunk.multipliers, *[1.0] * fill]
        return chunk

    def _pieces(self, line):
        """The line as (token ids, weight, embedding vectors or None) pieces; None for a BREAK."""
        emphasis = shared.opts.emphasis != "None"
        for text, weight in prompt_parser.parse_prompt_attention(line) if emphasis else [[line, 1.0]]:
            if weight == -1:
                yield None
                continue
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            at = 0
            while at < len(ids):
                vectors, length = self._embedding_at(ids, at)
                if vectors is None:
                    yield [ids[at]], weight, None
                else:
                    yield [0] * len(vectors), weight, vectors
                at += length or 1

    def tokenize_line(self, line):
        """Pieces filled into chunks of at most 75 tokens (an embedding is not split; BREAK starts a new chunk)."""
        chunks = [_PromptChunk()]
        for piece in self._pieces(line):
            if piece is None or len(chunks[-1].tokens) + len(piece[0]) > self.chunk_length:
                chunks.append(_PromptChunk())
            if piece is None:
                continue
            ids, weight, vectors = piece
            if vectors is not None:
                chunks[-1].fixes.append((len(chunks[-1].tokens), vectors))
            chunks[-1].tokens += ids
            chunks[-1].multipliers += [weight] * len(ids)
        if len(chunks) > 1 and not chunks[-1].tokens:
            chunks.pop()
        return [self._padded(chunk) for chunk in chunks]

    def forward(self, texts):
        lines = [self.tokenize_line(text) for text in texts]
        width = max(map(len, lines))
        return torch.cat([self._encode_chunks([chunks[i] if i < len(chunks) else self.empty_chunk()
                                               for chunks in lines]) for i in range(width)], dim=1)

    def _encode_chunks(self, batch):
        layer = self.transformer.text_model.embeddings.token_embedding

        def with_fixes(ids):   # the embeddings' vectors in place of their placeholder tokens
            out = nn.Embedding.forward(layer, ids).clone()
            for row, chunk in enumerate(batch):
                for offset, vectors in chunk.fixes:
                    out[row, 1 + offset:1 + offset + len(vectors)] = vectors.to(out.dtype)
            return out

        layer.forward = with_fixes
        try:
            tokens = torch.tensor([c.tokens for c in batch], device=layer.weight.device)
            z = self.transformer(input_ids=tokens).last_hidden_state
        finally:
            del layer.forward
        if shared.opts.emphasis == "Original":
            multipliers = torch.tensor([c.multipliers for c in batch], device=z.device, dtype=z.dtype)
            mean = z.mean()
            z = z * multipliers[..., None]
            z = z * (mean / z.mean())
        return z


class TinyLatentDiffusion(nn.Module):
    """Wraps a lib_handrefiner.sd_model.LdmSDModel (loaded from the tiny checkpoint)."""

    def __init__(self, sd) -> None:
        super().__init__()
        self.model = _DiffusionWrapper(sd.unet, "hybrid" if sd.in_channels == 9 else "crossattn")
        self.first_stage_model = _FirstStage(sd)
        self.embeddings: Dict[str, torch.Tensor] = {}   # the textual-inversion embeddings the WebUI has loaded
        self.cond_stage_model = _CustomWordsTextEncoder(sd.tokenizer, sd.text_model, self.embeddings)
        self.scale_factor = sd.scale_factor
        self.register_buffer("alphas_cumprod", sd.alphas_cumprod.to(torch.float32))
        self.is_sdxl = self.is_sd2 = self.is_sd3 = False
        self.is_sd1 = True
        self.is_sdxl_inpaint = False
        self.cond_stage_key = "txt"
        self.parameterization = "eps"
        self.conditioning_calls = []   # the batches of prompts encoded
        with torch.no_grad():
            self.cond_stage_model_empty_prompt = self.get_learned_conditioning([""])
        self.conditioning_calls.clear()

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    def get_learned_conditioning(self, c):
        self.conditioning_calls.append(list(c))
        return self.cond_stage_model(list(c))

    def apply_model(self, x_noisy, t, cond, return_ids=False):
        as_dict = cond if isinstance(cond, dict) else {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **as_dict)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        """A draw of the posterior (torch's global generator), scaled."""
        sample = getattr(encoder_posterior, "sample", None)
        return self.scale_factor * (sample() if sample is not None else encoder_posterior)

    @torch.no_grad()
    def decode_first_stage(self, z):
        return self.first_stage_model.decode(1.0 / self.scale_factor * z)


class TinySDXL(nn.Module):
    """An SDXL model as far as HandRefiner looks at it: `is_sdxl`, a conditioner giving SDXL's dict (crossattn
    2048 wide, vector 2816), a 4-channel UNet of another architecture. Running any of it in HandRefiner's SD 1.x
    pass is an error, and a test fails on it."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = nn.Module()
        self.model.diffusion_model.in_channels = 4
        self.first_stage_model = nn.Conv2d(4, 3, 1)
        self.is_sdxl, self.is_sd1, self.is_sd2, self.is_sd3 = True, False, False, False
        self.used = []

    def get_learned_conditioning(self, batch):
        self.used.append("conditioning")
        return {"crossattn": torch.zeros(len(batch), 77, 2048), "vector": torch.zeros(len(batch), 2816)}

    def apply_model(self, *args, **kwargs):
        self.used.append("unet")
        raise RuntimeError("the SDXL UNet ran in HandRefiner's SD 1.x pass")
