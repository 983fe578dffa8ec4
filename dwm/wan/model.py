"""Model assembly: a VideoX-Fun Wan2.1-Fun InP folder into diffusers' own ``WanTransformer3DModel``, widened.

The folder holds the transformer as ``config.json`` (original Wan names: ``dim``, ``num_heads``,
``in_dim``...) + ``diffusion_pytorch_model*.safetensors`` with the original Wan key names. We map the
config ourselves (diffusers' single-file loader guesses the wrong one for the 1.3B Fun InP), rename the
keys with diffusers' own Wan converter and load strictly, so every tensor must land. The patch
embedding then gets 16 zero-initialised input channels for the hand latents (52 = noise 16 | mask 4 |
static 16 | hands 16); zero init keeps the base output exact. The module stays a stock ``nn.Conv3d``,
so diffusers' and peft's hooks keep working.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from accelerate import init_empty_weights
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import load_file
from torch import nn

from ..errors import DWMError
from ..precision import resolve_dtype

BASE_CHANNELS = 36  # noisy latents (16) + mask (4) + masked-video latents (16)
HAND_CHANNELS = 16
DWM_CHANNELS = BASE_CHANNELS + HAND_CHANNELS
MASK_CHANNELS = 4
WEIGHTS_PREFIX = "diffusion_pytorch_model"
_FIX_FOLDER = ("point at a Wan2.1-Fun InP folder in the VideoX-Fun layout (config.json + "
               "diffusion_pytorch_model*.safetensors), e.g. a download of alibaba-pai/Wan2.1-Fun-V1.1-14B-InP")


@dataclass
class WanBase:
    """A Wan2.1-Fun InP base widened to 52 input channels, plus what releases need to go back to it."""

    transformer: nn.Module
    vae: nn.Module | None
    text_encoder: nn.Module | None
    tokenizer: object
    source: str
    base_patch: dict = field(default_factory=dict)  # widened base patch embedding, CPU copy
    adapters: dict = field(default_factory=dict)  # id(release) -> (adapter name, release); see lora.py
    prompt_cache: dict = field(default_factory=dict)  # prompt -> embedding (see pipeline.py)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype


def read_wan_config(folder: str) -> dict:
    """The root ``config.json`` of a Wan2.1-Fun InP folder; DWMError for any other model."""
    if os.path.isfile(os.path.join(folder, "transformer", "config.json")):
        raise DWMError("model", f"{folder} is a diffusers-layout folder (transformer/ subfolder), e.g. "
                       "CogVideoX-Fun, not a Wan VideoX-Fun folder",
                       "load it with the CogVideoX loader, or " + _FIX_FOLDER)
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as err:
        raise DWMError("model", f"cannot read {path} ({err.__class__.__name__})", _FIX_FOLDER) from err
    if not isinstance(config, dict) or "dim" not in config or "num_heads" not in config:
        raise DWMError("model", f"{path} is not a Wan transformer config (no dim / num_heads)", _FIX_FOLDER)
    in_dim, kind = config.get("in_dim"), config.get("model_type", "i2v")
    if in_dim != BASE_CHANNELS or kind != "i2v":
        raise DWMError("model", f"{folder} is a Wan {kind} model with in_dim {in_dim}, not an inpainting (Fun InP) "
                       f"image-to-video model with in_dim {BASE_CHANNELS}",
                       "DWM-Wan needs Wan2.1-Fun-V1.1-14B-InP or -1.3B-InP (t2v / plain i2v bases do not fit)")
    return config


def _weight_files(folder: str) -> list[str]:
    """Every shard: those an index json names, else every ``diffusion_pytorch_model*.safetensors``."""
    index = os.path.join(folder, f"{WEIGHTS_PREFIX}.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            names = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        names = sorted(f for f in os.listdir(folder)
                       if f.startswith(WEIGHTS_PREFIX) and f.endswith(".safetensors"))
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if not names or missing:
        what = f"the shards {', '.join(missing)}" if missing else f"{WEIGHTS_PREFIX}*.safetensors"
        raise DWMError("model", f"{folder} lacks {what}", "finish the download of the model folder")
    return [os.path.join(folder, n) for n in names]


def check_wan_folder(folder: str, with_text_and_vae: bool = True) -> dict:
    """Every part a run loads is there (config, shards, VAE, umT5 and its tokenizer), read from file
    headers in seconds, so a missing file is found before a 14B transformer is loaded. Returns the config."""
    config = read_wan_config(folder)
    _weight_files(folder)
    if with_text_and_vae:
        from .text import find_text_encoder
        from .vae import find_wan_vae

        find_wan_vae(folder)
        find_text_encoder(folder)
    return config


def read_wan_state_dict(folder: str) -> dict:
    """All transformer tensors of the folder (every shard), under the original Wan key names."""
    state: dict = {}
    for path in _weight_files(folder):
        state.update(load_file(path))
    return state


def diffusers_config(config: dict, state: dict) -> dict:
    """``WanTransformer3DModel`` arguments for a VideoX-Fun config; image branch sizes read from the weights."""
    dim, heads = int(config["dim"]), int(config["num_heads"])
    if dim % heads:
        raise DWMError("model", f"config.json: dim {dim} is not a multiple of num_heads {heads}", _FIX_FOLDER)
    image = state.get("img_emb.proj.1.weight")
    if image is None:
        raise DWMError("model", "the weights have no image embedder (img_emb.proj.*), which a Fun InP (i2v) "
                       "model has", _FIX_FOLDER)
    return dict(patch_size=tuple(config.get("patch_size", (1, 2, 2))), num_attention_heads=heads,
                attention_head_dim=dim // heads, in_channels=int(config["in_dim"]),
                out_channels=int(config.get("out_dim", 16)), text_dim=int(config.get("text_dim", 4096)),
                freq_dim=int(config.get("freq_dim", 256)), ffn_dim=int(config["ffn_dim"]),
                num_layers=int(config["num_layers"]), cross_attn_norm=bool(config.get("cross_attn_norm", True)),
                qk_norm="rms_norm_across_heads" if config.get("qk_norm", True) else None,
                eps=float(config.get("eps", 1e-6)), image_dim=int(image.shape[1]), added_kv_proj_dim=dim)


def _cast(model: nn.Module, state: dict, dtype: torch.dtype) -> dict:
    """``dtype`` everywhere except the modules diffusers keeps in fp32 (time embedder, norms, modulation)."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return {k: v.to(torch.float32 if keep.intersection(k.split(".")) else dtype) for k, v in state.items()}


