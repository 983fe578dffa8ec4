"""Weak caches: a base is loaded once per (folder, precision, fp8 storage) while anything holds it, a LoRA once per
file version; the host's memory management alone decides how long they live.

Node classes are re-created for every run, so the caches live here, but they hold only weak
references. What keeps a base alive is the handle in the host's node-output cache (and the sockets
downstream): when the host drops its outputs ("Free model and node cache", ``POST /free`` with
``free_memory``, a changed input such as another precision), the base, its ModelPatchers and its RAM go
with them. The host itself tracks the ModelPatchers only by weak reference (``current_loaded_models``),
so a handle, not this module, must keep them: a ``LoadedBase`` holds the base, the modules the host
moves and their patchers, and every handle on that base shares it.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field

from comfyui_dwm.cogvideox.checkpoint import DWMCheckpoint, load_checkpoint
from comfyui_dwm.cogvideox.model import DWMBase, load_base

from .. import host

MANAGED = ("transformer", "vae", "text_encoder")


@dataclass(eq=False)
class LoadedBase:
    """A base, its components as the host moves them, and their patchers per device choice."""

    base: DWMBase
    holders: dict
    patchers: dict = field(default_factory=dict)  # (device choice, engine-moved) -> {component: ModelPatcher}

    def patchers_for(self, device: str, moved: frozenset = frozenset()) -> dict | None:
        """The patchers for a device choice, those of the components in ``moved`` (group-offloaded by
        the engine) loading to the CPU only (see host.patchers); None without ComfyUI."""
        key = (device, moved)
        if key not in self.patchers:
            self.patchers[key] = host.patchers(self.holders, device, moved)
        return self.patchers[key]


_bases: weakref.WeakValueDictionary[tuple[str, str, bool], LoadedBase] = weakref.WeakValueDictionary()
_checkpoints: weakref.WeakValueDictionary[tuple[str, float], DWMCheckpoint] = weakref.WeakValueDictionary()


def get_base(path: str, precision: str, fp8: bool = False) -> LoadedBase:
    """The base at ``path`` in ``precision``: the one already loaded while something holds it, else read.

    A base that memory modes store in fp8 (``fp8``) is another base: the fp8 cast is lossy and stays after
    the mode is lifted, so a base shared with a full-precision mode would give that mode fp8 weights.
    """
    key = (os.path.realpath(path), precision, fp8)
    loaded = _bases.get(key)
    if loaded is None:
        base = load_base(path, precision, "cpu")  # the host moves it to the load device on use
        loaded = LoadedBase(base, {name: host.DWMComponent(getattr(base, name)) for name in MANAGED})
        _bases[key] = loaded
    return loaded


def _version(path: str) -> float:
    """Newest mtime of the file, or of the folder and the files in it."""
    if not os.path.isdir(path):
        return os.path.getmtime(path)
    return max([os.path.getmtime(path)] + [e.stat().st_mtime for e in os.scandir(path) if e.is_file()])


def get_checkpoint(path: str) -> DWMCheckpoint:
    """The checkpoint while a handle holds it, re-read when the file or folder changed (a new export)."""
    key = (os.path.realpath(path), _version(path))
    ckpt = _checkpoints.get(key)
    if ckpt is None:
        ckpt = _checkpoints[key] = load_checkpoint(path)
    return ckpt
