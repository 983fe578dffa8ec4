"""Crash-safe training checkpoints that ``--resume`` can trust, and that never run code when loaded.

Layout of ``<output_dir>/checkpoint-<step>/``:

* accelerate's state (the trainable weights only, as safetensors; optimizer; RNG states),
* ``generator-rank<i>.pt``: each rank's training generator (noise, timesteps, latent samples),
* the LoRA in the reference output-folder format (``pytorch_lora_weights.safetensors`` +
  ``non_lora_weights.safetensors``: the folder itself loads in the reference code and in our nodes)
  and in our single-file format (``<name>-step<N>.safetensors``, for ``ComfyUI/models/loras/``),
* ``train_state.json``, written last: the step, the process count, the lr scheduler's state (JSON, not
  a pickle: nothing is registered with accelerate, so it never writes or reads ``custom_checkpoint_*.pkl``)
  and the size of every other file.

Everything is written into ``.tmp-checkpoint-<step>`` and renamed into place only once complete; a
failed save removes it (a killed one leaves it, and the next run removes it).

Before resuming, a checkpoint is validated by reading its files: every listed file exists with its
size, nothing unlisted is present, safetensors headers cover their files, JSON parses, and every
pickle-based file loads with ``weights_only=True`` (no code runs). ``--resume latest`` falls back to
the newest intact checkpoint and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from accelerate.utils import load as weights_only_load  # torch.load + numpy RNG arrays allowed
from safetensors import safe_open

from comfyui_dwm.atomic import atomic_path
from comfyui_dwm.errors import DWMError
from comfyui_dwm.safety import write_error

from . import engines
from .lora_setup import trainable_names

PATTERN = re.compile(r"^checkpoint-(\d+)$")
PARTIAL = re.compile(r"^\.tmp-checkpoint-\d+$")
MARKER = "train_state.json"
PICKLED = (".bin", ".pt", ".pth", ".pkl")
RESUME_FIX = "pass --resume latest, or an intact checkpoint-<step> folder written by training.train"


def generator_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"generator-rank{rank}.pt")


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def _numbered(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = [(PATTERN.match(n), os.path.join(output_dir, n)) for n in os.listdir(output_dir)]
    return sorted((int(m.group(1)), path) for m, path in found if m and os.path.isdir(path))


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints (their marker was written), oldest first."""
    return [(step, path) for step, path in _numbered(output_dir) if is_complete(path)]


def _files(folder: str) -> dict[str, int]:
    """Every file below ``folder`` (relative, ``/``-separated) with its size."""
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return sizes


def _format_problem(path: str) -> str | None:
    """Why a file does not read as its format; None when it does. Pickles never run code here."""
    ext = os.path.splitext(path)[1]
    try:
        if ext == ".safetensors":
            with safe_open(path, "pt") as fh:  # checks the header and that the tensors cover the file
                fh.keys()
        elif ext == ".json":
            with open(path, encoding="utf-8") as fh:
                json.load(fh)
        elif ext in PICKLED:
            weights_only_load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # each reader raises its own types for damaged or foreign files
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return None


def read_state(folder: str) -> dict:
    with open(os.path.join(folder, MARKER), encoding="utf-8") as fh:
        return json.load(fh)


