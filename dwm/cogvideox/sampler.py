"""The full-mask DWM sampler: a readable denoising loop around diffusers' unmodified transformer.

Transformer input per step, on the channel axis of ``[B, F, C, H, W]``: noisy latents (16), the mask
channel (1, constant ``scaling_factor``: every pixel known), the static-scene latents (16), the hand
latents (16). Classifier-free guidance batches ``[uncond, cond]``; both halves share the scene
latents. Each batch item draws its noise from its own seed (``seed + i``), so item ``i`` of a batch
equals a single run with that seed.

V1.5 bases patch two latent frames together. When the latent count is odd (49 frames -> 13), one
latent frame is prepended, as diffusers' CogVideoX 1.5 pipeline does: the noise gets an extra frame,
the static and hand latents repeat their first frame, and the extra frame is dropped at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

from ..errors import DWMCancelled, DWMError
from .memory import execution_device
from .model import DWMBase
from .scene import SceneLatents
from .speed import reset_step_cache
from .text import encode_prompt

SCHEDULERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
VAE_SPATIAL = 8
SEED_RANGE = 2**64

StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class SamplerSettings:
    steps: int = 50
    guidance: float = 6.0
    scheduler: str = "ddim"
    seed: int = 42
    batch: int = 1
    dynamic_cfg: bool = False

    @property
    def seeds(self) -> list[int]:
        """``seed + i`` per item, wrapped to torch's 64-bit seed range (ComfyUI seeds go up to 2**64 - 1)."""
        return [(self.seed + i) % SEED_RANGE for i in range(self.batch)]


def rotary_embedding(transformer, height: int, width: int, latent_frames: int, device) -> tuple:
    """3-D RoPE as diffusers' CogVideoX pipelines compute it (crop grid for V1.1, slice for V1.5)."""
    cfg = transformer.config
    p, p_t = cfg.patch_size, cfg.patch_size_t
    grid_h, grid_w = height // (VAE_SPATIAL * p), width // (VAE_SPATIAL * p)
    base_w, base_h = cfg.sample_width // p, cfg.sample_height // p
    if p_t is None:
        crops = get_resize_crop_region_for_grid((grid_h, grid_w), base_w, base_h)
        return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=crops,
                                       grid_size=(grid_h, grid_w), temporal_size=latent_frames, device=device)
    return get_3d_rotary_pos_embed(embed_dim=cfg.attention_head_dim, crops_coords=None,
                                   grid_size=(grid_h, grid_w), temporal_size=(latent_frames + p_t - 1) // p_t,
                                   grid_type="slice", max_size=(base_h, base_w), device=device)


def temporal_padding(patch_size_t: int | None, latent_frames: int) -> int:
    """Latent frames to prepend so the count divides the temporal patch size (0 for V1.1)."""
    if not patch_size_t or latent_frames % patch_size_t == 0:
        return 0
    return patch_size_t - latent_frames % patch_size_t


def dwm_model_input(noisy: torch.Tensor, static: torch.Tensor, hands: torch.Tensor,
                    mask_value: float) -> torch.Tensor:
    """Concatenate the 49 input channels in the spec's order: noisy, mask, static, hands."""
    mask = torch.full_like(noisy[:, :, :1], mask_value)
    return torch.cat([noisy, mask, static, hands], dim=2)


def dynamic_guidance(guidance: float, t: int, steps: int) -> float:
    """The cosine guidance ramp of diffusers' CogVideoX pipeline, as the reference uses it."""
    return 1 + guidance * ((1 - math.cos(math.pi * ((steps - t) / steps) ** 5.0)) / 2)


def initial_noise(seeds: list[int], shape: tuple) -> torch.Tensor:
    """One CPU generator per seed, so results do not depend on the device or the batch size."""
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def pad_frames(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Prepend ``pad`` copies of the first latent frame (V1.5's rule for the conditions)."""
    return torch.cat([x[:, :1].expand(-1, pad, -1, -1, -1), x], dim=1) if pad else x


@torch.no_grad()
def sample(base: DWMBase, scene: SceneLatents, positive: torch.Tensor, negative: torch.Tensor | None,
           settings: SamplerSettings, on_step: StepCallback | None = None,
           cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Denoise ``settings.batch`` videos; returns latents ``[B, F_lat, 16, h, w]`` (unscaled by VAE)."""
    if settings.scheduler not in SCHEDULERS:
        raise DWMError("scheduler", f"unknown scheduler {settings.scheduler!r}",
                       f"choose one of {', '.join(SCHEDULERS)}")
    if settings.steps < 1 or settings.batch < 1:
        raise DWMError("sampler", f"steps={settings.steps}, batch={settings.batch}", "use at least 1 of each")
    transformer, dtype = base.transformer, base.dtype
    device = execution_device(base)  # under group offload the weights sit on the CPU
    reset_step_cache(transformer)  # a cache left enabled must not carry the last run's (batch's) state
    scheduler = SCHEDULERS[settings.scheduler].from_config(base.scheduler_config)
    scheduler.set_timesteps(settings.steps, device=device)

    batch, cfg = settings.batch, settings.guidance > 1.0
    frames = scene.static.shape[1]
    pad = temporal_padding(base.patch_size_t, frames)
    latent_shape = (1, frames + pad, *scene.static.shape[2:])
    latents = initial_noise(settings.seeds, latent_shape).to(device, dtype) * scheduler.init_noise_sigma
    # DPM also draws noise at every step: give it per-item generators that continue from the seeds.
    step_generators = [torch.Generator().manual_seed((s + 1_000_003) % SEED_RANGE) for s in settings.seeds]

    n = 2 * batch if cfg else batch
    static, hands = (pad_frames(x.to(device, dtype), pad).expand(n, -1, -1, -1, -1)
                     for x in (scene.static, scene.hands))
    prompts = [positive.to(device, dtype).expand(batch, -1, -1)]
    if cfg:
        neg = negative if negative is not None else encode_prompt(base, "")
        prompts.insert(0, neg.to(device, dtype).expand(batch, -1, -1))
    prompt_embeds = torch.cat(prompts)
    rope = rotary_embedding(transformer, scene.height, scene.width, frames + pad, device)
    timesteps = scheduler.timesteps
    old_x0 = None
    for i, t in enumerate(timesteps):
        if cancel is not None and cancel():
            raise DWMCancelled(f"cancelled before step {i + 1}/{len(timesteps)}")
        x = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        model_in = dwm_model_input(x, static, hands, base.scaling_factor)
        with transformer.cache_context("cond_uncond"):
            v = transformer(hidden_states=model_in, encoder_hidden_states=prompt_embeds,
                            timestep=t.expand(n), image_rotary_emb=rope, return_dict=False)[0]
        v = v.float()
        if cfg:
            g = dynamic_guidance(settings.guidance, t.item(), settings.steps) if settings.dynamic_cfg \
                else settings.guidance
            uncond, cond = v.chunk(2)
            v = uncond + g * (cond - uncond)
        if isinstance(scheduler, CogVideoXDPMScheduler):
            back = timesteps[i - 1] if i > 0 else None
            latents, old_x0 = scheduler.step(v, old_x0, t, back, latents, generator=step_generators,
                                             return_dict=False)
        else:
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
        latents = latents.to(dtype)
        if on_step is not None:
            on_step(i, len(timesteps), latents[:, pad:])
    latents = latents[:, pad:]
    if not torch.isfinite(latents).all():
        raise DWMError("sampler", f"the result holds NaN/inf values (dtype {dtype})",
                       "load the model in bf16 (fp16 overflows in the 5B model) or fp32")
    return latents
