"""The CogVideoX nodes' video sockets without ComfyUI: a VIDEO carries its rate to Decode, a file-backed
VIDEO is streamed at the scene's rate and size, and Compare labels its panels and copies only the frames
it shows."""
import sys
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from comfyui_dwm.errors import DWMError
from conftest import random_frames
from test_nodes import SMALL, cond, host_folders, model, models_dir, run, videos  # noqa: F401 (fixtures)

from nodes.cogvideox import NODE_FUNCTIONS


class FakeVideo:
    """What a core VIDEO gives the nodes: get_components() with images and a frame rate."""

    def __init__(self, frames, rate):
        self.parts = SimpleNamespace(images=frames, audio=None, frame_rate=rate)

    def get_components(self):
        return self.parts


def test_video_inputs_carry_their_frame_rate_to_the_decoded_video(model, cond, videos):
    """A VIDEO gives the same scene as its frames as an IMAGE batch, and its rate reaches Decode;
    with IMAGE batches Decode uses its fps input."""
    rate = Fraction(30000, 1001)
    from_video = run("DWMSceneEncode", model=model, static_video=FakeVideo(videos[0], rate),
                     hand_video=FakeVideo(videos[1], Fraction(12)), fps=0, **SMALL)  # 0: their own rates
    from_images = run("DWMSceneEncode", model=model, static_video=videos[0], hand_video=videos[1], **SMALL)
    assert torch.equal(from_video.static, from_images.static) and torch.equal(from_video.hands, from_images.hands)
    assert from_video.fps == rate and from_images.fps is None  # the static video's rate wins
    latents = run("DWMSampler", model=model, conditioning=cond, scene=from_video, steps=1)
    assert latents.fps == rate
    frames, got = NODE_FUNCTIONS["DWMDecode"](model, latents, fps=24.0)
    assert got == rate and frames.shape == (9, 64, 64, 3)
    plain = run("DWMSampler", model=model, conditioning=cond, scene=from_images, steps=1)
    assert NODE_FUNCTIONS["DWMDecode"](model, plain)[1] == 8
    assert NODE_FUNCTIONS["DWMDecode"](model, plain, fps=29.97)[1] == Fraction(2997, 100)
    with pytest.raises(DWMError, match="^hand_video: got a str"):
        run("DWMSceneEncode", model=model, static_video=videos[0], hand_video="hands.mp4", **SMALL)


def test_compare_labels_panels_and_takes_videos(videos):
    """Each panel carries its label; VIDEO inputs give the same picture and their rate."""
    from comfyui_dwm.compare import side_by_side

    output = random_frames(9, 96, 96, seed=3)
    side, rate = NODE_FUNCTIONS["DWMCompare"](videos[0], videos[1], output, ground_truth=videos[0])
    plain = side_by_side([videos[0][:9], videos[1][:9], output, videos[0][:9]], height=96, labels=None)
    assert rate == 8 and side.shape == plain.shape == (9, 96, 106 + 106 + 96 + 106, 3)
    changed = (side != plain).any(dim=(0, 3))  # [H, W]: where labels were drawn
    rows = changed.any(dim=1).nonzero().flatten()
    assert 0 < rows.max() < 96 // 3  # a strip at the top of the frame
    starts = [0, 106, 212, 308]  # panel left edges: 80x72 scaled to 96 high is 106 (rounded to even)
    assert [changed[:, x:x + 10].any().item() for x in starts] == [True] * 4
    as_videos = NODE_FUNCTIONS["DWMCompare"](FakeVideo(videos[0], Fraction(15)), FakeVideo(videos[1], Fraction(15)),
                                             FakeVideo(output, Fraction(15)), fps=24.0)
    assert torch.equal(as_videos[0], NODE_FUNCTIONS["DWMCompare"](videos[0], videos[1], output)[0])
    assert as_videos[1] == 15  # the output's own rate first
    # A VIDEO input is shown at the comparison's rate: the fps input's when the output has none.
    assert NODE_FUNCTIONS["DWMCompare"](FakeVideo(videos[0], Fraction(12)), videos[1], output)[1] == 8


class FileVideo:
    """What core Load Video gives: a file to stream; decoding it whole is what the nodes must not do."""

    def __init__(self, path):
        self.path = path

    def get_stream_source(self):
        return self.path

    def get_components(self):
        raise AssertionError("the whole video was decoded")


def test_video_files_are_streamed_at_8_fps_and_the_size_used(model, tmp_path, caplog):
    """A 30 fps file gives Scene Encode the frames nearest to k/8 s at the scene's size, decoded from its
    stream (never whole); the scene and the comparison then run at 8 fps."""
    from comfyui_dwm.video_io import write_video
    from comfyui_dwm.video_stream import stream_frames

    paths = [str(tmp_path / f"{role}.mp4") for role in ("static", "hands")]
    for i, path in enumerate(paths):
        write_video(path, random_frames(40, 72, 96, seed=i), fps=30)
    with caplog.at_level("WARNING", logger="dwm"):
        scene = run("DWMSceneEncode", model=model, static_video=FileVideo(paths[0]), hand_video=FileVideo(paths[1]),
                    **SMALL)
    assert scene.fps == 8
    assert "static_video: resampled 30 fps -> 8 fps, took 9 frames = 1.0 s of 40 (1.3 s), scaled 96x72 -> " \
        "64x64 (centre-cropped)" in caplog.text
    frames = [stream_frames(p, "video", 8, 9, 64, 64)[0] for p in paths]
    assert frames[0].shape == (9, 64, 64, 3)
    as_images = run("DWMSceneEncode", model=model, static_video=frames[0], hand_video=frames[1], **SMALL)
    assert torch.equal(scene.static, as_images.static) and torch.equal(scene.hands, as_images.hands)
    output = random_frames(9, 64, 64, seed=4)
    side, rate = NODE_FUNCTIONS["DWMCompare"](FileVideo(paths[0]), FileVideo(paths[1]), output)
    at_height = [stream_frames(p, "video", 8, 9, None, 64)[0] for p in paths]  # streamed to the output's height
    assert rate == 8 and torch.equal(side, NODE_FUNCTIONS["DWMCompare"](*at_height, output)[0])


def test_compare_copies_only_the_frames_it_shows(videos):
    """A long input is cut to the output's frames before anything is copied or scaled."""
    import comfyui_dwm.compare as compare_module

    seen = []
    real = compare_module.side_by_side
    long_video = random_frames(120, 72, 80, seed=6)
    output = random_frames(9, 64, 64, seed=3)
    try:
        video_module = sys.modules[NODE_FUNCTIONS["DWMCompare"].__module__]
        video_module.side_by_side = lambda panels, **kw: seen.extend(panels) or real(panels, **kw)
        NODE_FUNCTIONS["DWMCompare"](long_video, long_video, output)
    finally:
        video_module.side_by_side = real
    assert [p.shape[0] for p in seen if p is not None] == [9, 9, 9]
    assert seen[0].data_ptr() == long_video.data_ptr()  # a view of the input, not a copy
