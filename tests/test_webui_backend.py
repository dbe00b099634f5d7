"""One adapter per WebUI backend (lib_handrefiner/webui/backend.py): A1111's ldm and reForge's (the old Forge
backend), against a reForge-shaped model (tests/forge_stand_in.py) built from the tiny checkpoint."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import small_hand_request
from forge_stand_in import ForgeShapedModel, forge_2_shaped_model

from lib_handrefiner.sampler import sample_inpaint
from lib_handrefiner.webui.backend import ForgeBackend, LdmBackend, UnsupportedBackendError, backend_for
from lib_handrefiner.webui.sd_adapter import WebUISDModel, sd1_problem, upcast_vae_after_nans


@pytest.fixture()
def forge_model(tiny_sd):
    # A copy: the tests change its VAE's precision in place, which must not reach the session's tiny_sd (its VAE
    # rounded through float16 gave every later test using it other pixels).
    return ForgeShapedModel(copy.deepcopy(tiny_sd))


def test_each_model_gets_its_backends_adapter(forge_model):
    assert type(backend_for(forge_model)) is ForgeBackend
    assert type(backend_for(SimpleNamespace(model=SimpleNamespace(diffusion_model=None)))) is LdmBackend
    with pytest.raises(UnsupportedBackendError, match="Forge 2's backend .* use reForge or AUTOMATIC1111"):
        backend_for(forge_2_shaped_model())
    assert "Forge 2's backend" in sd1_problem(forge_2_shaped_model())


def test_reforges_encode_gives_the_latent_not_the_statistical_mode(forge_model, tiny_sd):
    """reForge's encode_first_stage returns the scaled latent as a Tensor; Tensor.mode() exists (the statistical
    mode along the last dim) and broke every hand pass there (issue 23)."""
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert isinstance(forge_model.encode_first_stage(x).mode(), torch.return_types.mode)
    sd = WebUISDModel(forge_model, "cpu", torch.float32)
    latent = sd.encode_image(x)
    assert not latent.is_inference()   # usable outside inference mode, e.g. in the blend's in-place updates
    torch.testing.assert_close(latent, tiny_sd.encode_image(x), rtol=0, atol=1e-5)
    # the ldm adapter takes a Tensor as it comes too (a fork whose encode returns the latent)
    torch.testing.assert_close(LdmBackend().encode_first_stage(forge_model, x), latent, rtol=0, atol=0)


def test_the_vae_precision_fallback_moves_forges_own_vae_dtype(forge_model):
    forge_model.first_stage_model.half()
    forge_model.forge_objects.vae.vae_dtype = torch.float16
    devices = SimpleNamespace(dtype_vae=torch.float16)
    assert upcast_vae_after_nans(forge_model, devices, None, "decoding", ForgeBackend()) == torch.float32
    assert forge_model.forge_objects.vae.vae_dtype == torch.float32 == devices.dtype_vae
    assert next(forge_model.first_stage_model.parameters()).dtype == torch.float32


def test_forges_model_management_loads_the_unet_before_our_own_loop(forge_model):
    loaded = []
    backend = ForgeBackend(SimpleNamespace(load_models_gpu=loaded.append))
    with backend.unet_ready(forge_model):
        assert loaded == [[forge_model.forge_objects.unet]]
    with LdmBackend().unet_ready(forge_model):
        pass


@torch.no_grad()
def test_a_hand_pass_on_the_reforge_shaped_model_equals_the_standalone_pass(forge_model, tiny_sd, tiny_controlnet):
    """The built-in sampler through the reForge adapter (its encode, its UNet run layer by layer, the ControlNet by
    control_injection) gives the standalone pass's images, and the ControlNet acts (1.0 vs 0.0 differ)."""
    request = small_hand_request(steps=3)
    sd = WebUISDModel(forge_model, "cpu", torch.float32)
    assert sd.unet is forge_model.model.diffusion_model
    on_forge = sample_inpaint(sd, tiny_controlnet, request, [0.0, 1.0], seed=3)
    standalone = sample_inpaint(tiny_sd, tiny_controlnet, request, [0.0, 1.0], seed=3)
    assert (on_forge[1] - on_forge[0]).abs().max() > 1e-2
    torch.testing.assert_close(on_forge, standalone, rtol=0, atol=1e-4)
