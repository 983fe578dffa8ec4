"""Runs of ``comfyui_dwm generate`` in child processes (one, or two under accelerate launch) for the sharding
and CFG-parallel tests.

Run as ``-m tests.generate_runs ARGS`` it is ``python -m comfyui_dwm ARGS`` that also saves every video it
hands to the writer (float frames, before H.264) as ``FRAMES_DIR/<file name>.pt``, created exclusively (a
second write of one output fails the run): the frames are compared exactly, since libx264's threaded
encoder does not always give the same bits for the same frames.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two CPU processes through accelerate's torchrun path (ACCELERATE_USE_CPU=1, backend gloo).
LAUNCH = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def generate(args: list[str], frames_dir: str | None = None, processes: int = 1) -> str:
    """Run generate (recording frames into ``frames_dir`` when given); its exit code must be 0; the log."""
    module = ["-m", "tests.generate_runs"] if frames_dir else ["-m", "comfyui_dwm"]
    launcher = LAUNCH + [str(free_port())] if processes == 2 else []
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               ACCELERATE_USE_CPU="1", FRAMES_DIR=frames_dir or "")
    if processes == 1:
        env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, *launcher, *module, "generate", *args], check=False, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]
    return done.stdout


def frames(frames_dir: str) -> dict[str, torch.Tensor]:
    return {name.removesuffix(".pt"): torch.load(os.path.join(frames_dir, name), weights_only=True)
            for name in sorted(os.listdir(frames_dir))}


def recording(save, where: str):
    """``cli_generate._save`` that first keeps the frames in ``where`` (each output once)."""

    def record(path, video, fps):
        with open(os.path.join(where, os.path.basename(path) + ".pt"), "xb") as fh:
            torch.save(video.contiguous(), fh)
        save(path, video, fps)
    return record


def _record_and_run() -> int:
    from comfyui_dwm import cli_generate
    from comfyui_dwm.cli import main

    cli_generate._save = recording(cli_generate._save, os.environ["FRAMES_DIR"])
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_record_and_run())
