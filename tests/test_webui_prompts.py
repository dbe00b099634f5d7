"""The hands' prompts through the WebUI's prompt machinery (lib_handrefiner.webui.prompts), against the stand-in's
modules.prompt_parser / extra_networks and its WebUI-style text encoder (emphasis, embeddings, 75-token chunks)."""
from __future__ import annotations

import pytest
import torch
from conftest import webui_stand_in

from lib_handrefiner.webui.prompts import OwnPromptEncoder, WebUIPromptEncoder, pad_to_same_length

LONG = " ".join(["a hand with five fingers"] * 20)   # 100 tokens: two 77-token chunks


@pytest.fixture(scope="module")
def webui(tiny_sd):
    """(modules.prompt_parser, modules.extra_networks, a WebUI-shaped model over the tiny checkpoint)."""
    with webui_stand_in():
        from latent_diffusion import TinyLatentDiffusion
        from modules import extra_networks, prompt_parser

        yield prompt_parser, extra_networks, TinyLatentDiffusion(tiny_sd)


@pytest.fixture()
def encode(webui):
    parser, networks, ldm = webui
    ldm.conditioning_calls.clear()
    ldm.embeddings.clear()
    return lambda prompt, negative, steps=30: WebUIPromptEncoder(ldm, parser, networks, steps)(prompt, negative)


def test_prompt_and_negative_are_encoded_alone_as_the_webui_does(webui, encode):
    """With the "Original" emphasis the vectors are rescaled to their batch's mean: a prompt encoded together with
    its negative would weight (hand:1.3) otherwise than the WebUI's own encoding of it."""
    _, _, ldm = webui
    prompt, negative = "a photo of a (hand:1.3), palm", "fake 3D rendered image, blurry"
    conditioning = encode(prompt, negative)
    assert ldm.conditioning_calls == [[prompt], [negative]]
    alone = ldm.get_learned_conditioning([prompt])
    assert torch.equal(conditioning.cond, alone) and conditioning.weights == (1.0,)
    assert torch.equal(conditioning.uncond, ldm.get_learned_conditioning([negative]))
    together = ldm.get_learned_conditioning([prompt, negative])[:1]
    assert not torch.allclose(together, alone, atol=1e-6)   # what encoding them in one batch got wrong


def test_long_prompts_are_padded_with_empty_chunks_like_the_webuis_cfg_denoiser(webui, encode):
    _, _, ldm = webui
    empty = ldm.cond_stage_model_empty_prompt
    long_prompt = encode(LONG, "blurry")
    assert long_prompt.cond.shape[1] == 154 and long_prompt.uncond.shape[1] == 154
    assert torch.equal(long_prompt.uncond[:, :77], ldm.get_learned_conditioning(["blurry"]))
    assert torch.equal(long_prompt.uncond[:, 77:], empty)
    long_negative = encode("a hand", LONG)
    assert long_negative.cond.shape[1] == long_negative.uncond.shape[1] == 154
    assert torch.equal(long_negative.cond[:, 77:], empty)
    cond, uncond = pad_to_same_length(torch.zeros(2, 77, 3), torch.ones(1, 231, 3), torch.full((1, 77, 3), 7.0))
    assert cond.shape == (2, 231, 3) and (cond[:, 77:] == 7).all() and torch.equal(uncond, torch.ones(1, 231, 3))


def test_prompt_editing_alternation_and_and_are_resolved_as_at_the_last_step(webui, encode):
    """[from:to:when] gives `to`, [a|b] the word of the last step, AND weighted parts; each schedule encoded as the
    WebUI encodes it (its texts in one batch)."""
    _, _, ldm = webui
    conditioning = encode("a photo of a [cat:hand:0.5] AND a glove:0.5", "[ugly|blurry] picture", steps=10)
    assert conditioning.weights == (1.0, 0.5) and conditioning.cond.shape[0] == 2
    schedule = ["a photo of a cat", "a photo of a hand"]
    assert schedule in ldm.conditioning_calls and [" a glove"] in ldm.conditioning_calls
    assert torch.equal(conditioning.cond[0], ldm.get_learned_conditioning(schedule)[1])
    assert torch.equal(conditioning.cond[1], ldm.get_learned_conditioning([" a glove"])[0])
    # alternation over 10 steps: the CFG denoiser's last call is step 9, whose word is the first one
    negatives = next(c for c in ldm.conditioning_calls if "ugly picture" in c)
    assert negatives == ["ugly picture", "blurry picture"] * 5
    assert torch.equal(conditioning.uncond[0], ldm.get_learned_conditioning(negatives)[8])


def test_extra_network_tags_are_taken_out(webui, encode):
    _, _, ldm = webui
    conditioning = encode("<lora:detail:0.8>a hand<hypernet:x:1>", "blurry <lora:bad:1>")
    assert ldm.conditioning_calls == [["a hand"], ["blurry "]]
    assert torch.equal(conditioning.cond, ldm.get_learned_conditioning(["a hand"]))


def test_textual_inversion_embeddings_named_in_the_prompt_are_used(webui, encode, tiny_sd):
    """The WebUI model's loaded embeddings: their vectors replace the name's tokens (the tiny CLIP is 64 wide)."""
    _, _, ldm = webui
    without = encode("a hrtestemb hand", "").cond
    ldm.embeddings["hrtestemb"] = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    with_embedding = encode("a hrtestemb hand", "").cond
    assert not torch.allclose(with_embedding, without)
    assert torch.equal(without, tiny_sd.encode_text(["a hrtestemb hand"]))   # plain text without it


def test_own_encoder_for_an_sdxl_webui_resolves_the_syntax_for_the_checkpoints_clip(webui, tiny_sd):
    parser, networks, _ = webui
    own = OwnPromptEncoder(tiny_sd, parser, networks, steps=20)
    assert own.parts("a [cat:hand:0.5], (big:1.3) [red|blue] <lora:x:1>palm AND a glove:0.5") == (
        ["a hand, big red palm", " a glove"], (1.0, 0.5))
    conditioning = own("a (hand:1.2)", "[ugly:blurry:3]")
    assert torch.equal(conditioning.cond, tiny_sd.encode_text(["a hand"]))
    assert torch.equal(conditioning.uncond, tiny_sd.encode_text(["blurry"]))
