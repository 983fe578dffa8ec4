"""Read only what DWM uses of a video: its frames at the model's rate, up to the frame count, at the size.

A phone clip (1080p, 29.97 fps, 190 frames) decoded whole is 4.7 GB of float frames, of which DWM
uses 49 frames at 720x480. Like the reference's custom-video preparation (ffmpeg ``fps=8``, scaled to
cover the size and centre-cropped, 49 frames), frames are streamed with PyAV: each decoded frame is
dropped unless it is the nearest to the next time step of the target rate, a kept frame is scaled in
FFmpeg straight from its decoded form, and decoding stops once the frame count is reached. Peak memory
is a few decoded frames plus the output. What was done is said in one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import BinaryIO

import numpy as np
import torch

from .errors import DWMError
from .frames import check_size
from .video_io import open_video, stream_rate

DEFAULT_FPS = 8.0  # DWM's training videos (the reference resamples custom videos to it)
RATE_TOLERANCE = 1e-3  # a source this close to the target rate keeps every frame
log = logging.getLogger("dwm")


def target_rate(fps: float | None, source: Fraction | None) -> Fraction | None:
    """The rate to resample to: ``fps`` as an exact fraction, or None to keep every frame (no ``fps``,
    no known source rate, or a source already at it)."""
    if fps is not None and fps < 0:
        raise DWMError("fps", f"{fps} is not a frame rate", f"use {DEFAULT_FPS:g} (DWM's rate), or 0 to keep "
                       "the video's own")
    if not fps or not source:
        return None
    rate = Fraction(fps).limit_denominator(1001)
    return None if abs(float(source / rate) - 1) < RATE_TOLERANCE else rate


def nearest_in_time(timed: Iterable[tuple[object, float]], rate: Fraction) -> Iterator:
    """From (item, time in s) pairs in time order, the item nearest to each time step k / rate counted
    from the first item's time: frames are dropped (or repeated) as ffmpeg's ``fps`` filter does."""
    step, previous, previous_time, start = 0, None, 0.0, None
    for item, time in timed:
        start = time if start is None else start
        time -= start
        while step / rate <= time:
            target = float(step / rate)
            yield previous if previous is not None and target - previous_time < time - target else item
            step += 1
        previous, previous_time = item, time


def _seconds(frames: int, rate: Fraction | None) -> str:
    return f" ({float(frames / rate):.1f} s)" if rate else ""


def _report(name: str, rate: Fraction | None, target: Fraction | None, total: int | None, kept: int,
            cut: bool, scaled: tuple | None) -> None:
    """One warning saying what was done to the video, when anything was."""
    done = []
    if target is not None:
        done.append(f"resampled {float(rate):.4g} fps -> {float(target):.4g} fps")
    if cut:
        of = f"{total}{_seconds(total, rate)}" if total else "more"
        span = (kept - 1) / (target or rate or DEFAULT_FPS)  # from the first kept frame to the last
        done.append(f"took {kept} frames = {float(span):.1f} s of {of}")
    if scaled is not None:
        (w, h), cover, (to_w, to_h) = scaled
        done.append(f"scaled {w}x{h} -> {to_w}x{to_h}" + (" (centre-cropped)" if cover != (to_w, to_h) else ""))
    if done:
        log.warning(f"{name}: " + ", ".join(done))


def select_frames(frames: torch.Tensor, rate: Fraction | None, fps: float | None,
                  max_frames: int | None, name: str) -> tuple[torch.Tensor, Fraction | None]:
    """Frames already in memory (a VIDEO made of frames) resampled and cut by the same rule, keeping a
    view (or a copy of only the frames kept); the rate they now have."""
    count = frames.shape[0]
    target = target_rate(fps, rate)
    if target is None:
        picked = list(range(count))
    else:
        picked = list(nearest_in_time(((i, float(i / rate)) for i in range(count)), target))
    cut = bool(max_frames) and len(picked) > max_frames
    picked = picked[:max_frames] if cut else picked
    kept = frames[:len(picked)] if target is None else frames[picked]
    _report(name, rate, target, count, len(picked), cut, None)
    return kept, target or rate


def cover_size(width: int, height: int, to_width: int | None, to_height: int) -> tuple[int, int]:
    """(width, height) covering ``to_width x to_height`` with the aspect ratio kept (frames.resize_cover's
    rule), or of height ``to_height`` when no width is asked."""
    scale = to_height / height if to_width is None else max(to_height / height, to_width / width)
    return max(to_width or 1, round(width * scale)), max(to_height, round(height * scale))


def _to_array(frame, size: tuple[int, int] | None, crop: tuple[int, int] | None) -> np.ndarray:
    """One frame as RGB, scaled by FFmpeg from its decoded form, then centre-cropped."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    image = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (size[1] - crop[1]) // 2, (size[0] - crop[0]) // 2
    return image[top:top + crop[1], left:left + crop[0]]


def stream_frames(source: str | BinaryIO, name: str, fps: float | None = DEFAULT_FPS,
                  max_frames: int | None = None, width: int | None = None,
                  height: int | None = None) -> tuple[torch.Tensor, Fraction | None]:
    """``[F, H, W, 3]`` float frames in [0, 1] of a video file (path or file object) and their rate.

    ``fps``: resample to this rate (None or 0: keep every frame); ``max_frames``: stop after this many
    (None or 0: all); ``width`` x ``height``: scale to cover and centre-crop (``height`` alone: scale to
    that height; neither: keep the size). Warns once with what was done.
    """
    if height is not None:
        check_size(width or 16, height)
    with open_video(source, name) as (container, stream):
        rate = stream_rate(stream)
        target = target_rate(fps, rate)
        decoded = ((f, f.time if f.time is not None else i / (rate or DEFAULT_FPS))
                   for i, f in enumerate(container.decode(stream)))
        frames = (f for f, _t in decoded) if target is None else nearest_in_time(decoded, target)
        kept, size, crop, first, cut = [], None, None, None, False
        for frame in frames:
            if max_frames and len(kept) >= max_frames:
                cut = True  # one frame past the count: the video goes on
                break
            if first is None:
                first = (frame.width, frame.height)
                if height is not None:
                    size = cover_size(*first, width, height)
                    crop = (width or size[0], height)
            kept.append(_to_array(frame, size, crop))
        total = stream.frames or None
    if not kept:
        raise DWMError(name, "the video holds no decodable frames", "re-export it as H.264 mp4")
    out = torch.from_numpy(np.stack(kept)).float().div_(255)
    scaled = None if crop is None or crop == first else (first, size, crop)
    _report(name, rate, target, total, len(kept), cut, scaled)
    return out, target or rate