def problem(folder: str) -> str | None:
    """Why ``folder`` is not an intact checkpoint of this trainer; None when every file reads."""
    if not is_complete(folder):
        return f"no {MARKER} (an interrupted save, or not a training checkpoint)"
    try:
        marker = read_state(folder)
        listed = marker["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MARKER} is damaged or from an older trainer ({type(err).__name__}: {err})"
    if not isinstance(listed, dict):
        return f"{MARKER} is damaged (its file list is a {type(listed).__name__})"
    present = _files(folder)
    present.pop(MARKER)
    foreign = sorted(set(present) - set(listed))
    if foreign:
        return f"holds {', '.join(foreign)}, which the trainer did not write; refusing to load it"
    for name, size in listed.items():
        if name not in present:
            return f"{name} is missing"
        if present[name] != size:
            return f"{name} is truncated or changed ({present[name]} bytes, {size} written)"
        with engines.safe_globals(marker.get("engine")):
            found = _format_problem(os.path.join(folder, name))
        if found:
            return f"{name} is damaged ({found})"
    return None


def resolve_resume(resume: str, output_dir: str, say=print) -> str | None:
    """``latest`` -> the newest intact checkpoint (None: there is none, start fresh), saying which
    damaged ones it skipped; a path must be intact. Raises when checkpoints exist but none is intact."""
    if not resume:
        return None
    if resume != "latest":
        found = problem(resume) if os.path.isdir(resume) else "the folder does not exist"
        if found:
            raise DWMError("resume", f"{resume} cannot be resumed from: {found}", RESUME_FIX)
        return resume
    skipped = []
    for _, folder in reversed(_numbered(output_dir)):
        found = problem(folder)
        if found is None:
            if skipped:
                say(f"--resume latest: skipping {'; '.join(skipped)}; resuming from {folder} instead")
            return folder
        skipped.append(f"{os.path.basename(folder)} ({found})")
    if skipped:
        raise DWMError("resume", f"no intact checkpoint in {output_dir}: {'; '.join(skipped)}",
                       "move these checkpoint-* folders away to train from step 0, or restore an intact one")
    return None


def remove_partial(output_dir: str) -> list[str]:
    """Remove the ``.tmp-checkpoint-*`` folders a killed save left behind (main process, before training)."""
    names = [n for n in os.listdir(output_dir) if PARTIAL.match(n)] if os.path.isdir(output_dir) else []
    for name in names:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    return names


def trainable_only(module: torch.nn.Module):
    """A ``save_state`` pre-hook that keeps only the trainable tensors in the saved model state: the
    frozen base (28 GB for Wan 14B) is read from the base folder again, never copied per checkpoint."""
    names = set(trainable_names(module))

    def hook(models, weights, output_dir) -> None:
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in names}

    return hook


def save(accelerator, output_dir: str, step: int, generator: torch.Generator, export, limit: int,
         state: dict) -> str:
    """Write checkpoint-<step> atomically on every rank's behalf; ``export(folder)`` runs on all ranks
    (it may need collectives) and writes only on the main one. ``state`` (JSON) joins the marker.
    Keeps the newest ``limit`` (<=0: all). A failed write removes the partial folder."""
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{step}")
    final = os.path.join(output_dir, f"checkpoint-{step}")
    main = accelerator.is_main_process
    try:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp, **engines.save_kwargs(accelerator))
        torch.save(generator.get_state(), generator_file(tmp, accelerator.process_index))
        export(tmp)
        accelerator.wait_for_everyone()
        if main:
            marker = dict(state, step=step, num_processes=accelerator.num_processes,
                          engine=engines.engine_name(accelerator), files=_files(tmp))
            with atomic_path(os.path.join(tmp, MARKER)) as path:
                with open(path, "w", encoding="utf-8") as fh:
                    json.dump(marker, fh)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException as err:
        error = write_error(err, "output_dir", output_dir, "continue with --resume latest") \
            if isinstance(err, Exception) else None
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise
        raise error from err
    if main:
        done = list_checkpoints(output_dir)
        for _, old in done[: max(0, len(done) - limit)] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, folder: str) -> dict:
    """Restore accelerate's objects and this rank's generator state from a validated checkpoint;
    returns the marker's state (step, lr scheduler). Every pickle is read with ``weights_only=True``."""
    state = read_state(folder)
    if state["num_processes"] != accelerator.num_processes:
        raise DWMError("resume", f"{folder} was written by {state['num_processes']} processes, this run has "
                       f"{accelerator.num_processes}",
                       "resume with the same number of processes (the data order and RNG streams depend on it)")
    engine = engines.engine_name(accelerator)
    if state.get("engine", "ddp") != engine:
        raise DWMError("resume", f"{folder} was written under {state.get('engine', 'ddp')}, this run uses {engine}",
                       "resume with the accelerate config that wrote it (the optimizer state is laid out per engine)")
    # The model files hold the trainable tensors only (see trainable_only and engines.save_kwargs).
    accelerator.load_state(folder, load_kwargs={"weights_only": True}, **engines.load_kwargs(accelerator))
    state["generator"] = torch.load(generator_file(folder, accelerator.process_index), weights_only=True)
    return state
