"""Loader nodes' work: the base model, and DWM LoRAs stacked on it at a strength."""

from __future__ import annotations

from comfyui_dwm.cogvideox.checkpoint import check_fits

from . import files, models
from .sockets import ModelHandle


def load_model(model: str, precision: str = "bf16", device: str = "auto") -> ModelHandle:
    """DWM Model Loader: a CogVideoX-Fun 5b InP base widened for DWM, shared while the host keeps it."""
    return ModelHandle(models.get_base(files.resolve_base(model), precision), device)


def load_lora(model: ModelHandle, lora: str, strength: float = 1.0) -> ModelHandle:
    """DWM LoRA Loader: a new handle with this LoRA appended (the input handle is left as it is)."""
    ckpt = models.get_checkpoint(files.resolve_lora(lora))
    check_fits(ckpt, model.base.transformer, model.base.version)
    return model.with_lora(ckpt, strength)
