"""Video IO: round trips, fps, atomic writes (and the cleanup of a killed write), clear errors for missing
or corrupt files, and the cheap probe that checks inputs before a model loads."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import random_frames
from comfyui_dwm.atomic import TEMP_PREFIX, atomic_path, clean_stale_temporaries
from comfyui_dwm.compare import PANEL_LABELS, side_by_side
from comfyui_dwm.errors import DWMError
from comfyui_dwm.video_io import probe_video, read_video, write_video


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


def test_probe_checks_only_the_first_frame(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), random_frames(5, 16, 16))
    probe_video(path, "static video")
    with pytest.raises(DWMError, match="static video: .* is a folder"):
        probe_video(str(tmp_path), "static video")
    with pytest.raises(DWMError, match="hand video: .*does not exist"):
        probe_video(str(tmp_path / "none.mp4"), "hand video")
    (tmp_path / "bad.mp4").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DWMError, match="cannot decode"):
        probe_video(str(tmp_path / "bad.mp4"), "hand video")


def test_a_killed_write_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    path = str(tmp_path / "out.mp4")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        assert os.path.basename(tmp).startswith(TEMP_PREFIX) and tmp.endswith(".mp4")
        open(tmp, "wb").close()
        os.link(tmp, tmp_path / "kept")  # what SIGKILL leaves: the temporary, never the final name
        raise RuntimeError
    os.rename(tmp_path / "kept", tmp)
    assert clean_stale_temporaries(str(tmp_path), before=os.path.getmtime(tmp)) == []  # not older than the run
    assert clean_stale_temporaries(str(tmp_path), before=os.path.getmtime(tmp) + 1) == [tmp]
    assert os.listdir(tmp_path) == []


def test_side_by_side_matches_heights_and_lengths():
    out = side_by_side([random_frames(9, 32, 48), random_frames(5, 64, 64), random_frames(12, 16, 24)])
    assert out.shape == (9, 32, 48 + 32 + 48, 3)


def test_side_by_side_labels_each_panel_at_its_top_left():
    grey = torch.full((2, 96, 128, 3), 0.5)
    plain = side_by_side([grey, grey, grey, None], labels=None)
    assert torch.equal(plain, torch.cat([grey] * 3, dim=2))
    labelled = side_by_side([grey, grey, grey, None])
    changed = (labelled != plain).any(dim=(0, 3))
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0)
    assert rows.min() == 0 and rows.max() < 96 // 3  # a strip at the top
    for left in (0, 128, 256):  # in each panel's left part only
        assert cols[left:left + 20].all() and not cols[left + 100:left + 128].any()
    assert torch.equal(labelled[0], labelled[1])  # the same on every frame
    boxes = [labelled[0, :20, x:x + 60] for x in (0, 128, 256)]
    assert not torch.equal(boxes[0], boxes[1]) and not torch.equal(boxes[1], boxes[2])  # static | hands | output
    # white text on a darkened box: brighter and darker pixels than the grey frame
    assert labelled.max() > 0.9 and labelled[0, :20, :60].min() < 0.35
    assert PANEL_LABELS == ("static", "hands", "output", "ground truth")


def test_side_by_side_leaves_small_panels_unlabelled():
    small = random_frames(3, 32, 48)
    assert torch.equal(side_by_side([small, small]), side_by_side([small, small], labels=None))
