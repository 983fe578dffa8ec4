"""What ``python -m comfyui_dwm`` checks before it loads a model: the flags that belong together, the numbers
(by the rules of dwm/frames.py), the model and LoRA paths, every input video and every output folder.

Each problem is one :class:`DWMError` named by its flag, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import errno
import math
import os

from .dataset import Sample, read_list
from .errors import DWMError
from .family import base_family, lora_family
from .frames import check_num_frames, check_size
from .safety import check_writable, disk_full, write_error

FAMILY_NAMES = {"cogvideox": "CogVideoX-Fun", "wan": "Wan2.1-Fun"}
ONE_INPUT = ("--static", "--hands", "--prompt", "--out", "--compare", "--gt")
DATASET = ("--list", "--out-dir")
MAX_STEPS = 1000  # the training timesteps of both families' schedulers


def _flagged(err: DWMError, flag: str | None = None) -> DWMError:
    """The same error under the command-line flag's name (``num_frames`` -> ``--num-frames``)."""
    return DWMError(flag or "--" + err.what.replace("_", "-"), err.problem, err.fix)


def _given(args, flag: str):
    return getattr(args, flag[2:].replace("-", "_"))


def check_mode(args) -> None:
    """One input (--static, --hands, --out) or a dataset (--data-root, --list, --out-dir), not a mix."""
    if args.data_root:
        stray = [flag for flag in ONE_INPUT if _given(args, flag) is not None]
        if stray:
            raise DWMError(stray[0], "is for one input, not for a --data-root run",
                           "drop it (the dataset gives each sample's videos and prompt), or drop --data-root")
        for flag, what in (("--list", "the sample ids to run"), ("--out-dir", "the output folder")):
            if not _given(args, flag):
                raise DWMError(flag, "missing", f"pass {flag} with {what} for --data-root runs")
        if not os.path.isdir(args.data_root):
            raise DWMError("--data-root", f"{args.data_root} is not a folder", "pass the dataset's root folder")
        return
    stray = [flag for flag in DATASET if _given(args, flag)]
    if stray:
        raise DWMError(stray[0], "needs --data-root", "pass --data-root too, or use --static/--hands/--out")
    missing = [flag for flag in ("--static", "--hands", "--out") if not _given(args, flag)]
    if len(missing) == 3:
        raise DWMError("generate", "no input given", "pass --static, --hands and --out, or --data-root and --list")
    if missing:
        raise DWMError(missing[0], "missing", "pass --static, --hands and --out for one input")
    if args.gt and not args.compare:
        raise DWMError("--gt", "is shown only in the comparison video", "add --compare FILE.mp4, or drop --gt")


def check_numbers(args) -> None:
    for flag, value in (("--steps", args.steps), ("--batch", args.batch)):
        if value < 1:
            raise DWMError(flag, f"{value} is below 1", f"use {flag} 1 or more")
    if args.steps > MAX_STEPS:
        raise DWMError("--steps", f"{args.steps} is more than the {MAX_STEPS} timesteps the schedulers were "
                       "trained with", f"use at most {MAX_STEPS} (50 is the paper's)")
    for flag, value in (("--guidance", args.guidance), ("--shift", args.shift)):
        if value is not None and not math.isfinite(value):
            raise DWMError(flag, f"{value} is not a number", f"use a finite {flag}")
    if not (math.isfinite(args.fps) and args.fps >= 0):
        raise DWMError("--fps", f"{args.fps} is not a frame rate", "use 8 (DWM's rate), or 0 to keep the videos' own")
    if args.shift is not None and args.shift <= 0:
        raise DWMError("--shift", f"{args.shift} is not positive", "use a positive shift (5 is the reference's)")
    try:
        check_size(args.width, args.height)
        if args.num_frames != 0:  # 0 = the videos' own length
            check_num_frames(args.num_frames)
    except DWMError as err:
        raise _flagged(err) from None


def runtime(args) -> tuple[str, str]:
    """The device and precision to run on; a device this machine lacks is refused now."""
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        where = torch.device(device)
    except RuntimeError:
        raise DWMError("--device", f"{device!r} is not a device", "use auto, cpu, cuda or cuda:N") from None
    if where.type == "cuda" and (not torch.cuda.is_available() or (where.index or 0) >= torch.cuda.device_count()):
        raise DWMError("--device", f"{device} is not available on this machine (torch {torch.__version__}, "
                       f"{torch.cuda.device_count()} CUDA devices)",
                       "use --device cpu, or install the CUDA build of torch for your GPU")
    precision = args.precision
    if precision == "auto":
        precision = "fp32" if where.type == "cpu" else "bf16"
    return device, precision


