"""A tiny random-weight CogVideoX-Fun InP base in the real diffusers folder layout.

It goes through exactly the code paths of a real 5B download (``from_pretrained`` of each
component), so the demo, the tests and the ComfyUI host runs exercise the real loading code with no
download. Its output is noise-like: it proves the plumbing, not the method.
"""

from __future__ import annotations

import json
import os

import torch

from ..atomic import atomic_dir

# The 5B scheduler values (CogVideoX-Fun ships these in scheduler/scheduler_config.json).
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing")
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?-"


def tiny_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(c, -2.0 - i * 0.01) for i, c in enumerate(CHARS)]
    pieces += [("\u2581" + c, -1.5 - i * 0.01) for i, c in enumerate(CHARS)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def _transformer(version: str):
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=33, out_channels=16,
        time_embed_dim=32, text_embed_dim=32, num_layers=2, sample_width=90, sample_height=60,
        sample_frames=49, patch_size=2, patch_size_t=None if version == "1.1" else 2,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)


def _vae():
    from diffusers import AutoencoderKLCogVideoX

    return AutoencoderKLCogVideoX(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                                  latent_channels=16, scaling_factor=0.7, sample_height=480, sample_width=720)


def _text_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, dropout_rate=0.0)
    return T5EncoderModel(cfg)


def make_tiny_model(out: str, version: str = "1.1", seed: int = 0) -> str:
    """Write a tiny random base to ``out`` (atomically) and return the path."""
    from diffusers import CogVideoXDDIMScheduler

    if version not in ("1.1", "1.5"):
        raise ValueError(f"version must be '1.1' or '1.5', not {version!r}")
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    parts = {"transformer": _transformer(version), "vae": _vae(),
             "text_encoder": _text_encoder(len(tokenizer)), "tokenizer": tokenizer,
             "scheduler": CogVideoXDDIMScheduler(**SCHEDULER)}
    with atomic_dir(out) as tmp:
        for name, part in parts.items():
            part.save_pretrained(os.path.join(tmp, name))
        index = {"_class_name": "CogVideoXPipeline", "_diffusers_version": "0.42.1",
                 "scheduler": ["diffusers", "CogVideoXDDIMScheduler"],
                 "text_encoder": ["transformers", "T5EncoderModel"],
                 "tokenizer": ["transformers", "T5Tokenizer"],
                 "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
                 "vae": ["diffusers", "AutoencoderKLCogVideoX"]}
        with open(os.path.join(tmp, "model_index.json"), "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=2)
    return out


def cache_root() -> str:
    """Where the embedded tiny models are built once (``DWM_CACHE`` overrides the place)."""
    return os.environ.get("DWM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "comfyui-dwm")


def default_tiny_model(version: str = "1.1") -> str:
    """The embedded default: built once into the user cache."""
    path = os.path.join(cache_root(), f"tiny-cogvideox-fun-v{version}-inp")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        make_tiny_model(path, version)
    return path
