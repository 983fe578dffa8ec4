"""Everything the nodes ask of ComfyUI: model folders, memory management, progress, interrupts.

Each function degrades to a no-op when ComfyUI is absent, so the nodes import and run in the tests
and in headless tools. Nothing else in ``nodes/`` imports ComfyUI.
"""

from __future__ import annotations

import os
from fractions import Fraction

import torch
from comfyui_dwm.video_stream import select_frames, stream_frames

try:
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
    from comfy.cli_args import LatentPreviewMethod, args
    from comfy_api.latest import InputImpl
except ImportError:  # no ComfyUI: tests and headless use
    mm = folder_paths = InputImpl = None

BASE_FOLDERS = ("dwm", "diffusers", "diffusion_models")
LORA_FOLDERS = ("loras",)
DEVICE_CHOICES = ("auto", "cpu")
# Per component: the host's (load device, offload device) functions for device "auto".
_HOST_DEVICES = {"transformer": ("get_torch_device", "unet_offload_device"),
                 "vae": ("vae_device", "vae_offload_device"),
                 "text_encoder": ("text_encoder_device", "text_encoder_offload_device")}

if folder_paths is not None:
    folder_paths.add_model_folder_path("dwm", os.path.join(folder_paths.models_dir, "dwm"))


def _stream_source(video):
    """The file (path or BytesIO) behind a VIDEO loaded from one, or None when its frames are already in
    memory (asking those for a stream would encode them first)."""
    if InputImpl is not None:
        return video.get_stream_source() if isinstance(video, InputImpl.VideoFromFile) else None
    get = getattr(video, "get_stream_source", None)
    return get() if get else None


def video_frames(video, name: str, fps: float | None, max_frames: int | None = None, width: int | None = None,
                 height: int | None = None) -> tuple[torch.Tensor, Fraction | None]:
    """A VIDEO's frames at ``fps`` (0: its own rate), at most ``max_frames``, at the size, and their rate.

    A file is streamed (only those frames decoded, scaled while decoding); a VIDEO of frames in memory
    gives a view or a copy of the frames picked. Never ``get_components()`` of a file: it decodes all.
    """
    source = _stream_source(video)
    if source is not None:
        return stream_frames(source, name, fps, max_frames, width, height)
    parts = video.get_components()
    rate = Fraction(parts.frame_rate) if parts.frame_rate else None
    return select_frames(parts.images, rate, fps, max_frames, name)


def model_roots(folders: tuple[str, ...]) -> list[str]:
    """Existing directories registered with the host under the given folder names."""
    if folder_paths is None:
        return []
    roots = [p for name in folders for p in folder_paths.get_folder_paths(name)]
    return [p for p in dict.fromkeys(roots) if os.path.isdir(p)]


class DWMComponent(torch.nn.Module):
    """A plain container that ModelPatcher can move and account for.

    ModelPatcher writes ``model.device``; diffusers and transformers models expose ``device`` as a
    read-only property, so they are wrapped rather than patched.
    """

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device = next(module.parameters()).device


def patchers(holders: dict[str, DWMComponent], device: str, moved: frozenset = frozenset()) -> dict | None:
    """One ModelPatcher per component for the device choice (None without ComfyUI).

    Patchers for "auto" and "cpu" share the holders, so the host sees them as clones of one model and
    moves the weights when the choice changes instead of tracking two copies.
    ONE MOVER: a component in ``moved`` is moved by the engine's group-offload hooks (weights on the CPU,
    one block at a time on the device). Its patcher loads to and offloads to the CPU: loading it evicts a
    clone the host put on the device, and the host then never moves it, so the hooks are its only mover.
    """
    if mm is None:
        return None
    out = {}
    for name, holder in holders.items():
        if device == "cpu" or name in moved:
            load = offload = torch.device("cpu")
        else:
            load_fn, offload_fn = _HOST_DEVICES[name]
            load, offload = getattr(mm, load_fn)(), getattr(mm, offload_fn)()
        out[name] = comfy.model_patcher.ModelPatcher(holder, load_device=load, offload_device=offload)
    return out


def compute_device(device: str) -> torch.device:
    """Where the models compute for the device choice: the host's torch device for "auto"."""
    return mm.get_torch_device() if mm is not None and device != "cpu" else torch.device("cpu")


def load(patcher_map: dict | None, *names: str) -> None:
    """Ask the host to put these components on their load device, evicting others if needed."""
    if patcher_map is not None:
        mm.load_models_gpu([patcher_map[n] for n in names], force_full_load=True)


def check_interrupted() -> None:
    """Raise the host's own interrupt exception when the user pressed Cancel."""
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def free_cache() -> None:
    if mm is not None:
        mm.soft_empty_cache()


def progress_bar(total: int):
    """The host's progress bar (its hook also raises on Cancel), or None without ComfyUI."""
    return comfy.utils.ProgressBar(total) if mm is not None else None


def preview_size() -> int | None:
    """Max preview edge in pixels, or None when the host (or the user's setting) wants no previews."""
    if mm is None or args.preview_method == LatentPreviewMethod.NoPreviews:
        return None
    return args.preview_size
