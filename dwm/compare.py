"""Side-by-side comparison video: static | hands | output | ground truth (when given)."""

from __future__ import annotations

import torch

from .frames import match_length, resize_cover


def side_by_side(panels: list[torch.Tensor], height: int | None = None) -> torch.Tensor:
    """Concatenate ``[F, H, W, 3]`` videos left to right at one height and the first panel's length.

    Panels of another length are cut or padded (last frame repeated) to it; each keeps its aspect ratio.
    """
    panels = [p[..., :3].float() for p in panels if p is not None]
    if not panels:
        raise ValueError("side_by_side needs at least one video")
    frames = panels[0].shape[0]
    height = height or panels[0].shape[1]
    out = []
    for panel in panels:
        width = round(panel.shape[2] * height / panel.shape[1] / 2) * 2
        out.append(resize_cover(match_length(panel, frames), width, height))
    return torch.cat(out, dim=2)
