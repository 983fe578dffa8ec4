"""MagCache calibration for DWM: the per-step magnitude ratios of the transformer's residual.

MagCache skips a step while the accumulated change of the residual (last block's output minus the first
block's input) stays small; how fast that residual changes per step depends on the model, the LoRA and
the scheduler, so the ratios are measured on a real DWM run: ``mean_tokens(|r_t| / |r_{t-1}|)`` per step
(1.0 for the first), the statistic diffusers' ``MagCacheConfig(calibrate=True)`` prints. Ours keeps them
(diffusers clears its list at the end of the run) and writes a small json that ``--magcache-ratios`` reads:

    python -m comfyui_dwm calibrate-magcache --model M --lora L --out dwm_magcache.json
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import torch

from ..atomic import atomic_path
from ..errors import DWMError


@contextlib.contextmanager
def magnitude_recorder(transformer) -> Iterator[list[float]]:
    """Record one ratio per transformer call (one call per step) while the block is open."""
    ratios: list[float] = []
    seen: dict[str, torch.Tensor] = {}

    def head(module, args, kwargs) -> None:
        seen["input"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def tail(module, args, kwargs, output) -> None:
        residual = (output[0] - seen["input"]).float()
        previous = seen.get("residual")
        ratio = 1.0 if previous is None else \
            (residual.norm(dim=-1) / (previous.norm(dim=-1) + 1e-8)).mean().item()
        ratios.append(ratio)
        seen["residual"] = residual

    blocks = transformer.transformer_blocks
    handles = [blocks[0].register_forward_pre_hook(head, with_kwargs=True),
               blocks[-1].register_forward_hook(tail, with_kwargs=True)]
    try:
        yield ratios
    finally:
        for handle in handles:
            handle.remove()


def save_ratios(path: str, ratios: list[float], about: dict) -> str:
    with atomic_path(path, ".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"mag_ratios": [round(r, 6) for r in ratios], "steps": len(ratios), **about}, fh, indent=1)
    return path


def load_ratios(path: str) -> list[float]:
    """The ratios of a calibration file (MagCache interpolates them to the run's step count)."""
    try:
        with open(path, encoding="utf-8") as fh:
            ratios = json.load(fh)["mag_ratios"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DWMError("--magcache-ratios", f"cannot read ratios from {path} ({err})",
                       "pass a file written by python -m comfyui_dwm calibrate-magcache") from None
    if not ratios or not all(isinstance(r, (int, float)) for r in ratios):
        raise DWMError("--magcache-ratios", f"{path} holds no list of numbers under mag_ratios",
                       "rewrite it with python -m comfyui_dwm calibrate-magcache")
    return [float(r) for r in ratios]


def cache_params(cache: str, ratios_path: str | None) -> dict:
    """The step cache's parameters from the command line: MagCache's ratios from their file."""
    if cache == "magcache":
        if not ratios_path:
            raise DWMError("--magcache-ratios", "--cache magcache needs calibrated ratios",
                           "write them once with python -m comfyui_dwm calibrate-magcache --out ratios.json "
                           "(same model and LoRA), then pass --magcache-ratios ratios.json")
        return {"mag_ratios": load_ratios(ratios_path)}
    if ratios_path:
        raise DWMError("--magcache-ratios", f"is read by --cache magcache only, not --cache {cache}",
                       "add --cache magcache, or drop --magcache-ratios")
    return {}


def run_calibrate(args) -> None:
    """The ``calibrate-magcache`` command: one generation (the bundled sample unless given), ratios saved."""
    from .. import cli_checks as checks
    from ..cli import parse_lora
    from ..cli_generate import cogvideox_settings, examples_dir
    from ..video_io import read_video
    from .checkpoint import load_checkpoint
    from .model import load_base
    from .pipeline import generate, prepare_base

    folder = os.path.dirname(os.path.abspath(args.out))
    if os.path.splitext(args.out)[1].lower() != ".json" or not os.path.isdir(folder):
        raise DWMError("--out", f"{args.out} is not a .json file in an existing folder", "pass e.g. --out ratios.json")
    if args.cache != "none":
        raise DWMError("--cache", "calibration measures the uncached loop", "drop --cache")
    loras = [parse_lora(spec) for spec in args.lora]
    if checks.check_model(args.model) != "cogvideox":
        raise DWMError("--model", "MagCache calibration covers CogVideoX-Fun bases", "pass a CogVideoX-Fun InP base")
    checks.check_loras(loras, args.model, "cogvideox")
    checks.check_numbers(args)
    device, precision = checks.runtime(args)
    sample = os.path.join(examples_dir(), "00055")
    static, hands = args.static or os.path.join(sample, "static.mp4"), args.hands or os.path.join(sample, "hands.mp4")
    prompt = args.prompt
    if prompt is None and not args.static:
        with open(os.path.join(sample, "prompt.txt"), encoding="utf-8") as fh:
            prompt = fh.read().strip()
    checkpoints = [(load_checkpoint(path), strength) for path, strength in loras]
    base = load_base(args.model, precision, device)
    prepare_base(base, device, args.memory_mode, args.attention, args.compile)
    with magnitude_recorder(base.transformer) as ratios:
        generate(base, read_video(static, "--static")[0], read_video(hands, "--hands")[0], prompt or "",
                 args.negative_prompt or "", checkpoints, cogvideox_settings(args), args.width, args.height,
                 args.num_frames or None, tiling=not args.no_tiling, scene_seed=args.scene_seed)
    about = {"model": args.model, "loras": args.lora, "scheduler": args.scheduler or "ddim",
             "size": f"{args.width}x{args.height}x{args.num_frames}", "guidance": args.guidance}
    print(f"wrote {save_ratios(args.out, ratios, about)} ({len(ratios)} steps)")