def check_model(model: str) -> str:
    """The base's family from its configs; a hub id (owner/name) is a CogVideoX-Fun repository."""
    if os.path.isdir(model):
        try:
            family = base_family(model)
            if family == "wan":  # every file a Wan run loads, from headers: before the 14B transformer
                from .wan.model import check_wan_folder

                check_wan_folder(model)
            return family
        except DWMError as err:
            raise _flagged(err, "--model") from None
    if os.path.exists(model) or model.count("/") != 1:
        raise DWMError("--model", f"{model!r} is neither a model folder nor a hub id (owner/name)",
                       "pass the folder of a CogVideoX-Fun InP (diffusers layout) or Wan2.1-Fun InP "
                       "(VideoX-Fun layout) model")
    return "cogvideox"


def check_loras(loras: list[tuple[str, float]], model: str, family: str) -> None:
    """Each LoRA exists, holds DWM LoRA tensors (read from headers) and fits the base's family."""
    for path, strength in loras:
        if not os.path.exists(path):
            raise DWMError("--lora", f"{path} does not exist",
                           "give a DWM LoRA file or release folder, optionally followed by :STRENGTH")
        if not math.isfinite(strength):
            raise DWMError("--lora", f"strength {strength} of {path} is not a number", "use e.g. PATH:1.0")
        try:
            other = lora_family(path)
        except DWMError as err:
            raise _flagged(err, "--lora") from None
        if other != family:
            raise DWMError("--lora", f"{path} is a DWM LoRA for {FAMILY_NAMES[other]}, but --model {model} is a "
                           f"{FAMILY_NAMES[family]} base",
                           f"pass a DWM LoRA trained on {FAMILY_NAMES[family]}, or the {FAMILY_NAMES[other]} InP "
                           "base that LoRA was trained on")


def check_output_dir(folder: str, flag: str) -> str:
    """Create ``folder`` if needed; refuse it when it cannot be written or its disk is full."""
    check_writable(folder, flag)
    if disk_full(folder):
        raise write_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), flag, folder)
    return folder


def check_output_file(path: str, flag: str) -> str:
    """An .mp4 path in an existing, writable folder (a missing folder is a typo until proven otherwise)."""
    if os.path.isdir(path):
        raise DWMError(flag, f"{path} is a folder", "give a file name ending in .mp4")
    if os.path.splitext(path)[1].lower() != ".mp4":
        raise DWMError(flag, f"{path} does not end in .mp4", "videos are written as H.264 .mp4: name it so")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        problem = "is a file" if os.path.exists(folder) else "does not exist"
        raise DWMError(flag, f"the folder {folder} {problem}", f"create the folder first (mkdir -p {folder}) "
                       "or fix the path")
    return check_output_dir(folder, flag)


def check_distinct(inputs: dict[str, str | None], outputs: dict[str, str | None]) -> None:
    """No output overwrites an input or another output."""
    seen: dict[str, str] = {}
    for flag, path in outputs.items():
        real = os.path.realpath(path) if path else None
        if real in seen:
            raise DWMError(flag, f"{path} is also {seen[real]}", "give each output its own file name")
        if real:
            seen[real] = flag
    for flag, path in inputs.items():
        if path and os.path.realpath(path) in seen:
            out = seen[os.path.realpath(path)]
            raise DWMError(out, f"{path} is the {flag} input, which it would overwrite", f"write {out} elsewhere")


def read_samples(args) -> list[Sample]:
    """The samples of --list; an unreadable list is one line, not a trace."""
    if os.path.isdir(args.list):
        raise DWMError("--list", f"{args.list} is a folder", "pass a text file with one sample id or video path a line")
    try:
        return read_list(args.data_root, args.list)
    except DWMError as err:
        raise _flagged(err, "--list") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise DWMError("--list", f"cannot read {args.list} ({reason})",
                       "pass a readable UTF-8 text file with one sample id or video path per line") from None
