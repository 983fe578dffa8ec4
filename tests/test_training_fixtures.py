"""Fixtures and helpers shared by test_training_*.py: a small real dataset cut from the shared example
(96x64, 9 frames), with and without precomputed latents, and a fast CPU training config."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from comfyui_dwm.frames import resize_cover
from comfyui_dwm.video_io import read_video, write_video

from conftest import available_samples, sample_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = ("00055", "00013")
WIDTH, HEIGHT, FRAMES = 96, 64, 9


def write_dataset(root: str) -> str:
    """Downscaled copies of two example samples in the reference layout (00013 is 00055's clip again
    when the shared examples are not beside the checkout)."""
    sources = {"00055": "00055", "00013": "00013" if "00013" in available_samples() else "00055"}
    for stem, source in sources.items():
        files = sample_files(source)
        for folder in ("videos", "videos_static", "videos_hands"):
            frames, fps = read_video(files[folder])
            write_video(os.path.join(root, folder, stem + ".mp4"), resize_cover(frames[:FRAMES], WIDTH, HEIGHT), fps)
        os.makedirs(os.path.join(root, "prompts"), exist_ok=True)
        shutil.copy(files["prompts"], os.path.join(root, "prompts", stem + ".txt"))
    with open(os.path.join(root, "train.txt"), "w") as fh:
        fh.write("videos/00055.mp4\n00013\n")
    with open(os.path.join(root, "one.txt"), "w") as fh:
        fh.write("00055\n")
    return root


@pytest.fixture(scope="session")
def tiny_v11(tiny_dir) -> str:
    return tiny_dir["1.1"]


@pytest.fixture(scope="session")
def tiny_v15(tiny_dir) -> str:
    return tiny_dir["1.5"]


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory) -> str:
    """Videos and prompts only (latents are encoded on the fly)."""
    return write_dataset(str(tmp_path_factory.mktemp("raw")))


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory, raw_data, tiny_v11) -> str:
    """The same samples with latents and prompt embeddings precomputed by training.prepare."""
    from comfyui_dwm.training.prepare import prepare

    root = str(tmp_path_factory.mktemp("prepared") / "data")
    shutil.copytree(raw_data, root)
    assert prepare(root, "train.txt", tiny_v11, WIDTH, HEIGHT, FRAMES, "fp32") == []
    return root


def config_args(model: str, data: str, out: str, **overrides) -> list[str]:
    """CLI flags of a fast CPU run; overrides as key=value."""
    values = dict(model=model, data_root=data, train_list="train.txt", output_dir=out, width=WIDTH,
                  height=HEIGHT, num_frames=FRAMES, mixed_precision="no", train_batch_size=1,
                  gradient_accumulation_steps=2, max_train_steps=4, checkpointing_steps=2, lr_warmup_steps=1,
                  dataloader_num_workers=0, gradient_checkpointing="false", report_to="none")
    values.update(overrides)
    args = ["--config", os.path.join(REPO, "training", "configs", "dwm_cogvideox_5b_lora.yaml"),
            "--validation_list", ""]
    for key, value in values.items():
        args += [f"--{key}", str(value)]
    return args


def config(model: str, data: str, out: str, **overrides):
    from comfyui_dwm.training.config import parse_args

    return parse_args(config_args(model, data, out, **overrides))


DEFAULT_DISPOSITIONS = {signal.SIGINT: signal.SIG_DFL, signal.SIGTERM: signal.SIG_DFL}


def run_cli(args: list[str], launcher: list[str] | None = None, dispositions: dict | None = None,
            new_session: bool = False, **env_extra) -> subprocess.Popen:
    """Start the trainer with defined signal dispositions (default: SIG_DFL), never the ones pytest
    inherited (a background run ignores SIGINT); ``new_session`` gives it its own process group."""
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **env_extra)
    cmd = (launcher or [sys.executable]) + ["-m", "comfyui_dwm.training.train"] + args
    chosen = {**DEFAULT_DISPOSITIONS, **(dispositions or {})}

    def set_dispositions():
        for sig, handler in chosen.items():
            signal.signal(sig, handler)

    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=set_dispositions, start_new_session=new_session)


def load_file_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)
