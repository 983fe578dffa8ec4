"""DWM-Wan release folder IO (the format of ``DWM-Wan2.1-Fun-14b-LoRA``), read as the reference writes it.

A release folder holds:
  ``lora_diffusion_pytorch_model.safetensors``  ``lora_unet__<module path, "." -> "_">.{lora_down.weight,
                                                lora_up.weight, alpha}`` (applied as
                                                ``W += strength * alpha / rank * up @ down``)
  ``non_lora_weights.safetensors``              the widened ``patch_embedding.weight`` [dim, 52, 1, 2, 2]
                                                and ``patch_embedding.bias`` [dim]
  an experiment ``*.yaml``                      beside the files, or in the parent of a ``checkpoint-*``
                                                folder (the reference trainer's layout)
Input channels of the widened patch embedding: noise 16 | mask 4 | static 16 | hands 16.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from ..errors import DWMError
from ..experiment import read_config
from ..family import is_wan_i2v_config, lora_family, read_json

WAN_LORA_FILE = "lora_diffusion_pytorch_model.safetensors"
NON_LORA_FILE = "non_lora_weights.safetensors"
LORA_PREFIX = "lora_unet_"
PATCH_KEYS = ("patch_embedding.weight", "patch_embedding.bias")
# Every nn.Linear of the original Wan 2.1 model, the modules the reference trainer adds LoRA to.
BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")
ROOT_LINEARS = ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                "time_projection.1", "head.head", "img_emb.proj.1", "img_emb.proj.3")
_FIX_RELEASE = ("use a DWM-Wan release folder (lora_diffusion_pytorch_model.safetensors + "
                "non_lora_weights.safetensors, as written by the reference trainer)")


@dataclass
class WanRelease:
    """A DWM-Wan LoRA: per-module (down, up, alpha) keyed by Wan module path, and the widened patch embedding."""

    lora: dict  # "blocks.0.cross_attn.k_img" -> (down [r, in], up [out, r], alpha)
    patch_embedding: dict  # "weight" [dim, 52, 1, 2, 2], "bias" [dim]
    rank: int
    config: dict = field(default_factory=dict)
    source: str = ""

    @property
    def in_channels(self) -> int:
        return self.patch_embedding["weight"].shape[1]

    @property
    def dim(self) -> int:
        return self.patch_embedding["weight"].shape[0]


def wan_module_names(num_layers: int) -> list[str]:
    """Dotted paths of the Linear modules of a Wan 2.1 model with ``num_layers`` blocks."""
    return [f"blocks.{i}.{leaf}" for i in range(num_layers) for leaf in BLOCK_LINEARS] + list(ROOT_LINEARS)


def resolve_module(flat_name: str, module_names) -> str:
    """``lora_unet__blocks_0_cross_attn_k_img`` (or without the prefix) -> ``blocks.0.cross_attn.k_img``.

    Underscores are ambiguous (``k_img`` vs ``k.img``), so the flat name is matched against the real
    module names instead of split by rule.
    """
    flat = flat_name[len(LORA_PREFIX):] if flat_name.startswith(LORA_PREFIX) else flat_name
    flat = flat.lstrip("_")  # the reference's root module name is empty: "lora_unet_" + "_blocks..."
    by_flat = {name.replace(".", "_"): name for name in module_names}
    if flat not in by_flat:
        raise DWMError("lora", f"LoRA module {flat_name!r} is not a module of a Wan 2.1 model",
                       "use a LoRA trained on Wan2.1-Fun InP with the DWM reference trainer")
    return by_flat[flat]


def _read(path: str) -> dict:
    try:
        with safe_open(path, framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise DWMError("lora", f"cannot read {path}: {err}",
                       "the file is damaged or not a safetensors file; download or export it again") from err


def _missing_lora(path: str) -> DWMError:
    try:
        family = lora_family(path)
    except DWMError:
        family = None
    if family == "cogvideox":
        return DWMError("lora", f"{path} is a DWM LoRA for CogVideoX-Fun, not for Wan",
                        "load it with the DWM LoRA Loader on a CogVideoX-Fun base, or pick a DWM-Wan release")
    if is_wan_i2v_config(read_json(os.path.join(path, "config.json"))):
        return DWMError("lora", f"{path} is a Wan base model, not a DWM-Wan release",
                        "load it with the DWM-Wan Model Loader and pick the release folder here")
    if os.path.isfile(os.path.join(path, "transformer", "config.json")):
        return DWMError("lora", f"{path} is a full fine-tune (transformer/ folder), not a LoRA release",
                        "load it as a model, or pick a DWM-Wan LoRA release folder")
    return DWMError("lora", f"{path} holds no {WAN_LORA_FILE}", _FIX_RELEASE)


def _group_lora(tensors: dict, source: str) -> tuple[dict, int]:
    """{flat module name: (down, up, alpha)} and the rank, from ``lora_unet_*`` tensors."""
    parts: dict[str, dict] = {}
    for key, value in tensors.items():
        module, _, kind = key.partition(".")
        if module.startswith(LORA_PREFIX) and kind in ("lora_down.weight", "lora_up.weight", "alpha"):
            parts.setdefault(module, {})[kind] = value
    if not parts:
        raise DWMError("lora", f"{source}/{WAN_LORA_FILE} holds no lora_unet_ LoRA tensors", _FIX_RELEASE)
    ranks = set()
    grouped = {}
    for module, part in parts.items():
        if "lora_down.weight" not in part or "lora_up.weight" not in part:
            raise DWMError("lora", f"{source}: {module} lacks lora_down or lora_up", "download or export it again")
        down, up = part["lora_down.weight"], part["lora_up.weight"]
        ranks.add(down.shape[0])
        alpha = float(part["alpha"]) if "alpha" in part else float(down.shape[0])
        grouped[module] = (down, up, alpha)
    if len(ranks) != 1:
        raise DWMError("lora", f"{source} mixes LoRA ranks {sorted(ranks)}", _FIX_RELEASE)
    return grouped, ranks.pop()


def _patch_embedding(path: str) -> dict:
    non_lora = os.path.join(path, NON_LORA_FILE)
    if not os.path.isfile(non_lora):
        raise DWMError("lora", f"{path} has {WAN_LORA_FILE} but no {NON_LORA_FILE} (the widened patch embedding)",
                       "copy non_lora_weights.safetensors from the same training run into the folder")
    tensors = _read(non_lora)
    weight = tensors.get(PATCH_KEYS[0])
    if weight is None or weight.ndim != 5:
        found = "patch_embed.proj (a CogVideoX release)" if any("patch_embed.proj" in k for k in tensors) \
            else f"keys {sorted(tensors)[:4]}"
        raise DWMError("lora", f"{non_lora} has no 5-D patch_embedding.weight ({found})",
                       "use the non_lora_weights.safetensors of a DWM-Wan training run")
    patch = {"weight": weight}
    if PATCH_KEYS[1] in tensors:
        patch["bias"] = tensors[PATCH_KEYS[1]]
    return patch


def load_wan_release(path: str) -> WanRelease:
    """Read a DWM-Wan release folder; one DWMError naming the problem for anything else."""
    if not os.path.isdir(path):
        problem = "is a file, not a release folder" if os.path.isfile(path) else "does not exist"
        raise DWMError("lora", f"{path} {problem}",
                       "pass the folder that holds lora_diffusion_pytorch_model.safetensors; "
                       "DWM-Wan releases go in ComfyUI/models/loras/<name>/")
    if not os.path.isfile(os.path.join(path, WAN_LORA_FILE)):
        raise _missing_lora(path)
    tensors = _read(os.path.join(path, WAN_LORA_FILE))
    patch = _patch_embedding(path)
    grouped, rank = _group_lora(tensors, path)
    layers = [int(m.group(1)) for m in (re.match(r"lora_unet_+blocks_(\d+)_", k) for k in grouped) if m]
    names = wan_module_names(max(layers) + 1 if layers else 0)
    lora = {resolve_module(flat, names): value for flat, value in grouped.items()}
    return WanRelease(lora=lora, patch_embedding=patch, rank=rank, config=read_config(path, "lora"), source=path)


def blend_patch_embedding(base: dict, release: WanRelease, strength: float) -> dict:
    """The widened patch embedding at ``strength``: lerp(base + zero hand channels, release) in fp32.

    Strength 1 gives the release tensors exactly and 0 the base exactly (torch.lerp is exact at both
    ends); the base's 36 channels (noise | mask | masked video) are the first 36 of the 52.
    """
    weight, target = base["weight"], release.patch_embedding["weight"]
    if weight.ndim != 5 or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:] \
            or weight.shape[1] > target.shape[1]:
        raise DWMError("lora", f"{release.source} was trained for a Wan model of width {release.dim} "
                       f"(patch_embedding {list(target.shape)}), but the loaded model's patch embedding "
                       f"is {list(weight.shape)}",
                       "load the base model this release was trained on (e.g. Wan2.1-Fun-14B-InP for "
                       "DWM-Wan2.1-Fun-14b-LoRA)")
    wide = torch.zeros(target.shape, dtype=torch.float32)
    wide[:, :weight.shape[1]] = weight.float()
    out = {"weight": torch.lerp(wide, target.float(), float(strength))}
    if "bias" in base:
        bias = release.patch_embedding.get("bias", base["bias"])
        out["bias"] = torch.lerp(base["bias"].float(), bias.float(), float(strength))
    return out
