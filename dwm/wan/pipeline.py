"""One call from frames to frames for a Wan base, for headless generation and the trainer's validation.

The same data flow as ``dwm.cogvideox.pipeline.generate``: releases -> umT5 prompt embeddings ->
scene latents (static = VAE mode, hands = seeded VAE sample) -> flow-matching sampler -> decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..cogvideox.sampler import StepCallback
from .checkpoint import WanRelease
from .lora import activate
from .model import WanBase
from .sampler import WanSettings, sample
from .scene import encode_wan_scene
from .text import encode_wan_prompt
from .vae import decode_wan_latents

DEFAULT_NEGATIVE = "bad detailed"  # the reference's default negative prompt for Wan


def prompt_embedding(base: WanBase, prompt: str) -> torch.Tensor:
    """Trimmed umT5 embedding ``[1, L, 4096]`` (fp32, CPU), cached on the base."""
    return encode_wan_prompt(base.text_encoder, base.tokenizer, prompt, cache=base.prompt_cache)


def generate_wan(base: WanBase, static_frames: torch.Tensor, hand_frames: torch.Tensor, prompt: str = "",
                 negative_prompt: str = DEFAULT_NEGATIVE, releases: Sequence[tuple[WanRelease, float]] | None = (),
                 settings: WanSettings | None = None, width: int = 720, height: int = 480,
                 num_frames: int | None = None, tiling: bool = True, scene_seed: int = 0,
                 on_step: StepCallback | None = None, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Interaction videos ``[B, F, H, W, 3]`` in [0, 1], one per seed of ``settings``.

    ``releases`` are applied with ``dwm.wan.lora.activate`` (empty = the base model); ``None`` leaves the
    transformer as it is (the trainer validating the weights it trains). ``scene_seed`` seeds the hand
    video's latent sample; ``tiling`` bounds the VAE's memory (as for CogVideoX, on by default).
    """
    settings = settings or WanSettings()
    if releases is not None:
        activate(base, releases)
    positive = prompt_embedding(base, prompt)
    negative = prompt_embedding(base, negative_prompt) if settings.guidance > 1 else None
    scene = encode_wan_scene(base.vae, static_frames, hand_frames, width, height, num_frames, seed=scene_seed,
                             tiling=tiling)
    latents = sample(base, scene, positive, negative, settings, on_step=on_step, cancel=cancel)
    return decode_wan_latents(base.vae, latents, tiling=tiling)
