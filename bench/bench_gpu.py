"""Real-size DWM transformers with random weights: s/step, 50-step time and peak memory per mode, and
the 5B LoRA recipe's training throughput (samples/s, MFU).

The architectures are built from their real configs (written below, no download), widened for the hand
latents as the loaders do: CogVideoX-Fun-V1.1-5b-InP (diffusers ``CogVideoXTransformer3DModel``, 49 input
channels) and Wan2.1-Fun-V1.1 1.3B / 14B InP (the VideoX-Fun ``config.json`` values through
``dwm.wan.model.diffusers_config``, 52 input channels). Weights are created directly on the device in
bf16. One sampling step is one transformer call on a batch of 2 (the [uncond, cond] halves of CFG, as
the sampler batches them) at 49x720x480 (latents 13x60x90); the noisy channels move a little each step
so data-dependent caches see changing inputs. Plain modes time ``--measure`` steps after ``--warmup``
and extrapolate to ``--steps`` (said in the ``total_is`` column); step caches skip by timestep, so they
run the whole schedule and the total is measured.

Modes: ``bf16``; ``fp8`` (diffusers layerwise casting: fp8 storage, bf16 compute); ``group-offload``
(block level, one block per group, CUDA streams); on CogVideoX also ``memory:*`` (``apply_memory_mode``),
``cache:*`` (``step_cache``), ``attention:*`` and ``compile`` (``comfyui_dwm.cogvideox.memory/speed``)
where those modules are installed. Model FLOPs and MFU come from ``comfyui_dwm.flops``.

    python bench/bench_gpu.py --size full --device cuda --json gpu-benchmark.json
    python bench/bench_gpu.py --size tiny --device cpu   # seconds; what tests/test_bench_gpu.py runs
See docs/gpu-benchmark.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import time

import torch

from comfyui_dwm.cogvideox.model import DWMBase, widen_patch_embed
from comfyui_dwm.cogvideox.sampler import dwm_model_input, rotary_embedding
from comfyui_dwm.cogvideox.tiny import SCHEDULER
from comfyui_dwm.flops import forward_flops, latent_size, mfu, training_flops
from comfyui_dwm.wan.model import diffusers_config, wan_model_input, widen_patch_embedding
from comfyui_dwm.wan.tiny import CLIP_DIM

try:  # another part of the pack; the core modes do not need it
    from comfyui_dwm.cogvideox import memory as dwm_memory, speed as dwm_speed
except ImportError:
    dwm_memory = dwm_speed = None

# CogVideoX-Fun-V1.1-5b-InP transformer/config.json (CogVideoX-5b's, with the 33 InP input channels).
COGVIDEOX_5B = dict(num_attention_heads=48, attention_head_dim=64, in_channels=33, out_channels=16,
                    time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=90, sample_height=60,
                    sample_frames=49, patch_size=2, patch_size_t=None, max_text_seq_length=226,
                    activation_fn="gelu-approximate", norm_eps=1e-5, spatial_interpolation_scale=1.875,
                    temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
                    use_learned_positional_embeddings=False)
# VideoX-Fun config.json of Wan2.1-Fun-V1.1-{1.3B,14B}-InP (the Wan 2.1 i2v architecture).
WAN_COMMON = {"model_type": "i2v", "in_dim": 36, "freq_dim": 256, "text_dim": 4096, "out_dim": 16,
              "patch_size": [1, 2, 2], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
WAN_1_3B = {**WAN_COMMON, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30}
WAN_14B = {**WAN_COMMON, "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40}
ARCHS = {"cogvideox-5b": COGVIDEOX_5B, "wan2.1-1.3b": WAN_1_3B, "wan2.1-14b": WAN_14B}
# tiny: narrow widths (CPU seconds); reduced: real widths, 2 blocks (CPU minutes); full: as released.
SIZES = {
    "full": dict(frames=49, height=480, width=720, layers=None, train_batch=7),
    "reduced": dict(frames=9, height=160, width=240, layers=2, train_batch=2),
    "tiny": dict(frames=5, height=32, width=48, layers=2, train_batch=2),  # FirstBlockCache needs 2 blocks
}
TINY_COGVIDEOX = dict(num_attention_heads=2, attention_head_dim=32, time_embed_dim=32, text_embed_dim=64)
TINY_WAN = {"dim": 64, "ffn_dim": 128, "num_heads": 2, "text_dim": 64, "freq_dim": 32}
TINY_IMAGE_DIM = 48
CORE_MODES = ("bf16", "fp8", "group-offload")
DTYPE = torch.bfloat16
GIB = 2**30


def model_config(arch: str, size: str) -> tuple[str, dict]:
    """(family, diffusers kwargs) of ``arch`` at ``size``; in_channels as released (widened after build)."""
    layers = SIZES[size]["layers"]
    if arch.startswith("cogvideox"):
        config = {**COGVIDEOX_5B, **(TINY_COGVIDEOX if size == "tiny" else {})}
        return "cogvideox", {**config, **({"num_layers": layers} if layers else {})}
    config = {**ARCHS[arch], **(TINY_WAN if size == "tiny" else {}), **({"num_layers": layers} if layers else {})}
    image_dim = TINY_IMAGE_DIM if size == "tiny" else CLIP_DIM
    image_weight = torch.empty(image_dim, image_dim, device="meta")  # diffusers_config reads its width only
    return "wan", diffusers_config(config, {"img_emb.proj.1.weight": image_weight})


def build(family: str, config: dict, device) -> torch.nn.Module:
    """The transformer with random weights created on ``device`` in bf16, widened for the hand latents."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    cls = CogVideoXTransformer3DModel if family == "cogvideox" else WanTransformer3DModel
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device(device):
            model = cls(**config)
    finally:
        torch.set_default_dtype(previous)
    (widen_patch_embed if family == "cogvideox" else widen_patch_embedding)(model)
    return model.requires_grad_(False).eval()


