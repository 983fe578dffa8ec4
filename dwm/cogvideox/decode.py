"""VAE decode: latents ``[B, F_lat, 16, h, w]`` -> frames ``[B, F, H, W, 3]`` in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .scene import configure_vae


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, tiling: bool = True, slicing: bool = True,
                   check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
    """Decode one sample at a time (slicing) so a batch never multiplies the VAE's peak memory."""
    configure_vae(vae, tiling, slicing)
    videos = []
    for item in latents:
        if check_cancel is not None:
            check_cancel()
        z = item.unsqueeze(0).permute(0, 2, 1, 3, 4).to(vae.device, vae.dtype)
        z = (1 / vae.config.scaling_factor) * z  # the reference's order of operations, bit for bit
        x = vae.decode(z).sample
        videos.append((x.float() / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 3, 0).cpu())
    return torch.stack(videos)
