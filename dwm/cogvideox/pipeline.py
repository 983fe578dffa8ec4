"""One call from frames to frames, for headless generation and the trainer's validation.

The nodes run the same steps one node at a time; this is the same data flow in one function:
LoRAs -> prompt embeddings -> scene latents -> sampler -> decode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .checkpoint import DWMCheckpoint
from .decode import decode_latents
from .lora import activate
from .model import DWMBase
from .sampler import SamplerSettings, StepCallback, sample
from .scene import encode_scene
from .text import encode_prompt


def generate(base: DWMBase, static_frames: torch.Tensor, hand_frames: torch.Tensor, prompt: str = "",
             negative_prompt: str = "", loras: Sequence[tuple[DWMCheckpoint, float]] | None = (),
             settings: SamplerSettings | None = None, width: int = 720, height: int = 480,
             num_frames: int | None = None, tiling: bool = True, slicing: bool = True, scene_seed: int = 0,
             on_step: StepCallback | None = None, cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Interaction videos ``[B, F, H, W, 3]`` in [0, 1], one per seed of ``settings``.

    ``loras`` are applied with ``dwm.cogvideox.lora.activate`` (empty = the base model); ``None`` leaves the
    transformer exactly as it is, which is how the trainer validates the weights it is training.
    ``scene_seed`` seeds the hand video's latent sample, as the scene encode node's ``seed`` does (same
    default), so the same settings give the same video here and in ComfyUI.
    """
    settings = settings or SamplerSettings()
    if loras is not None:
        activate(base, loras)
    positive = encode_prompt(base, prompt)
    negative = encode_prompt(base, negative_prompt) if settings.guidance > 1 else None
    scene = encode_scene(base.vae, static_frames, hand_frames, width, height, num_frames,
                         seed=scene_seed, tiling=tiling, slicing=slicing)
    latents = sample(base, scene, positive, negative, settings, on_step=on_step, cancel=cancel)
    return decode_latents(base.vae, latents, tiling=tiling, slicing=slicing)
