"""The Wan half of ``python -m comfyui_dwm generate``: Wan defaults, and options that only apply to CogVideoX refused."""

from __future__ import annotations

from . import cfg_parallel
from .errors import DWMError
from .wan import checkpoint as wan_checkpoint
from .wan import model as wan_model
from .wan import pipeline as wan_pipeline
from .wan.sampler import WanSettings


def wan_settings(args) -> WanSettings:
    """Sampler settings from the command line; CogVideoX-only options are refused, not ignored."""
    for flag, given in (("--scheduler", args.scheduler is not None), ("--dynamic-cfg", args.dynamic_cfg)):
        if given:
            raise DWMError(flag, "applies to CogVideoX bases only",
                           f"drop {flag}: Wan samples with flow-matching Euler at constant guidance "
                           "(tune --shift instead)")
    shift = WanSettings.shift if args.shift is None else args.shift
    return WanSettings(steps=args.steps, guidance=args.guidance, seed=args.seed, batch=args.batch, shift=shift)


def wan_loader(args, loras: list[tuple[str, float]], device: str, precision: str):
    """Check the Wan options now; the returned loader reads the releases (small: a bad one fails fast), then
    the base, and returns ``run(static, hands, prompt, progress) -> videos`` (see dwm/cli_generate.py)."""
    settings = wan_settings(args)
    negative = wan_pipeline.DEFAULT_NEGATIVE if args.negative_prompt is None else args.negative_prompt

    def load():
        releases = [(wan_checkpoint.load_wan_release(path), strength) for path, strength in loras]
        base = wan_model.load_wan_base(args.model, precision, device)
        cfg_parallel.attach(base, args.processes)

        def run(static_frames, hand_frames, prompt, progress):
            return wan_pipeline.generate_wan(
                base, static_frames, hand_frames, prompt, negative, releases, settings, args.width, args.height,
                args.num_frames or None, tiling=not args.no_tiling, scene_seed=args.scene_seed,
                on_step=progress.on_step, cancel=progress.before_step)
        return run
    return load
