"""Shared fixtures: tiny random bases saved in the real diffusers layout, and the real example clips."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil

import pytest
import torch

from comfyui_dwm.cogvideox.checkpoint import DWMCheckpoint
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.tiny import make_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
# Small kits written by the reference implementation's own save path, shipped (tests/fixtures/README.md).
INTEROP = os.path.join(FIXTURES, "interop")
# Optional extras beside the checkout (or DWM_SHARED): the other example clips, the full interop kit and
# the full /object_info recording. Tests only ADD cases for what is there; nothing is skipped without it.
SHARED = os.environ.get("DWM_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
SHARED_INTEROP = os.path.join(SHARED, "interop")
SHARED_EXAMPLES = os.path.join(SHARED, "examples", "realworld_dynamic")
EXAMPLE = os.path.join(REPO, "examples", "00055")  # one real sample, shipped
SHIPPED_SAMPLE = "00055"
SAMPLE_IDS = ["00013", "00017", "00039", "00043", "00055"]  # the realworld_dynamic examples
# The reference-layout folders of a data root, and the shipped sample's file in each.
DATA_LAYOUT = {"videos_static": "static.mp4", "videos_hands": "hands.mp4", "videos": "ground_truth.mp4",
               "prompts": "prompt.txt"}
SHARED_WAN_BASE = os.path.join(SHARED_INTEROP, "tiny-wan21-fun-inp-base")  # 11 MB, not shipped
SHARED_OBJECT_INFO = os.path.join(SHARED, "comfyui", "object_info.json")  # a whole recorded host, 750 KB
CORE_OBJECT_INFO = os.path.join(FIXTURES, "object_info_core.json")  # its trimmed copy (trim_object_info.py)
WAN_BASE_SEED = 0  # tests/fixtures/wan_reference_velocity.safetensors was made on this tiny base


def extras(*paths: str) -> list[str]:
    """The given optional paths that exist: parameters of extra cases, chosen at collection time."""
    return [p for p in paths if os.path.exists(p)]


def available_samples() -> list[str]:
    """The shipped sample, and the other examples when the shared folder has them."""
    return [SHIPPED_SAMPLE, *(s for s in SAMPLE_IDS if s != SHIPPED_SAMPLE and
                              all(map(os.path.isfile, sample_files(s).values())))]


def sample_files(sample: str) -> dict[str, str]:
    """The files of one real sample by data-root folder: shipped for 00055, else in the shared examples."""
    if sample == SHIPPED_SAMPLE:
        return {folder: os.path.join(EXAMPLE, name) for folder, name in DATA_LAYOUT.items()}
    return {folder: os.path.join(SHARED_EXAMPLES, folder, sample + os.path.splitext(name)[1])
            for folder, name in DATA_LAYOUT.items()}


def write_data_root(root: str, samples: dict[str, str] | None = None) -> str:
    """A data root in the reference layout (videos_static/ID.mp4, prompts/ID.txt, ...) holding
    ``{id: available sample copied under that id}``; by default every available sample under its own id."""
    for new_id, sample in (samples or {s: s for s in available_samples()}).items():
        for folder, src in sample_files(sample).items():
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            shutil.copyfile(src, os.path.join(root, folder, new_id + os.path.splitext(src)[1]))
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """Reference-layout data root of the available real samples (00055 always)."""
    return write_data_root(str(tmp_path_factory.mktemp("realworld_dynamic")))


@pytest.fixture(scope="session")
def wan_base_dir(tmp_path_factory):
    """The tiny Wan2.1-Fun InP base (VideoX-Fun layout) the reference velocities were made on."""
    from comfyui_dwm.wan.tiny import make_tiny_wan_base

    return make_tiny_wan_base(str(tmp_path_factory.mktemp("wan") / "tiny-wan21-fun-inp"), seed=WAN_BASE_SEED)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folders of tiny V1.1 and V1.5 bases, built once per test session."""
    root = tmp_path_factory.mktemp("models")
    return {v: make_tiny_model(str(root / f"tiny-v{v}"), v) for v in ("1.1", "1.5")}


@pytest.fixture
def base11(tiny_dir):
    return load_base(tiny_dir["1.1"], "fp32")


@pytest.fixture
def base15(tiny_dir):
    return load_base(tiny_dir["1.5"], "fp32")


def random_frames(frames: int = 9, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, height, width, 3, generator=torch.Generator().manual_seed(seed))


def random_checkpoint(base, seed: int = 1, rank: int = 4, scale: float = 0.3, source: str = "test") -> DWMCheckpoint:
    """A DWM checkpoint with non-zero LoRA and hand channels that fits ``base``."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in base.transformer.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")):
            lora[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * scale
            lora[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * scale
    proj = {k: v + torch.randn(v.shape, generator=g) * 0.1 for k, v in base.base_proj.items()}
    return DWMCheckpoint(lora=lora, patch_embed=proj, rank=rank, alpha=float(rank), source=source)


@contextlib.contextmanager
def expect_log(caplog, pattern: str):
    """Assert that the block logs a ``dwm`` warning matching ``pattern`` (the user sees it every run)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dwm"):
        yield
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.search(pattern, m) for m in messages), messages
