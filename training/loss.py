"""The reference training objective, on the DWM input of ``dwm.cogvideox.sampler`` (one definition for both).

``noisy = add_noise(x0, noise, t)``, the model predicts v, ``x0_pred = get_velocity(v, noisy, t)``
(for v-prediction this is ``sqrt(a_t) * noisy - sqrt(1 - a_t) * v``) and the loss is
``mean(w(t) * (x0_pred - x0)^2)`` with ``w(t) = 1 / (1 - alphas_cumprod[t])``, per sample then over
the batch, computed in float32.

V1.5 bases patch two latent frames together; an odd latent count gets the frames of
``dwm.cogvideox.sampler.temporal_padding`` prepended, as the sampler does at inference: the video, static and
hand latents repeat their first frame, the noise covers the padded frame too, and the padded frame is
left out of the loss (the sampler drops it from the output).
"""

from __future__ import annotations

import torch

from comfyui_dwm.cogvideox.sampler import VAE_SPATIAL, dwm_model_input, pad_frames, rotary_embedding, temporal_padding


def diffusion_loss(scheduler, v: torch.Tensor, noisy: torch.Tensor, latents: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
    """Weighted x0 error of a v prediction; tensors ``[B, F, C, h, w]``."""
    x0_pred = scheduler.get_velocity(v.float(), noisy.float(), timesteps)
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)[timesteps]
    weights = (1 / (1 - alphas)).view(-1, *([1] * (latents.ndim - 1)))
    per_sample = (weights * (x0_pred - latents.float()) ** 2).flatten(1).mean(dim=1)
    return per_sample.mean()


def training_loss(model, transformer, scheduler, latents: torch.Tensor, static: torch.Tensor,
                  hands: torch.Tensor, prompt_embeds: torch.Tensor, mask_value: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One loss evaluation. ``model`` is what runs the forward (maybe DDP-wrapped); ``transformer``
    the bare module, for its config. Timesteps and noise come from ``generator`` (CPU)."""
    batch, frames, _, h, w = latents.shape
    pad = temporal_padding(transformer.config.patch_size_t, frames)
    latents, static, hands = (pad_frames(x, pad) for x in (latents, static, hands))
    device, dtype = latents.device, latents.dtype
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device, dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    rope = rotary_embedding(transformer, h * VAE_SPATIAL, w * VAE_SPATIAL, frames + pad, device)
    v = model(hidden_states=dwm_model_input(noisy, static, hands, mask_value), encoder_hidden_states=prompt_embeds,
              timestep=timesteps, image_rotary_emb=rope, return_dict=False)[0]
    return diffusion_loss(scheduler, v[:, pad:], noisy[:, pad:], latents[:, pad:], timesteps)
