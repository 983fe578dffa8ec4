"""Which model family a base folder or a DWM LoRA belongs to, read from configs and tensor names/shapes.

Families: ``cogvideox`` (CogVideoX-Fun InP in diffusers layout, DWM LoRAs with ``patch_embed.proj``)
and ``wan`` (Wan2.1-Fun InP in the VideoX-Fun layout, DWM-Wan releases with ``lora_unet__`` keys
and a 5-D ``patch_embedding``). Names of files and folders never decide.
"""

from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open

from .errors import DWMError

_WAN_KEY = re.compile(r"(^|\.)(blocks\.\d+\.(self_attn|cross_attn|ffn)\.|patch_embedding\.)|^lora_unet_+blocks_")
_COG_KEY = re.compile(r"(^|\.)(transformer_blocks\.\d+\.|patch_embed\.proj\.)")


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_wan_i2v_config(config: dict) -> bool:
    """A Wan 2.1 image-to-video transformer config (what the Fun InP bases are)."""
    return config.get("model_type") == "i2v" or config.get("in_dim") == 36


def base_family(path: str) -> str:
    """``"cogvideox"`` or ``"wan"`` for a base model folder, from its configs."""
    transformer = read_json(os.path.join(path, "transformer", "config.json"))
    if str(transformer.get("_class_name", "")).startswith("CogVideoX"):
        return "cogvideox"
    root = read_json(os.path.join(path, "config.json"))
    if is_wan_i2v_config(root):
        return "wan"
    if root.get("model_type") in ("t2v", "ti2v", "flf2v", "vace") or "in_dim" in root:
        problem = f"{path} is a Wan model of type {root.get('model_type')!r} (in_dim {root.get('in_dim')})"
    else:
        problem = f"{path} is not a DWM base: no CogVideoX transformer/config.json and no Wan i2v config.json"
    raise DWMError("model", problem,
                   "use a CogVideoX-Fun InP folder (diffusers layout) or a Wan2.1-Fun InP folder "
                   "(VideoX-Fun layout: config.json + diffusion_pytorch_model*.safetensors)")


def _shapes(path: str) -> dict[str, tuple]:
    """Tensor names and shapes of a safetensors file (header only) or a torch file."""
    if path.endswith(".safetensors"):
        with safe_open(path, framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _weight_files(path: str) -> list[str]:
    """The file itself, or the weight files of a folder and of its ``transformer/`` (a full fine-tune)."""
    if os.path.isfile(path):
        return [path]
    folders = [f for f in (path, os.path.join(path, "transformer")) if os.path.isdir(f)]
    return [os.path.join(folder, f) for folder in folders for f in sorted(os.listdir(folder))
            if f.endswith((".safetensors", ".pt", ".bin")) and os.path.isfile(os.path.join(folder, f))]


def lora_family(path: str) -> str:
    """``"cogvideox"`` or ``"wan"`` for a DWM LoRA folder or file, from its tensor names and shapes."""
    shapes = {}
    for file in _weight_files(path):
        try:
            shapes.update(_shapes(file))
        except Exception:  # unreadable or not a tensor file: it cannot tell the family
            continue
    wan = any(_WAN_KEY.search(k) and (not k.startswith("patch_embedding.") or len(s) == 5)
              for k, s in shapes.items())
    cog = any(_COG_KEY.search(k) for k in shapes)
    if wan != cog:
        return "wan" if wan else "cogvideox"
    problem = "mixes CogVideoX and Wan tensors" if wan else "holds no DWM LoRA tensors"
    raise DWMError("lora", f"{path} {problem}",
                   "use a DWM LoRA release folder: pytorch_lora_weights.safetensors + non_lora_weights for "
                   "CogVideoX, lora_diffusion_pytorch_model.safetensors + non_lora_weights for Wan")