class Inputs:
    """Random model inputs of one CFG step for a family at a size; ``advance`` moves the noisy latents."""

    def __init__(self, family: str, model, size: str, device, batch: int = 2):
        s = SIZES[size]
        self.family, (frames, h, w) = family, latent_size(s["frames"], s["height"], s["width"])
        self.latent = (frames, h, w)
        g = torch.Generator().manual_seed(0)

        def rand(*shape):
            return torch.randn(shape, generator=g).to(device, DTYPE)

        cfg = model.config
        if family == "cogvideox":
            noisy, static, hands = (rand(batch, frames, 16, h, w) for _ in range(3))
            self.x = dwm_model_input(noisy, static, hands, 0.7)
            self.kwargs = dict(encoder_hidden_states=rand(batch, cfg.max_text_seq_length, cfg.text_embed_dim),
                               image_rotary_emb=rotary_embedding(model, s["height"], s["width"], frames, device))
        else:
            noisy, static, hands = (rand(batch, 16, frames, h, w) for _ in range(3))
            self.x = wan_model_input(noisy, static, hands)
            self.kwargs = dict(encoder_hidden_states=rand(batch, 512, cfg.text_dim),
                               encoder_hidden_states_image=rand(batch, 257, cfg.image_dim))
        self.batch = batch

    def __call__(self, model, t: int):
        timestep = torch.full((self.batch,), t, device=self.x.device, dtype=torch.long)
        return model(hidden_states=self.x, timestep=timestep, return_dict=False, **self.kwargs)[0]

    def advance(self, out: torch.Tensor) -> None:
        """A small Euler-like move of the noisy channels, so inputs change from step to step."""
        noisy = self.x[:, :, :16] if self.family == "cogvideox" else self.x[:, :16]
        noisy.sub_(0.02 * out.to(noisy.dtype))


