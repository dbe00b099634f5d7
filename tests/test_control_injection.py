"""Putting the ControlNet's residuals into a UNet (control_injection): ldm's UNet, a UNet that runs its blocks'
layers itself (the old Forge backend's way, reForge), a forward replaced by another extension; the run-time check
that every residual got in; and, where reForge's source is at hand, its own UNet against ldm's."""
from __future__ import annotations

import pytest
import reforge_source
import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from unets import (
    TINY_UNET,
    BypassingUNet,
    LayerwiseUNet,
    as_control,
    build_unet,
    controlled_unet_reference,
    inputs,
    randomise,
)

from lib_handrefiner.control_injection import ControlNotAppliedError, inject_control
from lib_handrefiner.controlnet import ControlNet, ControlNetConfig

FAMILIES = {"ldm": UNetModel, "layerwise": LayerwiseUNet}


@pytest.fixture(scope="module", params=[("ldm", 9), ("ldm", 4), ("layerwise", 9)],
                ids=["ldm-inpaint-9ch", "ldm-regular-4ch", "layerwise-inpaint-9ch"])
def pair(request):
    family, channels = request.param
    unet = build_unet(channels, seed=channels, cls=FAMILIES[family])
    controlnet = randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=100 + channels)
    return unet, controlnet


@torch.no_grad()
def test_hooked_unet_equals_the_direct_controlled_computation(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    residuals = controlnet(x[:, :4], hint, t, context)
    for s in (1.0, 0.55):
        expected = controlled_unet_reference(unet, [r * s for r in residuals], x, t, context)
        with inject_control(unet, controlnet, hint, strength=s) as handle:
            got = unet(x, timesteps=t, context=context)
        assert (handle.calls, handle.unet_calls, handle.added) == (1, 1, len(residuals))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    bare = unet(x, timesteps=t, context=context)
    assert (got - bare).abs().max() > 1e-3  # control changed the output


@torch.no_grad()
def test_strength_zero_is_exactly_the_bare_unet_and_hooks_leave_no_trace(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    before = unet(x, t, context)
    with inject_control(unet, controlnet, hint, strength=0.0) as handle:
        assert torch.equal(unet(x, t, context), before)
        assert handle.calls == 0
        handle.strength = 1.0
        assert not torch.equal(unet(x, t, context), before)
    assert torch.equal(unet(x, t, context), before)
    hooked = [m for m in unet.modules() if m._forward_pre_hooks or m._forward_hooks]
    assert hooked == []


@torch.no_grad()
def test_per_sample_strengths_scale_each_sample_and_tile_for_cfg(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels, batch=4)
    bare = unet(x, t, context)
    one_hint = hint[:2]  # CFG: the UNet batch is [cond; uncond], the hint and strengths are per image
    with inject_control(unet, controlnet, one_hint, strength=torch.tensor([0.0, 0.8])):
        got = unet(x, t, context)
    assert torch.equal(got[0], bare[0]) and torch.equal(got[2], bare[2])
    tiled = torch.cat([one_hint, one_hint])
    residuals = controlnet(x[:, :4], tiled, t, context)
    scale = torch.tensor([0.0, 0.8, 0.0, 0.8]).view(-1, 1, 1, 1)
    expected = controlled_unet_reference(unet, [r * scale for r in residuals], x, t, context)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_per_block_scales_reach_their_own_skip(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    residuals = controlnet(x[:, :4], hint, t, context)
    for block in range(len(residuals)):
        scales = [0.0] * len(residuals)
        scales[block] = 1.3
        expected = controlled_unet_reference(unet, [r * s for r, s in zip(residuals, scales)], x, t, context)
        with inject_control(unet, controlnet, hint, strength=scales):
            torch.testing.assert_close(unet(x, t, context), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="13 for SD 1.5"):
        with inject_control(unet, controlnet, hint, strength=[1.0] * 13):
            unet(x, t, context)


@torch.no_grad()
def test_hint_can_be_swapped_inside_the_context(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    with inject_control(unet, controlnet, hint, strength=1.0) as handle:
        first = unet(x, t, context)
        handle.hint = 1.0 - hint
        second = unet(x, t, context)
    expected = controlled_unet_reference(unet, controlnet(x[:, :4], 1.0 - hint, t, context), x, t, context)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_hint_is_encoded_once_per_hint_and_again_when_changed_in_place(pair, mode):
    """Under torch.inference_mode (reForge runs its jobs so) the hint is an inference tensor, which has no version
    counter (reading it raised "Inference tensors do not track version counter" and failed every WebUI-sampler
    hand pass there)."""
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    with mode():
        hint = hint.clone()
        with inject_control(unet, controlnet, hint, strength=1.0) as handle:
            for _ in range(3):
                unet(x, t, context)
            assert (handle.calls, handle.hint_encodings) == (3, 1)
            hint.mul_(0.5)  # changed in place: encoded again
            got = unet(x, t, context)
            assert handle.hint_encodings == 2
        expected = controlled_unet_reference(unet, controlnet(x[:, :4], hint, t, context), x, t, context)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_hooks_fire_through_a_forward_replaced_by_another_extension(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    expected = controlled_unet_reference(unet, controlnet(x[:, :4], hint, t, context), x, t, context)
    original = unet.forward
    seen = []

    def replaced_forward(*args, **kwargs):  # what e.g. a tiling or hypernetwork extension does
        seen.append(1)
        return original(*args, **kwargs)

    unet.forward = replaced_forward
    try:
        with inject_control(unet, controlnet, hint, strength=1.0):
            got = unet(x, timesteps=t, context=context)
    finally:
        del unet.forward
    assert seen == [1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_hooks_come_off_when_the_unet_call_fails(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    before = unet(x, t, context)
    with pytest.raises(ValueError, match="must be the image size"):
        with inject_control(unet, controlnet, hint[..., :40, :], strength=1.0):
            unet(x, t, context)
    assert torch.equal(unet(x, t, context), before)
    with pytest.raises(ValueError, match="does not divide"):
        with inject_control(unet, controlnet, hint[:1].repeat(3, 1, 1, 1), strength=1.0):
            unet(x, t, context)


def test_a_controlnet_for_another_base_model_is_refused_before_sampling():
    unet = build_unet(9)
    wide = ControlNet.from_config(ControlNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                                   attention_resolutions=(1,), num_heads=2, context_dim=64))
    with pytest.raises(ValueError, match="does not pair"):
        with inject_control(unet, wide, torch.rand(1, 3, 64, 64)):
            pass




# ---- every UNet family, counted ----------------------------------------------------------------------------------

@torch.no_grad()
def test_a_layerwise_unet_gets_the_residuals_exactly_where_its_own_control_argument_puts_them():
    """Same weights in ldm's UNet and in one run layer by layer (the old Forge backend's way): our injection into
    either equals that UNet's own `control` argument with the same residuals, and every residual is counted."""
    ldm_unet = build_unet(9, seed=5)
    layerwise = build_unet(9, seed=5, cls=LayerwiseUNet)
    controlnet = randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=7)
    x, t, context, hint = inputs(9)
    residuals = [r * 0.8 for r in controlnet(x[:, :4], hint, t, context)]
    native = layerwise(x, t, context, control=as_control(residuals))
    assert (native - layerwise(x, t, context)).abs().max() > 1e-3   # the control argument acts
    for unet in (ldm_unet, layerwise):
        with inject_control(unet, controlnet, hint, strength=0.8) as handle:
            got = unet(x, timesteps=t, context=context)
            got_again = unet(x, timesteps=t, context=context)
        torch.testing.assert_close(got, native, rtol=0, atol=1e-6)
        assert torch.equal(got, got_again)
        assert (handle.unet_calls, handle.calls, handle.added) == (2, 2, 2 * len(residuals))


@torch.no_grad()
def test_hooks_on_the_blocks_themselves_never_fire_in_a_layerwise_unet():
    """Why the residuals go in at the layers: a UNet run layer by layer never calls its blocks (reForge's middle-
    and output-block hooks fired 0 times, issue 23), while its layers are called once per UNet call."""
    unet = build_unet(9, seed=5, cls=LayerwiseUNet)
    x, t, context, _ = inputs(9)
    fired = {"block": 0, "layer": 0}
    hooks = [unet.middle_block.register_forward_hook(lambda *a: fired.__setitem__("block", fired["block"] + 1)),
             unet.middle_block[-1].register_forward_hook(lambda *a: fired.__setitem__("layer", fired["layer"] + 1))]
    unet(x, t, context)
    for hook in hooks:
        hook.remove()
    assert fired == {"block": 0, "layer": 1}


# ---- never a silent no-op ----------------------------------------------------------------------------------------

@torch.no_grad()
def test_a_unet_the_residuals_cannot_reach_is_an_error_naming_what_is_missing():
    unet = build_unet(9, seed=5, cls=BypassingUNet)   # its output blocks' layers run without a module call
    controlnet = randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=7)
    x, t, context, hint = inputs(9)
    with pytest.raises(ControlNotAppliedError, match=r"1 of 5 residuals were added in this call; missing: the skip "
                                                     r"of input block 0, .*the skip of input block 3"):
        with inject_control(unet, controlnet, hint, strength=1.0):
            unet(x, t, context)
    with inject_control(unet, controlnet, hint, strength=0.0) as handle:   # no control asked: nothing missing
        unet(x, t, context)
    assert (handle.unet_calls, handle.added) == (1, 0)
    assert not [m for m in unet.modules() if m._forward_pre_hooks or m._forward_hooks]


@torch.no_grad()
def test_layers_run_without_a_call_of_the_unet_module_are_an_error(pair):
    unet, controlnet = pair
    x, t, context, hint = inputs(unet.in_channels)
    with pytest.raises(ControlNotAppliedError, match="ran without a call of the UNet module"):
        with inject_control(unet, controlnet, hint, strength=1.0):
            unet.forward(x, t, context)   # its own pre-hook bypassed: no residuals were computed


@torch.no_grad()
def test_a_pass_that_never_called_the_controlled_unet_is_an_error(pair):
    unet, controlnet = pair
    other = build_unet(unet.in_channels, seed=11)   # e.g. a WebUI that samples a UNet kept elsewhere
    x, t, context, hint = inputs(unet.in_channels)
    with pytest.raises(ControlNotAppliedError, match="never called the UNet"):
        with inject_control(unet, controlnet, hint, strength=0.6):
            other(x, t, context)
    with inject_control(unet, controlnet, hint, strength=0.6) as handle:
        handle.stopped = True   # the user stopped the pass before its first step: not a failure
    with inject_control(unet, controlnet, hint, strength=0.0):
        pass


# ---- reForge's own UNet, where its source is at hand ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reforge(tmp_path_factory):
    src = reforge_source.source()
    if src is None:
        pytest.skip("reForge's source is not at hand (set HANDREFINER_REFORGE_SRC to a reForge checkout or its bare "
                    "git repository): nothing to compare ldm's UNet against")
    folder = reforge_source.checkout(src, tmp_path_factory.mktemp("reforge"))
    with reforge_source.reforge_openaimodel(folder) as openaimodel:
        yield openaimodel


def reforge_unet(openaimodel, ldm_unet):
    """reForge's UNet (ldm_patched) in the tiny configuration, with `ldm_unet`'s weights (same key names)."""
    levels = len(TINY_UNET["channel_mult"])
    unet = openaimodel.UNetModel(
        image_size=TINY_UNET["image_size"], in_channels=ldm_unet.in_channels,
        model_channels=TINY_UNET["model_channels"],
        out_channels=TINY_UNET["out_channels"], num_res_blocks=TINY_UNET["num_res_blocks"],
        channel_mult=tuple(TINY_UNET["channel_mult"]), num_heads=TINY_UNET["num_heads"], use_spatial_transformer=True,
        transformer_depth=[1] * levels * TINY_UNET["num_res_blocks"],   # attention at every level of the tiny UNet
        transformer_depth_output=[1] * levels * (TINY_UNET["num_res_blocks"] + 1), transformer_depth_middle=1,
        context_dim=TINY_UNET["context_dim"], legacy=False, use_linear_in_transformer=False)
    unet.load_state_dict(ldm_unet.state_dict(), strict=True)
    return unet.eval()


@torch.no_grad()
def test_reforges_unet_gets_our_residuals_as_its_own_control_argument_gives_them(reforge):
    ldm_unet = build_unet(9, seed=5)
    unet = reforge_unet(reforge, ldm_unet)
    controlnet = randomise(ControlNet.from_config(ControlNetConfig.tiny()), seed=7)
    x, t, context, hint = inputs(9)
    residuals = [r * 0.8 for r in controlnet(x[:, :4], hint, t, context)]
    native = unet(x, t, context, control=as_control(residuals), transformer_options={})
    assert (native - unet(x, t, context, transformer_options={})).abs().max() > 1e-2
    with inject_control(unet, controlnet, hint, strength=0.8) as handle:
        ours = unet(x, t, context=context, transformer_options={})
    assert handle.added == len(residuals)
    torch.testing.assert_close(ours, native, rtol=0, atol=1e-6)
    with inject_control(ldm_unet, controlnet, hint, strength=0.8):
        torch.testing.assert_close(ldm_unet(x, t, context), ours, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_hand_pass_on_reforges_unet_equals_the_same_pass_on_ldms(reforge, tiny_models, tiny_sd, tiny_controlnet):
    """The built-in sampler's whole pass (DDIM, known-region blend, CFG, ControlNet at 0 and 1) with the tiny SD
    model's weights in ldm's UNet (A1111) and in reForge's: the same images within float noise."""
    from conftest import small_hand_request

    from lib_handrefiner.sampler import sample_inpaint

    request = small_hand_request(steps=4)
    from lib_handrefiner.sd_model import load_sd_checkpoint

    on_reforge = load_sd_checkpoint(tiny_models.checkpoint)   # its own copy: the session's tiny_sd stays ldm's
    on_reforge.unet = reforge_unet(reforge, on_reforge.unet)
    ldm_images = sample_inpaint(tiny_sd, tiny_controlnet, request, [0.0, 1.0], seed=3)
    reforge_images = sample_inpaint(on_reforge, tiny_controlnet, request, [0.0, 1.0], seed=3)
    assert (ldm_images[1] - ldm_images[0]).abs().max() > 1e-2   # the ControlNet acts
    torch.testing.assert_close(reforge_images, ldm_images, rtol=0, atol=1e-4)
