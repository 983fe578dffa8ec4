"""Write a DWM-Wan release folder in the reference trainer's format (what ``checkpoint.load_wan_release`` reads).

``lora_diffusion_pytorch_model.safetensors``: ``lora_unet__<path with . -> _>.{lora_down.weight,
lora_up.weight, alpha}`` per module (scalar alpha); ``non_lora_weights.safetensors``: the widened
``patch_embedding.weight`` / ``.bias``; an experiment yaml naming the pipeline, the base and the LoRA
shape. The caller makes the folder atomic (the trainer writes into a temporary folder it renames).
"""

from __future__ import annotations

import os

import torch
import yaml
from safetensors.torch import save_file

from .checkpoint import LORA_PREFIX, NON_LORA_FILE, PATCH_KEYS, WAN_LORA_FILE
from .model import HAND_CHANNELS

PIPELINE = "wan2.1_fun_inp_hand_concat"


def flat_name(path: str) -> str:
    """``blocks.0.self_attn.q`` -> ``lora_unet__blocks_0_self_attn_q`` (the reference's root name is empty)."""
    return f"{LORA_PREFIX}_{path.replace('.', '_')}"


def experiment_config(name: str, base: str, rank: int, alpha: float, extra: dict | None = None,
                      description: str = "DWM-Wan LoRA trained with ComfyUI-DWM's trainer.") -> dict:
    """The experiment yaml of a LoRA run, in the reference's sections."""
    training = {"mode": "lora", "lora_rank": int(rank), "lora_alpha": float(alpha),
                "trainable_parameter_patterns": ["patch_embedding"], **(extra or {})}
    return {"experiment": {"name": name, "description": description},
            "pipeline": {"type": PIPELINE, "base_model_name_or_path": os.path.abspath(base)},
            "transformer": {"class": "WanTransformer3DModelWithConcat", "condition_channels": HAND_CHANNELS},
            "training": training}


def save_wan_release(folder: str, lora: dict, patch_embedding: dict, experiment: dict,
                     dtype: torch.dtype = torch.bfloat16, yaml_name: str = "dwm_wan_lora.yaml") -> None:
    """``lora``: {original module path: (down [r, in], up [out, r], alpha)}; ``patch_embedding``:
    {"weight", "bias"}. Tensors are stored in ``dtype`` (alpha as a scalar)."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for path, (down, up, alpha) in sorted(lora.items()):
        key = flat_name(path)
        tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    save_file(tensors, os.path.join(folder, WAN_LORA_FILE), metadata={"format": "pt"})
    patch = {key: patch_embedding[part].detach().to("cpu", dtype).contiguous()
             for key, part in zip(PATCH_KEYS, ("weight", "bias")) if part in patch_embedding}
    save_file(patch, os.path.join(folder, NON_LORA_FILE), metadata={"format": "pt"})
    with open(os.path.join(folder, yaml_name), "w", encoding="utf-8") as fh:
        yaml.safe_dump(experiment, fh, sort_keys=False)
