"""Read and write mp4 videos with PyAV (FFmpeg), frames as ``[F, H, W, 3]`` float in [0, 1]."""

from __future__ import annotations

import os
from contextlib import contextmanager
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np
import torch

from .atomic import atomic_path
from .errors import DWMError


@contextmanager
def open_video(source: str | BinaryIO, name: str):
    """The container and first video stream of a file path or file object; any failure while it is
    open (opening, demuxing, decoding) becomes one DWMError naming ``name``."""
    if isinstance(source, str) and not os.path.isfile(source):
        problem = "is a folder, not a video file" if os.path.isdir(source) else "does not exist"
        raise DWMError(name, f"{source} {problem}", "check the path (and the sample id in the list file)")
    label = source if isinstance(source, str) else "the video"
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise DWMError(name, f"{label} has no video stream", "pass an mp4/webm/mov video file")
            yield container, container.streams.video[0]
    except DWMError:
        raise
    except (av.FFmpegError, ValueError, OSError) as err:
        raise DWMError(name, f"cannot decode {label} ({err})",
                       "the file is corrupt or not a video; re-export it as H.264 mp4") from err


def stream_rate(stream) -> Fraction | None:
    """The stream's average frame rate from its metadata, or None when it has none."""
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else None


def _decode(path: str, name: str, limit: int | None) -> tuple[list[np.ndarray], float]:
    """Up to ``limit`` frames (all when None) of the first video stream, and its frame rate."""
    with open_video(path, name) as (container, stream):
        fps = float(stream_rate(stream) or 8)
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if limit is not None and len(frames) >= limit:
                break
    if not frames:
        raise DWMError(name, f"{path} holds no decodable frames", "re-export it as H.264 mp4")
    return frames, fps


def read_video(path: str, name: str = "video") -> tuple[torch.Tensor, float]:
    """All frames of the first video stream and its frame rate."""
    frames, fps = _decode(path, name, None)
    return torch.from_numpy(np.stack(frames)).float().div_(255), fps


def probe_video(path: str, name: str = "video") -> None:
    """Check cheaply (the first frame only) that ``path`` is a decodable video, before any long work."""
    _decode(path, name, 1)


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return frames[..., :3].clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()


def write_video(path: str, frames: torch.Tensor, fps: float = 8.0, crf: int = 17) -> str:
    """Write H.264 (yuv420p) atomically; odd sizes are padded by one black pixel (H.264 needs even)."""
    data = to_uint8(frames)
    _, h, w, _ = data.shape
    if h % 2 or w % 2:
        data = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with atomic_path(path, suffix=".mp4") as tmp, av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = data.shape[2], data.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in data:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
