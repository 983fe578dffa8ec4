"""Precompute VAE latents and T5 prompt embeddings in the reference layout.

``[accelerate launch] python -m comfyui_dwm.training.prepare --data-root R --list L --model M``

The family is read from the base's configs. For a CogVideoX-Fun base it writes, per sample,
``video_latents/``, ``static_video_latents/``, ``hand_video_latents/`` (the VAE's latent distribution
``[32, F_lat, H/8, W/8]``: mean and log-variance, unscaled, in the model dtype, as the reference's encoder
stores them; training draws a fresh sample from it each step with the run's seeded generator) and
``prompt_embeds_rewrite/`` (``[226, D]``) beside the videos. For a Wan2.1-Fun base it writes the
reference's ``*_wan/`` folders: one normalised VAE sample ``[16, F_lat, H/8, W/8]`` per video (its noise
seeded from the sample's name and the video's role, so a rerun writes the same file) and the umT5
embedding trimmed to the prompt ``[L, 4096]``. Existing files are
skipped, every file is written atomically, and under ``accelerate launch`` each process takes every
n-th sample. Videos are brought to the size and frame count by ``dwm.frames.prepare_frames`` (the same
rule as generation). Failing samples are listed at the end and give exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from comfyui_dwm.atomic import atomic_path
from comfyui_dwm.dataset import VIDEO_DIRS, Sample, read_list, read_prompt
from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import prepare_frames
from comfyui_dwm.safety import Interrupted, stop_on_signals
from comfyui_dwm.video_io import read_video

from .families import for_model


def save_tensor(tensor: torch.Tensor, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(tensor.detach().to("cpu").contiguous(), tmp)


def prepare_sample(family, sample: Sample, width: int, height: int, num_frames: int) -> int:
    """Write the sample's missing files (names from ``family.layout``); returns how many were written."""
    written = 0
    for key, folder in VIDEO_DIRS.items():
        out = family.layout.latents(sample, key)
        if os.path.isfile(out):
            continue
        frames, _ = read_video(sample.video(key), name=f"sample {sample.name} {folder}")
        video = prepare_frames(frames, width, height, num_frames, f"{sample.name} {folder}")
        save_tensor(family.encode_video(video, f"{sample.name}:{key}"), out)
        written += 1
    if not os.path.isfile(family.layout.prompt_embeds(sample)):
        save_tensor(family.encode_text(read_prompt(sample)), family.layout.prompt_embeds(sample))
        written += 1
    return written


def prepare(data_root: str, list_file: str, model: str, width: int = 720, height: int = 480,
            num_frames: int = 49, dtype: str = "bf16") -> list[str]:
    """This process's share of the samples; returns the error lines (empty when all went well)."""
    state = PartialState()
    samples = read_list(data_root, list_file)[state.process_index::state.num_processes]
    family = for_model(model)
    family.load_encoders(model, dtype, state.device)
    errors, written = [], 0
    bar = tqdm(samples, desc=f"prepare [{state.process_index + 1}/{state.num_processes}]",
               position=state.process_index, dynamic_ncols=True)
    for sample in bar:
        try:
            written += prepare_sample(family, sample, width, height, num_frames)
        except DWMError as err:
            errors.append(str(err))
        bar.set_postfix(written=written, errors=len(errors))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_dwm.training.prepare", allow_abbrev=False,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Precompute DWM training latents and prompt embeddings "
                                                 "(files that exist are skipped, so a rerun resumes)")
    parser.add_argument("--data-root", required=True, help="dataset root in the reference layout")
    parser.add_argument("--list", required=True, help="list file: one video path (or id) per line")
    parser.add_argument("--model", required=True,
                        help="CogVideoX-Fun InP base (folder or hub id) or Wan2.1-Fun InP folder")
    parser.add_argument("--width", type=int, default=720, help="frame width (multiple of 16)")
    parser.add_argument("--height", type=int, default=480, help="frame height (multiple of 16)")
    parser.add_argument("--num-frames", type=int, default=49, help="frames per clip (4k+1)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="encoder precision")
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            errors = prepare(args.data_root, args.list, args.model, args.width, args.height, args.num_frames,
                             args.dtype)
    except DWMError as err:
        errors = [str(err)]
    except Interrupted as err:  # every file written so far is complete (atomic): a rerun goes on
        print(f"stopped: {err}; finished files are kept, rerun the same command to go on", file=sys.stderr)
        return err.exit_code
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
