"""``generate`` and ``demo``: check every input and output, then load the model once, only when a job needs
it (a rerun of a finished dataset loads nothing), and run each job through encode, sample, decode and
write, with a line per stage and the sampler's step bar.

A job is done only when all of its files exist (its videos and its comparison). A comparison missing
beside an existing video (a run killed between the two writes) is rebuilt from that video, no model needed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from . import cfg_parallel, sharding
from . import cli_checks as checks
from .atomic import clean_stale_temporaries
from .cli import parse_lora
from .cogvideox import checkpoint as cog_checkpoint
from .cogvideox import magcache as cog_magcache
from .cogvideox import model as cog_model
from .cogvideox import pipeline as cog_pipeline
from .cogvideox.sampler import SamplerSettings
from .compare import side_by_side
from .dataset import read_prompt
from .errors import DWMError
from .safety import SignalStop, write_error
from .video_io import probe_video, read_video, write_video
from .video_stream import stream_frames


def examples_dir() -> str:
    """The bundled sample: ``examples/`` of a checkout, or the installed ``comfyui_dwm.examples`` data."""
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    if os.path.isdir(checkout):
        return checkout
    spec = importlib.util.find_spec("comfyui_dwm.examples")
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else checkout
RANDOM_MODEL_NOTE = (
    "DWM demo on a tiny RANDOM-WEIGHT model: the pipeline runs end to end, but the output video is noise-like "
    "and means nothing. For real results train a DWM LoRA (see README, Training) and run: python -m comfyui_dwm "
    "generate --model <CogVideoX-Fun-5b-InP folder> --lora <your LoRA> ...\n(Its tokenizer spells words letter "
    "by letter, so a warning that the prompt was cut to 226 tokens is expected here; T5's own tokenizer fits "
    "this prompt.)")


class StepBar(tqdm):
    """tqdm without its monitor thread, whose start swallows a signal's exception and warns about it."""

    monitor_interval = 0


def check_stop(stop: SignalStop) -> None:
    """Raise a stop signal that library code swallowed (it raised inside a broad ``except Exception``)."""
    if stop.requested:
        raise stop.interrupted(f"{stop.name} received")


class Progress:
    """Stage lines on stderr (load, encode, sample, decode, write), the step bar, and a timing summary.

    The sampler calls ``before_step`` (its cancel hook) ahead of every step and ``on_step`` after it: the
    first call ends encoding and opens the bar, the last step starts decoding. So the bar never sits at 0
    while the VAE encodes, and it stays on screen when done. A stop signal raises where it lands; if library
    code swallowed that (a broad ``except Exception``), the next stage or step raises it again.
    """

    def __init__(self, steps: int, stop: SignalStop, decoding: str = "VAE", bar: bool = True):
        self.steps, self.stop, self.decoding, self.stream = steps, stop, decoding, sys.stderr
        self.show_bar = bar  # off in the processes after the first of a launch (dwm/sharding.py)
        self.times: dict[str, float] = {}
        self.current, self.since, self.bar = None, 0.0, None

    def stage(self, name: str, detail: str = "") -> None:
        check_stop(self.stop)
        self._end()
        self.current, self.since = name, time.monotonic()
        print(f"[{name}] {detail}".rstrip(), file=self.stream, flush=True)

    def _end(self) -> None:
        if self.current:
            self.times[self.current] = self.times.get(self.current, 0.0) + time.monotonic() - self.since
        self.current = None

    def before_step(self) -> bool:
        check_stop(self.stop)
        if self.bar is None:
            self.stage("sample", f"{self.steps} steps")
            self.bar = StepBar(total=self.steps, desc="sample", unit="step", leave=True, file=self.stream,
                            dynamic_ncols=True, disable=not self.show_bar)
        return False  # a stop raises (above), so the sampler's own cancel message never shows

    def on_step(self, i: int, n: int, _latents=None) -> None:
        self.bar.total = n
        self.bar.update(1)
        if i + 1 == n:
            self.close()
            self.stage("decode", self.decoding)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self) -> str:
        self._end()
        return f"{sum(self.times.values()):.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in self.times.items()) + ")"


Runner = Callable[[torch.Tensor, torch.Tensor, str, Progress], torch.Tensor]  # static, hands, prompt -> videos


class Model:
    """A family's loader, run on first use, so the load stage comes only when a job needs generating."""

    def __init__(self, loader: Callable[[], Runner], description: str):
        self.loader, self.description, self.run = loader, description, None

    def get(self, progress: Progress) -> Runner:
        if self.run is None:
            progress.stage("load", self.description)
            self.run = self.loader()
        return self.run


@dataclass
class Job:
    """One input and every file it produces."""

    label: str
    static: str
    hands: str
    prompt: str
    videos: list[str]
    compare: str | None = None
    gt: str | None = None

    @property
    def outputs(self) -> list[str]:
        return self.videos + ([self.compare] if self.compare else [])

    def done(self) -> bool:
        return all(os.path.isfile(path) for path in self.outputs)

    def only_compare_missing(self) -> bool:
        return bool(self.compare) and all(os.path.isfile(v) for v in self.videos) and not os.path.isfile(self.compare)


