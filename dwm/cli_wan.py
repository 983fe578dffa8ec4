"""The Wan half of ``python -m dwm generate``: Wan defaults, and options that only apply to CogVideoX refused."""

from __future__ import annotations

from .errors import DWMError
from .wan.checkpoint import load_wan_release
from .wan.model import load_wan_base
from .wan.pipeline import DEFAULT_NEGATIVE, generate_wan
from .wan.sampler import WanSettings

DEFAULT_SHIFT = 5.0  # the reference's FlowMatchEulerDiscreteScheduler shift for Wan 2.1


def wan_settings(args) -> WanSettings:
    """Sampler settings from the command line; CogVideoX-only options are refused, not ignored."""
    for flag, given in (("--scheduler", args.scheduler is not None), ("--dynamic-cfg", args.dynamic_cfg)):
        if given:
            raise DWMError(flag, "applies to CogVideoX bases only",
                           f"drop {flag}: Wan samples with flow-matching Euler at constant guidance "
                           "(tune --shift instead)")
    shift = DEFAULT_SHIFT if args.shift is None else args.shift
    return WanSettings(steps=args.steps, guidance=args.guidance, seed=args.seed, batch=args.batch, shift=shift)


def wan_runner(args, loras: list[tuple[str, float]], device: str, precision: str):
    """Load the Wan base and releases once; return ``run(static, hands, prompt, on_step) -> videos``."""
    settings = wan_settings(args)
    base = load_wan_base(args.model, precision, device)
    releases = [(load_wan_release(path), strength) for path, strength in loras]
    negative = DEFAULT_NEGATIVE if args.negative_prompt is None else args.negative_prompt

    def run(static_frames, hand_frames, prompt, on_step):
        return generate_wan(base, static_frames, hand_frames, prompt, negative, releases, settings,
                            args.width, args.height, args.num_frames or None, tiling=not args.no_tiling,
                            scene_seed=args.scene_seed, on_step=on_step)
    return run
