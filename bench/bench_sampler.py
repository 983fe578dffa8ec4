"""Sampler overhead and VAE tiling cost, as ratios against plain reference runs in the same process.

* ``sampler``: ``dwm.cogvideox.sampler.sample`` against a plain loop that calls the same transformer and
  scheduler directly (inputs concatenated inline, no callbacks, no checks). The ratio is the cost
  of our structure: progress, cancel, V1.5 padding, NaN check. It should stay close to 1.
* ``decode``: tiled against untiled VAE decode. Tiling bounds GPU memory; the ratio is its time cost.

Runs on the tiny random model by default (``--model`` takes a real base). Example:
    python bench/bench_sampler.py --width 240 --height 160 --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from comfyui_dwm.cogvideox.decode import decode_latents
from comfyui_dwm.cogvideox.model import load_base
from comfyui_dwm.cogvideox.sampler import SamplerSettings, dwm_model_input, initial_noise, rotary_embedding, sample
from comfyui_dwm.cogvideox.scene import SceneLatents
from comfyui_dwm.cogvideox.text import encode_prompt
from comfyui_dwm.cogvideox.tiny import default_tiny_model


def plain_loop(base, scene, positive, negative, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """The reference: the denoising loop written inline, V1.1 shapes only."""
    from diffusers import CogVideoXDDIMScheduler

    scheduler = CogVideoXDDIMScheduler.from_config(base.scheduler_config)
    scheduler.set_timesteps(steps, device=base.transformer.device)
    latents = initial_noise([seed], scene.static.shape).to(base.transformer.device, base.dtype)
    mask_value = base.scaling_factor
    static, hands = scene.static.repeat(2, 1, 1, 1, 1), scene.hands.repeat(2, 1, 1, 1, 1)
    prompts = torch.cat([negative, positive])
    rope = rotary_embedding(base.transformer, scene.height, scene.width, scene.static.shape[1], latents.device)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = dwm_model_input(torch.cat([latents] * 2), static, hands, mask_value)
            v = base.transformer(hidden_states=x, encoder_hidden_states=prompts, timestep=t.expand(2),
                                 image_rotary_emb=rope, return_dict=False)[0].float()
            uncond, cond = v.chunk(2)
            latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, return_dict=False)[0]
            latents = latents.to(base.dtype)
    return latents


def paired(first, second, repeats: int) -> tuple[float, float, object]:
    """Median seconds of each, run alternately (A B A B ...) so drift hits both alike; A's last result."""
    a_times, b_times, result = [], [], None
    for _ in range(repeats):
        for fn, times in ((first, a_times), (second, b_times)):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
            result = out if fn is first else result
    return statistics.median(a_times), statistics.median(b_times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base folder (default: tiny random V1.1)")
    parser.add_argument("--width", type=int, default=240)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16" if torch.cuda.is_available() else "fp32")
    args = parser.parse_args()

    base = load_base(args.model or default_tiny_model(), args.precision, args.device)
    if base.version != "1.1":
        raise SystemExit("the plain reference loop covers V1.1 shapes; pass a V1.1 base")
    f_lat, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    g = torch.Generator().manual_seed(0)
    cond = [torch.randn(1, f_lat, 16, h, w, generator=g).to(args.device, base.dtype) for _ in range(2)]
    scene = SceneLatents(cond[0], cond[1], args.frames, args.width, args.height, torch.zeros(17, 3))
    positive, negative = encode_prompt(base, "I open the drawer"), encode_prompt(base, "")
    settings = SamplerSettings(steps=args.steps, seed=0)

    ours_fn = lambda: sample(base, scene, positive, negative, settings)  # noqa: E731
    ref_fn = lambda: plain_loop(base, scene, positive, negative, args.steps, 6.0, 0)  # noqa: E731
    ref_fn(), ours_fn()  # warm-up
    ours, ref, a = paired(ours_fn, ref_fn, args.repeats)
    same = torch.allclose(a.float(), ref_fn().float(), atol=1e-4)
    tiled, whole, _ = paired(lambda: decode_latents(base.vae, a, tiling=True),
                             lambda: decode_latents(base.vae, a, tiling=False), max(1, args.repeats // 3))

    print(f"device {args.device}, {args.precision}, {args.width}x{args.height}x{args.frames}, "
          f"{args.steps} steps, median of {args.repeats}")
    print(f"sampler  ours {ours:.3f}s  plain loop {ref:.3f}s  ratio {ours / ref:.3f}  same result: {same}")
    print(f"decode   tiled {tiled:.3f}s  untiled {whole:.3f}s  ratio {tiled / whole:.3f}")


if __name__ == "__main__":
    main()
