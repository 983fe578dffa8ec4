"""One call from frames to frames, for headless generation and the trainer's validation.

The nodes run the same steps one node at a time; this is the same data flow in one function:
LoRAs -> prompt embeddings -> scene latents -> sampler -> decode.

Memory and speed: the base's memory mode (``memory.apply_memory_mode``, set by the caller once) decides
how LoRAs go in and whether the VAE tiles; ``cache`` turns a step cache on for this one run; the attention
backend and compile are properties of the transformer (``speed.set_attention``, ``speed.compile_blocks``).
Out of memory ends in one :class:`DWMError` naming the memory option to turn on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .checkpoint import DWMCheckpoint
from .decode import decode_latents
from . import memory
from .model import DWMBase
from .sampler import SamplerSettings, StepCallback, sample
from .scene import encode_scene
from .speed import step_cache
from .text import encode_prompt


def generate(base: DWMBase, static_frames: torch.Tensor, hand_frames: torch.Tensor, prompt: str = "",
             negative_prompt: str = "", loras: Sequence[tuple[DWMCheckpoint, float]] | None = (),
             settings: SamplerSettings | None = None, width: int = 720, height: int = 480,
             num_frames: int | None = None, tiling: bool = True, slicing: bool = True, scene_seed: int = 0,
             on_step: StepCallback | None = None, cancel: Callable[[], bool] | None = None,
             cache: str | None = None, cache_params: dict | None = None) -> torch.Tensor:
    """Interaction videos ``[B, F, H, W, 3]`` in [0, 1], one per seed of ``settings``.

    ``loras`` are applied with ``memory.activate`` (``lora.activate`` under the memory mode; empty = the base model); ``None`` leaves the
    transformer exactly as it is, which is how the trainer validates the weights it is training.
    ``scene_seed`` seeds the hand video's latent sample, as the scene encode node's ``seed`` does (same
    default), so the same settings give the same video here and in ComfyUI.
    ``cache`` names a step cache of ``speed.CACHES`` (None = off, the exact loop) with ``cache_params``.
    """
    settings = settings or SamplerSettings()
    if memory.forces_vae_tiling(base):
        tiling = slicing = True
    try:
        if loras is not None:
            memory.activate(base, loras)
        positive = encode_prompt(base, prompt)
        negative = encode_prompt(base, negative_prompt) if settings.guidance > 1 else None
        scene = encode_scene(base.vae, static_frames, hand_frames, width, height, num_frames,
                             seed=scene_seed, tiling=tiling, slicing=slicing)
        with step_cache(base.transformer, cache, steps=settings.steps, cfg=settings.guidance > 1,
                        **(cache_params or {})):
            latents = sample(base, scene, positive, negative, settings, on_step=on_step, cancel=cancel)
        return decode_latents(base.vae, latents, tiling=tiling, slicing=slicing)
    except torch.OutOfMemoryError as err:
        raise memory.out_of_memory(base, err) from None


def prepare_base(base: DWMBase, device, memory_mode: str = "none", attention: str = "sdpa",
                 compile_blocks: bool = False) -> None:
    """Apply the memory mode, the attention backend and per-block compile to a loaded base, once."""
    from . import speed

    memory.apply_memory_mode(base, memory_mode, device)
    speed.set_attention(base.transformer, attention)
    if compile_blocks:
        speed.compile_blocks(base.transformer)
