"""A tiny random Wan2.1-Fun InP base in the VideoX-Fun layout, and a random DWM-Wan release that fits it.

The base goes through the real loading code of a 14B download: ``config.json`` + a transformer
safetensors file with the original Wan key names (dim 256 = 2 heads of 128 and text width 4096, as
ComfyUI's Wan detection assumes), ``Wan2.1_VAE.pth`` (original VAE layout, narrow), the umT5 in Wan's
own ``.pth`` layout (4096 wide, tiny otherwise) and a ``google/umt5-xxl/`` tokenizer. The release is
in the reference trainer's format. Outputs are noise: they prove the plumbing, not the method.
"""

from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import save_file

from ..atomic import atomic_dir
from .export import experiment_config, save_wan_release
from .model import HAND_CHANNELS, read_wan_config, read_wan_state_dict
from .text import umt5_to_wan
from .vae import diffusers_to_wan_vae

TINY_CONFIG = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": "i2v", "text_len": 512,
               "in_dim": 36, "dim": 256, "ffn_dim": 256, "freq_dim": 256, "text_dim": 4096, "out_dim": 16,
               "num_heads": 2, "num_layers": 2, "window_size": [-1, -1], "qk_norm": True,
               "cross_attn_norm": True, "eps": 1e-06}
TINY_UMT5 = dict(d_kv=8, num_heads=2, d_ff=16, num_layers=2)  # d_model is the transformer's text_dim
TINY_VAE_DIM = 2  # 1 also loads in both, but RMS norms over one channel keep only signs
CLIP_DIM = 1280  # open-clip ViT-H features, fixed whatever the transformer's width
PATCH = (1, 2, 2)
TRANSFORMER_FILE = "diffusion_pytorch_model.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
UMT5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = os.path.join("google", "umt5-xxl")
RELEASE_RANK, RELEASE_ALPHA = 8, 12.0
RELEASE_YAML = "dwm_wan_tiny_lora.yaml"


def wan_transformer_shapes(config: dict) -> dict:
    """Original Wan 2.1 i2v tensor names -> shapes for a ``config.json``."""
    dim, ffn = config["dim"], config["ffn_dim"]
    shapes = {"patch_embedding.weight": (dim, config["in_dim"], *PATCH), "patch_embedding.bias": (dim,),
              "head.modulation": (1, 2, dim)}

    def linear(name: str, out: int, inp: int) -> None:
        shapes.update({f"{name}.weight": (out, inp), f"{name}.bias": (out,)})

    def norm(name: str, width: int, bias: bool = False) -> None:
        shapes.update({f"{name}.weight": (width,), **({f"{name}.bias": (width,)} if bias else {})})

    linear("text_embedding.0", dim, config["text_dim"])
    linear("time_embedding.0", dim, config["freq_dim"])
    for name in ("text_embedding.2", "time_embedding.2"):
        linear(name, dim, dim)
    linear("time_projection.1", 6 * dim, dim)
    for n in range(config["num_layers"]):
        for name in ("q", "k", "v", "o"):
            linear(f"blocks.{n}.self_attn.{name}", dim, dim)
        for name in ("q", "k", "v", "o", "k_img", "v_img"):
            linear(f"blocks.{n}.cross_attn.{name}", dim, dim)
        for name in ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k",
                     "cross_attn.norm_k_img"):
            norm(f"blocks.{n}.{name}", dim)
        norm(f"blocks.{n}.norm3", dim, bias=True)
        linear(f"blocks.{n}.ffn.0", ffn, dim)
        linear(f"blocks.{n}.ffn.2", dim, ffn)
        shapes[f"blocks.{n}.modulation"] = (1, 6, dim)
    linear("head.head", config["out_dim"] * math.prod(PATCH), dim)
    norm("img_emb.proj.0", CLIP_DIM, bias=True)
    linear("img_emb.proj.1", CLIP_DIM, CLIP_DIM)
    linear("img_emb.proj.3", dim, CLIP_DIM)
    norm("img_emb.proj.4", dim, bias=True)
    return shapes


