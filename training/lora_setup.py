"""What trains: a peft LoRA on the attention projections plus the whole widened ``patch_embed.proj``.

The LoRA's B matrices start at zero and the hand channels of the projection start at zero (see
``dwm.cogvideox.model.widen_patch_embed``), so at step 0 the model is exactly the base inpainting model.
Trainable tensors are kept in float32 under bf16 mixed precision (the frozen base stays bf16).
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model_state_dict

from comfyui_dwm.cogvideox.checkpoint import DWMCheckpoint
from comfyui_dwm.cogvideox.model import DWMBase

ADAPTER = "default"
PROJ = "patch_embed.proj."


def add_lora(transformer: torch.nn.Module, rank: int, alpha: float, target_modules: list[str], full_module: str,
             gradient_checkpointing: bool) -> list[torch.nn.Parameter]:
    """Both families: a peft LoRA on ``target_modules`` plus ``full_module`` (the patch embedding) trained
    whole; trainable tensors in fp32. Returns them."""
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                       target_modules=list(target_modules)), adapter_name=ADAPTER)
    transformer.get_submodule(full_module).requires_grad_(True)
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return params


def make_trainable(base: DWMBase, rank: int, alpha: float, target_modules: list[str],
                   gradient_checkpointing: bool) -> list[torch.nn.Parameter]:
    return add_lora(base.transformer, rank, alpha, target_modules, "patch_embed.proj", gradient_checkpointing)


def trainable_names(transformer: torch.nn.Module) -> list[str]:
    return [n for n, p in transformer.named_parameters() if p.requires_grad]


def to_checkpoint(transformer: torch.nn.Module, state_dict: dict, rank: int, alpha: float,
                  source: str) -> DWMCheckpoint:
    """The trained tensors of a full transformer state dict, as the engine's checkpoint object."""
    lora = get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=ADAPTER)
    proj = {k[len(PROJ):]: v for k, v in state_dict.items() if k in (PROJ + "weight", PROJ + "bias")}
    return DWMCheckpoint(lora=dict(lora), patch_embed=proj, rank=rank, alpha=float(alpha), source=source)
