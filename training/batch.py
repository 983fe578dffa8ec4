"""Turn dataset items into the tensors of one training step.

Every video becomes a latent *distribution* (precomputed, or encoded now by the VAE when its latents
are missing) from which a fresh sample is drawn with the run's generator, as the reference trains on
samples. Prompt and hand dropout (0 by default) also draw from that generator, so a run is
reproducible from its seed and resumes exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from comfyui_dwm.cogvideox.model import DWMBase
from comfyui_dwm.cogvideox.text import encode_prompt

PIXEL_CHANNELS = 3


@dataclass
class StepInputs:
    latents: torch.Tensor  # [B, F, 16, h, w] scaled, the target
    static: torch.Tensor
    hands: torch.Tensor
    prompt_embeds: torch.Tensor  # [B, 226, D]


@torch.no_grad()
def latent_distribution(vae, value: torch.Tensor) -> torch.Tensor:
    """Latent-distribution parameters ``[32, F, h, w]``: stored ones as is, frames encoded now."""
    if value.shape[0] != PIXEL_CHANNELS:
        return value
    x = value.unsqueeze(0).to(vae.device, vae.dtype)
    return vae.encode(x).latent_dist.parameters[0]


def sample_latents(vae, values: list[torch.Tensor], generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Draw one sample per item, scale it and lay it out ``[B, F, C, h, w]`` like the sampler."""
    params = torch.stack([latent_distribution(vae, v).to(device, torch.float32) for v in values])
    z = DiagonalGaussianDistribution(params).sample(generator=generator) * vae.config.scaling_factor
    return z.permute(0, 2, 1, 3, 4).to(dtype).contiguous()


def make_step_inputs(base: DWMBase, items: list[dict], generator: torch.Generator, device, dtype,
                     prompt_dropout: float = 0.0, hand_dropout: float = 0.0) -> StepInputs:
    def draw(key: str) -> torch.Tensor:
        return sample_latents(base.vae, [item[key] for item in items], generator, device, dtype)

    latents, static, hands = draw("video"), draw("static"), draw("hands")
    prompts = [p if isinstance(p, torch.Tensor) else encode_prompt(base, p)[0] for p in (i["prompt"] for i in items)]
    prompt_embeds = torch.stack([p.to(device, dtype) for p in prompts])
    prompt_embeds, hands, _ = apply_dropout(prompt_embeds, lambda: encode_prompt(base, "")[0].to(device, dtype),
                                            hands, generator, prompt_dropout, hand_dropout)
    return StepInputs(latents, static, hands, prompt_embeds)


def apply_dropout(prompts: torch.Tensor, empty, hands: torch.Tensor, generator: torch.Generator,
                  prompt_dropout: float, hand_dropout: float):
    """Both families: prompt then hand dropout, drawn from ``generator`` in that order (exact resume
    depends on it); ``empty()`` is the empty prompt's embedding. Returns prompts, hands and the mask of
    items whose hands were dropped (None without hand dropout)."""
    batch, device, dropped = prompts.shape[0], prompts.device, None
    if prompt_dropout > 0:
        drop = (torch.rand(batch, generator=generator) < prompt_dropout).to(device)
        prompts = torch.where(drop.view(-1, 1, 1), empty(), prompts)
    if hand_dropout > 0:
        dropped = (torch.rand(batch, generator=generator) < hand_dropout).to(device)
        hands = torch.where(dropped.view(-1, 1, 1, 1, 1), torch.zeros_like(hands), hands)
    return prompts, hands, dropped
