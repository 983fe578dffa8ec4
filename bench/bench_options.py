"""Every memory and speed option of the CogVideoX engine as a time ratio against the plain loop, with drift.

Each option runs ``dwm.cogvideox.sampler.sample`` with that one option on, paired (A B A B ...) with the
inline plain loop of bench_sampler.py in the same process; ratio = option / plain (below 1 = faster).
Drift = max |latents - plain latents| and their PSNR (peak = the plain latents' max abs), over the final
latents of the same seed. MagCache's ratios are calibrated first, in the same process, on this run.

    python bench/bench_options.py --width 160 --height 96 --frames 25 --steps 20 --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sampler import paired, plain_loop  # noqa: E402

from comfyui_dwm.cogvideox import magcache, memory, speed  # noqa: E402
from comfyui_dwm.cogvideox.model import load_base  # noqa: E402
from comfyui_dwm.cogvideox.sampler import SamplerSettings, sample  # noqa: E402
from comfyui_dwm.cogvideox.scene import SceneLatents  # noqa: E402
from comfyui_dwm.cogvideox.text import encode_prompt  # noqa: E402
from comfyui_dwm.cogvideox.tiny import default_tiny_model  # noqa: E402


SIZES = {"width": 160, "height": 96, "frames": 25, "steps": 20, "repeats": 2}


def random_scene(args, dtype: torch.dtype) -> SceneLatents:
    """Random static and hand latents of the run's size (the transformer cost does not depend on content)."""
    shape = (1, (args.frames - 1) // 4 + 1, 16, args.height // 8, args.width // 8)
    g = torch.Generator().manual_seed(0)
    static, hands = (torch.randn(shape, generator=g).to(args.device, dtype) for _ in range(2))
    return SceneLatents(static, hands, args.frames, args.width, args.height, torch.zeros(17, 3))


def drift(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = (out.float() - ref.float()).abs()
    mse = diff.pow(2).mean().item()
    peak = ref.float().abs().max().item()
    return diff.max().item(), (math.inf if mse == 0 else 10 * math.log10(peak**2 / mse))


@contextlib.contextmanager
def memory_mode(base, mode: str, device: str):
    memory.apply_memory_mode(base, mode, device)
    try:
        yield
    finally:
        memory.apply_memory_mode(base, "none", device)


@contextlib.contextmanager
def attention(base, backend: str):
    speed.set_attention(base.transformer, backend)
    try:
        yield
    finally:
        speed.set_attention(base.transformer, "sdpa")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in SIZES.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    gpu = torch.cuda.is_available()
    parser.add_argument("--model", help="base folder (default: tiny random V1.1)")
    parser.add_argument("--device", default="cuda" if gpu else "cpu")
    parser.add_argument("--precision", default="bf16" if gpu else "fp32")
    parser.add_argument("--skip", nargs="*", default=[], help="option names to leave out (e.g. compile)")
    args = parser.parse_args()

    path = args.model or default_tiny_model()
    base = load_base(path, args.precision, args.device)
    scene = random_scene(args, base.dtype)
    positive, negative = encode_prompt(base, "I open the drawer"), encode_prompt(base, "")
    settings = SamplerSettings(steps=args.steps, seed=0)
    ours = lambda b=base: sample(b, scene, positive.to(b.dtype), negative.to(b.dtype), settings)  # noqa: E731
    plain = lambda: plain_loop(base, scene, positive, negative, args.steps, 6.0, 0)  # noqa: E731
    reference = plain()
    with magcache.magnitude_recorder(base.transformer) as ratios:
        ours()

    def cached(name, **params):
        return lambda: _within(speed.step_cache(base.transformer, name, steps=args.steps, **params), ours)

    options = {"sampler, all off": (contextlib.nullcontext, ours)}
    for name in speed.CACHES[1:]:
        options[f"cache {name}"] = (contextlib.nullcontext,
                                    cached(name, **({"mag_ratios": ratios} if name == "magcache" else {})))
    options["attention native (dispatcher)"] = (lambda: attention(base, "native"), ours)
    options["memory offload (CPU->CPU hooks)" if args.device == "cpu" else "memory offload"] = (
        lambda: memory_mode(base, "offload", args.device), ours)
    options["compile (per block, inductor)"] = (lambda: _compiled(base), ours)
    fresh = load_base(path, args.precision, args.device)  # fp8 rounds the weights for good: its own copy
    for mode in ("fp8", "fp8+offload"):
        options[f"memory {mode}"] = (lambda m=mode: memory_mode(fresh, m, args.device), lambda: ours(fresh))

    print(f"device {args.device}, {args.precision}, {args.width}x{args.height}x{args.frames}, {args.steps} steps, "
          f"CFG 6, median of {args.repeats}, torch {torch.__version__}")
    print("| option | option s | plain loop s | ratio | max abs diff | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for label, (setup, run) in options.items():
        if any(s in label for s in args.skip):
            continue
        with setup():
            run()  # warm-up (compile happens here)
            t_opt, t_plain, out = paired(run, plain, args.repeats)
        diff, psnr = drift(out, reference)
        print(f"| {label} | {t_opt:.3f} | {t_plain:.3f} | **{t_opt / t_plain:.2f}** | {diff:.2e} | {psnr:.1f} |",
              flush=True)


def _within(context, fn):
    with context:
        return fn()


@contextlib.contextmanager
def _compiled(base):
    speed.compile_blocks(base.transformer, dynamic=False)
    yield


if __name__ == "__main__":
    main()
