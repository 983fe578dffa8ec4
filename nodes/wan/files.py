"""Find Wan bases and DWM-Wan releases in the host's model folders by what they hold, not their names.

A base is a folder whose ``config.json`` is a Wan 2.1 image-to-video transformer (the VideoX-Fun
layout of Wan2.1-Fun InP). A release is a folder holding ``lora_diffusion_pytorch_model.safetensors``
whose tensors are a Wan LoRA. Choices are paths relative to their root with ``/`` separators, so
saved workflows work across operating systems.
"""

from __future__ import annotations

import os

from comfyui_dwm.errors import DWMError
from comfyui_dwm.family import is_wan_i2v_config, lora_family, read_json
from comfyui_dwm.wan.checkpoint import WAN_LORA_FILE

from .. import host

BASE_FOLDERS = ("diffusion_models", "dwm")
MAX_DEPTH = 3  # models/dwm/<name>, models/dwm/<owner>/<name>, one more for a run's checkpoint-N
_family_cache: dict[str, tuple[float, bool]] = {}


def _folders(root: str):
    """``root`` and its sub-folders down to MAX_DEPTH, following links, in a stable order."""
    stack = [(root, 0)]
    while stack:
        path, depth = stack.pop()
        yield path
        if depth < MAX_DEPTH:
            try:
                subs = sorted((e.path for e in os.scandir(path) if e.is_dir()), reverse=True)
            except OSError:
                continue
            stack += [(sub, depth + 1) for sub in subs]


def _rel(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def is_wan_base(folder: str) -> bool:
    return is_wan_i2v_config(read_json(os.path.join(folder, "config.json")))


def is_wan_release(folder: str) -> bool:
    """True when the folder's LoRA file holds Wan tensors (cached by the file's mtime)."""
    lora = os.path.join(folder, WAN_LORA_FILE)
    try:
        mtime = os.path.getmtime(lora)
    except OSError:
        return False
    cached = _family_cache.get(folder)
    if cached is None or cached[0] != mtime:
        try:
            _family_cache[folder] = (mtime, lora_family(lora) == "wan")
        except DWMError:
            _family_cache[folder] = (mtime, False)
    return _family_cache[folder][1]


def _choices(folders: tuple[str, ...], wanted) -> list[str]:
    names = [_rel(root, path) for root in host.model_roots(folders) for path in _folders(root)
             if path != root and wanted(path)]
    return sorted(dict.fromkeys(names))


def model_choices() -> list[str]:
    return _choices(BASE_FOLDERS, is_wan_base)


def lora_choices() -> list[str]:
    return _choices(host.LORA_FOLDERS, is_wan_release)


def _resolve(name: str, folders: tuple[str, ...], what: str, where: str) -> str:
    for root in host.model_roots(folders):
        path = os.path.join(root, *name.split("/"))
        if os.path.isdir(path):
            return path
    raise DWMError(what, f"{name!r} is not a folder in {where}",
                   f"put the folder in ComfyUI/models/{where} and refresh the page")


def resolve_model(name: str) -> str:
    return _resolve(name, BASE_FOLDERS, "model_name", "diffusion_models/ (or models/dwm/)")


def resolve_lora(name: str) -> str:
    return _resolve(name, host.LORA_FOLDERS, "lora_name", "loras/")
