"""Our socket types and what travels on them.

Own type names keep core nodes from being wired to objects of another shape: ``DWM_LATENTS`` are
``[B, F, 16, h, w]`` video latents, not the core ``LATENT`` dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from dwm.cogvideox.checkpoint import DWMCheckpoint
from dwm.cogvideox.model import DWMBase

MODEL = "DWM_MODEL"
CONDITIONING = "DWM_CONDITIONING"
SCENE = "DWM_SCENE"  # a dwm.cogvideox.scene.SceneLatents, tensors on the CPU
LATENTS = "DWM_LATENTS"
CATEGORY = "DWM"


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """A shared base plus the LoRAs to apply to it; LoRA loaders return new handles, never edit one."""

    base: DWMBase
    patchers: dict | None  # component name -> host ModelPatcher (None without ComfyUI)
    loras: tuple[tuple[DWMCheckpoint, float], ...] = field(default=())

    def with_lora(self, ckpt: DWMCheckpoint, strength: float) -> "ModelHandle":
        return ModelHandle(self.base, self.patchers, self.loras + ((ckpt, float(strength)),))


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Prompt embeddings ``[1, 226, D]`` on the CPU."""

    positive: torch.Tensor
    negative: torch.Tensor


@dataclass(frozen=True, eq=False)
class Latents:
    """Denoised latents ``[B, F_lat, 16, h, w]`` on the CPU, one item per seed."""

    samples: torch.Tensor
