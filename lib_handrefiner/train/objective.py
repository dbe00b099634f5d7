"""The training objective: paper eq. 4, the noise-prediction error of the inpainting UNet, guided by the
ControlNet, masked to the hand and normalised by the mask area.

As the official training code (ldm's LatentInpaintDiffusion with cldm's ControlLDM) computes it:
- the image and the masked image (image × (mask < 0.5)) are encoded by the VAE, each latent *sampled* from the
  encoder's posterior (ldm's `get_first_stage_encoding`), times the scale factor;
- the UNet's mask channel is the pixel mask resized to latent size with nearest interpolation
  (`sampler.latent_mask`, the very function the sampler gives the UNet at inference), and it is also the loss mask;
- t is uniform in [0, 1000); x_t = √ᾱ_t z + √(1−ᾱ_t) ε; the ControlNet sees x_t (4 channels), the depth hint and
  the text; the UNet sees [x_t, mask, masked-image latent] (9 channels) plus the ControlNet's residuals;
- loss_i = Σ m (ε̂ − ε)² / (4 · count_nonzero(m)) per sample, averaged over the batch (ldm's logvar is 0 and the
  VLB weight 0 there, so nothing else enters).

All randomness of a sample (timestep, noise, the two posterior draws) comes from its own key, so a sample's loss
does not depend on which batch, process or run it is computed in: that is what makes gradient accumulation,
sharding over processes and resuming give the same training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from lib_handrefiner.control_injection import inject_control
from lib_handrefiner.controlnet import ControlNet
from lib_handrefiner.sampler import latent_mask


@dataclass
class TrainBatch:
    image: torch.Tensor    # (B,3,H,W) in [-1,1]
    mask: torch.Tensor     # (B,1,H,W) in {0,1}, 1 = hand (what is regenerated and what the loss counts)
    hint: torch.Tensor     # (B,3,H,W) in [0,1], the depth hint
    prompts: List[str]     # after prompt dropout
    keys: List[int]        # each sample's random key (its position in the training stream)


@dataclass
class SampleNoise:
    """The random draws of a batch, one generator per sample."""
    timesteps: torch.Tensor      # (B,) long in [0, num_timesteps)
    noise: torch.Tensor          # (B,C,h,w): ε, the regression target
    image_draw: torch.Tensor     # (B,C,h,w): the posterior draw of the image latent
    masked_draw: torch.Tensor    # (B,C,h,w): the posterior draw of the masked-image latent


def sample_generator(seed: int, key: int) -> torch.Generator:
    """The generator of one sample: a function of the run's seed and the sample's key only."""
    return torch.Generator().manual_seed((int(seed) % 2 ** 31) << 32 | (int(key) % 2 ** 32))


def draw_noise(seed: int, keys: Sequence[int], latent_shape: Sequence[int], num_timesteps: int) -> SampleNoise:
    """Timestep, noise and posterior draws for each key, in a fixed order per sample (CPU, float32)."""
    draws = []
    for key in keys:
        g = sample_generator(seed, key)
        t = torch.randint(0, num_timesteps, (1,), generator=g)
        draws.append((t, *(torch.randn(tuple(latent_shape), generator=g) for _ in range(3))))
    t, noise, image_draw, masked_draw = (torch.stack([d[i] for d in draws]) for i in range(4))
    return SampleNoise(t.reshape(-1), noise, image_draw, masked_draw)


def sampled_latent(sd, x: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """A draw of the VAE posterior N(mean, exp(logvar)) of x ∈ [-1,1], times the scale factor (ldm's
    DiagonalGaussianDistribution.sample: logvar clamped to [-30, 20]). The VAE runs in float32."""
    with torch.autocast(x.device.type, enabled=False):
        moments = sd.quant_conv(sd.encoder(x.to(sd.device, sd.vae_dtype)))
        mean, logvar = moments.float().chunk(2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean + std * draw.to(mean.device)) * sd.scale_factor


def q_sample(z0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t z0 + √(1 − ᾱ_t) ε, per sample."""
    alpha = alphas_cumprod.to(torch.float64)[timesteps.cpu()].to(z0.device, torch.float32).view(-1, 1, 1, 1)
    return alpha.sqrt() * z0 + (1.0 - alpha).sqrt() * noise


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-sample loss (B,): with a mask (B,1,h,w), Σ m (ε̂ − ε)² / (channels · count_nonzero(m)), the official
    normalisation (a sample whose mask is empty at latent size counts 0, not NaN); without one, the plain mean."""
    error = (prediction.float() - target.float()) ** 2
    if mask is None:
        return error.flatten(1).mean(dim=1)
    mask = mask.float()
    area = torch.count_nonzero(mask.flatten(1), dim=1) * error.shape[1]
    return (error * mask).flatten(1).sum(dim=1) / area.clamp(min=1)


@dataclass
class ModelInputs:
    """What the frozen networks make of a batch: the UNet's inputs and the loss target."""
    x_noisy: torch.Tensor
    timesteps: torch.Tensor
    context: torch.Tensor
    c_concat: Optional[torch.Tensor]   # None for a 4-channel (non-inpainting) UNet
    loss_mask: torch.Tensor            # (B,1,h,w)
    target: torch.Tensor


@torch.no_grad()
def model_inputs(sd, batch: TrainBatch, noise: SampleNoise) -> ModelInputs:
    """The frozen part of the forward pass: VAE, text encoder and the forward diffusion (no gradients)."""
    device = sd.device
    image = batch.image.to(device, torch.float32)
    mask = batch.mask.to(device, torch.float32)
    z0 = sampled_latent(sd, image, noise.image_draw)
    loss_mask = latent_mask(mask)
    c_concat = None
    if sd.in_channels != z0.shape[1]:  # inpainting UNet: it also sees the hole and what surrounds it
        masked = sampled_latent(sd, image * (mask < 0.5), noise.masked_draw)
        c_concat = torch.cat([loss_mask, masked], dim=1)
    target = noise.noise.to(device)
    timesteps = noise.timesteps.to(device)
    return ModelInputs(q_sample(z0, timesteps, target, sd.alphas_cumprod), timesteps,
                       sd.encode_text(list(batch.prompts)), c_concat, loss_mask, target)


def predict_noise(sd, controlnet: ControlNet, inputs: ModelInputs, hint: torch.Tensor) -> torch.Tensor:
    """ε̂ of the UNet with the ControlNet's residuals added at strength 1 (gradients reach the ControlNet only)."""
    x = inputs.x_noisy if inputs.c_concat is None else torch.cat([inputs.x_noisy, inputs.c_concat], dim=1)
    with inject_control(sd.unet, controlnet, hint.to(sd.device), 1.0):
        return sd.unet(x.to(sd.dtype), timesteps=inputs.timesteps, context=inputs.context)


def training_loss(sd, controlnet: ControlNet, batch: TrainBatch, noise: SampleNoise,
                  masked: bool = True) -> torch.Tensor:
    """Per-sample losses (B,) of one batch; `masked=False` gives the plain loss of the ablation."""
    inputs = model_inputs(sd, batch, noise)
    prediction = predict_noise(sd, controlnet, inputs, batch.hint)
    return masked_mse(prediction, inputs.target, inputs.loss_mask if masked else None)
