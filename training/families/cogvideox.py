"""The CogVideoX-Fun family in training: v-prediction loss (``loss.py``), peft LoRA on the attention
projections + ``patch_embed.proj`` (``lora_setup.py``), exports in our single-file format and the
reference output-folder format, validation with ``dwm.cogvideox.pipeline.generate``."""

from __future__ import annotations

import os

import torch
from diffusers import CogVideoXDDIMScheduler

from comfyui_dwm.cogvideox.checkpoint import save_checkpoint_file, save_reference_folder
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.pipeline import generate
from comfyui_dwm.cogvideox.sampler import SamplerSettings
from comfyui_dwm.cogvideox.scene import configure_vae
from comfyui_dwm.cogvideox.text import encode_prompt

from ..batch import latent_distribution, make_step_inputs
from ..data import COGVIDEOX_LAYOUT
from ..lora_setup import make_trainable, to_checkpoint
from ..loss import training_loss
from ..preflight import transformer_config
from . import validation_run


class CogVideoXFamily:
    name = "cogvideox"
    layout = COGVIDEOX_LAYOUT

    def check_model(self, model: str) -> int:
        """The text width of a valid base; DWMError otherwise (no weights are read)."""
        return transformer_config(model).get("text_embed_dim", 4096)

    def load(self, cfg, dtype: torch.dtype, device) -> torch.nn.Module:
        """The transformer on ``device``; VAE and T5 on the CPU (``training.throughput`` moves them when needed)."""
        self.base = load_base(cfg.model, dtype, "cpu")
        self.base.transformer.to(device)
        configure_vae(self.base.vae, tiling=True, slicing=True)
        self.scheduler = CogVideoXDDIMScheduler.from_config(self.base.scheduler_config)
        return self.base.transformer

    def load_encoders(self, model: str, dtype, device) -> None:
        """For ``training.prepare``: the VAE and text encoder on ``device`` (the transformer stays on the CPU)."""
        self.base = load_base(model, dtype, "cpu")
        self.base.vae.to(device)
        self.base.text_encoder.to(device)
        configure_vae(self.base.vae, tiling=True, slicing=True)

    def encode_video(self, video: torch.Tensor, key: str) -> torch.Tensor:
        """The latent distribution ``[32, F, h, w]`` (``key`` is unused: no sample is drawn here)."""
        return latent_distribution(self.base.vae, video)

    def encode_text(self, prompt: str) -> torch.Tensor:
        return encode_prompt(self.base, prompt)[0]

    def make_trainable(self, cfg) -> list[torch.nn.Parameter]:
        return make_trainable(self.base, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules,
                              cfg.gradient_checkpointing)

    def loss(self, model, items: list[dict], generator: torch.Generator, device, dtype, cfg) -> torch.Tensor:
        x = make_step_inputs(self.base, items, generator, device, dtype, cfg.prompt_dropout, cfg.hand_dropout)
        return training_loss(model, self.base.transformer, self.scheduler, x.latents, x.static, x.hands,
                             x.prompt_embeds, self.base.scaling_factor, generator)

    def export(self, state: dict, cfg, folder: str, name: str, source: str, dtype: torch.dtype) -> str:
        """Our single file ``<name>.safetensors`` + the reference files into ``folder``; the single file's name."""
        ckpt = to_checkpoint(self.base.transformer, state, cfg.lora_rank, cfg.lora_alpha, source)
        file = f"{name}.safetensors"
        save_checkpoint_file(ckpt, os.path.join(folder, file), dtype=dtype)
        reference = os.path.join(folder, ".reference")
        save_reference_folder(ckpt, reference, dtype=dtype)
        for part in os.listdir(reference):
            os.replace(os.path.join(reference, part), os.path.join(folder, part))
        os.rmdir(reference)
        return file

    def generator(self, cfg):
        return validation_run(generate, self.base, SamplerSettings, cfg, loras=None)
