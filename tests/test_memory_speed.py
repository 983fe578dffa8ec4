"""Memory modes and speed options of the CogVideoX engine: exactness when off, fp8 with LoRAs, step caches
reset between runs, the dispatcher attention processor, out-of-memory as one message, the CLI flags."""

from __future__ import annotations

import pytest
import torch

from conftest import random_checkpoint, random_frames
from comfyui_dwm import cli
from comfyui_dwm.cli_generate import cogvideox_loader
from comfyui_dwm.cogvideox import magcache, memory, speed
from comfyui_dwm.cogvideox.lora import activate
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.pipeline import generate
from comfyui_dwm.cogvideox.sampler import SamplerSettings, sample
from comfyui_dwm.cogvideox.scene import encode_scene
from comfyui_dwm.cogvideox.text import encode_prompt
from comfyui_dwm.errors import DWMError

STEPS = 6


@pytest.fixture
def kit(base11):
    scene = encode_scene(base11.vae, random_frames(9, seed=1), random_frames(9, seed=2), 96, 64)
    prompts = encode_prompt(base11, "open the drawer"), encode_prompt(base11, "")

    def run(batch: int = 1, steps: int = STEPS) -> torch.Tensor:
        return sample(base11, scene, *prompts, SamplerSettings(steps=steps, batch=batch))
    return base11, run


def test_options_off_are_exact_and_leave_no_trace(kit):
    base, run = kit
    plain = run()
    with speed.step_cache(base.transformer, "none"):
        assert torch.equal(run(), plain)
    with speed.step_cache(base.transformer, "pab", steps=STEPS):
        cached = run()
    assert not torch.equal(cached, plain)  # the cache did skip work...
    assert torch.equal(run(), plain)  # ...and is gone afterwards
    assert not base.transformer.is_cache_enabled
    speed.set_attention(base.transformer, "sdpa")  # the default changes nothing
    memory.apply_memory_mode(base, "none", "cpu")
    assert torch.equal(run(), plain)


@pytest.mark.parametrize("name", [c for c in speed.CACHES if c != "none"])
def test_each_cache_runs_and_resets_between_batch_sizes(kit, name):
    base, run = kit
    params = {"mag_ratios": [1.0, 0.99, 0.98, 0.97, 0.96, 0.95]} if name == "magcache" else {}
    plain = run()
    with speed.step_cache(base.transformer, name, steps=STEPS, **params):
        one, two, again = run(1), run(2), run(1)
    assert two.shape[0] == 2 and torch.isfinite(two).all()
    # Each run starts from a clean state: item 0 of a batch equals the single run, run after run.
    torch.testing.assert_close(two[:1], one, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again, one, atol=1e-5, rtol=1e-5)
    assert (one - plain).abs().max() < 0.5 * plain.abs().max()  # close to the exact loop, not noise


def test_cache_left_enabled_is_reset_by_the_sampler(kit):
    from diffusers.hooks import PyramidAttentionBroadcastConfig

    base, run = kit
    clock = speed.TimestepClock(base.transformer)
    base.transformer.enable_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                                  current_timestep_callback=clock))
    try:
        one, two = run(1), run(2)  # a stale batch-1 attention state would not broadcast into batch 2
    finally:
        base.transformer.disable_cache()
        clock.handle.remove()
    torch.testing.assert_close(two[:1], one, atol=1e-4, rtol=1e-4)


def test_taylorseer_pattern_hooks_cogvideox_blocks(base11):
    from diffusers.hooks import HookRegistry

    with speed.step_cache(base11.transformer, "taylorseer"):
        hooked = [n for n, m in base11.transformer.named_modules()
                  if getattr(m, "_diffusers_hook", None) and HookRegistry.check_if_exists_or_initialize(m)
                  .get_hook("taylorseer_cache")]
    assert hooked == ["transformer_blocks.0.attn1", "transformer_blocks.0.ff",
                      "transformer_blocks.1.attn1", "transformer_blocks.1.ff"]


def test_fp8_with_loras_added_after_casting(tiny_dir, kit):
    full, run_full = kit
    first, second = random_checkpoint(full, seed=1), random_checkpoint(full, seed=5)
    activate(full, [(first, 1.0), (second, 0.5)])
    reference = run_full()

    base = load_base(tiny_dir["1.1"], "fp32")
    memory.apply_memory_mode(base, "fp8", "cpu")
    memory.apply_memory_mode(base, "fp8", "cpu")  # idempotent
    scene = encode_scene(base.vae, random_frames(9, seed=1), random_frames(9, seed=2), 96, 64)
    prompts = encode_prompt(base, "open the drawer"), encode_prompt(base, "")
    memory.activate(base, [(first, 1.0)])  # first adapter after fp8 was on...
    memory.activate(base, [(first, 1.0), (second, 0.5)])  # ...and a second one later
    got = sample(base, scene, *prompts, SamplerSettings(steps=STEPS))
    params = dict(base.transformer.named_parameters())
    assert params["transformer_blocks.0.ff.net.0.proj.weight"].dtype == memory.FP8
    assert all(p.dtype == torch.float32 for n, p in params.items() if "lora_" in n)
    error = (got - reference).abs().max() / reference.abs().max()
    assert error < 0.05, error
    memory.activate(base, [])
    no_lora = sample(base, scene, *prompts, SamplerSettings(steps=STEPS))
    assert (no_lora - reference).abs().max() > 3 * (got - reference).abs().max()  # the LoRAs do act under fp8


