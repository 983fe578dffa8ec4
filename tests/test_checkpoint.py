"""DWM checkpoint IO and LoRA strength: reference folders, our single file, refusal of misfits."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from diffusers import CogVideoXPipeline
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from conftest import INTEROP, expect_log, random_checkpoint
from comfyui_dwm.cogvideox.checkpoint import (check_fits, full_parameter, load_checkpoint, save_checkpoint_file,
                                      save_reference_folder)
from comfyui_dwm.errors import DWMError
from comfyui_dwm.cogvideox.lora import activate
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.sampler import dwm_model_input, rotary_embedding

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
    base = load_base(os.path.join(INTEROP, "tiny-v11-base"), "fp32")
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


class NotATensor:
    """Pickled into a .bin: weights_only loading must refuse it."""


def test_bin_lora_and_pt_non_lora_layout(base11, tmp_path):
    ckpt = random_checkpoint(base11)
    save_reference_folder(ckpt, str(tmp_path / "st"))
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(load_file(str(tmp_path / "st" / "pytorch_lora_weights.safetensors")),
               folder / "pytorch_lora_weights.bin")
    torch.save(load_file(str(tmp_path / "st" / "non_lora_weights.safetensors")), folder / "non_lora_weights.pt")
    back = load_checkpoint(str(folder))
    assert back.lora.keys() == ckpt.lora.keys() and all(torch.equal(back.lora[k], ckpt.lora[k]) for k in ckpt.lora)
    assert torch.equal(back.patch_embed["weight"], ckpt.patch_embed["weight"]) and back.alpha == back.rank == 4
    torch.save({"x": NotATensor()}, folder / "pytorch_lora_weights.bin")
    with pytest.raises(DWMError, match=r"cannot read .*pytorch_lora_weights.bin"):
        load_checkpoint(str(folder))


def test_experiment_yaml_beside_or_in_parent_reported(base11, tmp_path, caplog):
    run = tmp_path / "run"
    save_reference_folder(random_checkpoint(base11), str(run / "checkpoint-500"))
    shutil.copytree(run / "checkpoint-500", run / "final")
    (run / "exp.yaml").write_text("pipeline:\n  type: cogvideox_fun_static_to_video_pose_concat\n"
                                  "training:\n  mode: lora\n  lora_rank: 4\n  lora_alpha: 8\n")
    with expect_log(caplog, r"lora_alpha 8; using alpha = rank = 4"):
        ckpt = load_checkpoint(str(run / "checkpoint-500"))
    assert ckpt.config["training"]["lora_alpha"] == 8 and ckpt.alpha == 4.0
    assert ckpt.describe().endswith("V1.1 DWM LoRA rank 4, alpha 4, "
                                    "pipeline cogvideox_fun_static_to_video_pose_concat")
    assert load_checkpoint(str(run / "final")).config == {}  # not a checkpoint-N folder: no parent lookup
    (run / "final" / "a.yml").write_text("training: [unclosed\n")
    with pytest.raises(DWMError, match=r"cannot read the experiment config .*a.yml"):
        load_checkpoint(str(run / "final"))


def finetune(base, folder, seed: int = 5, **save_kwargs) -> torch.Tensor:
    """Write ``base`` perturbed as a reference full fine-tune's transformer/; return its output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in base.transformer.parameters():
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    base.transformer.save_pretrained(str(folder / "transformer"), **save_kwargs)
    return model_output(base)


def apply_full(base, ckpt) -> None:
    """What applying a full fine-tune means: its tensors in place of the base's (lora.py's job)."""
    with torch.no_grad():
        for key, value in ckpt.weights.items():
            full_parameter(base.transformer, key).copy_(value)
        for part, value in ckpt.patch_embed.items():
            getattr(base.transformer.patch_embed.proj, part).copy_(value)


def test_full_finetune_transformer_folder(tiny_dir, base15, tmp_path):
    from comfyui_dwm.cogvideox.model import load_base

    expected = finetune(load_base(tiny_dir["1.1"], "fp32"), tmp_path / "full", max_shard_size="200KB")
    assert len([f for f in os.listdir(tmp_path / "full" / "transformer") if f.endswith(".safetensors")]) > 1
    ckpt = load_checkpoint(str(tmp_path / "full"))
    assert ckpt.is_full and ckpt.rank == 0 and not ckpt.lora and ckpt.base_version == "1.1"
    assert ckpt.patch_embed["weight"].shape[1] == 49 and "patch_embed.proj.weight" not in ckpt.weights
    assert ckpt.describe().endswith("DWM full fine-tune")
    base = load_base(tiny_dir["1.1"], "fp32")
    check_fits(ckpt, base.transformer, base.version)
    plain = model_output(base)
    apply_full(base, ckpt)
    got = model_output(base)
    assert (got - plain).abs().max() > 1e-2 and torch.equal(got, expected)
    with pytest.raises(DWMError, match="trained for a CogVideoX-Fun V1.1 base .* loaded base is V1.5"):
        check_fits(ckpt, base15.transformer, base15.version)
    key = next(k for k in ckpt.weights if k.endswith("attn1.to_q.weight"))
    ckpt.weights[key] = torch.zeros(3, 3)
    with pytest.raises(DWMError, match=f"full fine-tune whose {key} \\[3, 3\\] does not fit the loaded V1.1"):
        check_fits(ckpt, base.transformer, base.version)
    ckpt.weights = {"transformer_blocks.9.norm1.linear.weight": torch.zeros(1)}
    with pytest.raises(DWMError, match="no such weight"):
        check_fits(ckpt, base.transformer, base.version)
    # the reference's fallback when transformer/ holds no safetensors
    shards = sorted((tmp_path / "full" / "transformer").glob("*.safetensors"))
    state = {k: v for f in shards for k, v in load_file(f).items()}
    shutil.rmtree(tmp_path / "full" / "transformer")
    (tmp_path / "full" / "transformer").mkdir()
    torch.save(state, tmp_path / "full" / "transformer" / "pytorch_model.bin")
    back = load_checkpoint(str(tmp_path / "full"))
    assert torch.equal(back.patch_embed["weight"], state.pop("patch_embed.proj.weight"))
    state.pop("patch_embed.proj.bias")
    assert back.weights.keys() == state.keys() and all(torch.equal(back.weights[k], v) for k, v in state.items())


