"""Training configuration: one flat dataclass, filled from a YAML file, then from ``--key value`` flags.

Defaults are the reference recipe (docs/training.md lists where each value comes from), so a run with
only the data paths set trains what the paper trained.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import yaml

from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import check_num_frames, check_size

# diffusers' get_scheduler names that need nothing beyond warmup steps and cycles
LR_SCHEDULERS = ("cosine_with_restarts", "cosine", "linear", "polynomial", "constant", "constant_with_warmup")
TRACKERS = ("tensorboard", "none", "all", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "aim", "dvclive",
            "swanlab")  # accelerate's LoggerType, plus none


@dataclass
class TrainConfig:
    # data and model
    model: str = "alibaba-pai/CogVideoX-Fun-V1.1-5b-InP"
    data_root: str = "data"
    train_list: str = "train.txt"
    validation_list: str = ""
    output_dir: str = "outputs/dwm_cogvideox_5b_lora"
    width: int = 720
    height: int = 480
    num_frames: int = 49
    dataloader_num_workers: int = 2
    # recipe
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_target_modules: list = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.01
    lr_scheduler: str = "cosine_with_restarts"
    lr_num_cycles: int = 1
    lr_warmup_steps: int = 100
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    allow_tf32: bool = True
    train_batch_size: int = 7
    gradient_accumulation_steps: int = 2
    max_train_steps: int = 15000
    seed: int = 42
    prompt_dropout: float = 0.0
    hand_dropout: float = 0.0
    # checkpoints, validation, logging
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    resume: str = ""
    validation_steps: int = 500
    num_validation_videos: int = 2
    validation_inference_steps: int = 50
    validation_guidance: float = 6.0
    validation_seed: int = 42
    validation_fps: float = 8.0
    report_to: str = "tensorboard"
    dreamsim_cache: str = ""

    def check(self) -> None:
        """Catch values that would only fail hours into a run."""
        check_num_frames(self.num_frames)
        check_size(self.width, self.height)
        for name in ("prompt_dropout", "hand_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise DWMError(name, f"{getattr(self, name)} is not a probability", "use a value in [0, 1]")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise DWMError("mixed_precision", repr(self.mixed_precision), "use bf16 (the recipe), fp16 or no")
        for name in ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                     "validation_steps", "validation_inference_steps", "lora_rank", "lr_num_cycles"):
            if getattr(self, name) < 1:
                raise DWMError(name, f"{getattr(self, name)} is below 1", "use a positive value")
        for name in ("lr_warmup_steps", "dataloader_num_workers", "num_validation_videos"):
            if getattr(self, name) < 0:
                raise DWMError(name, f"{getattr(self, name)} is negative", "use 0 or more")
        for name in ("learning_rate", "lora_alpha", "adam_epsilon", "max_grad_norm", "validation_fps"):
            if not getattr(self, name) > 0:
                raise DWMError(name, f"{getattr(self, name)} is not above 0", "use a positive value")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise DWMError("lr_scheduler", repr(self.lr_scheduler), f"use one of {', '.join(LR_SCHEDULERS)}")
        if self.report_to and self.report_to not in TRACKERS:
            raise DWMError("report_to", repr(self.report_to), f"use one of {', '.join(TRACKERS)}")


def _parse_bool(text: str) -> bool:
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_list(text) -> list:
    return [x.strip() for x in text.split(",") if x.strip()] if isinstance(text, str) else list(text)


PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool, "list": _parse_list}


def _coerce(name: str, kind: str, value):
    try:
        return PARSERS[kind](value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise DWMError(name, f"cannot read {value!r} as {kind}", f"give a {kind} value") from err


def load_config(path: str | None, overrides: dict | None = None) -> TrainConfig:
    """YAML file (flat keys, or one level of sections which are merged) then overrides, then checks."""
    values: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise DWMError("config", f"cannot read {path} ({str(err).splitlines()[0]})",
                           "pass a YAML file such as training/configs/dwm_cogvideox_5b_lora.yaml") from None
        if not isinstance(raw, dict):
            raise DWMError("config", f"{path} holds a {type(raw).__name__}, not key: value lines",
                           "write one `key: value` per line (or one level of sections)")
        for key, value in raw.items():
            values.update(value if isinstance(value, dict) else {key: value})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    kinds = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise DWMError("config", f"unknown keys {unknown}", f"valid keys: {', '.join(kinds)}")
    cfg = TrainConfig(**{k: _coerce(k, kinds[k], v) for k, v in values.items()})
    cfg.check()
    return cfg


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """``--config FILE`` plus one ``--<key> VALUE`` flag per config field."""
    parser = argparse.ArgumentParser(prog="accelerate launch -m comfyui_dwm.training.train", allow_abbrev=False,
                                     description="Train a DWM LoRA (see docs/training.md)")
    parser.add_argument("--config", default=None, help="YAML file with config keys")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else None
        # Dashes as in `python -m comfyui_dwm` (--data-root); the config's own key spelling is accepted too.
        flags = dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"])
        parser.add_argument(*flags, dest=f.name, default=None,
                            help=f"({f.type}) overrides the config file (default {default!r})")
    args = vars(parser.parse_args(argv))
    return load_config(args.pop("config"), args)
