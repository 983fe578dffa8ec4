"""Small differences from the reference that add up: LoRA strength 1, T5 attention, decode scaling."""

from __future__ import annotations

import torch
from conftest import random_checkpoint

from comfyui_dwm.cogvideox.decode import decode_latents
from comfyui_dwm.cogvideox.lora import activate


def test_strength_one_installs_the_checkpoint_projection_bit_for_bit(base11):
    ckpt = random_checkpoint(base11, seed=3)
    activate(base11, [(ckpt, 1.0)])
    proj = base11.transformer.patch_embed.proj
    assert torch.equal(proj.weight, ckpt.patch_embed["weight"])
    assert torch.equal(proj.bias, ckpt.patch_embed["bias"])
    activate(base11, [(ckpt, 0.0)])
    assert torch.equal(proj.weight, base11.base_proj["weight"])


def test_two_loras_add_their_changes(base11):
    a, b = random_checkpoint(base11, seed=4), random_checkpoint(base11, seed=5)
    activate(base11, [(a, 0.5), (b, 0.25)])
    start = base11.base_proj["weight"]
    want = start + 0.5 * (a.patch_embed["weight"] - start) + 0.25 * (b.patch_embed["weight"] - start)
    torch.testing.assert_close(base11.transformer.patch_embed.proj.weight, want, rtol=0, atol=1e-6)


def test_t5_runs_with_eager_attention_as_the_reference(base11):
    assert base11.text_encoder.config._attn_implementation == "eager"


def test_decode_multiplies_by_the_inverse_scaling_factor(base11, monkeypatch):
    seen = []
    vae = base11.vae
    real = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z: seen.append(z.clone()) or real(z))
    latents = torch.randn(1, 3, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    decode_latents(vae, latents, tiling=False)
    want = (1 / vae.config.scaling_factor) * latents.permute(0, 2, 1, 3, 4)
    assert torch.equal(seen[0], want)
