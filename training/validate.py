"""Validation during training: the family's own headless sampler (see ``training/families``) on held-out samples.

For each validation sample it writes ``<name>.mp4`` (the generation) and ``<name>-compare.mp4``
(static | hands | generation | ground truth) under ``validation/step-<N>/`` and returns PSNR/SSIM
(and LPIPS/DreamSim when available) against the ground-truth video.
"""

from __future__ import annotations

import contextlib
import os

import torch

from comfyui_dwm.compare import side_by_side
from comfyui_dwm.frames import prepare_frames
from comfyui_dwm.video_io import read_video, write_video

from comfyui_dwm.dataset import Sample, read_prompt


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Sample with dropout and other training-only behaviour off, then restore the mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _frames(sample: Sample, key: str) -> torch.Tensor:
    return read_video(sample.video(key), name=f"sample {sample.name} {key}")[0]


@torch.no_grad()
def validate(generate, transformer: torch.nn.Module, samples: list[Sample], metrics: dict, folder: str, width: int,
             height: int, num_frames: int, fps: float) -> dict[str, float]:
    """Generate each sample (``generate(static, hands, prompt) -> [F, H, W, 3]``), save the videos, and
    return the mean of each metric."""
    os.makedirs(folder, exist_ok=True)
    totals: dict[str, float] = {}
    for sample in samples:
        static, hands, truth = (_frames(sample, k) for k in ("static", "hands", "video"))
        with eval_mode(transformer):
            video = generate(static, hands, read_prompt(sample))
        truth = prepare_frames(truth, width, height, num_frames, f"{sample.name} video")
        truth = (truth.permute(1, 2, 3, 0) + 1) / 2
        write_video(os.path.join(folder, f"{sample.slug}.mp4"), video, fps)
        write_video(os.path.join(folder, f"{sample.slug}-compare.mp4"), side_by_side([static, hands, video, truth]), fps)
        for name, fn in metrics.items():
            totals[name] = totals.get(name, 0.0) + fn(video, truth)
    return {name: value / len(samples) for name, value in totals.items()}
