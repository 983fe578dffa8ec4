"""The full-mask DWM-Wan sampler: flow-matching Euler around diffusers' unmodified Wan transformer.

Transformer input per step, on the channel axis of ``[B, C, F, h, w]``: noisy latents (16), the mask
(4 channels of ones: every pixel known), the static-scene latents (16), the hand latents (16). The
schedule is the reference's: ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5)``
with its default sigmas (1 -> 0, shifted), 50 Euler steps. Classifier-free guidance batches
``[uncond, cond]`` and mixes ``u + g (c - u)``. The image branch gets zero CLIP features
``[B, 257, 1280]`` (the reference zeroes them), and the umT5 embeddings are zero-padded to 512 tokens
as the original Wan model pads them (diffusers' transformer expects them padded). Each batch item draws
its noise from its own seed (``seed + i``), so item ``i`` equals a single run with that seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..cogvideox.sampler import SamplerSettings, StepCallback, initial_noise
from ..errors import DWMCancelled, DWMError
from .model import WanBase, wan_model_input
from .text import TEXT_LEN  # diffusers' Wan attention splits image/text tokens at it

CLIP_TOKENS = 257  # open-clip ViT-H/14 tokens at 224 px (16 x 16 patches + class token)
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class WanSettings(SamplerSettings):
    """CogVideoX's settings plus the flow shift; Euler is the only scheduler, dynamic CFG does not apply."""

    scheduler: str = "euler"
    shift: float = 5.0


def flow_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def pad_text(embeds: torch.Tensor) -> torch.Tensor:
    """``[B, L, D]`` trimmed umT5 embeddings -> ``[B, 512, D]`` zero-padded (the original Wan model's rule)."""
    length = embeds.shape[1]
    if length > TEXT_LEN:
        raise DWMError("prompt", f"{length} tokens, more than the {TEXT_LEN} umT5 takes", "shorten the prompt")
    return torch.nn.functional.pad(embeds, (0, 0, 0, TEXT_LEN - length))


def _check(settings: WanSettings, positive: torch.Tensor, negative: torch.Tensor | None) -> None:
    if settings.steps < 1 or settings.batch < 1:
        raise DWMError("sampler", f"steps={settings.steps}, batch={settings.batch}", "use at least 1 of each")
    if settings.scheduler != "euler" or settings.dynamic_cfg:
        raise DWMError("scheduler", f"{settings.scheduler!r} (dynamic cfg {settings.dynamic_cfg}) for a Wan model",
                       "Wan samples with flow-matching Euler and constant guidance; set the shift instead")
    if settings.shift <= 0:
        raise DWMError("shift", f"{settings.shift} is not positive", "use 5 (the reference's value for Wan 2.1)")
    if settings.guidance > 1.0 and negative is None:
        raise ValueError("guidance > 1 needs the negative prompt's embedding")
    if positive.ndim != 3:
        raise ValueError(f"prompt embeddings must be [1, L, D], got {list(positive.shape)}")


@torch.no_grad()
def sample(base: WanBase, scene, positive: torch.Tensor, negative: torch.Tensor | None, settings: WanSettings,
           on_step: StepCallback | None = None, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Denoise ``settings.batch`` videos from ``scene.static`` / ``scene.hands`` (``[1, 16, F, h, w]``).

    Returns normalised latents ``[B, 16, F, h, w]`` in fp32 (what ``decode_wan_latents`` takes).
    """
    _check(settings, positive, negative)
    transformer, dtype = base.transformer, base.dtype
    device = transformer.device
    scheduler = flow_scheduler(settings.shift)
    scheduler.set_timesteps(settings.steps, device=device)

    batch, cfg = settings.batch, settings.guidance > 1.0
    n = 2 * batch if cfg else batch
    latents = initial_noise(settings.seeds, tuple(scene.static.shape)).to(device)
    static, hands = (x.to(device, dtype).expand(n, -1, -1, -1, -1) for x in (scene.static, scene.hands))
    prompts = [pad_text(positive).to(device, dtype).expand(batch, -1, -1)]
    if cfg:
        prompts.insert(0, pad_text(negative).to(device, dtype).expand(batch, -1, -1))
    prompt_embeds = torch.cat(prompts)
    image_embeds = torch.zeros(n, CLIP_TOKENS, transformer.config.image_dim, device=device, dtype=dtype)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if cancel is not None and cancel():
            raise DWMCancelled(f"cancelled before step {i + 1}/{len(timesteps)}")
        x = torch.cat([latents] * 2) if cfg else latents
        model_in = wan_model_input(x.to(dtype), static, hands)
        with transformer.cache_context("cond_uncond"):
            v = transformer(hidden_states=model_in, timestep=t.expand(n), encoder_hidden_states=prompt_embeds,
                            encoder_hidden_states_image=image_embeds, return_dict=False)[0]
        v = v.float()
        if cfg:
            uncond, cond = v.chunk(2)
            v = uncond + settings.guidance * (cond - uncond)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(i, len(timesteps), latents)
    if not torch.isfinite(latents).all():
        raise DWMError("sampler", f"the result holds NaN/inf values (dtype {dtype})",
                       "load the model in bf16 (fp16 overflows in the 14B model) or fp32")
    return latents
