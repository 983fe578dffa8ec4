"""Headless command line: python -m dwm generate | demo | tiny-model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

import torch
from tqdm import tqdm

from .cogvideox.checkpoint import load_checkpoint
from .cogvideox.model import load_base
from .cogvideox.pipeline import generate
from .cogvideox.sampler import SCHEDULERS, SamplerSettings
from .compare import side_by_side
from .dataset import read_list, read_prompt
from .errors import DWMCancelled, DWMError
from .family import base_family, lora_family
from .video_io import read_video, write_video

DEFAULT_MODEL = os.environ.get("DWM_MODEL", "alibaba-pai/CogVideoX-Fun-V1.1-5b-InP")
FAMILY_NAMES = {"cogvideox": "CogVideoX-Fun", "wan": "Wan2.1-Fun"}
Runner = Callable[[torch.Tensor, torch.Tensor, str, Callable], torch.Tensor]  # static, hands, prompt, on_step
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
EPILOG = """examples:
  python -m dwm generate --static scene.mp4 --hands hands.mp4 --prompt "I open the fridge" \\
      --model /models/CogVideoX-Fun-V1.1-5b-InP --lora my_dwm.safetensors:1.0 --out out.mp4
  python -m dwm generate --static scene.mp4 --hands hands.mp4 --prompt "I open the fridge" \\
      --model /models/Wan2.1-Fun-V1.1-14B-InP --lora /loras/DWM-Wan2.1-Fun-14b-LoRA --out out.mp4
  python -m dwm generate --data-root data/ --list data/test.txt --model M --lora L --out-dir results/
  python -m dwm demo
"""


def parse_lora(spec: str) -> tuple[str, float]:
    """``PATH[:strength]``; a trailing ``:number`` is the strength, anything else is part of the path."""
    path, _, tail = spec.rpartition(":")
    try:
        return (path, float(tail)) if path else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def _add_sampling_args(p: argparse.ArgumentParser, steps: int, width: int, height: int) -> None:
    p.add_argument("--negative-prompt", help='negative prompt for guidance (default: empty for CogVideoX, '
                   '"bad detailed" for Wan)')
    p.add_argument("--width", type=int, default=width)
    p.add_argument("--height", type=int, default=height)
    p.add_argument("--num-frames", type=int, default=49, help="4k+1 frames (0 = the videos' own length)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--guidance", type=float, default=6.0, help="classifier-free guidance; 1 = off")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="CogVideoX only (default ddim)")
    p.add_argument("--shift", type=float, help="flow-matching shift, Wan only (default 5)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch", type=int, default=1, help="videos per input, seeds seed..seed+batch-1")
    p.add_argument("--scene-seed", type=int, default=0, help="seed of the hand video's latent sample")
    p.add_argument("--dynamic-cfg", action="store_true", help="CogVideoX only")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="auto = bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-tiling", action="store_true", help="decode the VAE in one piece (more memory)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dwm", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate interaction videos", epilog=EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("--static", help="static-scene video")
    gen.add_argument("--hands", help="hand video (same camera path and frame count)")
    gen.add_argument("--gt", help="ground-truth video, shown in the comparison video")
    gen.add_argument("--prompt", default="", help="text prompt (empty is valid)")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="base model folder (CogVideoX-Fun InP in diffusers "
                     f"layout or Wan2.1-Fun InP in VideoX-Fun layout) or hub id (default {DEFAULT_MODEL})")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                     help="DWM LoRA (file or reference folder) of the model's family; repeat to stack")
    gen.add_argument("--out", help="output mp4 (single input)")
    gen.add_argument("--compare", help="also write a side-by-side comparison mp4 here")
    gen.add_argument("--data-root", help="dataset root in the reference layout (videos_static/, ...)")
    gen.add_argument("--list", help="text file of sample ids under --data-root")
    gen.add_argument("--out-dir", help="output folder for --data-root runs (existing outputs are skipped)")
    _add_sampling_args(gen, steps=50, width=720, height=480)
    demo = sub.add_parser("demo", help="run the whole pipeline on the bundled sample with a tiny random model")
    demo.add_argument("--out-dir", default="out/demo")
    demo.add_argument("--model", help="base model (default: the embedded tiny random model)")
    demo.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]")
    _add_sampling_args(demo, steps=10, width=240, height=160)
    tiny = sub.add_parser("tiny-model", help="write a tiny random base (CogVideoX: diffusers layout, "
                          "Wan: VideoX-Fun layout)")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--family", choices=["cogvideox", "wan"], default="cogvideox")
    tiny.add_argument("--version", choices=["1.1", "1.5"], default="1.1", help="CogVideoX-Fun version")
    tiny.add_argument("--release", metavar="OUT", help="Wan only: also write a random DWM-Wan release fitting it")
    return parser


def _runtime(args) -> tuple[str, str]:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "bf16"
    return device, precision


def model_family(model: str, loras: list[tuple[str, float]]) -> str:
    """The base's family (a hub id is CogVideoX); refuse a LoRA of the other family with one message."""
    family = base_family(model) if os.path.isdir(model) else "cogvideox"
    for path, _ in loras:
        other = lora_family(path) if os.path.exists(path) else family  # a missing file is reported on load
        if other != family:
            raise DWMError("--lora", f"{path} is a DWM LoRA for {FAMILY_NAMES[other]}, but --model {model} is a "
                           f"{FAMILY_NAMES[family]} base",
                           f"pass a DWM LoRA trained on {FAMILY_NAMES[family]}, or the {FAMILY_NAMES[other]} InP "
                           "base that LoRA was trained on")
    return family