def test_full_finetune_with_peft_wrapped_modules(tiny_dir, tmp_path):
    from comfyui_dwm.cogvideox.model import load_base

    expected = finetune(load_base(tiny_dir["1.1"], "fp32"), tmp_path)
    base = load_base(tiny_dir["1.1"], "fp32")
    base.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))  # zero-initialised B
    ckpt = load_checkpoint(str(tmp_path))
    check_fits(ckpt, base.transformer, base.version)
    apply_full(base, ckpt)
    torch.testing.assert_close(model_output(base), expected, rtol=0, atol=1e-6)


def test_yaml_mode_picks_full_finetune_or_lora(tiny_dir, base11, tmp_path):
    folder = tmp_path / "both"
    lora = random_checkpoint(base11)
    save_reference_folder(lora, str(folder))
    finetune(base11, folder)
    assert not load_checkpoint(str(folder)).is_full  # no yaml: training.mode defaults to lora
    (folder / "run.yaml").write_text("training:\n  mode: full\n")
    assert load_checkpoint(str(folder)).is_full
    (folder / "run.yaml").write_text("training:\n  mode: lora\n")
    assert torch.equal(load_checkpoint(str(folder)).patch_embed["weight"], lora.patch_embed["weight"])


def write_wan_release(folder) -> None:
    """The DWM-Wan release layout (reference key format) with tiny shapes."""
    folder.mkdir(parents=True)
    save_file({"lora_unet__blocks_0_self_attn_q.lora_down.weight": torch.zeros(2, 8),
               "lora_unet__blocks_0_self_attn_q.lora_up.weight": torch.zeros(8, 2),
               "lora_unet__blocks_0_self_attn_q.alpha": torch.tensor(2.0)},
              str(folder / "lora_diffusion_pytorch_model.safetensors"))
    save_file({"patch_embedding.weight": torch.zeros(8, 52, 1, 2, 2), "patch_embedding.bias": torch.zeros(8)},
              str(folder / "non_lora_weights.safetensors"))


def test_wan_release_refused_as_wan(tmp_path):
    write_wan_release(tmp_path / "wan")
    with pytest.raises(DWMError, match=r"wan is a Wan DWM LoRA release .*not a CogVideoX-Fun.*DWM-Wan LoRA"):
        load_checkpoint(str(tmp_path / "wan"))
    with pytest.raises(DWMError, match="is a Wan DWM LoRA release"):
        load_checkpoint(str(tmp_path / "wan" / "lora_diffusion_pytorch_model.safetensors"))
    full = tmp_path / "full" / "transformer"
    full.mkdir(parents=True)
    save_file({"patch_embedding.weight": torch.zeros(8, 52, 1, 2, 2), "blocks.0.self_attn.q.weight": torch.zeros(8, 8)},
              str(full / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(DWMError, match="is a Wan DWM full fine-tune"):
        load_checkpoint(str(tmp_path / "full"))


def test_interop_wan_release_refused_as_wan():
    with pytest.raises(DWMError, match="reference-wan-lora is a Wan DWM LoRA release"):
        load_checkpoint(os.path.join(INTEROP, "reference-wan-lora"))


def test_full_finetune_activates_at_strength_and_unloads(tiny_dir, tmp_path):
    from comfyui_dwm.cogvideox.model import load_base

    expected = finetune(load_base(tiny_dir["1.1"], "fp32"), tmp_path)
    base = load_base(tiny_dir["1.1"], "fp32")
    plain = model_output(base)
    full, lora = load_checkpoint(str(tmp_path)), random_checkpoint(base)
    activate(base, [(full, 1.0)])
    assert torch.equal(model_output(base), expected)
    activate(base, [(full, 0.5)])
    half = model_output(base)
    assert (half - plain).abs().max() > 1e-3 and (half - expected).abs().max() > 1e-3
    activate(base, [(full, 1.0), (lora, 1.0)])  # stacks with a LoRA
    assert (model_output(base) - expected).abs().max() > 1e-3
    activate(base, [])
    assert torch.equal(model_output(base), plain)
