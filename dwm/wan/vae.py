"""The Wan 2.1 VAE on diffusers' ``AutoencoderKLWan``, with the latent normalisation DWM-Wan expects.

``Wan2.1_VAE.pth`` (or ComfyUI's ``wan_2.1_vae.safetensors``, same keys) is renamed by diffusers' own
single-file converter; the widths are read from the weights, so a tiny VAE loads the same way.

Latents are normalised per channel, ``(z - latents_mean) / latents_std``, as the transformer was
trained. The reference normalises only the distribution's mean; a sample adds the encoder's own noise
scale on top (``mean_n + std * eps``), so that is what :func:`encode_wan_video` draws.
"""

from __future__ import annotations

import os
import re

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from ..errors import DWMError
from ..precision import resolve_dtype
from .weights import find_weights, read_weights

VAE_KEYS = ("encoder.conv1.weight", "decoder.head.0.gamma", "conv2.weight")
WAN22_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"
UP_BLOCK_LEN = 4  # Wan 2.1 decoder: 3 residual blocks then an upsampler per level, in one flat list
_FIX = "use the Wan 2.1 VAE (Wan2.1_VAE.pth from the VideoX-Fun folder, or wan_2.1_vae.safetensors)"
# diffusers block names -> original Wan names (the inverse of diffusers' convert_wan_vae_to_diffusers);
# the flag marks residual blocks, whose inner layers are renamed too.
_BLOCKS = (
    (r"quant_conv\.", "conv1.", False), (r"post_quant_conv\.", "conv2.", False),
    (r"(encoder|decoder)\.conv_in\.", r"\1.conv1.", False),
    (r"(encoder|decoder)\.norm_out\.", r"\1.head.0.", False),
    (r"(encoder|decoder)\.conv_out\.", r"\1.head.2.", False),
    (r"(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.middle.1.", False),
    (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", lambda m: f"{m[1]}.middle.{2 * int(m[2])}.", True),
    (r"encoder\.down_blocks\.(\d+)\.", r"encoder.downsamples.\1.", True),
    (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
     lambda m: f"decoder.upsamples.{UP_BLOCK_LEN * int(m[1]) + int(m[2])}.", True),
    (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
     lambda m: f"decoder.upsamples.{UP_BLOCK_LEN * int(m[1]) + UP_BLOCK_LEN - 1}.", False),
)
_RESNET_LAYERS = (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
                  ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))


def _wan_vae_key(key: str) -> str:
    """One diffusers name -> its original Wan name (unchanged when the layouts agree)."""
    for pattern, repl, residual in _BLOCKS:
        match = re.match(pattern, key)
        if match:
            head = repl(match) if callable(repl) else match.expand(repl)
            rest = key[match.end():]
            for new, old in _RESNET_LAYERS if residual else ():
                if rest.startswith(new):
                    rest = old + rest[len(new):]
                    break
            return head + rest
    return key


def diffusers_to_wan_vae(state: dict) -> dict:
    """``AutoencoderKLWan`` tensors -> the original Wan 2.1 VAE layout (what ComfyUI and the reference read)."""
    return {_wan_vae_key(k): v for k, v in state.items()}


def _is_wan_vae(keys: set) -> bool:
    return all(k in keys for k in VAE_KEYS)


def wan_vae_config(state: dict) -> dict:
    """``AutoencoderKLWan`` arguments of original-layout weights: widths and latent channels from the shapes."""
    if WAN22_KEY in state:
        raise DWMError("vae", "this is a Wan 2.2 VAE (48 latent channels, 16x space); DWM-Wan uses Wan 2.1's", _FIX)
    return dict(base_dim=state["encoder.conv1.weight"].shape[0],
                decoder_base_dim=state["decoder.head.0.gamma"].shape[0], z_dim=state["conv2.weight"].shape[0])


def find_wan_vae(path: str) -> str:
    """The Wan VAE file: ``path`` itself, or the file in the folder ``path`` whose keys are a Wan VAE's."""
    file = find_weights(path, _is_wan_vae) if os.path.isdir(path) else path
    if file is None or not os.path.isfile(file):
        raise DWMError("vae", f"no Wan VAE weights (encoder.conv1, decoder.head, conv2) found in {path}", _FIX)
    return file


def load_wan_vae(path: str, dtype: str | torch.dtype = "bf16", device: str | torch.device = "cpu"):
    """Diffusers ``AutoencoderKLWan`` from a Wan VAE file, or the folder that holds one (found by its keys)."""

    torch_dtype = resolve_dtype(dtype)
    file = find_wan_vae(path)
    state = read_weights(file)
    if not _is_wan_vae(set(state)):
        raise DWMError("vae", f"{file} is not a Wan VAE in the original layout", _FIX)
    with init_empty_weights():
        vae = AutoencoderKLWan(**wan_vae_config(state))
    converted = {k: v.to(torch_dtype) for k, v in convert_wan_vae_to_diffusers(state).items()}
    try:
        vae.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as err:
        raise DWMError("vae", f"{file} does not fit a Wan 2.1 VAE ({str(err).splitlines()[0]})", _FIX) from err
    return vae.to(device).requires_grad_(False).eval()


def _stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


def normalize_wan_latents(vae, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z)
    return (z - mean) / std


def denormalize_wan_latents(vae, z: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, z)
    return z * std + mean


def set_tiling(vae, tiling: bool) -> None:
    """Tiling bounds the VAE's memory by its tile size (256 px tiles; results differ slightly at seams)."""
    (vae.enable_tiling if tiling else vae.disable_tiling)()


@torch.no_grad()
def encode_wan_video(vae, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[C, F, H, W]`` in [-1, 1] -> normalised latents ``[1, 16, F_lat, h, w]``, fp32 on the CPU.

    Without ``generator`` the distribution's mode; with it a sample whose noise is drawn on the CPU
    (the same latents on any device for one seed).
    """
    x = video.unsqueeze(0).to(device=vae.device, dtype=vae.dtype)
    dist = vae.encode(x).latent_dist
    z = normalize_wan_latents(vae, dist.mean.float()).cpu()
    if generator is None:
        return z
    return z + dist.std.float().cpu() * torch.randn(z.shape, generator=generator)


@torch.no_grad()
def decode_wan_latents(vae, latents: torch.Tensor, tiling: bool = False) -> torch.Tensor:
    """Normalised latents ``[B, 16, F_lat, h, w]`` -> frames ``[B, F, H, W, 3]`` in [0, 1], fp32 on the CPU."""
    set_tiling(vae, tiling)
    z = denormalize_wan_latents(vae, latents.to(device=vae.device, dtype=torch.float32)).to(vae.dtype)
    video = vae.decode(z).sample.float().clamp(-1, 1)
    return (video / 2 + 0.5).permute(0, 2, 3, 4, 1).cpu()
