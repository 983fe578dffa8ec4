"""DWM checkpoint IO and LoRA strength: reference folders, our single file, refusal of misfits."""

from __future__ import annotations

import os

import pytest
import torch
from diffusers import CogVideoXPipeline
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from conftest import INTEROP, need, random_checkpoint
from dwm.cogvideox.checkpoint import load_checkpoint, save_checkpoint_file, save_reference_folder
from dwm.errors import DWMError
from dwm.cogvideox.lora import activate
from dwm.cogvideox.model import load_base
from dwm.cogvideox.sampler import dwm_model_input, rotary_embedding

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def model_output(base, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noisy, static, hands = (torch.randn(1, 4, 16, 10, 12, generator=g) for _ in range(3))
    text = torch.randn(1, 226, base.transformer.config.text_embed_dim, generator=g)
    rope = rotary_embedding(base.transformer, 80, 96, 4, "cpu")
    with torch.no_grad():
        return base.transformer(hidden_states=dwm_model_input(noisy, static, hands, 0.7),
                                encoder_hidden_states=text, timestep=torch.tensor([500]),
                                image_rotary_emb=rope, return_dict=False)[0]


def write_reference_folder_with_peft(base, folder) -> None:
    """What the reference trainer writes: diffusers' save_lora_weights of a peft LoRA + non-LoRA file."""
    torch.manual_seed(3)
    base.transformer.add_adapter(LoraConfig(r=8, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():
        proj = base.transformer.patch_embed.proj
        proj.weight[:, 33:] = torch.randn(proj.weight[:, 33:].shape) * 0.1
    CogVideoXPipeline.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(base.transformer))
    save_file({"patch_embed.proj.weight": proj.weight.detach().clone(),
               "patch_embed.proj.bias": proj.bias.detach().clone()}, str(folder / "non_lora_weights.safetensors"))


def test_peft_written_reference_folder_matches_the_trained_model(tiny_dir, tmp_path):
    trained = load_base(tiny_dir["1.1"], "fp32")
    write_reference_folder_with_peft(trained, tmp_path)
    expected = model_output(trained)
    base = load_base(tiny_dir["1.1"], "fp32")
    plain = model_output(base)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.rank == 8 and ckpt.alpha == 8 and ckpt.target_modules == sorted(TARGETS)
    activate(base, [(ckpt, 1.0)])
    got = model_output(base)
    assert (got - plain).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # ... exactly as trained


def test_interop_reference_lora_loads_and_unloads(tmp_path):
    base = load_base(os.path.join(need(INTEROP), "tiny-v11-base"), "fp32")
    plain = model_output(base)
    ckpt = load_checkpoint(os.path.join(INTEROP, "reference-lora-v11"))
    assert ckpt.rank == 64 and ckpt.alpha == 64.0 and ckpt.base_version == "1.1"
    activate(base, [(ckpt, 1.0)])
    assert (model_output(base) - plain).abs().max() > 1e-2
    activate(base, [])
    assert torch.equal(model_output(base), plain)


def test_strength_zero_equals_no_lora_and_strength_scales(base11):
    plain = model_output(base11)
    ckpt = random_checkpoint(base11)
    activate(base11, [(ckpt, 0.0)])
    assert torch.equal(model_output(base11), plain)
    activate(base11, [(ckpt, 0.5)])
    half = model_output(base11)
    activate(base11, [(ckpt, 1.0)])
    full = model_output(base11)
    assert (half - plain).abs().max() > 1e-3 and (full - half).abs().max() > 1e-3
    assert len(base11.adapters) == 1  # strength changes never reload


def test_stacked_loras_blend_patch_embed(base11):
    first, second = random_checkpoint(base11, seed=1), random_checkpoint(base11, seed=2)
    activate(base11, [(first, 1.0), (second, 0.5)])
    weight = base11.transformer.patch_embed.proj.weight
    base_w = base11.base_proj["weight"]
    expected = base_w + (first.patch_embed["weight"] - base_w) + 0.5 * (second.patch_embed["weight"] - base_w)
    torch.testing.assert_close(weight, expected)
    assert set(base11.transformer.peft_config) == {name for name, _ in base11.adapters.values()}


def test_single_file_round_trip(base11, tmp_path):
    ckpt = random_checkpoint(base11, rank=4)
    ckpt.alpha = 2.0
    path = str(tmp_path / "dwm.safetensors")
    save_checkpoint_file(ckpt, path)
    back = load_checkpoint(path)
    assert (back.rank, back.alpha, back.base_version) == (4, 2.0, "1.1")
    assert back.lora.keys() == ckpt.lora.keys()
    assert all(torch.equal(back.lora[k], ckpt.lora[k]) for k in ckpt.lora)
    assert torch.equal(back.patch_embed["weight"], ckpt.patch_embed["weight"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_reference_folder_round_trip_and_legacy_pt(base11, tmp_path):
    ckpt = random_checkpoint(base11)
    save_reference_folder(ckpt, str(tmp_path / "out"))
    back = load_checkpoint(str(tmp_path / "out"))
    assert torch.equal(back.patch_embed["bias"], ckpt.patch_embed["bias"]) and back.alpha == back.rank
    os.remove(tmp_path / "out" / "non_lora_weights.safetensors")
    torch.save({"patch_embed.proj.weight": ckpt.patch_embed["weight"],
                "patch_embed.proj.bias": ckpt.patch_embed["bias"]}, tmp_path / "out" / "non_lora_weights.pt")
    assert torch.equal(load_checkpoint(str(tmp_path / "out")).patch_embed["weight"], ckpt.patch_embed["weight"])


def test_lora_for_other_base_refused_naming_both(base11, base15):
    ckpt = random_checkpoint(base15, source="v15_lora.safetensors")
    with pytest.raises(DWMError, match=r"v15_lora.safetensors was trained for a CogVideoX-Fun V1.5.*loaded base is V1.1"):
        activate(base11, [(ckpt, 1.0)])
    assert not base11.adapters


def test_lora_with_wrong_rank_shapes_refused(base11):
    ckpt = random_checkpoint(base11)
    key = next(k for k in ckpt.lora if k.endswith("to_q.lora_B.weight"))
    ckpt.lora[key] = torch.zeros(7, ckpt.rank)
    with pytest.raises(DWMError, match="to_q.lora_B.weight has shape"):
        activate(base11, [(ckpt, 1.0)])


def test_empty_reference_checkpoint_explained(tmp_path):
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    (folder / "optimizer.bin").write_bytes(b"")
    with pytest.raises(DWMError, match="intermediate checkpoint-N folder.*known bug"):
        load_checkpoint(str(folder))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DWMError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(DWMError, match="cannot read"):
        load_checkpoint(str(bad))
    with pytest.raises(DWMError, match="not a .safetensors file"):
        (tmp_path / "lora.ckpt").write_bytes(b"")
        load_checkpoint(str(tmp_path / "lora.ckpt"))
