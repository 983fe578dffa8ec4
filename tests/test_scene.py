"""Input rules for frames and the scene encoder: sizes, frame counts, mismatches, warnings."""

from __future__ import annotations

import pytest
import torch

from conftest import expect_log, random_frames
from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import fit_frame_count, prepare_frames, resize_cover, valid_frame_count
from comfyui_dwm.preview import latents_to_rgb
from comfyui_dwm.cogvideox.scene import encode_scene


def test_valid_frame_counts():
    assert [valid_frame_count(n) for n in (1, 4, 5, 49, 50, 52, 53)] == [1, 1, 5, 49, 49, 49, 53]


def test_long_video_cut_with_warning(caplog):
    with expect_log(caplog, "52 frames, using the first 49.*3 trailing frames dropped"):
        out = fit_frame_count(torch.arange(52.0).view(52, 1, 1, 1), None, "static video")
    assert out.shape[0] == 49 and out[-1].item() == 48


def test_short_video_padded_with_warning(caplog):
    with expect_log(caplog, "hand video: 45 frames, padded to 49"):
        out = fit_frame_count(torch.arange(45.0).view(45, 1, 1, 1), 49, "hand video")
    assert out.shape[0] == 49 and torch.all(out[44:] == 44)


def test_invalid_num_frames_suggests_valid_ones():
    with pytest.raises(DWMError, match="num_frames: 48 is not of the form 4k\\+1.*use 45 or 49"):
        fit_frame_count(random_frames(9), 48, "static video")


def test_resize_cover_keeps_aspect_and_crops_centre():
    frames = torch.zeros(1, 100, 300, 3)
    frames[:, :, 75:225] = 1.0  # a bright centre half
    out = resize_cover(frames, 96, 64)
    assert out.shape == (1, 64, 96, 3)
    # the 3:1 frame is scaled to 64x192 and its centre 96 columns (the bright half) are kept
    assert out[:, :, 2:-2].min() > 0.9 and out.mean() > 0.95


def test_prepare_frames_range_and_layout():
    out = prepare_frames(random_frames(9, 32, 48), 48, 32, None, "static video")
    assert out.shape == (3, 9, 32, 48) and out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("width,height,match", [(100, 64, "width: 100 is not a positive multiple of 16"),
                                                (96, 0, "height: 0")])
def test_bad_sizes(width, height, match):
    with pytest.raises(DWMError, match=match):
        prepare_frames(random_frames(), width, height, None, "static video")


@pytest.mark.parametrize("bad", [torch.rand(9, 64, 96), torch.rand(0, 64, 96, 3), "video.mp4"])
def test_bad_frame_tensors(bad):
    with pytest.raises(DWMError, match="static video"):
        prepare_frames(bad, 96, 64, None, "static video")


def test_mismatched_lengths_are_an_error_unless_num_frames_given(base11, caplog):
    static, hands = random_frames(13), random_frames(9)
    with pytest.raises(DWMError, match="hand video: 9 usable frames, but the static video has 13"):
        encode_scene(base11.vae, static, hands, 96, 64)
    with expect_log(caplog, "padded"):
        scene = encode_scene(base11.vae, static, hands, 96, 64, num_frames=13)
    assert scene.static.shape == scene.hands.shape == (1, 4, 16, 8, 12)


def test_scene_encoding_scaled_seeded_and_previewable(base11):
    static, hands = random_frames(9, 64, 96, 1), random_frames(9, 80, 120, 2)  # hands resized to match
    a = encode_scene(base11.vae, static, hands, 96, 64, seed=3)
    b = encode_scene(base11.vae, static, hands, 96, 64, seed=3)
    c = encode_scene(base11.vae, static, hands, 96, 64, seed=4)
    assert torch.equal(a.hands, b.hands) and not torch.equal(a.hands, c.hands)
    assert torch.equal(a.static, c.static)  # the static video uses the distribution's mode
    mode = base11.vae.encode(prepare_frames(static, 96, 64, None, "s").unsqueeze(0)).latent_dist.mode()
    torch.testing.assert_close(a.static, mode.permute(0, 2, 1, 3, 4) * 0.7)
    image = latents_to_rgb(a.static[0, 0], a.preview)
    assert image.shape == (8, 12, 3) and image.dtype == torch.uint8


def test_nan_frames_are_one_clear_error():
    frames = random_frames(9, 64, 96)
    frames[3, 5, 5, 0] = float("nan")
    with pytest.raises(DWMError, match="static video: the frames hold NaN"):
        prepare_frames(frames, 96, 64, None, "static video")


def test_uint8_and_0_255_frames_are_read_as_such(caplog):
    frames = random_frames(9, 64, 96)
    want = prepare_frames(frames, 96, 64, None, "v")
    as_bytes = (frames * 255).round().to(torch.uint8)
    torch.testing.assert_close(prepare_frames(as_bytes, 96, 64, None, "v"), want, atol=2 / 255, rtol=0)
    with expect_log(caplog, r"hand video: values up to \d+, read as 0-255"):
        got = prepare_frames(frames * 255, 96, 64, None, "hand video")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(DWMError, match="values range from -0.5"):
        prepare_frames(frames - 0.5, 96, 64, None, "v")


def test_a_portrait_clip_says_what_is_cropped(caplog):
    with expect_log(caplog, r"static video: 64x96 has another aspect ratio than 96x64; 56% of its height"):
        prepare_frames(random_frames(9, 96, 64), 96, 64, None, "static video")
