"""Shared fixtures: tiny random bases saved in the real diffusers layout, and the real example clips."""

from __future__ import annotations

import contextlib
import logging
import os
import re

import pytest
import torch

from dwm.cogvideox.checkpoint import DWMCheckpoint
from dwm.cogvideox.model import load_base
from dwm.cogvideox.tiny import make_tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DWM_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
EXAMPLES = os.path.join(SHARED, "examples", "realworld_dynamic")
INTEROP = os.path.join(SHARED, "interop")
SAMPLE_IDS = ["00013", "00017", "00039", "00043", "00055"]


def need(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing (the shared/ folder beside the checkout)")
    return path


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
