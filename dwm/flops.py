"""Model FLOPs of the DWM transformers, and model FLOP utilisation (MFU), in one place.

Used by the trainer's log (``training/throughput.py``) and the GPU benchmark (``bench/bench_gpu.py``).
Counts are analytic, from the transformer's config and the latent size, and count what
``torch.utils.flop_counter`` counts: matmuls (a Linear of ``i`` -> ``o`` over ``n`` tokens is
``2*i*o*n``), convolutions and attention (``4*S_q*S_k*D`` per layer: ``Q K^T`` and ``A V``). Norms,
activations and biases are left out. The family is read from the config's keys, never from names.

* CogVideoX (``text_embed_dim``): every block sees the joint sequence ``S = 226 text + video tokens``:
  ``2*12*D^2*S`` (q, k, v, out and the 4x MLP) + ``4*S^2*D`` (attention) per block, plus the
  per-sample adaLN projections, the patch and text projections and the output projection.
* Wan (``ffn_dim``): self-attention over the video tokens ``T``, cross-attention to 512 text and 257
  image tokens, an MLP of width ``ffn_dim``: ``2*(4*D^2*T + 2*D^2*(T + 512 + 257) + 2*D*F*T)`` +
  ``4*T*(T + 512 + 257)*D`` per block, plus the embedders and the output projection.

Training: ``training_flops = 3 * forward`` (the backward pass costs twice the forward), i.e. the usual
``6 * params * tokens`` plus the attention term. That is the convention of published MFU figures: it
counts the weight-gradient matmuls a frozen (LoRA) base does not need, and not the forward that
gradient checkpointing recomputes. MFU = model FLOPs per second / the card's dense bf16 peak.
"""

from __future__ import annotations

import math

VAE_TIME, VAE_SPACE = 4, 8  # latent compression of both families' VAEs
COGVIDEOX_TEXT_TOKENS = 226
WAN_TEXT_TOKENS, WAN_IMAGE_TOKENS = 512, 257  # umT5 padded length, CLIP ViT-H tokens
TRAIN_MULTIPLIER = 3

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets; a device name
# matches the longest key it contains (so "H100 PCIe" wins over "H100", "A100" over "A10").
PEAK_BF16_TFLOPS = {
    "B200": 2250.0, "GH200": 989.4, "H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4,
    "H800": 989.4, "H20": 148.0, "A100": 312.0, "A800": 312.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0, "RTX 6000 Ada": 364.2, "RTX A6000": 154.8, "RTX 5090": 209.5, "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def latent_size(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Latent frames, height and width of a video of this size (4x in time, 8x in space)."""
    return (num_frames - 1) // VAE_TIME + 1, height // VAE_SPACE, width // VAE_SPACE


def _linear(inputs: int, outputs: int, tokens: int) -> int:
    return 2 * inputs * outputs * tokens


def _attention(queries: int, keys: int, dim: int) -> int:
    return 4 * queries * keys * dim


def cogvideox_forward_flops(config, frames: int, height: int, width: int) -> int:
    """One forward of one sample through ``CogVideoXTransformer3DModel`` on latents ``frames x height x width``."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    p, pt, e = config["patch_size"], config.get("patch_size_t") or 1, config["time_embed_dim"]
    video = math.ceil(frames / pt) * (height // p) * (width // p)  # V1.5 pads an odd frame count
    text = config.get("max_text_seq_length", COGVIDEOX_TEXT_TOKENS)
    seq = video + text
    patch = config["in_channels"] * pt * p * p
    embed = (_linear(patch, d, video) + _linear(config["text_embed_dim"], d, text)
             + _linear(d, e, 1) + _linear(e, e, 1))
    if config.get("ofs_embed_dim"):
        embed += _linear(config["ofs_embed_dim"], e, 1) + _linear(e, e, 1)
    block = 2 * _linear(e, 6 * d, 1) + 4 * _linear(d, d, seq) + 2 * _linear(d, 4 * d, seq) + _attention(seq, seq, d)
    out = _linear(e, 2 * d, 1) + _linear(d, p * p * pt * config["out_channels"], video)
    return embed + config["num_layers"] * block + out


def wan_forward_flops(config, frames: int, height: int, width: int) -> int:
    """One forward of one sample through ``WanTransformer3DModel`` (i2v: text and CLIP image tokens)."""
    d, f = config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"]
    pt, ph, pw = config["patch_size"]
    video = (frames // pt) * (height // ph) * (width // pw)
    text, image = WAN_TEXT_TOKENS, WAN_IMAGE_TOKENS if config.get("image_dim") else 0
    embed = (_linear(config["in_channels"] * pt * ph * pw, d, video)
             + _linear(config["freq_dim"], d, 1) + _linear(d, d, 1) + _linear(d, 6 * d, 1)
             + _linear(config["text_dim"], d, text) + _linear(d, d, text))
    if image:
        embed += _linear(config["image_dim"], config["image_dim"], image) + _linear(config["image_dim"], d, image)
    keys = text + image
    block = (4 * _linear(d, d, video) + _attention(video, video, d)  # self-attention
             + 2 * _linear(d, d, video) + 2 * _linear(d, d, keys) + _attention(video, keys, d)  # cross-attention
             + _linear(d, f, video) + _linear(f, d, video))
    out = _linear(d, config["out_channels"] * pt * ph * pw, video)
    return embed + config["num_layers"] * block + out


def forward_flops(config, frames: int, height: int, width: int, batch: int = 1) -> int:
    """Forward FLOPs of ``batch`` samples for either family's transformer config (a dict or diffusers config)."""
    count = wan_forward_flops if "ffn_dim" in config else cogvideox_forward_flops
    return batch * count(config, frames, height, width)


def training_flops(config, frames: int, height: int, width: int, batch: int = 1) -> int:
    """Model FLOPs of one training step (forward + backward) on ``batch`` samples."""
    return TRAIN_MULTIPLIER * forward_flops(config, frames, height, width, batch)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a card from its name (``torch.cuda.get_device_name``); None when unknown."""
    name = device_name.upper()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_BF16_TFLOPS[key] * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None, devices: int = 1) -> float | None:
    """Achieved model FLOP/s over the peak of ``devices`` cards; None without a known peak."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / (peak * devices)
