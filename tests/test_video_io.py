"""Video IO: round trips, fps, atomic writes, clear errors for missing or corrupt files."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import random_frames
from dwm.compare import side_by_side
from dwm.errors import DWMError
from dwm.video_io import read_video, write_video


def test_round_trip_keeps_frames_size_and_fps(tmp_path):
    frames = torch.zeros(9, 32, 48, 3)
    frames[:, :, :24] = 1.0
    path = str(tmp_path / "v.mp4")
    write_video(path, frames, fps=8)
    back, fps = read_video(path)
    assert back.shape == frames.shape and fps == 8
    assert (back - frames).abs().mean() < 0.02
    assert [f for f in os.listdir(tmp_path)] == ["v.mp4"]


def test_odd_sizes_padded_to_even(tmp_path):
    path = str(tmp_path / "odd.mp4")
    write_video(path, random_frames(5, 31, 47), fps=12)
    back, fps = read_video(path)
    assert back.shape == (5, 32, 48, 3) and fps == 12


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(DWMError, match="hand video: .*does not exist"):
        read_video(str(tmp_path / "none.mp4"), "hand video")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(DWMError, match="static video: cannot decode .*re-export it as H.264"):
        read_video(str(bad), "static video")


def test_side_by_side_matches_heights_and_lengths():
    out = side_by_side([random_frames(9, 32, 48), random_frames(5, 64, 64), random_frames(12, 16, 24)])
    assert out.shape == (9, 32, 48 + 32 + 48, 3)
