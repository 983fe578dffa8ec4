"""Cheap latent -> RGB previews for sampler progress.

No fixed RGB factors are published for the CogVideoX VAE, and a random test VAE has none at all, so
the projection is fitted per scene: a least-squares linear map from the static video's latents
(16 channels + bias) to its own downsampled pixels. Denoised latents live in the same space, so the
same map previews them, for any VAE, at the cost of one small solve per encode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_PIXELS = 20000


def fit_rgb_projection(latents: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Fit ``[17, 3]`` from latents ``[F_lat, 16, h, w]`` and frames ``[F, H, W, 3]`` in [-1, 1]."""
    f_lat, _, h, w = latents.shape
    index = torch.arange(f_lat).mul(4).clamp(max=frames.shape[0] - 1)  # latent i ~ pixel frame 4i
    target = F.interpolate(frames[index].permute(0, 3, 1, 2).float(), size=(h, w), mode="area")
    x = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    if x.shape[0] > MAX_PIXELS:
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_PIXELS]
        x, y = x[pick], y[pick]
    x = torch.cat([x.cpu(), torch.ones(x.shape[0], 1)], dim=1)
    return torch.linalg.lstsq(x, y.cpu(), driver="gelsd").solution


def latents_to_rgb(latents: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """One latent frame ``[16, h, w]`` -> ``[h, w, 3]`` uint8 image through the fitted projection."""
    x = latents.float().permute(1, 2, 0).cpu()
    rgb = x @ projection[:-1] + projection[-1]
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