def _random_tensor(name: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """Trained-looking scales: gains near 1, small biases, weights ~ 1/sqrt(fan-in)."""
    noise = torch.randn(shape, generator=g)
    if name.endswith("modulation"):
        return noise * 0.1
    if name.endswith(".bias"):
        return noise * 0.02
    if len(shape) == 1:
        return 1 + noise * 0.1
    return noise / math.sqrt(math.prod(shape[1:]))


def _transformer(config: dict, g: torch.Generator) -> dict:
    return {k: _random_tensor(k, s, g).to(torch.bfloat16) for k, s in wan_transformer_shapes(config).items()}


def _vae() -> dict:
    from diffusers import AutoencoderKLWan

    return diffusers_to_wan_vae(AutoencoderKLWan(base_dim=TINY_VAE_DIM).state_dict())


def _umt5(text_dim: int, vocab_size: int) -> dict:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=text_dim, feed_forward_proj="gated-gelu",
                        dropout_rate=0.0, **TINY_UMT5)
    state = umt5_to_wan(UMT5EncoderModel(config).state_dict())
    return {k: v.to(torch.bfloat16) for k, v in state.items()}


def make_tiny_wan_base(out: str, seed: int = 0) -> str:
    """Write a complete tiny Wan2.1-Fun InP base (VideoX-Fun layout) to ``out`` atomically; return ``out``."""
    from ..cogvideox.tiny import tiny_t5_tokenizer

    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    with atomic_dir(out) as tmp:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as fh:
            json.dump(TINY_CONFIG, fh, indent=2)
        save_file(_transformer(TINY_CONFIG, torch.Generator().manual_seed(seed)),
                  os.path.join(tmp, TRANSFORMER_FILE), metadata={"format": "pt"})
        torch.save(_vae(), os.path.join(tmp, VAE_FILE))
        torch.save(_umt5(TINY_CONFIG["text_dim"], len(tokenizer)), os.path.join(tmp, UMT5_FILE))
        tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER_DIR))
    return out


def make_tiny_wan_release(base: str, out: str, seed: int = 0) -> str:
    """Write a random DWM-Wan release for ``base`` in the reference trainer's format; return ``out``.

    LoRA (rank 8, alpha 12) on every Linear of the transformer, a 52-channel patch embedding with
    non-zero hand channels, and the experiment yaml.
    """
    read_wan_config(base)
    state = read_wan_state_dict(base)
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key in sorted(k for k, v in state.items() if k.endswith(".weight") and v.ndim == 2):
        out_features, in_features = state[key].shape
        down = torch.randn(RELEASE_RANK, in_features, generator=g) / math.sqrt(in_features)
        lora[key[: -len(".weight")]] = (down, torch.randn(out_features, RELEASE_RANK, generator=g) * 0.05,
                                        RELEASE_ALPHA)
    weight, bias = state["patch_embedding.weight"].float(), state["patch_embedding.bias"].float()
    hands = torch.randn((weight.shape[0], HAND_CHANNELS, *weight.shape[2:]), generator=g) * 0.05
    patch = {"weight": torch.cat([weight + torch.randn(weight.shape, generator=g) * 0.02, hands], 1),
             "bias": bias + torch.randn(bias.shape, generator=g) * 0.02}
    experiment = experiment_config("dwm_wan_tiny_lora", base, RELEASE_RANK, RELEASE_ALPHA,
                                   {"custom_settings": {"mixed_precision": "bf16"}},
                                   "Tiny random Wan2.1-Fun-InP hand-concat LoRA.")
    with atomic_dir(out) as tmp:
        save_wan_release(tmp, lora, patch, experiment, yaml_name=RELEASE_YAML)
    return out


def default_tiny_wan_base() -> str:
    """The embedded tiny Wan base, built once into the user cache."""
    from ..cogvideox.tiny import cache_root

    path = os.path.join(cache_root(), "tiny-wan21-fun-inp")
    if not os.path.isfile(os.path.join(path, "config.json")):
        make_tiny_wan_base(path)
    return path