def cogvideox_runner(args, loras: list[tuple[str, float]], device: str, precision: str) -> Runner:
    """Load the CogVideoX base and LoRAs once; return ``run(static, hands, prompt, on_step) -> videos``."""
    if args.shift is not None:
        raise DWMError("--shift", "applies to Wan bases only",
                       "drop --shift for a CogVideoX-Fun base (choose --scheduler ddim or dpm instead)")
    base = load_base(args.model, precision, device)
    checkpoints = [(load_checkpoint(path), strength) for path, strength in loras]
    settings = SamplerSettings(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler or "ddim",
                               seed=args.seed, batch=args.batch, dynamic_cfg=args.dynamic_cfg)

    def run(static_frames, hand_frames, prompt, on_step):
        return generate(base, static_frames, hand_frames, prompt, args.negative_prompt or "", checkpoints,
                        settings, args.width, args.height, args.num_frames or None, tiling=not args.no_tiling,
                        scene_seed=args.scene_seed, on_step=on_step)
    return run


def _output_paths(out: str, batch: int, seed: int) -> list[str]:
    if batch == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_seed{seed + i}{ext or '.mp4'}" for i in range(batch)]


def run_one(run: Runner, args, static: str, hands: str, prompt: str, out: str,
            compare: str | None = None, gt: str | None = None, label: str = "") -> list[str]:
    """Generate one input's videos with a step progress bar, write them (and the comparison); their paths."""
    static_frames, fps = read_video(static, "static video")
    hand_frames, _ = read_video(hands, "hand video")
    with tqdm(total=args.steps, desc=label or os.path.basename(out), unit="step", leave=False) as bar:
        videos = run(static_frames, hand_frames, prompt, lambda i, n, _: bar.update(1))
    paths = _output_paths(out, args.batch, args.seed)
    for path, video in zip(paths, videos):
        write_video(path, video, fps)
    if compare:
        panels = [static_frames, hand_frames, videos[0]]
        if gt:
            panels.append(read_video(gt, "ground-truth video")[0])
        write_video(compare, side_by_side(panels, height=args.height), fps)
    return paths


def run_dataset(run: Runner, args) -> None:
    """Every listed sample in the reference layout; outputs that exist are skipped, so reruns resume."""
    if not args.out_dir:
        raise DWMError("--out-dir", "missing", "pass --out-dir for --data-root runs")
    for sample in tqdm(read_list(args.data_root, args.list), desc="samples", unit="sample"):
        out = os.path.join(args.out_dir, sample.slug + ".mp4")
        if os.path.isfile(out):
            continue
        gt = sample.video("video")
        run_one(run, args, sample.video("static"), sample.video("hands"), read_prompt(sample), out,
                os.path.join(args.out_dir, sample.slug + "_compare.mp4"), gt if os.path.isfile(gt) else None,
                sample.slug)


def cmd_generate(args) -> None:
    if not args.data_root and not (args.static and args.hands and args.out):
        raise DWMError("generate", "no input given", "pass --static, --hands and --out, or --data-root and --list")
    if args.data_root and not args.list:
        raise DWMError("--list", "missing", "pass --list with the sample ids to run under --data-root")
    loras = [parse_lora(spec) for spec in args.lora]
    family = model_family(args.model, loras)
    device, precision = _runtime(args)
    if family == "wan":
        from .cli_wan import wan_runner

        run = wan_runner(args, loras, device, precision)
    else:
        run = cogvideox_runner(args, loras, device, precision)
    if args.data_root:
        run_dataset(run, args)
    else:
        paths = run_one(run, args, args.static, args.hands, args.prompt, args.out, args.compare, args.gt)
        print(f"wrote {', '.join(paths)}")


def cmd_demo(args) -> None:
    from .cogvideox.tiny import default_tiny_model

    sample = os.path.join(EXAMPLES, "00055")
    device, precision = _runtime(args)
    if not args.model:
        args.model = default_tiny_model()
        print("DWM demo on a tiny RANDOM-WEIGHT model: the pipeline runs end to end, but the output video "
              "is noise-like and means nothing. For real results train a DWM LoRA (see README, Training) "
              "and run: python -m dwm generate --model <CogVideoX-Fun-5b-InP folder> --lora <your LoRA> ...\n"
              "(Its tokenizer spells words letter by letter, so a warning that the prompt was cut to "
              "226 tokens is expected here; T5's own tokenizer fits this prompt.)")
    run = cogvideox_runner(args, [parse_lora(spec) for spec in args.lora], device, precision)
    os.makedirs(args.out_dir, exist_ok=True)
    out, compare = os.path.join(args.out_dir, "output.mp4"), os.path.join(args.out_dir, "compare.mp4")
    with open(os.path.join(sample, "prompt.txt"), encoding="utf-8") as fh:
        prompt = fh.read().strip()
    run_one(run, args, os.path.join(sample, "static.mp4"), os.path.join(sample, "hands.mp4"),
            prompt, out, compare, os.path.join(sample, "ground_truth.mp4"), "demo")
    print(f"wrote {out} and {compare} (static | hands | output | ground truth)")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "tiny-model":
            cmd_tiny(args)
        elif args.command == "demo":
            cmd_demo(args)
        else:
            cmd_generate(args)
    except DWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DWMCancelled as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError:
        print("error: out of GPU memory. Fix: lower --width/--height or --batch, keep VAE tiling on, "
              "or use --precision bf16", file=sys.stderr)
        return 3
    return 0
