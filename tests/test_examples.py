"""The real example samples through the whole pipeline (tiny model), and the command line: the shipped
00055 always, the other four realworld_dynamic samples when the shared folder has them."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import available_samples, write_data_root
from comfyui_dwm.cli import main
from comfyui_dwm.cogvideox.pipeline import generate
from comfyui_dwm.cogvideox.sampler import SamplerSettings
from comfyui_dwm.dataset import Sample, read_prompt
from comfyui_dwm.video_io import read_video, write_video


@pytest.mark.parametrize("sample", available_samples())
def test_real_sample_runs_end_to_end_small(base11, data_root, sample, tmp_path):
    static, fps = read_video(os.path.join(data_root, "videos_static", sample + ".mp4"))
    hands, _ = read_video(os.path.join(data_root, "videos_hands", sample + ".mp4"))
    gt, _ = read_video(os.path.join(data_root, "videos", sample + ".mp4"))
    assert static.shape == hands.shape == gt.shape == (49, 480, 720, 3) and fps == 8
    assert hands.mean() < static.mean()  # hands on black
    videos = generate(base11, static, hands, read_prompt(Sample(sample, data_root, sample)),
                      settings=SamplerSettings(steps=2), width=96, height=64)
    assert videos.shape == (1, 49, 64, 96, 3) and 0 <= videos.min() and videos.max() <= 1
    out = write_video(str(tmp_path / "out.mp4"), videos[0], fps)
    assert read_video(out)[0].shape[0] == 49


def test_v15_base_runs_49_frames_where_the_reference_crashes(base15, data_root):
    """49 frames = 13 latent frames, odd for V1.5's temporal patches: padded, denoised, dropped."""
    static, _ = read_video(os.path.join(data_root, "videos_static", "00055.mp4"))
    hands, _ = read_video(os.path.join(data_root, "videos_hands", "00055.mp4"))
    videos = generate(base15, static, hands, "I open the fridge", settings=SamplerSettings(steps=2),
                      width=96, height=64)
    assert videos.shape == (1, 49, 64, 96, 3) and torch.isfinite(videos).all()


@pytest.mark.slow
def test_full_size_generate_cli_writes_49_frame_720x480(tiny_dir, data_root, tmp_path, capsys):
    out, compare = tmp_path / "out.mp4", tmp_path / "compare.mp4"
    code = main(["generate", "--model", tiny_dir["1.1"], "--static", f"{data_root}/videos_static/00055.mp4",
                 "--hands", f"{data_root}/videos_hands/00055.mp4", "--gt", f"{data_root}/videos/00055.mp4",
                 "--prompt", "I open the fridge", "--steps", "2", "--no-tiling", "--out", str(out),
                 "--compare", str(compare)])
    assert code == 0, capsys.readouterr().err
    video, fps = read_video(str(out))
    assert video.shape == (49, 480, 720, 3) and fps == 8
    assert read_video(str(compare))[0].shape == (49, 480, 4 * 720, 3)


def test_dataset_mode_resumes(tiny_dir, tmp_path):
    root = tmp_path / "data"
    write_data_root(str(root), {"00055": "00055", "00017": "00055"})
    shutil.rmtree(root / "videos")  # no ground truth
    (root / "list.txt").write_text("00055\n\n# comment\n00017.mp4\n")
    out = tmp_path / "results"
    os.makedirs(out)
    write_video(str(out / "00017.mp4"), torch.zeros(5, 16, 16, 3))  # a run killed before its comparison
    args = ["generate", "--model", tiny_dir["1.1"], "--data-root", str(root), "--list", str(root / "list.txt"),
            "--out-dir", str(out), "--steps", "1", "--width", "96", "--height", "64"]
    assert main(args) == 0
    assert read_video(str(out / "00055.mp4"))[0].shape == (49, 64, 96, 3)
    assert read_video(str(out / "00055_compare.mp4"))[0].shape == (49, 64, 3 * 96, 3)  # no ground truth here
    assert read_video(str(out / "00017.mp4"))[0].shape[0] == 5  # kept, not generated again
    assert read_video(str(out / "00017_compare.mp4"))[0].shape == (49, 64, 96 + 96 + 64, 3)  # rebuilt from it
