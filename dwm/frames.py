"""Bring input frames to what the VAE accepts, with a documented rule and warnings, never silently.

Frames travel as ``[F, H, W, 3]`` float tensors in [0, 1] (ComfyUI's ``IMAGE`` layout).

Rules (see docs/input-rules.md):

* **Size**: each video is scaled to cover ``width x height`` keeping its aspect ratio, then
  centre-cropped. Width and height must be multiples of 16 (8x VAE downsampling x 2x2 patches).
* **Frame count**: the VAE needs ``4k + 1`` frames. The target is ``num_frames`` when given (it must
  be ``4k + 1``), otherwise the largest ``4k + 1`` not above the video's length. A longer video loses
  its trailing frames; a shorter one is padded by repeating its last frame. Both warn.
* **Values**: floats in [0, 1]; ``uint8`` frames are divided by 255, float frames in 0-255 too (with
  a warning); NaN/inf or other ranges are refused.
* For a V1.5 base an odd latent count is handled in the sampler (see ``sampler.py``), not here.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .errors import DWMError

SIZE_MULTIPLE = 16
log = logging.getLogger("dwm")


def valid_frame_count(n: int) -> int:
    """Largest ``4k + 1`` not above ``n``."""
    return (n - 1) // 4 * 4 + 1


def check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % SIZE_MULTIPLE:
            raise DWMError(name, f"{value} is not a positive multiple of {SIZE_MULTIPLE}",
                           f"use e.g. 720x480 (the paper's size); sizes must be multiples of {SIZE_MULTIPLE}")


def check_num_frames(num_frames: int) -> None:
    if num_frames < 1 or (num_frames - 1) % 4:
        raise DWMError("num_frames", f"{num_frames} is not of the form 4k+1",
                       f"use {valid_frame_count(max(num_frames, 1))} or {valid_frame_count(max(num_frames, 1)) + 4} "
                       "(49 is the paper's)")


def check_frames(frames: torch.Tensor, name: str) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] not in (3, 4):
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise DWMError(name, f"expected frames as [frames, height, width, 3], got {shape}",
                       "pass a video's frames (an IMAGE batch in ComfyUI)")
    if frames.shape[0] == 0:
        raise DWMError(name, "the video has no frames", "check the file decodes (e.g. open it in a player)")


def unit_range(frames: torch.Tensor, name: str) -> torch.Tensor:
    """Frames as floats in [0, 1] (the value rule above)."""
    if frames.dtype == torch.uint8:
        return frames.float() / 255
    frames = frames.float()
    if not torch.isfinite(frames).all():
        raise DWMError(name, "the frames hold NaN or infinite values",
                       "check the node or file that produced them (a failed decode or a division by zero)")
    low, high = frames.min().item(), frames.max().item()
    if low >= -1e-3 and high <= 1 + 1e-3:
        return frames.clamp(0, 1)
    if low >= 0 and 2 < high <= 255 + 1e-3:
        log.warning(f"{name}: values up to {high:.0f}, read as 0-255 and divided by 255 (frames are "
                    "expected in [0, 1])")
        return frames / 255
    raise DWMError(name, f"values range from {low:.3g} to {high:.3g}",
                   "pass frames in [0, 1] (ComfyUI IMAGE) or 0-255")


def warn_crop(frames: torch.Tensor, width: int, height: int, name: str) -> None:
    """Say how much of the picture the cover-and-crop rule removes when the aspect ratios differ."""
    h, w = frames.shape[1:3]
    ratio = (w / h) / (width / height)
    if abs(ratio - 1) > 0.01:
        side, kept = ("width", 1 / ratio) if ratio > 1 else ("height", ratio)
        log.warning(f"{name}: {w}x{h} has another aspect ratio than {width}x{height}; "
                    f"{(1 - kept) * 100:.0f}% of its {side} is cropped away (centre kept)")


def match_length(frames: torch.Tensor, target: int) -> torch.Tensor:
    """Cut trailing frames, or repeat the last frame, to exactly ``target`` frames."""
    if frames.shape[0] >= target:
        return frames[:target]
    return torch.cat([frames, frames[-1:].expand(target - frames.shape[0], *frames.shape[1:])])


def fit_frame_count(frames: torch.Tensor, num_frames: int | None, name: str) -> torch.Tensor:
    """Drop trailing frames or repeat the last one to reach the target count (rule above)."""
    have = frames.shape[0]
    if num_frames is None or num_frames <= 0:
        target = valid_frame_count(have)
    else:
        check_num_frames(num_frames)
        target = num_frames
    if have > target:
        log.warning(f"{name}: {have} frames, using the first {target} (the VAE needs 4k+1 frames; "
              f"{have - target} trailing frames dropped)")
    elif have < target:
        log.warning(f"{name}: {have} frames, padded to {target} by repeating the last frame")
    return match_length(frames, target)


def resize_cover(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale to cover ``width x height`` keeping aspect ratio, then centre-crop; [F, H, W, C] in, out."""
    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top:top + height, left:left + width]
    return x.permute(0, 2, 3, 1).clamp(0, 1)


def prepare_frames(frames: torch.Tensor, width: int, height: int, num_frames: int | None,
                   name: str) -> torch.Tensor:
    """Frames ``[F, H, W, C]`` in [0, 1] -> ``[C, F, H, W]`` in [-1, 1] at the target size and count."""
    check_frames(frames, name)
    check_size(width, height)
    frames = unit_range(fit_frame_count(frames[..., :3], num_frames, name), name)  # convert only what is used
    warn_crop(frames, width, height, name)
    frames = resize_cover(frames, width, height)
    return frames.permute(3, 0, 1, 2).float() * 2 - 1


def prepare_scene_frames(static_frames: torch.Tensor, hand_frames: torch.Tensor, width: int, height: int,
                         num_frames: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both videos of a scene through ``prepare_frames``; they must end up the same length."""
    static = prepare_frames(static_frames, width, height, num_frames, "static video")
    hands = prepare_frames(hand_frames, width, height, num_frames, "hand video")
    if static.shape[1] != hands.shape[1]:
        raise DWMError("hand video", f"{hands.shape[1]} usable frames, but the static video has "
                       f"{static.shape[1]} (inputs had {hand_frames.shape[0]} and {static_frames.shape[0]})",
                       "render both videos from the same camera path with the same frame count, or set "
                       "num_frames so both are cut or padded to it")
    return static, hands
