"""The GPU benchmark, run end to end on the CPU at its tiny size so it cannot rot while no GPU is lent."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "bench_gpu.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench") / "gpu.json")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, SCRIPT, "--size", "tiny", "--device", "cpu", "--steps", "2", "--warmup",
                           "0", "--measure", "1", "--peak-tflops", "1", "--json", out],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, encoding="utf-8") as fh:
        return json.load(fh), proc.stdout


def test_every_model_and_mode_has_a_row_with_numbers(run):
    result, stdout = run
    bench = load_bench()
    for arch in bench.ARCHS:
        family, _ = bench.model_config(arch, "tiny")
        rows = {r["mode"]: r for r in result["rows"] if r["model"] == arch}
        assert set(rows) == set(bench.modes_for(family, "cpu", [])), arch
        for mode, row in rows.items():
            assert "error" not in row, (arch, mode, row)
            for key in ("s_per_step", "total_s", "weights_gib", "tflop_per_step", "mfu"):
                assert isinstance(row[key], float) and row[key] > 0, (arch, mode, key, row)
            assert row["peak_gib"] is None  # GPU memory only on CUDA
            assert row["total_is"] == ("measured" if mode.startswith("cache:") else "extrapolated from 1 steps")
            assert f"| {arch} | {mode} | " in stdout
    assert {"bf16", "fp8", "group-offload"} <= {r["mode"] for r in result["rows"]}


def test_json_fields_and_training_row(run):
    result, stdout = run
    assert {"device", "size", "video", "torch", "diffusers", "peak_tflops", "rows", "train"} <= set(result)
    assert result["size"] == "tiny" and result["peak_tflops"] == 1.0 and result["video"] == "5x48x32"
    train = result["train"]
    assert "error" not in train, train
    assert train["batch"] == 2 and train["lora_rank"] == 64 and train["gradient_checkpointing"] is True
    assert train["fused_adamw"] is False  # fused AdamW is chosen on CUDA only
    for key in ("s_per_step", "samples_per_s", "tflop_per_step", "mfu"):
        assert isinstance(train[key], float) and train[key] > 0, key
    assert abs(train["samples_per_s"] * train["s_per_step"] - train["batch"]) < 1e-6
    assert "| cogvideox-5b LoRA r64 | 2 |" in stdout


def test_real_configs_match_the_released_sizes():
    """The full-size configs are the released architectures: parameter counts from the configs alone."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    bench = load_bench()
    expected = {"cogvideox-5b": (5.5e9, 5.7e9), "wan2.1-1.3b": (1.5e9, 1.7e9), "wan2.1-14b": (16.0e9, 16.6e9)}
    for arch, (low, high) in expected.items():
        family, config = bench.model_config(arch, "full")
        cls = CogVideoXTransformer3DModel if family == "cogvideox" else WanTransformer3DModel
        with init_empty_weights():
            count = sum(p.numel() for p in cls(**config).parameters())
        assert low < count < high, (arch, count)
    assert bench.timesteps(3) == [999, 500, 0]
    assert torch.get_default_dtype() == torch.float32
