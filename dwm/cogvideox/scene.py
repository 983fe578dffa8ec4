"""Scene encoding: static-scene and hand videos -> scaled VAE latents ``[1, F, 16, h, w]``.

Like the reference at inference, the static video is encoded with the latent distribution's mode
and the hand video with a sample. Unlike the reference (which samples from the global torch RNG)
the hand sample is drawn from a ``torch.Generator`` seeded with ``seed``, so a run is reproducible
from its settings alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..frames import prepare_scene_frames
from ..preview import fit_rgb_projection


@dataclass
class SceneLatents:
    """The DWM conditions of one sample, ready for the sampler."""

    static: torch.Tensor  # [1, F_lat, 16, h, w], scaled by the VAE scaling factor
    hands: torch.Tensor  # same shape
    num_frames: int  # pixel frames (4k + 1)
    width: int
    height: int
    preview: torch.Tensor  # [17, 3] latent -> RGB projection for step previews


def configure_vae(vae, tiling: bool, slicing: bool) -> None:
    """Tiling bounds the VAE's memory by the tile size; slicing decodes one sample at a time."""
    (vae.enable_tiling if tiling else vae.disable_tiling)()
    (vae.enable_slicing if slicing else vae.disable_slicing)()


@torch.no_grad()
def encode_video(vae, video: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
    """``[C, F, H, W]`` in [-1, 1] -> scaled latents ``[1, F_lat, 16, h, w]``."""
    x = video.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
    dist = vae.encode(x).latent_dist
    z = dist.mode() if mode == "mode" else dist.sample(generator=generator)
    return (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()


def encode_scene(vae, static_frames: torch.Tensor, hand_frames: torch.Tensor, width: int = 720,
                 height: int = 480, num_frames: int | None = None, seed: int = 0,
                 hand_latents: str = "sample", tiling: bool = True, slicing: bool = True,
                 check_cancel: Callable[[], None] | None = None) -> SceneLatents:
    """Normalise both videos (see ``frames.py``) and encode them; they must agree in length."""
    static, hands = prepare_scene_frames(static_frames, hand_frames, width, height, num_frames)
    configure_vae(vae, tiling, slicing)
    generator = torch.Generator().manual_seed(seed)
    static_latents = encode_video(vae, static, "mode", None)
    if check_cancel is not None:
        check_cancel()
    hand_latents_t = encode_video(vae, hands, hand_latents, generator)
    preview = fit_rgb_projection(static_latents[0], static.permute(1, 2, 3, 0))
    return SceneLatents(static=static_latents, hands=hand_latents_t, num_frames=static.shape[1],
                        width=width, height=height, preview=preview)
