"""Model assembly: the widened transformer equals the base InP model when the hand latents are zero."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from comfyui_dwm.errors import DWMError
from comfyui_dwm.cogvideox.model import DWM_CHANNELS, load_base
from comfyui_dwm.cogvideox.sampler import dwm_model_input, rotary_embedding


def _forward(transformer, hidden, text, frames_h_w):
    f, h, w = frames_h_w
    rope = rotary_embedding(transformer, h * 8, w * 8, f, "cpu")
    with torch.no_grad():
        return transformer(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([700]),
                           image_rotary_emb=rope, return_dict=False)[0]


@pytest.mark.parametrize("version,frames", [("1.1", 3), ("1.5", 4)])
def test_widened_model_with_zero_hands_reproduces_base(tiny_dir, version, frames):
    path = tiny_dir[version]
    reference = CogVideoXTransformer3DModel.from_pretrained(path, subfolder="transformer").eval()
    base = load_base(path, "fp32")
    assert base.version == version
    assert base.transformer.config.in_channels == DWM_CHANNELS
    g = torch.Generator().manual_seed(0)
    noisy, static = (torch.randn(1, frames, 16, 10, 12, generator=g) for _ in range(2))
    text = torch.randn(1, 226, 32, generator=g)
    base_in = torch.cat([noisy, torch.full_like(noisy[:, :, :1], 0.7), static], dim=2)
    expected = _forward(reference, base_in, text, (frames, 10, 12))
    got = _forward(base.transformer, dwm_model_input(noisy, static, torch.zeros_like(static), 0.7), text,
                   (frames, 10, 12))
    # Identical up to float rounding (the reduction over 49 vs 33 channels may be ordered differently);
    # a wrong channel layout is off by O(1).
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    hands = torch.randn(static.shape, generator=g)
    with torch.no_grad():
        weight = base.transformer.patch_embed.proj.weight
        hand_weights = weight[:, 33:] if weight.ndim == 4 else weight[:, 33 * 8:]  # V1.5: pt*p*p = 8
        hand_weights.copy_(torch.randn(hand_weights.shape, generator=g) * 0.1)
    moved = _forward(base.transformer, dwm_model_input(noisy, static, hands, 0.7), text, (frames, 10, 12))
    assert (moved - expected).abs().max() > 1e-3  # the hand channels are wired in


def test_v15_hand_features_are_appended_channel_major(base15):
    proj = base15.transformer.patch_embed.proj
    per_channel = 2 * 2 * 2  # pt * p * p
    assert proj.in_features == DWM_CHANNELS * per_channel
    assert torch.count_nonzero(proj.weight[:, 33 * per_channel:]) == 0
    assert torch.count_nonzero(proj.weight[:, :33 * per_channel]) > 0


def test_dtype_and_frozen(tiny_dir):
    base = load_base(tiny_dir["1.1"], "bf16")
    assert base.transformer.dtype == torch.bfloat16 and base.vae.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in base.transformer.parameters())


def test_missing_components_named(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir["1.1"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(DWMError, match="lacks the sub-folders vae"):
        load_base(str(broken))


def test_unknown_model_path(tmp_path):
    with pytest.raises(DWMError, match="neither a model folder nor a hub id"):
        load_base(str(tmp_path / "no" / "such" / "model"))


def test_non_inpainting_base_refused(tiny_dir, tmp_path):
    t2v = tmp_path / "t2v"
    shutil.copytree(tiny_dir["1.1"], t2v)
    transformer = CogVideoXTransformer3DModel.from_pretrained(str(t2v), subfolder="transformer")
    config = dict(transformer.config)
    config["in_channels"] = 16
    CogVideoXTransformer3DModel.from_config(config).save_pretrained(str(t2v / "transformer"))
    with pytest.raises(DWMError, match="16 input channels.*InP"):
        load_base(str(t2v))


def test_corrupt_weights_named(tiny_dir, tmp_path):
    broken = tmp_path / "corrupt"
    shutil.copytree(tiny_dir["1.1"], broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DWMError, match="could not load"):
        load_base(str(broken))


def test_interop_base_loads(tiny_dir):
    from conftest import INTEROP

    base = load_base(os.path.join(INTEROP, "tiny-v11-base"), "fp32")
    assert base.version == "1.1"
    with open(os.path.join(INTEROP, "tiny-v11-base", "transformer", "config.json")) as fh:
        assert json.load(fh)["in_channels"] == 33
    assert base.transformer.patch_embed.proj.weight.shape[1] == DWM_CHANNELS


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DWMError, match="could not load the hub id someone/no-such-dwm-base.*download it first"):
        load_base("someone/no-such-dwm-base")


FREED_CHECK = """
import gc, sys, weakref
gc.disable()  # what refcounting alone frees
from comfyui_dwm.cogvideox.model import load_base
base = load_base(sys.argv[1], "fp32", "cpu")
parts = [weakref.ref(getattr(base, name)) for name in ("transformer", "vae", "text_encoder")]
del base
print([part() is None for part in parts])
"""


def test_a_dropped_base_is_freed_at_once(tiny_dir):
    """In a fresh process the first load must not leave the models in a reference cycle (a library
    import inside a load would: torch.fx.wrap keeps its frame and the loading frames above it)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FREED_CHECK, str(tiny_dir["1.1"])], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[True, True, True]", out.stderr[-2000:]
