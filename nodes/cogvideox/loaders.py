"""Loader nodes: the base model, and DWM LoRAs stacked on it at a strength."""

from __future__ import annotations

from dwm.cogvideox.checkpoint import check_fits
from dwm.precision import DTYPES

from .. import host
from . import files, models
from .sockets import CATEGORY, MODEL, ModelHandle


class DWMModelLoader:
    """Load a CogVideoX-Fun 5b InP base (diffusers layout) widened for DWM; cached across runs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (files.base_choices(), {
                "tooltip": "A CogVideoX-Fun 5b InP folder in diffusers layout, in models/dwm (or "
                           "models/diffusers, models/diffusion_models)."}),
            "precision": (list(DTYPES), {"default": "bf16",
                                         "tooltip": "bf16 for the 5B model; fp16 can overflow."}),
            "device": (list(host.DEVICE_CHOICES), {
                "default": "auto", "tooltip": "auto: ComfyUI's devices; cpu: always run on the CPU."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, precision, device):
        base, patchers = models.get_base(files.resolve_base(model), precision, device)
        return (ModelHandle(base, patchers),)


class DWMLoraLoader:
    """Add a DWM LoRA at a strength; returns a new model handle (chain several, or sweep strengths)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "lora": (files.lora_choices(), {
                "tooltip": "A DWM LoRA in models/loras: a .safetensors file or a reference output "
                           "folder holding pytorch_lora_weights.safetensors."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                   "tooltip": "0 = base model, 1 = as trained (see docs/nodes.md)."}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, lora, strength):
        ckpt = models.get_checkpoint(files.resolve_lora(lora))
        check_fits(ckpt, model.base.transformer, model.base.version)
        return (model.with_lora(ckpt, strength),)