def timesteps(total: int) -> list[int]:
    """``total`` timesteps from 999 down to 0, evenly spaced (both families' schedules span these)."""
    return [round(999 - i * 999 / max(total - 1, 1)) for i in range(total)]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def tensor_gib(model) -> float:
    """Weights as stored (fp8 storage counts one byte each), wherever they sit."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / GIB


def modes_for(family: str, device, attention: list[str]) -> list[str]:
    """Core modes, then those of ``comfyui_dwm.cogvideox.memory/speed`` (CogVideoX only, when installed)."""
    modes = list(CORE_MODES)
    if family != "cogvideox" or dwm_memory is None:
        return modes
    modes += [f"memory:{m}" for m in dwm_memory.MEMORY_MODES if m != "none"]
    modes += [f"cache:{c}" for c in dwm_speed.CACHES if c not in ("none", "magcache")]  # magcache: calibrated
    modes += [f"attention:{a}" for a in attention]
    return modes + (["compile"] if torch.device(device).type == "cuda" else [])


def prepare(mode: str, family: str, config: dict, device) -> torch.nn.Module:
    """The model set up for ``mode`` (a step cache is enabled per generation, in ``time_mode``)."""
    device = torch.device(device)
    offload = mode == "group-offload" or (mode.startswith("memory:") and "offload" in mode)
    model = build(family, config, "cpu" if offload else device)
    if mode == "fp8":
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=DTYPE)
    elif mode == "group-offload":
        model.enable_group_offload(device, offload_device=torch.device("cpu"), offload_type="block_level",
                                   num_blocks_per_group=1, use_stream=device.type == "cuda")
    elif mode.startswith("memory:"):
        base = DWMBase(transformer=model, vae=None, text_encoder=torch.nn.Module(), tokenizer=None,
                       scheduler_config=dict(SCHEDULER), version="1.1", source="random")
        dwm_memory.apply_memory_mode(base, mode.split(":", 1)[1], device)
    elif mode.startswith("attention:"):
        dwm_speed.set_attention(model, mode.split(":", 1)[1])
    elif mode == "compile":
        dwm_speed.compile_blocks(model)
    return model


def time_mode(mode: str, family: str, config: dict, size: str, args) -> dict:
    """One row: s/step and 50-step total (extrapolated, or measured for step caches), peak memory."""
    device = torch.device(args.device)
    model = prepare(mode, family, config, device)
    inputs = Inputs(family, model, size, device)
    measured = mode.startswith("cache:")
    name = mode.split(":", 1)[1] if measured else None
    cache = dwm_speed.step_cache(model, name, steps=args.steps) if measured else contextlib.nullcontext()
    schedule = timesteps(args.steps)
    count = args.steps if measured else min(args.warmup + args.measure, args.steps)
    weights = tensor_gib(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode(), cache:
        for t in schedule[:count]:
            sync(device)
            start = time.perf_counter()
            with model.cache_context("cond_uncond"):  # as the samplers call it: a cache's state per context
                out = inputs(model, t)
            sync(device)
            times.append(time.perf_counter() - start)
            inputs.advance(out)
    kept = times if measured else times[args.warmup:] or times
    per_step = statistics.mean(kept)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    flops = forward_flops(model.config, *inputs.latent, batch=inputs.batch)
    del model, inputs
    return dict(mode=mode, s_per_step=per_step, total_s=sum(times) if measured else per_step * args.steps,
                total_is="measured" if measured else f"extrapolated from {len(kept)} steps",
                steps=args.steps, peak_gib=peak, weights_gib=weights, tflop_per_step=flops / 1e12,
                mfu=mfu(flops, per_step, args.peak))


def train_row(size: str, args) -> dict:
    """The 5B LoRA recipe (training/configs/dwm_cogvideox_5b_lora.yaml) at ``size``: one optimizer step per
    micro-batch of ``train_batch`` samples, gradient checkpointing, bf16 autocast, the trainer's optimizer."""
    import os

    import comfyui_dwm.training as training
    from diffusers import CogVideoXDDIMScheduler

    from comfyui_dwm.training.config import load_config
    from comfyui_dwm.training.lora_setup import add_lora
    from comfyui_dwm.training.loss import training_loss
    from comfyui_dwm.training.throughput import make_optimizer

    cfg = load_config(os.path.join(os.path.dirname(training.__file__), "configs", "dwm_cogvideox_5b_lora.yaml"))
    device = torch.device(args.device)
    family, config = model_config("cogvideox-5b", size)
    model = build(family, config, device)
    params = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules, "patch_embed.proj",
                      cfg.gradient_checkpointing)
    model.train()
    optimizer = make_optimizer(params, cfg)
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER)
    batch = args.train_batch or SIZES[size]["train_batch"]
    inputs = Inputs(family, model, size, device, batch)
    frames, h, w = inputs.latent
    latents, static, hands = (inputs.x[:, :, a:b] for a, b in ((0, 16), (17, 33), (33, 49)))
    prompts, g = inputs.kwargs["encoder_hidden_states"], torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.warmup + args.measure):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=DTYPE):
            loss = training_loss(model, model, scheduler, latents, static, hands, prompts, 0.7, g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    per_step = statistics.mean(times[args.warmup:])
    flops = training_flops(model.config, frames, h, w, batch)
    return dict(model="cogvideox-5b", batch=batch, lora_rank=cfg.lora_rank,
                gradient_checkpointing=cfg.gradient_checkpointing, fused_adamw=bool(optimizer.defaults.get("fused")),
                s_per_step=per_step, samples_per_s=batch / per_step, tflop_per_step=flops / 1e12,
                mfu=mfu(flops, per_step, args.peak),
                peak_gib=torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None)


def free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def guarded(fn, *a) -> dict:
    """A row, or one with the error (out of memory, a missing backend) so the other modes still run."""
    try:
        return fn(*a)
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as err:  # one failing mode must not hide the others' figures
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]}
    finally:
        free(torch.device("cuda") if torch.cuda.is_available() else "cpu")


def fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    head = (f"Device: {result['device']} | size {result['size']} ({result['video']}) | torch {result['torch']} | "
            f"peak bf16 {fmt(result['peak_tflops'], '.1f')} TFLOP/s\n\n")
    lines = ["| model | mode | s/step (CFG, batch 2) | total 50 steps (s) | total | peak GiB | weights GiB | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['mode']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['mode']} | {fmt(r['s_per_step'])} | {fmt(r['total_s'], '.1f')} | "
                     f"{r['total_is']} | {fmt(r['peak_gib'], '.2f')} | {fmt(r['weights_gib'], '.2f')} | "
                     f"{fmt(r['mfu'], '.1%')} |")
    t = result.get("train")
    if t:
        lines += ["", "| training | batch | s/step | samples/s | TFLOP/step | MFU | peak GiB | fused AdamW |",
                  "|---|---|---|---|---|---|---|---|"]
        if "error" in t:
            lines.append(f"| cogvideox-5b LoRA | failed: {t['error']} | | | | | | |")
        else:
            lines.append(f"| cogvideox-5b LoRA r{t['lora_rank']} | {t['batch']} | {fmt(t['s_per_step'])} | "
                         f"{fmt(t['samples_per_s'])} | {fmt(t['tflop_per_step'], '.1f')} | {fmt(t['mfu'], '.1%')} | "
                         f"{fmt(t['peak_gib'], '.2f')} | {t['fused_adamw']} |")
    return head + "\n".join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--models", default=",".join(ARCHS), help="comma separated: " + ", ".join(ARCHS))
    parser.add_argument("--modes", default="", help="comma separated subset of the modes (default: all)")
    parser.add_argument("--attention", default="_native_flash,_native_cudnn,flash,sage",
                        help="attention backends to time on CUDA (CogVideoX)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of one generation")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--measure", type=int, default=3, help="timed steps of the plain modes")
    parser.add_argument("--train", choices=("yes", "no"), default="yes", help="also time the 5B LoRA recipe")
    parser.add_argument("--train-batch", type=int, default=0, help="0: 7 at full size (the recipe), 2 otherwise")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="dense bf16 peak for MFU; 0: looked up from the CUDA device name")
    parser.add_argument("--json", default="gpu-benchmark.json", help="where the JSON results go")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    from comfyui_dwm.training.throughput import device_peak

    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible (use --device cpu for a dry run)")
    device = torch.device(args.device)
    args.peak = args.peak_tflops * 1e12 if args.peak_tflops else device_peak(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    s = SIZES[args.size]
    import diffusers

    result = dict(device=name, size=args.size, video=f"{s['frames']}x{s['width']}x{s['height']}",
                  torch=torch.__version__, diffusers=diffusers.__version__,
                  peak_tflops=args.peak / 1e12 if args.peak else None, rows=[], train=None)
    wanted = [m for m in args.modes.split(",") if m]
    attention = [a for a in args.attention.split(",") if a] if device.type == "cuda" else []
    for arch in [a for a in args.models.split(",") if a]:
        family, config = model_config(arch, args.size)
        for mode in modes_for(family, device, attention):
            if wanted and mode not in wanted:
                continue
            row = guarded(time_mode, mode, family, config, args.size, args)
            result["rows"].append({"model": arch, "mode": mode, **row})
            print(f"{arch} {mode}: {row}", flush=True)
    if args.train == "yes":
        result["train"] = guarded(train_row, args.size, args)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
