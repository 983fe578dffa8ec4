"""Fixtures shared by test_training_wan*.py: the tiny Wan kit, a 64x48 9-frame dataset cut from the shared
example (raw, and prepared by ``training.prepare`` into the ``*_wan/`` folders), a fast CPU config."""

from __future__ import annotations

import os
import shutil

import pytest

from test_training_fixtures import REPO, write_dataset

WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES = 64, 48, 9


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> str:
    from comfyui_dwm.wan.tiny import make_tiny_wan_base

    return make_tiny_wan_base(str(tmp_path_factory.mktemp("wan") / "tiny-wan21-fun-inp"))


@pytest.fixture(scope="session")
def wan_data(tmp_path_factory, tiny_wan) -> str:
    """Videos, prompts and their precomputed Wan latents / umT5 embeddings."""
    from comfyui_dwm.training.prepare import prepare

    root = write_dataset(str(tmp_path_factory.mktemp("wan_data") / "data"))
    assert prepare(root, "train.txt", tiny_wan, WAN_WIDTH, WAN_HEIGHT, WAN_FRAMES, "fp32") == []
    return root


@pytest.fixture(scope="session")
def wan_raw(tmp_path_factory, wan_data) -> str:
    """The same videos and prompts, without precomputed files (encoded on the fly)."""
    root = str(tmp_path_factory.mktemp("wan_raw") / "data")
    shutil.copytree(wan_data, root, ignore=shutil.ignore_patterns("*_wan"))
    return root


def wan_args(model: str, data: str, out: str, **overrides) -> list[str]:
    values = dict(model=model, data_root=data, train_list="train.txt", output_dir=out, width=WAN_WIDTH,
                  height=WAN_HEIGHT, num_frames=WAN_FRAMES, mixed_precision="no", train_batch_size=1,
                  gradient_accumulation_steps=2, max_train_steps=4, checkpointing_steps=2, lr_warmup_steps=1,
                  dataloader_num_workers=0, gradient_checkpointing="false", report_to="none", lora_rank=8,
                  lora_alpha=12, validation_list="")
    values.update(overrides)
    args = ["--config", os.path.join(REPO, "training", "configs", "dwm_wan_lora.yaml")]
    for key, value in values.items():
        args += [f"--{key}", str(value)]
    return args


def wan_config(model: str, data: str, out: str, **overrides):
    from comfyui_dwm.training.config import parse_args

    return parse_args(wan_args(model, data, out, **overrides))