def test_offload_and_24gb_on_cpu(kit):
    base, run = kit
    plain = run()
    memory.apply_memory_mode(base, "offload", "cpu")
    assert memory.execution_device(base) == torch.device("cpu")
    assert torch.equal(run(), plain)  # block-level offload moves weights, never changes them
    memory.apply_memory_mode(base, "24gb", "cpu")
    state = memory.memory_state(base)
    assert state.plan == memory.MemoryPlan(fp8=True, offload=False, vae_tiling=True, text_offload=False)
    assert memory.forces_vae_tiling(base)
    with pytest.raises(DWMError, match="choose one of none, fp8"):
        memory.apply_memory_mode(base, "12gb", "cpu")


def test_place_false_leaves_unhooked_components_to_their_mover(kit):
    """Under a host (place=False) the engine moves only what its hooks move; by itself it places the rest."""
    base, _run = kit
    moves = []
    for name in ("transformer", "text_encoder"):
        getattr(base, name).to = lambda *a, _name=name, **k: moves.append(_name)
    try:
        memory.apply_memory_mode(base, "fp8", "cpu", place=False)
        assert moves == [] and not memory.memory_state(base).place
        memory.apply_memory_mode(base, "fp8", "cpu")
        assert moves == ["transformer", "text_encoder"]
    finally:
        for name in ("transformer", "text_encoder"):
            del getattr(base, name).to
        memory.release(base)


def test_dispatch_attention_equals_sdpa_and_keeps_lora(kit):
    base, run = kit
    activate(base, [(random_checkpoint(base), 1.0)])
    plain = run()
    speed.set_attention(base.transformer, "native")
    assert all(isinstance(p, speed.DispatchAttnProcessor) for p in base.transformer.attn_processors.values())
    assert hasattr(base.transformer.transformer_blocks[0].attn1.to_q, "lora_A")  # q/k/v not fused
    assert torch.equal(run(), plain)
    speed.set_attention(base.transformer, "sdpa")
    assert not any(isinstance(p, speed.DispatchAttnProcessor) for p in base.transformer.attn_processors.values())


def test_compile_blocks_keeps_the_result(kit):
    base, run = kit
    plain = run(steps=2)
    speed.compile_blocks(base.transformer, backend="eager")
    assert all(b._compiled_call_impl is not None for b in base.transformer.transformer_blocks)
    torch.testing.assert_close(run(steps=2), plain)


def test_out_of_memory_names_the_option(base11, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(base11.transformer, "forward", oom)
    frames = random_frames(9)
    with pytest.raises(DWMError, match=r"memory: out of memory in memory mode 'none'.*--memory-mode 24gb"):
        generate(base11, frames, frames, width=96, height=64, settings=SamplerSettings(steps=2), loras=None)
    memory.apply_memory_mode(base11, "24gb", "cpu")
    with pytest.raises(DWMError, match="--memory-mode fp8\\+offload"):
        generate(base11, frames, frames, width=96, height=64, settings=SamplerSettings(steps=2), loras=None)


def test_cli_names_match_the_engine():
    assert cli.MEMORY_MODE_NAMES == memory.MEMORY_MODES
    assert cli.CACHE_NAMES == speed.CACHES
    assert cli.ATTENTION_NAMES == speed.ATTENTION_BACKENDS


def test_cli_flags_reach_the_pipeline(tiny_dir, tmp_path, monkeypatch):
    ratios = magcache.save_ratios(str(tmp_path / "r.json"), [1.0, 0.9, 0.95], {"model": "tiny"})
    args = cli.build_parser().parse_args(
        ["generate", "--model", tiny_dir["1.1"], "--static", "s.mp4", "--hands", "h.mp4", "--out", "o.mp4",
         "--memory-mode", "fp8", "--cache", "magcache", "--magcache-ratios", ratios, "--attention", "native",
         "--steps", "3"])
    seen = {}
    args.processes = None  # one process: run_generate's cfg-parallel setup is not under test here
    monkeypatch.setattr("comfyui_dwm.cli_generate.cfg_parallel.attach", lambda *a: None, raising=False)
    monkeypatch.setattr("comfyui_dwm.cogvideox.pipeline.generate", lambda base, *a, **kw: seen.update(kw, base=base))
    run = cogvideox_loader(args, [], "cpu", "fp32")()
    run(None, None, "", type("P", (), {"on_step": None, "before_step": None})())
    assert seen["cache"] == "magcache" and seen["cache_params"] == {"mag_ratios": [1.0, 0.9, 0.95]}
    assert memory.memory_state(seen["base"]).mode == "fp8"
    assert isinstance(seen["base"].transformer.transformer_blocks[0].attn1.processor, speed.DispatchAttnProcessor)
    with pytest.raises(DWMError, match="--magcache-ratios: --cache magcache needs calibrated ratios"):
        magcache.cache_params("magcache", None)


def test_magcache_recorder_gives_one_ratio_per_step(kit):
    base, run = kit
    with magcache.magnitude_recorder(base.transformer) as ratios:
        run()
    assert len(ratios) == STEPS and ratios[0] == 1.0 and all(r > 0 for r in ratios)
