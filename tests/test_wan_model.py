"""Wan model assembly and release application: strict loading into diffusers, widening, LoRA, reference parity."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import INTEROP
from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.checkpoint import WanRelease, load_wan_release
from comfyui_dwm.wan.lora import activate, diffusers_module_name
from comfyui_dwm.wan.model import (diffusers_config, load_wan_base, load_wan_transformer, read_wan_config,
                           read_wan_state_dict, wan_model_input)
from comfyui_dwm.wan.sampler import pad_text
from comfyui_dwm.wan.tiny import TINY_CONFIG

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "wan_reference_velocity.safetensors")
RELEASE_DIR = os.path.join(INTEROP, "reference-wan-lora")
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def release():
    return load_wan_release(RELEASE_DIR)


@pytest.fixture
def base(wan_base_dir):
    return load_wan_base(wan_base_dir, "fp32", with_text_and_vae=False)


def velocity(transformer, x, context, t):
    """One transformer call as the sampler makes it: text padded to 512, zero CLIP features."""
    with torch.no_grad():
        return transformer(hidden_states=x, timestep=t.reshape(1), encoder_hidden_states=pad_text(context),
                           encoder_hidden_states_image=torch.zeros(x.shape[0], 257, 1280), return_dict=False)[0]


def inputs(seed=0, channels=52):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, channels, 3, 4, 6, generator=g)
    return x, torch.randn(1, 5, 4096, generator=g), torch.tensor(600.0)


def test_loads_every_tensor_strictly_and_widens_with_zero_hand_channels(base, wan_base_dir):
    state = read_wan_state_dict(wan_base_dir)
    t = base.transformer
    cfg = t.config
    assert (cfg.in_channels, cfg.num_attention_heads, cfg.attention_head_dim, cfg.image_dim,
            cfg.added_kv_proj_dim, cfg.num_layers) == (52, 2, 128, 1280, 256, 2)
    assert type(t.patch_embedding) is torch.nn.Conv3d and t.patch_embedding.in_channels == 52
    # every tensor landed: the parameter count is the file's plus the 16 zero hand channels
    hand = t.patch_embedding.weight[:, 36:]
    assert sum(p.numel() for p in t.parameters()) == sum(v.numel() for v in state.values()) + hand.numel()
    assert torch.equal(hand, torch.zeros_like(hand))
    assert torch.equal(t.patch_embedding.weight[:, :36], state["patch_embedding.weight"].float())
    assert torch.equal(t.blocks[1].attn2.add_k_proj.weight, state["blocks.1.cross_attn.k_img.weight"].float())
    assert torch.equal(t.proj_out.bias, state["head.head.bias"].float())
    assert torch.equal(base.base_patch["weight"], t.patch_embedding.weight)


def test_widened_model_equals_the_stock_base_on_the_first_36_channels(base, wan_base_dir):
    state = read_wan_state_dict(wan_base_dir)
    stock = WanTransformer3DModel(**diffusers_config(read_wan_config(wan_base_dir), state))
    stock.load_state_dict({k: v.float() for k, v in convert_wan_transformer_to_diffusers(state).items()})
    x, context, t = inputs()
    expected = velocity(stock.eval(), x[:, :36], context, t)
    assert torch.allclose(velocity(base.transformer, x, context, t), expected, atol=1e-5)


def test_bf16_keeps_diffusers_fp32_modules(wan_base_dir):
    t = load_wan_transformer(wan_base_dir, "bf16")
    assert t.dtype == torch.bfloat16 and t.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert t.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert t.scale_shift_table.dtype == torch.float32


@pytest.mark.parametrize("index", [True, False])
def test_sharded_folders_load_the_same_tensors(tmp_path, index, wan_base_dir):
    state = load_file(os.path.join(wan_base_dir, WEIGHTS))
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(tmp_path / name))
    if index:
        weight_map = {k: name for name, part in shards.items() for k in part}
        (tmp_path / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(os.path.join(wan_base_dir, "config.json"), tmp_path / "config.json")
    loaded = read_wan_state_dict(str(tmp_path))
    assert sorted(loaded) == keys and all(torch.equal(loaded[k], state[k]) for k in keys)


def _config_folder(tmp_path, **changes):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, **changes}))
    return str(tmp_path)


def test_not_a_fun_inp_wan_is_refused(tmp_path):
    with pytest.raises(DWMError, match=r"t2v model with in_dim 16, not an inpainting"):
        read_wan_config(_config_folder(tmp_path, model_type="t2v", in_dim=16))
    with pytest.raises(DWMError, match="diffusers-layout folder"):
        load_wan_transformer(os.path.join(INTEROP, "tiny-v11-base"))
    with pytest.raises(DWMError, match=r"lacks diffusion_pytorch_model\*\.safetensors"):
        read_wan_state_dict(_config_folder(tmp_path))
    with pytest.raises(DWMError, match="cannot read"):
        read_wan_config(str(tmp_path / "nowhere"))


def test_config_maps_the_14b_and_1_3b_sizes():
    image = {"img_emb.proj.1.weight": torch.empty(1280, 1280, device="meta")}
    for dim, heads, layers in ((5120, 40, 40), (1536, 12, 30)):
        cfg = diffusers_config({"dim": dim, "num_heads": heads, "num_layers": layers, "ffn_dim": 4 * dim,
                                "in_dim": 36, "model_type": "i2v"}, image)
        assert (cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["num_layers"]) == (heads, 128, layers)
        assert (cfg["added_kv_proj_dim"], cfg["image_dim"], cfg["qk_norm"]) == (dim, 1280, "rms_norm_across_heads")


def test_model_input_channel_order():
    noisy, static, hands = (torch.full((2, 16, 3, 4, 6), v) for v in (2.0, 3.0, 4.0))
    x = wan_model_input(noisy, static, hands)
    assert x.shape == (2, 52, 3, 4, 6)
    assert [x[:, a:b].unique().tolist() for a, b in ((0, 16), (16, 20), (20, 36), (36, 52))] == \
        [[2.0], [1.0], [3.0], [4.0]]


def test_module_names_follow_diffusers_converter():
    assert diffusers_module_name("blocks.3.cross_attn.k_img") == "blocks.3.attn2.add_k_proj"
    assert diffusers_module_name("blocks.0.self_attn.o") == "blocks.0.attn1.to_out.0"
    assert diffusers_module_name("time_projection.1") == "condition_embedder.time_proj"
    assert diffusers_module_name("img_emb.proj.1") == "condition_embedder.image_embedder.ff.net.0.proj"


def test_lora_update_is_strength_times_alpha_over_rank(base, release):
    stock = base.transformer.blocks[0].attn2.add_v_proj
    weight, bias = stock.weight.detach().clone(), stock.bias.detach().clone()
    down, up, alpha = release.lora["blocks.0.cross_attn.v_img"]
    x = torch.randn(3, weight.shape[1])
    for strength in (1.0, 0.5, -0.3):
        activate(base, [(release, strength)])
        layer = base.transformer.blocks[0].attn2.add_v_proj  # peft's wrapper, installed once
        merged = weight + strength * alpha / release.rank * (up.float() @ down.float())
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, merged, bias), atol=1e-5)
    assert len(base.adapters) == 1 and alpha / release.rank == 1.5
    activate(base, [])
    assert torch.equal(layer(x), torch.nn.functional.linear(x, weight, bias))


def test_patch_embedding_blend_is_exact_at_0_and_1_and_stacks(base, release):
    conv = base.transformer.patch_embedding
    activate(base, [(release, 1.0)])
    assert torch.equal(conv.weight, release.patch_embedding["weight"].float())
    assert torch.equal(conv.bias, release.patch_embedding["bias"].float())
    activate(base, [(release, 0.0)])
    assert torch.equal(conv.weight, base.base_patch["weight"])
    twin = WanRelease(lora=release.lora, patch_embedding=release.patch_embedding, rank=release.rank, source="twin")
    activate(base, [(release, 0.5), (twin, 0.5)])
    assert torch.allclose(conv.weight, release.patch_embedding["weight"].float(), atol=1e-6)
    assert len(base.adapters) == 2
    activate(base, [])
    assert torch.equal(conv.weight, base.base_patch["weight"])


def test_release_that_does_not_fit_names_both_sides(base, release):
    wide = {k: torch.cat([v, v[:8]]) for k, v in release.patch_embedding.items()}
    with pytest.raises(DWMError, match=r"other has patch_embedding \[264, 52, 1, 2, 2\].*width 256, 2 layers"):
        activate(base, [(WanRelease(lora=release.lora, patch_embedding=wide, rank=8, source="other"), 1.0)])
    deep = dict(release.lora, **{"blocks.5.self_attn.q": release.lora["blocks.0.self_attn.q"]})
    with pytest.raises(DWMError, match=r"deep targets blocks.5.self_attn.q, which the loaded base .* does not"):
        activate(base, [(WanRelease(lora=deep, patch_embedding=release.patch_embedding, rank=8, source="deep"), 1)])
    assert not base.adapters


def test_velocity_matches_the_reference_implementation(base, release):
    """Frozen velocities of the reference DWM-Wan model (tests/fixtures/make_wan_reference.py), fp32."""
    ref = load_file(FIXTURE)
    conv = base.transformer.patch_embedding
    for strength, key in ((1.0, "lora"), (0.0, "base"), (0.5, "lora_s05")):
        activate(base, [(release, strength)])
        if key == "lora_s05":  # the reference copies the patch embedding in full at any strength
            with torch.no_grad():
                conv.weight.copy_(release.patch_embedding["weight"])
                conv.bias.copy_(release.patch_embedding["bias"])
        for t in ref["timesteps"]:
            ours = velocity(base.transformer, ref["x"], ref["context"], t)
            assert (ours - ref[f"velocity_{key}_t{int(t)}"]).abs().max() <= 1e-4, (key, float(t))


def test_reference_velocities_were_made_on_the_built_base_and_the_shipped_release(wan_base_dir):
    """A change to the tiny base builder or the release copy needs the fixture re-made (its README says how)."""
    with safe_open(FIXTURE, "pt") as fh:
        made_on = json.loads(fh.metadata()["dwm_reference"])

    def sha256(*parts):
        with open(os.path.join(*parts), "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    assert made_on["base_sha256"] == sha256(wan_base_dir, WEIGHTS)
    assert made_on["release_lora_sha256"] == sha256(RELEASE_DIR, "lora_diffusion_pytorch_model.safetensors")
    assert made_on["release_non_lora_sha256"] == sha256(RELEASE_DIR, "non_lora_weights.safetensors")
