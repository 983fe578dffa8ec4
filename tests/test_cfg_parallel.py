"""CFG-parallel: two CPU processes (gloo) split each step's [uncond, cond] batch and give the one-process
result, for both families' samplers and through ``accelerate launch ... generate --cfg-parallel``."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from comfyui_dwm import cli_generate
from comfyui_dwm.cfg_parallel import split_guidance
from comfyui_dwm.cli import main
from comfyui_dwm.cogvideox.scene import SceneLatents
from comfyui_dwm.video_io import write_video
from comfyui_dwm.wan.scene import WanScene

from tests.generate_runs import frames, free_port, generate, recording

# fp32 on the CPU; a half-size batch rounds differently (transformer outputs differ by ~1e-6).
LATENT_TOLERANCE = 1e-4
FRAME_TOLERANCE = 1e-4


def inputs(family: str, text_dim: int):
    """A scene (random latents), the positive and negative prompt embeddings, and the sampler settings."""
    g = torch.Generator().manual_seed(7)
    if family == "cogvideox":
        from comfyui_dwm.cogvideox.sampler import SamplerSettings

        shape = (1, 3, 16, 6, 8)
        scene = SceneLatents(torch.randn(shape, generator=g), torch.randn(shape, generator=g), 9, 64, 48,
                             torch.zeros(17, 3))
        settings = SamplerSettings(steps=3, guidance=6.0, batch=2, scheduler="dpm")
    else:
        from comfyui_dwm.wan.sampler import WanSettings

        shape = (1, 16, 3, 6, 8)
        scene = WanScene(static=torch.randn(shape, generator=g), hands=torch.randn(shape, generator=g),
                         width=64, height=48)
        settings = WanSettings(steps=3, guidance=5.0, batch=2)
    return scene, torch.randn(1, 5, text_dim, generator=g), torch.randn(1, 5, text_dim, generator=g), settings


def run_sampler(family: str, model: str, rank: int | None = None) -> dict:
    """The sampled latents, and what the transformer was given on each call (after the split, if any)."""
    if family == "cogvideox":
        from comfyui_dwm.cogvideox.model import load_base
        from comfyui_dwm.cogvideox.sampler import sample

        base = load_base(model, "fp32", "cpu")
        text_dim = base.transformer.config.text_embed_dim
    else:
        from comfyui_dwm.wan.model import load_wan_base
        from comfyui_dwm.wan.sampler import sample

        base = load_wan_base(model, "fp32", "cpu")
        text_dim = base.transformer.config.text_dim
    if rank is not None:
        split_guidance(base.transformer, rank)
    seen = []
    base.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"][:, :3, :4].clone()), with_kwargs=True)
    scene, positive, negative, settings = inputs(family, text_dim)
    return {"latents": sample(base, scene, positive, negative, settings), "seen": seen,
            "positive": positive[:, :3, :4], "negative": negative[:, :3, :4]}


def worker(rank: int, port: int, models: dict, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save({family: run_sampler(family, model, rank) for family, model in models.items()},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_split_each_step_and_match_one(tiny_dir, wan_base_dir, tmp_path):
    models = {"cogvideox": tiny_dir["1.1"], "wan": wan_base_dir}
    mp.spawn(worker, args=(free_port(), models, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for family, model in models.items():
        one = run_sampler(family, model)
        for rank, (pass_prompt, other) in enumerate((("positive", "negative"), ("negative", "positive"))):
            got = ranks[rank][family]
            assert len(got["seen"]) == len(one["seen"]) == 3
            for prompts in got["seen"]:  # this rank's half only: both batch items of its guidance pass
                assert prompts.shape[0] == 2 and torch.equal(prompts, got[pass_prompt].expand(2, -1, -1))
            torch.testing.assert_close(got["latents"], one["latents"], atol=LATENT_TOLERANCE, rtol=0)
        assert torch.equal(ranks[0][family]["latents"], ranks[1][family]["latents"])  # in lockstep


def test_cli_cfg_parallel_matches_one_process(tiny_dir, tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(4)
    static, hands = (str(tmp_path / f"{name}.mp4") for name in ("static", "hands"))
    for path in (static, hands):
        write_video(path, torch.rand(9, 48, 64, 3, generator=g))
    args = ["--model", tiny_dir["1.1"], "--static", static, "--hands", hands, "--prompt", "open it",
            "--steps", "3", "--width", "64", "--height", "48", "--num-frames", "9"]
    for name in ("f1", "f2"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(cli_generate, "_save", recording(cli_generate._save, str(tmp_path / "f1")))
    assert main(["generate", *args, "--out", str(tmp_path / "one.mp4")]) == 0
    log = generate([*args, "--out", str(tmp_path / "two.mp4"), "--cfg-parallel"], str(tmp_path / "f2"), processes=2)
    one, two = frames(str(tmp_path / "f1")), frames(str(tmp_path / "f2"))
    assert list(two) == ["two.mp4"] and log.count("wrote ") == 1  # the first process writes, once
    torch.testing.assert_close(two["two.mp4"], one["one.mp4"], atol=FRAME_TOLERANCE, rtol=0)


@pytest.mark.parametrize("extra, match", [
    ([], "--cfg-parallel: needs exactly 2 processes, this run has 1"),
    (["--guidance", "1"], "--cfg-parallel: splits the two guidance passes, but --guidance 1 runs one"),
])
def test_cfg_parallel_is_refused_before_load(tiny_dir, tmp_path, capsys, monkeypatch, extra, match):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = ["generate", "--model", tiny_dir["1.1"], "--static", "s.mp4", "--hands", "h.mp4", "--out",
            str(tmp_path / "o.mp4"), "--cfg-parallel", *extra]
    assert main(args) == 2
    assert match in capsys.readouterr().err
