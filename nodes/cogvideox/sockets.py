"""Our socket types, what travels on them, and the frames of an IMAGE or VIDEO input.

Own type names keep core nodes from being wired to objects of another shape: ``DWM_LATENTS`` are
``[B, F, 16, h, w]`` video latents, not the core ``LATENT`` dict. The frame rate of a VIDEO input
travels with the scene and the latents, so the decoder's VIDEO keeps it without retyping.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from fractions import Fraction

import torch
from comfyui_dwm.cogvideox.checkpoint import DWMCheckpoint
from comfyui_dwm.cogvideox.model import DWMBase
from comfyui_dwm.cogvideox.scene import SceneLatents
from comfyui_dwm.errors import DWMError
from comfyui_dwm.video_stream import DEFAULT_FPS

from .. import host
from .models import LoadedBase

MODEL = "DWM_MODEL"
CONDITIONING = "DWM_CONDITIONING"
SCENE = "DWM_SCENE"  # a Scene (SceneLatents + frame rate), tensors on the CPU
LATENTS = "DWM_LATENTS"
CATEGORY = "DWM"


@dataclass(frozen=True, eq=False)
class ModelHandle:
    """A shared base, the device choice and memory mode to run it in, plus the LoRAs to apply to it;
    LoRA loaders return new handles, never edit one (``placement.placed`` puts the base in the mode).

    The handles are what keep a base loaded (models.py caches it weakly): when the host drops them,
    the base and its RAM are freed.
    """

    loaded: LoadedBase
    device: str = "auto"
    loras: tuple[tuple[DWMCheckpoint, float], ...] = field(default=())
    memory_mode: str = "none"

    @property
    def base(self) -> DWMBase:
        return self.loaded.base

    def with_lora(self, ckpt: DWMCheckpoint, strength: float) -> "ModelHandle":
        return replace(self, loras=self.loras + ((ckpt, float(strength)),))


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Prompt embeddings ``[1, 226, D]`` on the CPU."""

    positive: torch.Tensor
    negative: torch.Tensor


@dataclass
class Scene(SceneLatents):
    """The encoded scene, plus the frame rate of its VIDEO inputs (None when they were IMAGE batches)."""

    fps: Fraction | None = None


@dataclass(frozen=True, eq=False)
class Latents:
    """Denoised latents ``[B, F_lat, 16, h, w]`` on the CPU, one item per seed, and the scene's rate."""

    samples: torch.Tensor
    fps: Fraction | None = None


def frames_of(value, name: str, fps: float | None = None, max_frames: int | None = None,
              width: int | None = None, height: int | None = None) -> tuple[torch.Tensor, Fraction | None]:
    """``[F, H, W, 3]`` frames and frame rate of an IMAGE batch (as it is, rate unknown) or a VIDEO (only
    what is used decoded: resampled to ``fps``, at most ``max_frames``, at the size; see host.video_frames)."""
    if value is None:
        raise DWMError(name, "nothing is connected", "connect an IMAGE batch or a VIDEO (e.g. Load Video)")
    if isinstance(value, torch.Tensor):
        return value, None
    if not hasattr(value, "get_components"):
        raise DWMError(name, f"got a {type(value).__name__}", "connect an IMAGE batch or a VIDEO")
    return host.video_frames(value, name, fps, max_frames, width, height)


def as_rate(fps: float) -> Fraction:
    """A widget's frame rate as the exact fraction a VIDEO carries (29.97 -> 2997/100)."""
    if not fps > 0:
        raise DWMError("fps", f"{fps} is not a positive frame rate", f"use e.g. {DEFAULT_FPS:g}")
    return Fraction(fps).limit_denominator(1001)
