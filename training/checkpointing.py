"""Crash-safe training checkpoints that ``--resume latest`` can trust.

Layout of ``<output_dir>/checkpoint-<step>/``:

* accelerate's state (trainable weights, optimizer, lr scheduler, RNG states, step counter),
* ``generator-rank<i>.pt``: each rank's training generator (noise, timesteps, latent samples),
* the LoRA in the reference output-folder format (``pytorch_lora_weights.safetensors`` +
  ``non_lora_weights.safetensors``: the folder itself loads in the reference code and in our nodes)
  and in our single-file format (``<name>-step<N>.safetensors``, for ``ComfyUI/models/loras/``),
* ``train_state.json``, written last.

Everything is written into ``.tmp-checkpoint-<step>`` and renamed into place only once complete, so a
crash mid-save leaves a temporary folder that resume ignores (and the next save removes).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

from dwm.atomic import atomic_path
from dwm.errors import DWMError

PATTERN = re.compile(r"^checkpoint-(\d+)$")
MARKER = "train_state.json"


def generator_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"generator-rank{rank}.pt")


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(resume: str, output_dir: str) -> str | None:
    """``latest`` -> newest complete checkpoint (None: start fresh); a path must be complete."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    if not is_complete(resume):
        raise DWMError("resume", f"{resume} is not a complete training checkpoint (no {MARKER})",
                       "pass --resume latest, or a checkpoint-<step> folder written by training.train")
    return resume


def save(accelerator, output_dir: str, step: int, generator: torch.Generator, export, limit: int) -> str:
    """Write checkpoint-<step> atomically on every rank's behalf; ``export(folder)`` runs on all ranks
    (it may need collectives) and writes only on the main one. Keeps the newest ``limit`` (<=0: all)."""
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    final = os.path.join(output_dir, f"checkpoint-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    torch.save(generator.get_state(), generator_file(tmp, accelerator.process_index))
    export(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_path(os.path.join(tmp, MARKER)) as marker:
            with open(marker, "w", encoding="utf-8") as fh:
                json.dump({"step": step, "num_processes": accelerator.num_processes}, fh)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = list_checkpoints(output_dir)
        for _, old in done[: max(0, len(done) - limit)] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, folder: str, generator: torch.Generator) -> int:
    """Restore a checkpoint into the prepared objects and the generator; returns its step."""
    with open(os.path.join(folder, MARKER), encoding="utf-8") as fh:
        state = json.load(fh)
    if state["num_processes"] != accelerator.num_processes:
        raise DWMError("resume", f"{folder} was written by {state['num_processes']} processes, this run has "
                       f"{accelerator.num_processes}",
                       "resume with the same number of processes (the data order and RNG streams depend on it)")
    accelerator.load_state(folder)
    generator.set_state(torch.load(generator_file(folder, accelerator.process_index), weights_only=True))
    return int(state["step"])