def output_paths(out: str, batch: int, seed: int) -> list[str]:
    if batch == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_seed{seed + i}{ext or '.mp4'}" for i in range(batch)]


def cogvideox_settings(args) -> SamplerSettings:
    return SamplerSettings(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler or "ddim",
                           seed=args.seed, batch=args.batch, dynamic_cfg=args.dynamic_cfg)


SPEED_DEFAULTS = {"memory_mode": "none", "cache": "none", "magcache_ratios": None, "compile": False,
                  "attention": "sdpa"}


def speed_options(args) -> dict:
    """The memory and speed flags (dwm/cli.py, _add_speed_args), defaults where a caller built ``args`` itself."""
    return {name: getattr(args, name, default) for name, default in SPEED_DEFAULTS.items()}


def cogvideox_loader(args, loras: list[tuple[str, float]], device: str, precision: str) -> Callable[[], Runner]:
    """Check the CogVideoX options now; the returned loader reads the LoRAs (small: a bad one fails fast),
    then the base."""
    if args.shift is not None:
        raise DWMError("--shift", "applies to Wan bases only",
                       "drop --shift for a CogVideoX-Fun base (choose --scheduler ddim or dpm instead)")
    settings = cogvideox_settings(args)
    speed = speed_options(args)
    cache_params = cog_magcache.cache_params(speed["cache"], speed["magcache_ratios"])

    def load() -> Runner:
        checkpoints = [(cog_checkpoint.load_checkpoint(path), strength) for path, strength in loras]
        base = cog_model.load_base(args.model, precision, device)
        cog_pipeline.prepare_base(base, device, speed["memory_mode"], speed["attention"], speed["compile"])
        cfg_parallel.attach(base, args.processes)

        def run(static_frames, hand_frames, prompt, progress):
            return cog_pipeline.generate(
                base, static_frames, hand_frames, prompt, args.negative_prompt or "", checkpoints, settings,
                args.width, args.height, args.num_frames or None, tiling=not args.no_tiling,
                scene_seed=args.scene_seed, on_step=progress.on_step, cancel=progress.before_step,
                cache=speed["cache"], cache_params=cache_params)
        return run
    return load


def prepare_model(args) -> Model:
    """Check the model, the LoRAs, the device and the family's options; load nothing."""
    loras = [parse_lora(spec) for spec in args.lora]
    family = checks.check_model(args.model)
    checks.check_loras(loras, args.model, family)
    device, precision = checks.runtime(args)
    if family == "wan":
        from .cli_wan import wan_loader

        changed = [name for name, default in SPEED_DEFAULTS.items() if speed_options(args)[name] != default]
        if changed:
            flag = "--" + changed[0].replace("_", "-")
            raise DWMError(flag, "applies to CogVideoX-Fun bases only", f"drop {flag} for a Wan base")

        loader = wan_loader(args, loras, device, precision)
    else:
        loader = cogvideox_loader(args, loras, device, precision)
    names = ", ".join(f"{path}:{strength:g}" for path, strength in loras) or "no LoRA"
    return Model(loader, f"{checks.FAMILY_NAMES[family]} base {args.model} + {names} ({precision} on {device})")


def _save(path: str, frames: torch.Tensor, fps: float) -> None:
    try:
        write_video(path, frames, fps)
    except OSError as err:  # a full disk or a folder gone read-only mid-run: one line, no trace
        raise write_error(err, "output", os.path.dirname(os.path.abspath(path))) from None


def read_input(args, path: str, name: str) -> tuple[torch.Tensor, float]:
    """Only what a run uses of an input video (at --fps, --num-frames, --width x --height), and its rate."""
    frames, rate = stream_frames(path, name, args.fps, args.num_frames or None, args.width, args.height)
    return frames, float(rate or args.fps or 8)


def _comparison(args, job: Job, static: torch.Tensor, hands: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    gt = read_input(args, job.gt, "ground-truth video")[0] if job.gt else None
    return side_by_side([static, hands, video, gt], height=args.height)


def run_job(model: Model, args, job: Job) -> str:
    """Generate one job and write its files (videos, then the comparison); the timing summary."""
    progress = Progress(args.steps, args.stop, "VAE in one piece" if args.no_tiling else "VAE, tiled",
                        bar=args.processes.main)
    try:
        run = model.get(progress)
        frames = f"{args.num_frames} frames" if args.num_frames else "all frames (4k+1)"
        progress.stage("encode", f"{job.label}: prompt and scene, {frames} at {args.width}x{args.height}")
        static, fps = read_input(args, job.static, "static video")
        hands, _ = read_input(args, job.hands, "hand video")
        videos = run(static, hands, job.prompt, progress)
        if not args.processes.writes:  # --cfg-parallel's second process: the first writes the same videos
            return progress.summary()
        progress.stage("write", ", ".join(job.outputs))
        for path, video in zip(job.videos, videos):
            _save(path, video, fps)
        if job.compare:
            _save(job.compare, _comparison(args, job, static, hands, videos[0]), fps)
    finally:
        progress.close()
    return progress.summary()


def rebuild_compare(args, job: Job) -> None:
    """The comparison of a job whose video exists, from that video (its run was killed before the write)."""
    print(f"[write] {job.compare} (from the existing {job.videos[0]})", file=sys.stderr, flush=True)
    video, fps = read_video(job.videos[0], "output video")
    static, hands = read_input(args, job.static, "static video")[0], read_input(args, job.hands, "hand video")[0]
    _save(job.compare, _comparison(args, job, static, hands, video), fps)


def _clean_outputs(jobs: list[Job], started: float) -> None:
    """Remove what a killed run left in the output folders (our temporaries older than this run)."""
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for job in jobs for p in job.outputs}):
        removed = clean_stale_temporaries(folder, before=started)
        if removed:
            print(f"[clean] removed {len(removed)} temporary file(s) a killed run left in {folder}", file=sys.stderr)


