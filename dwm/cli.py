"""Headless command line: python -m comfyui_dwm generate | demo | tiny-model | calibrate-magcache.

Only argparse runs before the arguments are parsed, so ``--help`` answers at once: torch, diffusers and
the model code are imported by the command that needs them (dwm/cli_generate.py). Every input and output
is checked before a model loads (dwm/cli_checks.py), so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .errors import DWMCancelled, DWMError
from .safety import Interrupted, stop_on_signals

DEFAULT_MODEL = os.environ.get("DWM_MODEL", "alibaba-pai/CogVideoX-Fun-V1.1-5b-InP")
SCHEDULER_NAMES = ("ddim", "dpm")  # dwm.cogvideox.sampler.SCHEDULERS, named here so --help imports no torch
# dwm.cogvideox.memory.MEMORY_MODES, speed.CACHES and speed.ATTENTION_BACKENDS (tests/test_memory_speed.py)
MEMORY_MODE_NAMES = ("none", "fp8", "offload", "fp8+offload", "24gb")
CACHE_NAMES = ("none", "first-block", "taylorseer", "magcache", "fastercache", "pab")
ATTENTION_NAMES = ("sdpa", "native", "flash", "flash_hub", "_flash_3", "sage", "sage_hub", "flex", "xformers",
                   "_native_flash", "_native_efficient", "_native_cudnn")
EPILOG = """examples:
  python -m comfyui_dwm generate --static scene.mp4 --hands hands.mp4 --prompt "I open the fridge" \\
      --model /models/CogVideoX-Fun-V1.1-5b-InP --lora my_dwm.safetensors:1.0 --out out.mp4
  python -m comfyui_dwm generate --static scene.mp4 --hands hands.mp4 --prompt "I open the fridge" \\
      --model /models/Wan2.1-Fun-V1.1-14B-InP --lora /loras/DWM-Wan2.1-Fun-14b-LoRA --out out.mp4
  python -m comfyui_dwm generate --data-root data/ --list data/test.txt --model M --lora L --out-dir results/
  python -m comfyui_dwm demo
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' layout and shows each option's default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == [] \
                or default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _parser(parent, name: str | None = None, **kwargs) -> argparse.ArgumentParser:
    """A (sub)parser that never accepts abbreviations (``--out`` must not mean ``--out-dir``)."""
    kwargs.update(formatter_class=HelpFormatter, allow_abbrev=False)
    return argparse.ArgumentParser(**kwargs) if name is None else parent.add_parser(name, **kwargs)


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:strength]``; a trailing ``:number`` is the strength, anything else is part of the path."""
    path, _, tail = spec.rpartition(":")
    try:
        return (path, float(tail)) if path else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def _add_model_args(parser: argparse.ArgumentParser, model_default: str | None, model_help: str) -> None:
    p = parser.add_argument_group("model")
    p.add_argument("--model", default=model_default, metavar="FOLDER", help=model_help)
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="DWM LoRA of the model's family (CogVideoX: .safetensors file or reference folder; "
                        "Wan: release folder), strength 1.0 unless given; repeat to stack (default: none, "
                        "the bare base)")


def _add_sampling_args(parser: argparse.ArgumentParser, steps: int, width: int, height: int) -> None:
    p = parser.add_argument_group("sampling")
    p.add_argument("--negative-prompt", metavar="TEXT", help='negative prompt for guidance (default: empty '
                   'for CogVideoX, "bad detailed" for Wan, as the reference)')
    p.add_argument("--width", type=int, default=width, help="output width, a multiple of 16")
    p.add_argument("--height", type=int, default=height, help="output height, a multiple of 16")
    p.add_argument("--num-frames", type=int, default=49, metavar="N",
                   help="frames to generate, 4k+1; 0 = the videos' own length cut to 4k+1")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate the input videos are resampled to (only "
                   "the frames used are decoded, at the output size); 0 = keep their own (default: 8, DWM's)")
    p.add_argument("--steps", type=int, default=steps, help="denoising steps, at least 1")
    p.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance scale; 1 = off")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES, help="CogVideoX only (default: ddim)")
    p.add_argument("--shift", type=float, help="flow-matching shift, Wan only (default: 5)")
    p.add_argument("--seed", type=int, default=42, help="noise seed of the first video")
    p.add_argument("--batch", type=int, default=1, help="videos per input, seeds SEED..SEED+BATCH-1")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the hand video's latent sample")
    p.add_argument("--dynamic-cfg", action="store_true", help="CogVideoX only: cosine-scheduled guidance "
                   "(default: off)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="weights and compute type; auto = bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    p.add_argument("--no-tiling", action="store_true", help="decode the VAE in one piece: more memory "
                   "(default: tiled)")


def _add_speed_args(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("memory and speed (CogVideoX; docs/benchmarks.md gives each one's time and drift)")
    p.add_argument("--memory-mode", choices=MEMORY_MODE_NAMES, default="none",
                   help="fp8: transformer weights stored in fp8 (about half the memory); offload: weights on the CPU, "
                   "one block at a time on the GPU; 24gb: fp8 + VAE tiling + T5 offload, and offload when the card "
                   "is smaller")
    p.add_argument("--cache", choices=CACHE_NAMES, default="none",
                   help="step cache: skips or predicts work between steps (faster, output drifts a little)")
    p.add_argument("--magcache-ratios", metavar="FILE", help="ratios json for --cache magcache, written by "
                   "calibrate-magcache (default: none)")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block (slow first "
                   "step; default: off)")
    p.add_argument("--attention", choices=ATTENTION_NAMES, default="sdpa", metavar="BACKEND",
                   help="attention: sdpa = diffusers' CogVideoX processor; any other = ours through diffusers' "
                   f"dispatcher on that backend ({', '.join(ATTENTION_NAMES[1:])})")


def build_parser() -> argparse.ArgumentParser:
    parser = _parser(None, prog="python -m comfyui_dwm", description=__doc__, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = _parser(sub, "generate", help="generate interaction videos (one input, or a dataset)",
                  description="Generate interaction videos from a static-scene video and a hand video.",
                  epilog=EPILOG)
    one = gen.add_argument_group("one input")
    one.add_argument("--static", metavar="VIDEO", help="static-scene video (the scene rendered along the "
                     "camera path)")
    one.add_argument("--hands", metavar="VIDEO", help="hand video (the hands rendered on black along the same "
                     "path, same frame count)")
    one.add_argument("--prompt", metavar="TEXT", help="text prompt (default: empty, which DWM "
                     "accepts)")
    one.add_argument("--out", metavar="FILE", help="output .mp4, in an existing folder; with --batch N the "
                     "seed is added to its name")
    one.add_argument("--compare", metavar="FILE", help="also write static | hands | output [| ground truth] "
                     "side by side to this .mp4")
    one.add_argument("--gt", metavar="VIDEO", help="ground-truth video, the last panel of --compare")
    many = gen.add_argument_group("dataset (the reference layout: videos_static/, videos_hands/, prompts/, "
                                  "videos/)")
    many.add_argument("--data-root", metavar="FOLDER", help="dataset root")
    many.add_argument("--list", metavar="FILE", help="text file of sample ids or video paths under --data-root")
    many.add_argument("--out-dir", metavar="FOLDER", help="output folder (created); a sample whose video and "
                      "comparison both exist is skipped, so a rerun resumes")
    _add_model_args(gen, DEFAULT_MODEL, "base model folder (CogVideoX-Fun InP in diffusers layout or "
                    "Wan2.1-Fun InP in VideoX-Fun layout) or hub id; the environment variable DWM_MODEL overrides it")
    _add_sampling_args(gen, steps=50, width=720, height=480)
    _add_speed_args(gen)
    gen.add_argument_group("many GPUs (accelerate launch -m comfyui_dwm generate ...: a dataset is shared out "
                           "over the processes)").add_argument(
        "--cfg-parallel", action="store_true", help="with exactly 2 processes: both run each sample, one the "
        "conditional and one the unconditional guidance pass of every step (default: off)")
    demo = _parser(sub, "demo", help="run the whole pipeline on the bundled sample with a tiny random model",
                   description="Run the pipeline end to end on the bundled sample, offline.\n"
                               "The default model has random weights: its output is noise.")
    demo.add_argument("--out-dir", default=os.path.join("out", "demo"), metavar="FOLDER",
                      help="folder for output.mp4 and compare.mp4 (created)")
    _add_model_args(demo, None, "base model folder (default: the embedded tiny random CogVideoX-Fun model)")
    _add_sampling_args(demo, steps=10, width=240, height=160)
    _add_speed_args(demo)
    mag = _parser(sub, "calibrate-magcache", help="measure a CogVideoX DWM model's MagCache ratios into a json",
                  description="Run one generation and write the per-step residual ratios --cache magcache needs.")
    mag.add_argument("--out", required=True, metavar="FILE", help="the .json to write")
    mag.add_argument("--static", metavar="VIDEO", help="static-scene video (default: the bundled sample)")
    mag.add_argument("--hands", metavar="VIDEO", help="hand video (default: the bundled sample)")
    mag.add_argument("--prompt", metavar="TEXT", help="text prompt (default: the bundled sample's)")
    _add_model_args(mag, DEFAULT_MODEL, "CogVideoX-Fun InP base folder or hub id (DWM_MODEL overrides it)")
    _add_sampling_args(mag, steps=50, width=720, height=480)
    _add_speed_args(mag)
    tiny = _parser(sub, "tiny-model", help="write a tiny random base (CogVideoX: diffusers layout, Wan: "
                   "VideoX-Fun layout)", description="Write a tiny random-weight base model for tests.")
    tiny.add_argument("--out", required=True, metavar="FOLDER", help="folder to write the model into")
    tiny.add_argument("--family", choices=["cogvideox", "wan"], default="cogvideox", help="model family")
    tiny.add_argument("--version", choices=["1.1", "1.5"], default="1.1", help="CogVideoX-Fun version")
    tiny.add_argument("--release", metavar="FOLDER", help="Wan only: also write a random DWM-Wan release "
                      "fitting it here")
    return parser


def cmd_generate(args) -> None:
    from .cli_generate import run_generate

    run_generate(args)


def cmd_demo(args) -> None:
    from .cli_generate import run_demo

    run_demo(args)


def cmd_tiny(args) -> None:
    if args.family == "wan":
        from .wan.tiny import make_tiny_wan_base, make_tiny_wan_release

        print(f"wrote {make_tiny_wan_base(args.out)}")
        if args.release:
            print(f"wrote {make_tiny_wan_release(args.out, args.release, seed=0)}")
        return
    if args.release:
        raise DWMError("--release", "is only written for --family wan",
                       "drop --release (train a CogVideoX DWM LoRA with the trainer instead)")
    from .cogvideox.tiny import make_tiny_model

    print(f"wrote {make_tiny_model(args.out, args.version)}")


def cmd_calibrate(args) -> None:
    from .cogvideox.magcache import run_calibrate

    run_calibrate(args)


COMMANDS = {"generate": cmd_generate, "demo": cmd_demo, "tiny-model": cmd_tiny, "calibrate-magcache": cmd_calibrate}


def _out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(err, torch.cuda.OutOfMemoryError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors and stops end in one line on stderr and an exit code, never a trace."""
    started = time.time()
    args = build_parser().parse_args(argv)
    args.started = started  # temporaries of a killed run are older than this
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        with stop_on_signals() as args.stop:  # whatever SIGINT/SIGTERM disposition was inherited (nohup, &, CI)
            COMMANDS[args.command](args)
    except Interrupted as err:
        print(f"cancelled: {err}; finished videos are kept, nothing half-written is left", file=sys.stderr)
        return err.exit_code
    except (DWMCancelled, KeyboardInterrupt) as err:
        print(f"cancelled: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except DWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _out_of_memory(err):
            raise
        print("error: out of GPU memory. Fix: use --memory-mode 24gb (or fp8+offload), lower --width/--height "
              "or --batch, keep VAE tiling on, or use --precision bf16", file=sys.stderr)
        return 3
    return 0
