"""Find base models and DWM LoRAs in the host's model folders by what the files hold, not their names.

A base is a folder whose ``transformer/config.json`` declares a CogVideoX transformer. A DWM LoRA is
a reference output folder (it holds ``pytorch_lora_weights.safetensors``) or a ``.safetensors``
file whose header lists LoRA tensors and the widened patch projection. Choices are paths relative to their root,
with ``/`` separators, so saved workflows work across operating systems.
"""

from __future__ import annotations

import json
import os

from comfyui_dwm.cogvideox.checkpoint import FULL_DIR, LORA_FILES, PREFIX, PROJ_KEYS
from comfyui_dwm.errors import DWMError
from safetensors import safe_open

from .. import host

TRANSFORMER_CLASS = "CogVideoXTransformer3DModel"
BASE_DEPTH = 2  # models/dwm/<name> or models/dwm/<owner>/<name>
_header_cache: dict[str, tuple[float, bool]] = {}


def is_base_folder(path: str) -> bool:
    """A folder whose ``transformer/config.json`` declares a CogVideoX transformer."""
    try:
        with open(os.path.join(path, FULL_DIR, "config.json"), encoding="utf-8") as fh:
            return json.load(fh).get("_class_name") == TRANSFORMER_CLASS
    except (OSError, ValueError, AttributeError):
        return False


def is_dwm_file(path: str) -> bool:
    """True when the safetensors header holds LoRA tensors and ``patch_embed.proj.weight`` (cached by
    mtime): a whole DWM checkpoint, not the reference folder's ``non_lora_weights.safetensors`` alone."""
    try:
        mtime = os.path.getmtime(path)
        cached = _header_cache.get(path)
        if cached is None or cached[0] != mtime:
            with safe_open(path, framework="pt") as fh:
                keys = set(fh.keys())
            wanted = PROJ_KEYS[0]
            has_proj = wanted in keys or PREFIX + wanted in keys
            _header_cache[path] = (mtime, has_proj and any(".lora_A." in k for k in keys))
        return _header_cache[path][1]
    except Exception:  # unreadable or not safetensors: simply not a DWM LoRA
        return False


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _base_names(root: str, path: str, depth: int) -> list[str]:
    if is_base_folder(path):
        return [_rel(root, path)]
    if depth == 0:
        return []
    try:
        entries = sorted(e.path for e in os.scandir(path) if e.is_dir())
    except OSError:
        return []
    return [name for entry in entries for name in _base_names(root, entry, depth - 1)]


def base_choices() -> list[str]:
    names = [n for root in host.model_roots(host.BASE_FOLDERS) for n in _base_names(root, root, BASE_DEPTH)]
    return sorted(dict.fromkeys(names))


def lora_choices() -> list[str]:
    names = []
    for root in host.model_roots(host.LORA_FOLDERS):
        for folder, _dirs, files in os.walk(root, followlinks=True):
            # A reference output folder (LoRA, or a full fine-tune's transformer/ without a VAE beside
            # it, which would make it a base); our trainer's folders also hold a single file.
            if any(f in files for f in LORA_FILES) or (is_base_folder(folder) and "vae" not in _dirs):
                names.append(_rel(root, folder))
            names += [_rel(root, os.path.join(folder, f)) for f in files
                      if f.endswith(".safetensors") and is_dwm_file(os.path.join(folder, f))]
    return sorted(dict.fromkeys(names))


def _resolve(name: str, folders: tuple[str, ...], what: str, where: str) -> str:
    for root in host.model_roots(folders):
        path = os.path.join(root, *name.split("/"))
        if os.path.exists(path):
            return path
    raise DWMError(what, f"{name!r} is not in {where}", f"put it in ComfyUI/models/{where} and refresh the page")


def resolve_base(name: str) -> str:
    return _resolve(name, host.BASE_FOLDERS, "model", "dwm/")


def resolve_lora(name: str) -> str:
    return _resolve(name, host.LORA_FOLDERS, "lora", "loras/")
