"""Side-by-side comparison video: static | hands | output | ground truth (when given), each panel
labelled in its top-left corner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .frames import match_length, resize_cover

PANEL_LABELS = ("static", "hands", "output", "ground truth")
MIN_LABEL_HEIGHT = 48  # panels lower than this stay unlabelled: the text would hide them


def label_overlay(text: str, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(colour ``[h, w, 3]``, alpha ``[h, w, 1]``) of white text on a dark box for the top of a panel,
    or None when the panel is too small for it."""
    if height < MIN_LABEL_HEIGHT:
        return None
    size = max(10, height // 24)
    font = ImageFont.load_default(size=size)
    pad = max(2, size // 3)
    canvas = Image.new("RGBA", (width, size * 2 + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    _left, _top, right, bottom = draw.textbbox((pad * 2, pad), text, font=font)
    if right + pad * 2 > width:
        return None
    draw.rectangle((0, 0, right + pad * 2, bottom + pad), fill=(0, 0, 0, 150))
    draw.text((pad * 2, pad), text, font=font, fill=(255, 255, 255, 255))
    rgba = torch.from_numpy(np.asarray(canvas)[: bottom + pad + 1].copy()).float() / 255
    return rgba[..., :3], rgba[..., 3:]


def draw_label(frames: torch.Tensor, text: str) -> torch.Tensor:
    """``[F, H, W, 3]`` frames with ``text`` drawn at the top left of every frame (a new tensor)."""
    overlay = label_overlay(text, frames.shape[2], frames.shape[1])
    if overlay is None:
        return frames
    colour, alpha = overlay
    out = frames.clone()
    rows = colour.shape[0]
    out[:, :rows] = frames[:, :rows] * (1 - alpha) + colour * alpha
    return out


def side_by_side(panels: list[torch.Tensor | None], height: int | None = None,
                 labels: Sequence[str | None] | None = PANEL_LABELS) -> torch.Tensor:
    """Concatenate ``[F, H, W, 3]`` videos left to right at one height and the first panel's length.

    Panels of another length are cut or padded (last frame repeated) to it; each keeps its aspect ratio.
    ``labels[i]`` names ``panels[i]`` (a None panel is skipped with its label); ``labels=None`` draws none.
    """
    labels = list(labels or ())
    named = [(p[..., :3].float(), labels[i] if i < len(labels) else None)
             for i, p in enumerate(panels) if p is not None]
    if not named:
        raise ValueError("side_by_side needs at least one video")
    frames = named[0][0].shape[0]
    height = height or named[0][0].shape[1]
    out = []
    for panel, label in named:
        width = round(panel.shape[2] * height / panel.shape[1] / 2) * 2
        panel = resize_cover(match_length(panel, frames), width, height)
        out.append(draw_label(panel, label) if label else panel)
    return torch.cat(out, dim=2)
