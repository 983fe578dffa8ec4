"""Streaming video input (comfyui_dwm.video_stream): only the frames and the size DWM uses are decoded,
at 8 fps by default, with one warning that says what was done."""
import io
import logging
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from comfyui_dwm.errors import DWMError
from comfyui_dwm.video_stream import select_frames, stream_frames

PHONE_RATE = Fraction(30000, 1001)
PHONE_FRAMES = 190


def write_clip(path, frames: int, width: int, height: int, rate=PHONE_RATE) -> str:
    """A clip whose frame i is grey level i (x 255/frames) with a white bar: cheap to encode at any size."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        image = np.zeros((height, width, 3), np.uint8)
        for i in range(frames):
            image[:] = i * 255 // frames
            image[:, (i * width) // frames:(i * width) // frames + 8] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


@pytest.fixture(scope="module")
def phone_clip(tmp_path_factory):
    """1080p at 29.97 fps, 190 frames (6.3 s), as a phone records it."""
    return write_clip(tmp_path_factory.mktemp("clips") / "phone.mp4", PHONE_FRAMES, 1920, 1080)


def nearest_indices(count: int, rate: Fraction, fps: int) -> list[int]:
    """The source frame nearest to each k / fps seconds."""
    return [round(k * rate / fps) for k in range(count)]


def test_phone_clip_gives_49_frames_over_6_s_at_8_fps(phone_clip, caplog):
    with caplog.at_level(logging.WARNING, logger="dwm"):
        frames, rate = stream_frames(phone_clip, "static video", fps=8, max_frames=49, width=720, height=480)
    assert frames.shape == (49, 480, 720, 3) and frames.dtype == torch.float32 and rate == 8
    assert 0 <= frames.min() and frames.max() <= 1
    assert [r.getMessage() for r in caplog.records] == [
        "static video: resampled 29.97 fps -> 8 fps, took 49 frames = 6.0 s of 190 (6.3 s), "
        "scaled 1920x1080 -> 720x480 (centre-cropped)"]
    # The kept frames are the source frames nearest to 0, 1/8, ..., 6 s (the same frames decoded whole).
    every, every_rate = stream_frames(phone_clip, "static video", fps=0, width=720, height=480)
    assert every.shape[0] == PHONE_FRAMES and every_rate == PHONE_RATE
    picked = nearest_indices(49, PHONE_RATE, 8)
    assert picked[-1] == 180 and torch.equal(frames, every[picked])


def test_a_file_object_streams_the_same_frames(phone_clip):
    with open(phone_clip, "rb") as fh:
        from_memory, _ = stream_frames(io.BytesIO(fh.read()), "hand video", max_frames=9, height=64)
    from_path, rate = stream_frames(phone_clip, "hand video", max_frames=9, height=64)
    assert from_memory.shape == (9, 64, 114, 3) and rate == 8  # height alone keeps the aspect ratio
    assert torch.equal(from_memory, from_path)


def test_a_clip_at_the_model_rate_and_size_is_read_as_it_is(tmp_path, caplog):
    path = write_clip(tmp_path / "dwm.mp4", 9, 96, 64, rate=Fraction(8))
    with caplog.at_level(logging.WARNING, logger="dwm"):
        frames, rate = stream_frames(path, "hand video", fps=8, max_frames=49, width=96, height=64)
    assert frames.shape == (9, 64, 96, 3) and rate == 8 and caplog.records == []


PEAK_CHECK = """
import resource, sys, torch
from comfyui_dwm.video_stream import stream_frames
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames, _ = stream_frames(sys.argv[1], "static video", fps=8, max_frames=49, width=720, height=480)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_peak_memory_is_the_frames_kept_not_the_clip(phone_clip):
    """The whole clip as float frames is 4.7 GB (1.2 GB as bytes); streaming peaks near the 49 float
    frames kept at 720x480 (203 MB) plus their bytes and a few decoded frames."""
    out = subprocess.run([sys.executable, "-c", PEAK_CHECK, phone_clip], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) < 450, out.stdout


def test_frames_in_memory_are_resampled_by_the_same_rule(caplog):
    frames = torch.arange(PHONE_FRAMES, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 2, 3)
    with caplog.at_level(logging.WARNING, logger="dwm"):
        kept, rate = select_frames(frames, PHONE_RATE, 8, 49, "hand video")
    assert rate == 8 and kept[:, 0, 0, 0].long().tolist() == nearest_indices(49, PHONE_RATE, 8)
    assert caplog.records[0].getMessage() == \
        "hand video: resampled 29.97 fps -> 8 fps, took 49 frames = 6.0 s of 190 (6.3 s)"
    same, same_rate = select_frames(frames, Fraction(8), 8, None, "hand video")
    assert same.shape == frames.shape and same.data_ptr() == frames.data_ptr() and same_rate == 8  # a view
    first, _ = select_frames(frames, None, 8, 9, "hand video")  # no known rate: cut only
    assert torch.equal(first, frames[:9])


def test_bad_sources_and_rates_are_one_clear_line(tmp_path, phone_clip):
    with pytest.raises(DWMError, match="^static video: .*missing.mp4 does not exist"):
        stream_frames(str(tmp_path / "missing.mp4"), "static video")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(DWMError, match="^hand video: cannot decode"):
        stream_frames(str(tmp_path / "bad.mp4"), "hand video")
    with pytest.raises(DWMError, match="^fps: -1"):
        stream_frames(phone_clip, "static video", fps=-1)
    with pytest.raises(DWMError, match="^width: 100"):
        stream_frames(phone_clip, "static video", width=100, height=64)


def test_the_cli_reads_inputs_at_its_fps_frames_and_size(phone_clip):
    from comfyui_dwm.cli import build_parser
    from comfyui_dwm.cli_generate import read_input

    args = build_parser().parse_args(["generate", "--static", phone_clip, "--hands", phone_clip, "--out", "o.mp4",
                                      "--width", "240", "--height", "160", "--num-frames", "49"])
    assert args.fps == 8
    frames, rate = read_input(args, phone_clip, "static video")
    assert frames.shape == (49, 160, 240, 3) and rate == 8.0
    args.fps, args.num_frames = 0, 0  # the videos' own rate and length
    frames, rate = read_input(args, phone_clip, "static video")
    assert frames.shape[0] == PHONE_FRAMES and rate == pytest.approx(29.97, abs=1e-3)
