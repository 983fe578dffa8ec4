"""Scene encoding for DWM-Wan: static-scene and hand videos -> normalised Wan latents ``[1, 16, F_lat, h, w]``.

As in the reference's inference, the static video is encoded with the VAE's mode and the hand video
with a sample. The sample's noise comes from a generator seeded with ``seed`` (not the global RNG),
so a run is reproducible from its settings alone. Sizes and frame counts follow ``dwm/frames.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..frames import prepare_scene_frames
from .vae import encode_wan_video, set_tiling

TIME_COMPRESSION = 4


@dataclass
class WanScene:
    """The DWM conditions of one clip, channels first, ready for ``wan_model_input``."""

    static: torch.Tensor  # [1, 16, F_lat, h, w], normalised (latents_mean / latents_std)
    hands: torch.Tensor  # same shape
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        """Pixel frames (``4k + 1``) the latents stand for."""
        return (self.static.shape[2] - 1) * TIME_COMPRESSION + 1


def encode_wan_scene(vae, static_frames: torch.Tensor, hand_frames: torch.Tensor, width: int = 720,
                     height: int = 480, num_frames: int | None = None, seed: int = 0,
                     tiling: bool = False) -> WanScene:
    """Bring both videos to the same size and ``4k + 1`` frames (see ``frames.py``), then encode them."""
    static, hands = prepare_scene_frames(static_frames, hand_frames, width, height, num_frames)
    set_tiling(vae, tiling)
    generator = torch.Generator().manual_seed(seed)
    return WanScene(static=encode_wan_video(vae, static), hands=encode_wan_video(vae, hands, generator),
                    width=width, height=height)
