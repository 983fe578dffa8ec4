"""Training throughput: only what a step needs on the accelerator, fused AdamW, samples/s and MFU.

With precomputed latents and prompt embeddings a step calls neither the VAE nor the text encoder, so
they wait on the CPU (a T5-XXL alone is ~9 GB of accelerator memory) and go to the accelerator only
for validation, then back. An encoder a family always keeps on the CPU (``family.cpu_encoders``,
e.g. Wan's umT5) stays there. An empty prompt for prompt dropout is encoded once on the CPU and cached.
MFU is computed with ``comfyui_dwm.flops`` (the formula the GPU benchmark uses).
"""

from __future__ import annotations

import contextlib
import os
import time

import torch

from comfyui_dwm.dataset import VIDEO_DIRS
from comfyui_dwm.flops import latent_size, mfu, peak_flops, training_flops

ENCODERS = ("vae", "text_encoder")


def step_needs(dataset) -> set[str]:
    """The encoders a training step calls: the VAE when a video has no precomputed latents, the text
    encoder when a prompt has no precomputed embedding (files are those the dataset's layout names)."""
    layout, needs = dataset.layout, set()
    for sample in dataset.samples:
        if any(not os.path.isfile(layout.latents(sample, key)) for key in VIDEO_DIRS):
            needs.add("vae")
        if not os.path.isfile(layout.prompt_embeds(sample)):
            needs.add("text_encoder")
    return needs


def _encoders(family):
    keep = set(getattr(family, "cpu_encoders", ()))
    for name in ENCODERS:
        module = getattr(family.base, name, None)
        if module is not None:
            yield name, module, name in keep


def place_encoders(family, dataset, device) -> dict[str, str]:
    """Each encoder on ``device`` when steps call it, on the CPU otherwise; returns {name: device}."""
    needs, placed = step_needs(dataset), {}
    for name, module, keep in _encoders(family):
        where = torch.device(device) if name in needs and not keep else torch.device("cpu")
        module.to(where)
        placed[name] = str(where)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return placed


@contextlib.contextmanager
def encoders_on(family, device):
    """Validation: the encoders on ``device`` (except those the family keeps on the CPU), then back."""
    moved = []
    for _, module, keep in _encoders(family):
        if not keep:
            moved.append((module, next(module.parameters()).device))
            module.to(device)
    try:
        yield
    finally:
        for module, where in moved:
            module.to(where)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def fused_available(params) -> bool:
    """Fused AdamW (one kernel over all tensors) only when every parameter is a float tensor on CUDA."""
    params = list(params)
    return bool(params) and all(p.device.type == "cuda" and p.dtype.is_floating_point for p in params)


def make_optimizer(params, cfg) -> torch.optim.AdamW:
    """The recipe's AdamW, fused where available (torch's default implementation elsewhere)."""
    params = list(params)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon,
                             fused=True if fused_available(params) else None)


def device_peak(device) -> float | None:
    """Dense bf16 peak FLOP/s of the accelerator; None on the CPU or an unknown card."""
    device = torch.device(device)
    return peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


class Throughput:
    """samples/s and MFU of one optimizer step: ``start()`` before its first micro-batch is fetched,
    ``stop(samples)`` once its loss is known (checkpoints and validation fall outside)."""

    def __init__(self, transformer_config, cfg, devices: int, device):
        frames, height, width = latent_size(cfg.num_frames, cfg.height, cfg.width)
        self.flops_per_sample = training_flops(transformer_config, frames, height, width)
        self.peak, self.devices = device_peak(device), devices
        self.started = time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self, samples: int) -> dict[str, float]:
        """{"samples_per_s": ..., "mfu": ...} (no "mfu" where the card's peak is unknown)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        rates = {"samples_per_s": samples / seconds}
        utilisation = mfu(self.flops_per_sample * samples, seconds, self.peak, self.devices)
        if utilisation is not None:
            rates["mfu"] = utilisation
        return rates
