"""Loader nodes' work: the base model, and DWM LoRAs stacked on it at a strength."""

from __future__ import annotations

import torch
from comfyui_dwm.cogvideox.checkpoint import check_fits
from comfyui_dwm.cogvideox.memory import MEMORY_MODES, plan_for
from comfyui_dwm.errors import DWMError

from . import files, models
from .sockets import ModelHandle


def load_model(model: str, precision: str = "bf16", device: str = "auto", memory_mode: str = "none") -> ModelHandle:
    """DWM Model Loader: a CogVideoX-Fun 5b InP base widened for DWM, shared while the host keeps it.
    ``memory_mode`` (one of ``memory.MEMORY_MODES``) travels on the handle: the nodes that run the base
    put it in that mode (handles of modes with the same weight storage share one base)."""
    if memory_mode not in MEMORY_MODES:
        raise DWMError("memory_mode", f"unknown memory mode {memory_mode!r}",
                       f"choose one of {', '.join(MEMORY_MODES)}")
    fp8 = plan_for(memory_mode, torch.device("cpu"), None).fp8  # whether a mode stores fp8 is device-free
    return ModelHandle(models.get_base(files.resolve_base(model), precision, fp8), device, memory_mode=memory_mode)


def load_lora(model: ModelHandle, lora: str, strength: float = 1.0) -> ModelHandle:
    """DWM LoRA Loader: a new handle with this LoRA appended (the input handle is left as it is)."""
    ckpt = models.get_checkpoint(files.resolve_lora(lora))
    check_fits(ckpt, model.base.transformer, model.base.version)
    return model.with_lora(ckpt, strength)
