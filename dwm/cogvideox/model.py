"""Model assembly: load a CogVideoX-Fun InP base with diffusers' own classes and widen it for DWM.

The DWM transformer is the unmodified diffusers ``CogVideoXTransformer3DModel`` whose patch
projection takes 16 more input channels (the hand-video latents). Nothing else changes, so
diffusers' caching, offloading and LoRA hooks keep working on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
from torch import nn
from transformers import AutoTokenizer, T5EncoderModel

from ..errors import DWMError
from ..precision import resolve_dtype

BASE_CHANNELS = 33  # noisy latents (16) + mask (1) + masked-video latents (16)
HAND_CHANNELS = 16
DWM_CHANNELS = BASE_CHANNELS + HAND_CHANNELS
LATENT_CHANNELS = 16
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class DWMBase:
    """A loaded base model widened to 49 input channels, plus what LoRAs need to go back to it."""

    transformer: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler_config: dict
    version: str  # "1.1" or "1.5"
    source: str
    base_proj: dict = field(default_factory=dict)  # widened base patch projection, CPU copy
    adapters: dict = field(default_factory=dict)  # checkpoint key -> adapter name (see lora.py)
    base_weights: dict = field(default_factory=dict)  # CPU copies of tensors a full fine-tune blends (lora.py)
    full_blend: list = field(default_factory=list)  # [(checkpoint, strength)] of the full fine-tunes blended now
    prompt_cache: dict = field(default_factory=dict)  # prompt -> embedding (see text.py)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def patch_size_t(self) -> int | None:
        return self.transformer.config.patch_size_t


def version_of(transformer_config: dict) -> str:
    """CogVideoX-Fun V1.1 has no temporal patching; V1.5 patches 2 latent frames together."""
    patch_t = transformer_config.get("patch_size_t")
    if patch_t is None:
        return "1.1"
    if patch_t == 2:
        return "1.5"
    raise DWMError("model", f"unsupported patch_size_t={patch_t} in transformer/config.json",
                   "use a CogVideoX-Fun 5b InP V1.1 or V1.5 base")


def widen_patch_embed(transformer: nn.Module) -> None:
    """Give ``patch_embed.proj`` 16 zero-initialised input channels for the hand latents, in place.

    V1.1 projects with a Conv2d: the new channels extend its input-channel axis. V1.5 projects with
    a Linear over features flattened channel-major (``c*pt*p*p + t*p*p + i*p + j``), so the new
    channels are ``16*pt*p*p`` features appended at the end. Zero init keeps the base output exact.
    """
    proj = transformer.patch_embed.proj
    cfg = transformer.config
    if cfg.in_channels == DWM_CHANNELS:
        return
    if cfg.in_channels != BASE_CHANNELS:
        raise DWMError("model", f"the transformer takes {cfg.in_channels} input channels, not the "
                       f"{BASE_CHANNELS} of an inpainting (InP) model",
                       "load a CogVideoX-Fun 5b InP base (e.g. alibaba-pai/CogVideoX-Fun-V1.1-5b-InP)")
    if isinstance(proj, nn.Conv2d):
        new = nn.Conv2d(DWM_CHANNELS, proj.out_channels, proj.kernel_size, proj.stride,
                        bias=proj.bias is not None)
        extra = (proj.out_channels, HAND_CHANNELS, *proj.kernel_size)
    else:
        per_channel = proj.in_features // BASE_CHANNELS
        new = nn.Linear(DWM_CHANNELS * per_channel, proj.out_features, bias=proj.bias is not None)
        extra = (proj.out_features, HAND_CHANNELS * per_channel)
    new = new.to(device=proj.weight.device, dtype=proj.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(torch.cat([proj.weight, proj.weight.new_zeros(extra)], dim=1))
        if proj.bias is not None:
            new.bias.copy_(proj.bias)
    new.requires_grad_(proj.weight.requires_grad)
    transformer.patch_embed.proj = new
    transformer.register_to_config(in_channels=DWM_CHANNELS)


def _check_folder(path: str) -> None:
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if missing:
        raise DWMError("model folder", f"{path} lacks the sub-folders {', '.join(missing)}",
                       "point at a CogVideoX-Fun InP folder in diffusers layout (transformer/, vae/, "
                       "text_encoder/, tokenizer/, scheduler/), e.g. a download of "
                       "alibaba-pai/CogVideoX-Fun-V1.1-5b-InP")


def _read_scheduler_config(path: str) -> dict:
    return dict(CogVideoXDDIMScheduler.load_config(path, subfolder="scheduler"))


def load_base(path: str, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu") -> DWMBase:
    """Load a CogVideoX-Fun InP base (local folder or hub id) and widen it to the DWM input.

    The libraries are imported with this module, never inside a load: an import inside one leaves the
    loading frames in a reference cycle (``torch.fx.wrap`` keeps its own frame), and the loaded models
    with them until the next garbage collection.
    """
    torch_dtype = resolve_dtype(dtype)
    is_local = os.path.isdir(path)
    if is_local:
        _check_folder(path)
    elif os.path.exists(path) or path.count("/") != 1:
        raise DWMError("model", f"{path!r} is neither a model folder nor a hub id (owner/name)",
                       "pass the folder of a CogVideoX-Fun InP model in diffusers layout")
    try:
        transformer = CogVideoXTransformer3DModel.from_pretrained(
            path, subfolder="transformer", torch_dtype=torch_dtype)
        vae = AutoencoderKLCogVideoX.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype)
        # Eager attention, as the reference runs T5 (transformers 5 picks SDPA: ~1e-5 off).
        text_encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=torch_dtype,
                                                      attn_implementation="eager")
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler_config = _read_scheduler_config(path)
    except (OSError, EnvironmentError) as err:
        where = path if is_local else f"the hub id {path}"
        raise DWMError("model", f"could not load {where}: {str(err).splitlines()[0]}",
                       "check the folder is a complete diffusers-layout download, or download it "
                       "first (no network access is assumed at generation time)") from err
    version = version_of(dict(transformer.config))
    widen_patch_embed(transformer)
    for module in (transformer, vae, text_encoder):
        module.requires_grad_(False).eval().to(device)
    proj = transformer.patch_embed.proj
    base_proj = {"weight": proj.weight.detach().to("cpu", copy=True)}
    if proj.bias is not None:
        base_proj["bias"] = proj.bias.detach().to("cpu", copy=True)
    return DWMBase(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   scheduler_config=scheduler_config, version=version, source=path, base_proj=base_proj)

