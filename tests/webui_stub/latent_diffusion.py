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
from torch import nn

from modules import prompt_parser, shared


class DiffusionWrapper(nn.Module):
    def __init__(self, unet: nn.Module, conditioning_key: str) -> None:
        super().__init__()
        self.diffusion_model = unet
        self.conditioning_key = conditioning_key

    def forward(self, x, t, c_concat: list = None, c_crossattn: list = None):
        context = torch.cat(c_crossattn, 1)
        if self.conditioning_key == "hybrid":
            return self.diffusion_model(torch.cat([x] + c_concat, dim=1), t, context=context)
        return self.diffusion_model(x, t, context=context)


class FirstStage(nn.Module):
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


class PromptChunk:
    def __init__(self):
        self.tokens: List[int] = []
        self.multipliers: List[float] = []
        self.fixes: List[tuple] = []      # (offset in the chunk's tokens, embedding vectors)


class CustomWordsTextEncoder(nn.Module):
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
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def tokenize_line(self, line):
        if shared.opts.emphasis != "None":
            parsed = prompt_parser.parse_prompt_attention(line)
        else:
            parsed = [[line, 1.0]]
        chunks, chunk = [], PromptChunk()

        def close():
            nonlocal chunk
            pad = self.chunk_length - len(chunk.tokens)
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end] * (pad + 1)
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * (pad + 1)
            chunks.append(chunk)
            chunk = PromptChunk()

        for text, weight in parsed:
            if weight == -1:   # BREAK
                close()
                continue
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            position = 0
            while position < len(tokens):
                if len(chunk.tokens) == self.chunk_length:
                    close()
                vectors, length = self._embedding_at(tokens, position)
                if vectors is None:
                    chunk.tokens.append(tokens[position])
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                if len(chunk.tokens) + len(vectors) > self.chunk_length:
                    close()
                chunk.fixes.append((len(chunk.tokens), vectors))
                chunk.tokens += [0] * len(vectors)
                chunk.multipliers += [weight] * len(vectors)
                position += length
        if chunk.tokens or not chunks:
            close()
        return chunks

    def forward(self, texts):
        lines = [self.tokenize_line(text) for text in texts]
        count = max(len(chunks) for chunks in lines)
        zs = []
        for i in range(count):
            batch = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in lines]
            zs.append(self._encode_chunks(batch))
        return torch.hstack(zs)

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
        self.model = DiffusionWrapper(sd.unet, "hybrid" if sd.in_channels == 9 else "crossattn")
        self.first_stage_model = FirstStage(sd)
        self.embeddings: Dict[str, torch.Tensor] = {}   # the textual-inversion embeddings the WebUI has loaded
        self.cond_stage_model = CustomWordsTextEncoder(sd.tokenizer, sd.text_model, self.embeddings)
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
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        return self.model(x_noisy, t, **cond)

    @torch.no_grad()
    def encode_first_stage(self, x):
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior):
        if isinstance(encoder_posterior, DiagonalGaussianDistribution):
            z = encoder_posterior.sample()
        else:
            z = encoder_posterior
        return self.scale_factor * z

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
