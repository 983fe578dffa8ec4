"""Module-level caches: a base is loaded once per (folder, precision), a LoRA once per file version.

Node classes are re-created for every run, so the caches live here. The cache also holds the
ModelPatchers: the host tracks them by weak reference and would forget them otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dwm.cogvideox.checkpoint import DWMCheckpoint, load_checkpoint
from dwm.cogvideox.model import DWMBase, load_base

from .. import host

MANAGED = ("transformer", "vae", "text_encoder")


@dataclass
class _Loaded:
    base: DWMBase
    holders: dict
    patchers: dict = field(default_factory=dict)  # device choice -> {component: ModelPatcher}


_bases: dict[tuple[str, str], _Loaded] = {}
_checkpoints: dict[str, tuple[float, DWMCheckpoint]] = {}


def get_base(path: str, precision: str, device: str) -> tuple[DWMBase, dict | None]:
    """The cached base and its patchers for ``device`` ("auto" or "cpu")."""
    key = (os.path.realpath(path), precision)
    loaded = _bases.get(key)
    if loaded is None:
        base = load_base(path, precision, "cpu")  # the host moves it to the load device on use
        loaded = _Loaded(base, {name: host.DWMComponent(getattr(base, name)) for name in MANAGED})
        _bases[key] = loaded
    if device not in loaded.patchers:
        loaded.patchers[device] = host.patchers(loaded.holders, device)
    return loaded.base, loaded.patchers[device]


def _version(path: str) -> float:
    """Newest mtime of the file, or of the folder and the files in it."""
    if not os.path.isdir(path):
        return os.path.getmtime(path)
    return max([os.path.getmtime(path)] + [e.stat().st_mtime for e in os.scandir(path) if e.is_file()])


def get_checkpoint(path: str) -> DWMCheckpoint:
    """The cached checkpoint, re-read when the file or folder changed (a new export at the same path)."""
    key = os.path.realpath(path)
    mtime = _version(path)
    cached = _checkpoints.get(key)
    if cached is None or cached[0] != mtime:
        cached = (mtime, load_checkpoint(path))
        _checkpoints[key] = cached
    return cached[1]
