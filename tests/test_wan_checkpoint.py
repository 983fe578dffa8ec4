"""DWM-Wan release folder IO: the reference trainer's folder read as is, the patch embedding blend, refusals."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.checkpoint import (NON_LORA_FILE, WAN_LORA_FILE, WanRelease, blend_patch_embedding,
                                load_wan_release, resolve_module, wan_module_names)

from conftest import INTEROP

RELEASE = os.path.join(INTEROP, "reference-wan-lora")


def make_release(folder, dim: int = 32, layers: int = 1, rank: int = 4, alpha: float = 6.0,
                 in_channels: int = 52, yaml_text: str | None = "pipeline:\n  type: wan2.1_fun_inp_hand_concat\n"):
    """A small release folder in the reference key format (random values)."""
    g = torch.Generator().manual_seed(0)
    os.makedirs(folder, exist_ok=True)
    lora = {}
    for name in wan_module_names(layers)[:3] + ["blocks.0.cross_attn.k_img", "text_embedding.0"]:
        flat = "lora_unet__" + name.replace(".", "_")
        lora[f"{flat}.lora_down.weight"] = torch.randn(rank, dim, generator=g)
        lora[f"{flat}.lora_up.weight"] = torch.randn(dim, rank, generator=g)
        lora[f"{flat}.alpha"] = torch.tensor(alpha)
    save_file(lora, os.path.join(folder, WAN_LORA_FILE))
    save_file({"patch_embedding.weight": torch.randn(dim, in_channels, 1, 2, 2, generator=g),
               "patch_embedding.bias": torch.randn(dim, generator=g)}, os.path.join(folder, NON_LORA_FILE))
    if yaml_text is not None:
        with open(os.path.join(folder, "experiment.yaml"), "w") as fh:
            fh.write(yaml_text)
    return str(folder)


def refusal(path) -> str:
    with pytest.raises(DWMError) as info:
        load_wan_release(str(path))
    message = str(info.value)
    assert "\n" not in message and message.startswith("lora: ") and "Fix: " in message
    return message


def test_reference_release_reads_as_written():
    release = load_wan_release(RELEASE)
    assert (release.rank, release.in_channels, release.dim, len(release.lora)) == (8, 52, 256, 32)
    assert release.config["pipeline"]["type"] == "wan2.1_fun_inp_hand_concat"
    assert release.config["training"]["lora_alpha"] == 12
    raw = load_file(os.path.join(RELEASE, WAN_LORA_FILE))
    down, up, alpha = release.lora["blocks.1.cross_attn.k_img"]
    assert torch.equal(down, raw["lora_unet__blocks_1_cross_attn_k_img.lora_down.weight"])
    assert torch.equal(up, raw["lora_unet__blocks_1_cross_attn_k_img.lora_up.weight"])
    assert alpha == 12.0
    for name in ("blocks.0.cross_attn.k", "img_emb.proj.3", "time_projection.1", "head.head", "text_embedding.0"):
        assert name in release.lora
    assert release.lora["time_projection.1"][1].shape == (1536, 8)
    patch = load_file(os.path.join(RELEASE, NON_LORA_FILE))
    assert torch.equal(release.patch_embedding["weight"], patch["patch_embedding.weight"])


def test_reference_release_fits_the_tiny_base_and_blends_exactly(wan_base_dir):
    release = load_wan_release(RELEASE)
    base_sd = load_file(os.path.join(wan_base_dir, "diffusion_pytorch_model.safetensors"))
    base = {"weight": base_sd["patch_embedding.weight"], "bias": base_sd["patch_embedding.bias"]}
    for module, (down, up, _alpha) in release.lora.items():
        assert base_sd[module + ".weight"].shape == (up.shape[0], down.shape[1])
    full = blend_patch_embedding(base, release, 1.0)
    assert torch.equal(full["weight"], release.patch_embedding["weight"].float())
    assert torch.equal(full["bias"], release.patch_embedding["bias"].float())
    zero = blend_patch_embedding(base, release, 0.0)
    assert zero["weight"].dtype == torch.float32 and zero["weight"].shape == (256, 52, 1, 2, 2)
    assert torch.equal(zero["weight"][:, :36], base["weight"].float())
    assert not zero["weight"][:, 36:].any()
    assert torch.equal(zero["bias"], base["bias"].float())
    half = blend_patch_embedding(base, release, 0.5)["weight"]
    assert torch.allclose(half, (zero["weight"] + full["weight"]) / 2, atol=1e-6)


def test_resolve_module_matches_real_names():
    names = wan_module_names(12)
    assert resolve_module("lora_unet__blocks_0_cross_attn_k_img", names) == "blocks.0.cross_attn.k_img"
    assert resolve_module("lora_unet__blocks_11_cross_attn_k", names) == "blocks.11.cross_attn.k"
    assert resolve_module("img_emb_proj_1", names) == "img_emb.proj.1"
    with pytest.raises(DWMError, match="blocks_12_ffn_0"):
        resolve_module("lora_unet__blocks_12_ffn_0", names)


def test_small_release_and_config_locations(tmp_path):
    release = load_wan_release(make_release(tmp_path / "rel", rank=4, alpha=6.0))
    assert release.rank == 4 and release.lora["blocks.0.cross_attn.k_img"][2] == 6.0
    assert release.config == {"pipeline": {"type": "wan2.1_fun_inp_hand_concat"}}
    ckpt = make_release(tmp_path / "run" / "checkpoint-500", yaml_text=None)
    (tmp_path / "run" / "train.yaml").write_text("training:\n  lora_rank: 4\n")
    assert load_wan_release(ckpt).config == {"training": {"lora_rank": 4}}
    assert load_wan_release(make_release(tmp_path / "plain", yaml_text=None)).config == {}


def test_alpha_defaults_to_rank(tmp_path):
    folder = make_release(tmp_path / "rel", rank=4)
    tensors = {k: v for k, v in load_file(os.path.join(folder, WAN_LORA_FILE)).items() if not k.endswith("alpha")}
    save_file(tensors, os.path.join(folder, WAN_LORA_FILE))
    assert {a for _, _, a in load_wan_release(folder).lora.values()} == {4.0}


def test_blend_refuses_a_release_of_another_width(tmp_path):
    release = load_wan_release(make_release(tmp_path / "rel", dim=32))
    base = {"weight": torch.zeros(48, 36, 1, 2, 2), "bias": torch.zeros(48)}
    with pytest.raises(DWMError, match="width 32") as info:
        blend_patch_embedding(base, release, 1.0)
    assert "[48, 36, 1, 2, 2]" in str(info.value)


def test_refuses_cogvideox_release():
    assert "CogVideoX" in refusal(os.path.join(INTEROP, "reference-lora-v11"))


def test_refuses_cogvideox_folder_built_here(tmp_path):
    save_file({"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 8)},
              str(tmp_path / "pytorch_lora_weights.safetensors"))
    save_file({"patch_embed.proj.weight": torch.zeros(8, 49, 2, 2)}, str(tmp_path / NON_LORA_FILE))
    assert "CogVideoX" in refusal(tmp_path)


def test_refuses_empty_folder_file_and_missing_path(tmp_path):
    assert WAN_LORA_FILE in refusal(tmp_path)
    folder = make_release(tmp_path / "rel")
    assert "is a file" in refusal(os.path.join(folder, WAN_LORA_FILE))
    assert "does not exist" in refusal(tmp_path / "nowhere")


def test_refuses_base_model_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "i2v", "in_dim": 36}')
    assert "Wan base model" in refusal(tmp_path)


def test_refuses_lora_without_non_lora_weights(tmp_path):
    folder = make_release(tmp_path / "rel")
    os.remove(os.path.join(folder, NON_LORA_FILE))
    assert NON_LORA_FILE in refusal(folder)


def test_refuses_cogvideox_non_lora_weights_and_mixed_ranks(tmp_path):
    folder = make_release(tmp_path / "rel")
    save_file({"patch_embed.proj.weight": torch.zeros(8, 49, 2, 2)}, os.path.join(folder, NON_LORA_FILE))
    assert "CogVideoX" in refusal(folder)
    folder = make_release(tmp_path / "mixed")
    tensors = load_file(os.path.join(folder, WAN_LORA_FILE))
    tensors["lora_unet__blocks_0_self_attn_q.lora_down.weight"] = torch.zeros(2, 32)
    tensors["lora_unet__blocks_0_self_attn_q.lora_up.weight"] = torch.zeros(32, 2)
    save_file(tensors, os.path.join(folder, WAN_LORA_FILE))
    assert "mixes LoRA ranks [2, 4]" in refusal(folder)


def test_release_properties():
    release = WanRelease(lora={}, patch_embedding={"weight": torch.zeros(7, 52, 1, 2, 2)}, rank=1)
    assert (release.in_channels, release.dim, release.config) == (52, 7, {})
