"""Family detection from configs and tensor names/shapes (never from file or folder names)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from comfyui_dwm.errors import DWMError
from comfyui_dwm.family import base_family, lora_family

from conftest import INTEROP


def write_json(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh)


def test_interop_folders(wan_base_dir):
    assert base_family(wan_base_dir) == "wan"
    assert base_family(os.path.join(INTEROP, "tiny-v11-base")) == "cogvideox"
    assert lora_family(os.path.join(INTEROP, "reference-wan-lora")) == "wan"
    assert lora_family(os.path.join(INTEROP, "reference-lora-v11")) == "cogvideox"


def test_base_family_from_configs(tmp_path):
    write_json(str(tmp_path / "cog" / "transformer" / "config.json"),
               {"_class_name": "CogVideoXTransformer3DModel"})
    write_json(str(tmp_path / "wan" / "config.json"),
               {"_class_name": "WanModel", "model_type": "i2v", "in_dim": 36})
    write_json(str(tmp_path / "named-cogvideox" / "config.json"), {"in_dim": 36})
    assert base_family(str(tmp_path / "cog")) == "cogvideox"
    assert base_family(str(tmp_path / "wan")) == "wan"
    assert base_family(str(tmp_path / "named-cogvideox")) == "wan"


def test_base_family_refusals(tmp_path):
    write_json(str(tmp_path / "t2v" / "config.json"), {"model_type": "t2v", "in_dim": 16})
    with pytest.raises(DWMError, match="'t2v'") as info:
        base_family(str(tmp_path / "t2v"))
    assert str(info.value).startswith("model: ") and "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DWMError, match="not a DWM base"):
        base_family(str(tmp_path / "empty"))


def test_lora_family_from_tensor_names(tmp_path):
    (tmp_path / "wan").mkdir()
    save_file({"patch_embedding.weight": torch.zeros(4, 52, 1, 2, 2)}, str(tmp_path / "wan" / "a.safetensors"))
    assert lora_family(str(tmp_path / "wan")) == "wan"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(2, 4)},
              str(tmp_path / "lightx2v.safetensors"))
    assert lora_family(str(tmp_path / "lightx2v.safetensors")) == "wan"
    save_file({"transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 4),
               "transformer.patch_embed.proj.weight": torch.zeros(4, 49, 2, 2)}, str(tmp_path / "cog.safetensors"))
    assert lora_family(str(tmp_path / "cog.safetensors")) == "cogvideox"
    (tmp_path / "legacy").mkdir()
    torch.save({"patch_embed.proj.weight": torch.zeros(4, 49, 2, 2)},
               str(tmp_path / "legacy" / "non_lora_weights.pt"))
    assert lora_family(str(tmp_path / "legacy")) == "cogvideox"


def test_lora_family_refusals(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DWMError, match="holds no DWM LoRA tensors"):
        lora_family(str(tmp_path / "empty"))
    save_file({"patch_embedding.weight": torch.zeros(4, 52, 2, 2)}, str(tmp_path / "flat.safetensors"))
    with pytest.raises(DWMError, match="holds no DWM LoRA tensors"):
        lora_family(str(tmp_path / "flat.safetensors"))
    save_file({"patch_embedding.weight": torch.zeros(4, 52, 1, 2, 2),
               "patch_embed.proj.weight": torch.zeros(4, 49, 2, 2)}, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(DWMError, match="mixes CogVideoX and Wan"):
        lora_family(str(tmp_path / "mixed.safetensors"))


def test_a_full_finetune_folder_is_told_apart_by_its_transformer_weights(tmp_path):
    cog, wan = tmp_path / "cog" / "transformer", tmp_path / "wan" / "transformer"
    cog.mkdir(parents=True)
    wan.mkdir(parents=True)
    save_file({"patch_embed.proj.weight": torch.zeros(8, 49, 2, 2)}, str(cog / "diffusion_pytorch_model.safetensors"))
    save_file({"patch_embedding.weight": torch.zeros(8, 52, 1, 2, 2)}, str(wan / "diffusion_pytorch_model.safetensors"))
    assert lora_family(str(tmp_path / "cog")) == "cogvideox"
    assert lora_family(str(tmp_path / "wan")) == "wan"