def widen_patch_embedding(transformer: nn.Module) -> None:
    """Append 16 zero input channels (the hand latents) to ``patch_embedding``, keeping the Conv3d module."""
    conv = transformer.patch_embedding
    if conv.in_channels != BASE_CHANNELS:
        raise DWMError("model", f"the patch embedding takes {conv.in_channels} channels, not {BASE_CHANNELS}",
                       _FIX_FOLDER)
    weight = conv.weight.detach()
    extra = weight.new_zeros((weight.shape[0], HAND_CHANNELS, *weight.shape[2:]))
    conv.weight = nn.Parameter(torch.cat([weight, extra], dim=1), requires_grad=conv.weight.requires_grad)
    conv.in_channels = DWM_CHANNELS
    transformer.register_to_config(in_channels=DWM_CHANNELS)


def load_wan_transformer(folder: str, dtype: str | torch.dtype = "bf16",
                         device: str | torch.device = "cpu") -> nn.Module:
    """The folder's transformer as diffusers' ``WanTransformer3DModel`` (strict load), widened to 52 channels."""

    torch_dtype = resolve_dtype(dtype)
    config = read_wan_config(folder)
    state = read_wan_state_dict(folder)
    kwargs = diffusers_config(config, state)
    with init_empty_weights():  # parameters on meta (no 14B random init); RoPE buffers stay real
        transformer = WanTransformer3DModel(**kwargs)
    converted = convert_wan_transformer_to_diffusers(state)
    expected = set(transformer.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected:
        raise DWMError("model", f"{folder}: the weights do not match a Wan 2.1 i2v transformer of this config "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})", _FIX_FOLDER)
    transformer.load_state_dict(_cast(transformer, converted, torch_dtype), strict=True, assign=True)
    widen_patch_embedding(transformer)
    return transformer.requires_grad_(False).eval().to(device)


def load_wan_base(folder: str, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu",
                  with_text_and_vae: bool = True) -> WanBase:
    """Transformer, and unless told otherwise the folder's umT5 text encoder and Wan VAE."""
    transformer = load_wan_transformer(folder, dtype, device)
    vae = text_encoder = tokenizer = None
    if with_text_and_vae:
        from .text import load_wan_text_encoder
        from .vae import load_wan_vae

        vae = load_wan_vae(folder, dtype, device)
        text_encoder, tokenizer = load_wan_text_encoder(folder, dtype, device)
    conv = transformer.patch_embedding
    base_patch = {"weight": conv.weight.detach().to("cpu", copy=True),
                  "bias": conv.bias.detach().to("cpu", copy=True)}
    return WanBase(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   source=folder, base_patch=base_patch)


def wan_model_input(noisy: torch.Tensor, static: torch.Tensor, hands: torch.Tensor) -> torch.Tensor:
    """The 52 input channels of ``[B, C, F, h, w]`` in the spec's order: noisy, mask (ones x4), static, hands.

    All-ones mask channels say every pixel is known (the full-mask DWM conditioning).
    """
    mask = noisy.new_ones((noisy.shape[0], MASK_CHANNELS, *noisy.shape[2:]))
    return torch.cat([noisy, mask, static, hands], dim=1)