def single_job(args) -> Job:
    """The one-input job, every path checked."""
    for flag in ("--static", "--hands", "--gt"):
        path = getattr(args, flag[2:])
        if path:
            probe_video(path, flag)
    checks.check_output_file(args.out, "--out")
    if args.compare:
        checks.check_output_file(args.compare, "--compare")
    videos = output_paths(args.out, args.batch, args.seed)
    outputs = {f"--out ({os.path.basename(v)})" if args.batch > 1 else "--out": v for v in videos}
    checks.check_distinct({"--static": args.static, "--hands": args.hands, "--gt": args.gt},
                          {**outputs, "--compare": args.compare})
    return Job(os.path.basename(args.out), args.static, args.hands, args.prompt or "", videos, args.compare, args.gt)


def dataset_jobs(args) -> list[Job]:
    """A job per listed sample; the input videos of every job still to do are checked now."""
    checks.check_output_dir(args.out_dir, "--out-dir")
    jobs = []
    for sample in checks.read_samples(args):
        out = os.path.join(args.out_dir, sample.slug + ".mp4")
        gt = sample.video("video")
        job = Job(sample.name, sample.video("static"), sample.video("hands"), read_prompt(sample),
                  output_paths(out, args.batch, args.seed), os.path.join(args.out_dir, sample.slug + "_compare.mp4"),
                  gt if os.path.isfile(gt) else None)
        if not job.done():
            probe_video(job.static, f"sample {sample.name}: static video")
            probe_video(job.hands, f"sample {sample.name}: hand video")
        jobs.append(job)
    return jobs


def run_generate(args) -> None:
    checks.check_mode(args)
    checks.check_numbers(args)
    processes = sharding.start(args)  # one of one, unless started by accelerate launch
    model = prepare_model(args)
    jobs = dataset_jobs(args) if args.data_root else [single_job(args)]
    if processes.main:
        _clean_outputs(jobs, args.started)
    processes.wait()  # no process writes before the stale temporaries are gone
    mine = processes.mine(jobs)
    if not args.data_root:
        for _, job in mine:
            print(f"[done] {run_job(model, args, job)}", file=sys.stderr)
            if processes.writes:
                print(f"wrote {', '.join(job.outputs)}")
        return
    counts = {"generated": 0, "comparisons rebuilt": 0, "already done": 0}
    for k, job in mine:
        check_stop(args.stop)
        print(f"[sample {k + 1}/{len(jobs)}] {job.label}{processes.tally(jobs)}", file=sys.stderr, flush=True)
        if job.done():
            counts["already done"] += 1
        elif job.only_compare_missing():
            if processes.writes:
                rebuild_compare(args, job)
            counts["comparisons rebuilt"] += 1
        else:
            print(f"[done] {job.label} in {run_job(model, args, job)}", file=sys.stderr)
            counts["generated"] += 1
    print(f"{processes.summary(len(mine), len(jobs))} in {args.out_dir}: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()))


def run_demo(args) -> None:
    sample = os.path.join(examples_dir(), "00055")
    if not os.path.isfile(os.path.join(sample, "static.mp4")):
        raise DWMError("demo", f"the bundled sample {sample} is missing",
                       "reinstall the pack (pip install .) or run the demo from a clone of the repository")
    checks.check_numbers(args)
    sharding.single(args)
    if not args.model:
        from .cogvideox.tiny import default_tiny_model

        args.model = default_tiny_model()
        print(RANDOM_MODEL_NOTE)
    model = prepare_model(args)
    checks.check_output_dir(args.out_dir, "--out-dir")
    with open(os.path.join(sample, "prompt.txt"), encoding="utf-8") as fh:
        prompt = fh.read().strip()
    out, compare = os.path.join(args.out_dir, "output.mp4"), os.path.join(args.out_dir, "compare.mp4")
    job = Job("demo", os.path.join(sample, "static.mp4"), os.path.join(sample, "hands.mp4"), prompt,
              output_paths(out, args.batch, args.seed), compare, os.path.join(sample, "ground_truth.mp4"))
    _clean_outputs([job], args.started)
    print(f"[done] {run_job(model, args, job)}", file=sys.stderr)
    print(f"wrote {', '.join(job.videos)} and {compare} (static | hands | output | ground truth)")
