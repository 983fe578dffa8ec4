"""Weight files of a VideoX-Fun folder (``.pth`` or ``.safetensors``), found by what they hold.

A VideoX-Fun folder keeps the transformer shards, the VAE, the umT5 and the CLIP weights side by
side at its root; each part is picked by its keys, never by its file name.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

WEIGHT_EXTENSIONS = (".pth", ".pt", ".safetensors")


def read_weights(path: str) -> dict:
    """All tensors of one file on the CPU (``.pth`` memory-mapped, loaded with ``weights_only``)."""
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files saved in torch's legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def weight_keys(path: str) -> set:
    """The tensor names of one file, without reading a safetensors file's data."""
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as fh:
            return set(fh.keys())
    state = read_weights(path)
    return set(state) if isinstance(state, dict) else set()


def find_weights(folder: str, wanted: Callable[[set], bool]) -> str | None:
    """The first weight file at the root of ``folder`` whose key set satisfies ``wanted``."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(WEIGHT_EXTENSIONS) and os.path.isfile(path) and wanted(weight_keys(path)):
            return path
    return None
