"""What the trainer needs from the scale-out engines (DeepSpeed ZeRO-2/3, FSDP) beyond DDP.

* accelerate picks the collective backend from the device it sees (nccl on CUDA) and has none for a
  CPU machine outside its own CPU mode, which never enables DeepSpeed: a DeepSpeed run on CPU would
  start every rank as a world of one. DeepSpeed names its own backend (its accelerator: nccl on GPUs,
  gloo on CPU), so that is the one handed to accelerate.
* The run's config is the one truth for gradient accumulation and clipping: DeepSpeed does both
  itself, so the plugin gets the run's values; an accelerate config that sets others is refused.
* Checkpoints keep the trainable tensors only (``exclude_frozen_parameters``), and DeepSpeed's own
  files are read with ``weights_only=True`` and an allowlist of the plain-data classes it stores,
  never with full unpickling (DeepSpeed's default).
* Exports gather the trainable tensors only (ZeRO-3 partitions them over the ranks).
"""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env

from comfyui_dwm.errors import DWMError

DEEPSPEED = "deepspeed"
# The classes DeepSpeed (0.19) pickles into its checkpoint files besides tensors and containers.
DEEPSPEED_GLOBALS = (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                     ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                     ("deepspeed.utils.tensor_fragment", "fragment_address"))
# accelerate launch exports the deepspeed_config of its yaml as these; the run's flag they must equal.
DEEPSPEED_ENV = (("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "gradient_accumulation_steps"),
                 ("ACCELERATE_GRADIENT_CLIPPING", "max_grad_norm"))


def uses_deepspeed() -> bool:
    """``accelerate launch`` with a DeepSpeed config sets this for every rank."""
    return parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")


def accelerator_kwargs(cfg) -> dict:
    """Extra ``Accelerator`` arguments for this run: under DeepSpeed its plugin with the run's
    accumulation and clipping, and DeepSpeed's collective backend; nothing otherwise."""
    if not uses_deepspeed():
        return {}
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.accelerator import get_accelerator

    for env, option in DEEPSPEED_ENV:
        given, ours = os.environ.get(env, "auto"), getattr(cfg, option)
        if given != "auto" and float(given) != float(ours):
            raise DWMError(option, f"the accelerate config's deepspeed_config sets {env[len('ACCELERATE_'):].lower()} "
                           f"{given}, this run {ours}", f"remove it from the accelerate config (the run's "
                           f"--{option} is used) or pass --{option} {given}")
    plugin = DeepSpeedPlugin(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                             gradient_clipping=cfg.max_grad_norm)
    return {"deepspeed_plugin": plugin,
            "kwargs_handlers": [InitProcessGroupKwargs(backend=get_accelerator().communication_backend_name())]}


def engine_name(accelerator) -> str:
    return {DistributedType.DEEPSPEED: DEEPSPEED, DistributedType.FSDP: "fsdp"}.get(accelerator.distributed_type,
                                                                                  "ddp")


def safe_globals(engine: str | None):
    """A context in which ``torch.load(weights_only=True)`` reads the files of ``engine``'s checkpoints."""
    if engine != DEEPSPEED:
        return contextlib.nullcontext()
    import importlib

    allowed = [getattr(importlib.import_module(module), name) for module, name in DEEPSPEED_GLOBALS]
    return torch.serialization.safe_globals(allowed)


def _weights_only_load(path, map_location=None):
    with safe_globals(DEEPSPEED):
        return torch.load(path, map_location=map_location, weights_only=True)


def prepared(accelerator, model) -> None:
    """After ``accelerator.prepare``: DeepSpeed reads its checkpoint files with ``weights_only=True``."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        model.checkpoint_engine.load = _weights_only_load


def save_kwargs(accelerator) -> dict:
    """``save_state`` arguments: DeepSpeed leaves the frozen base out of its model file."""
    return {"exclude_frozen_parameters": True} if accelerator.distributed_type == DistributedType.DEEPSPEED else {}


def load_kwargs(accelerator) -> dict:
    """``load_state`` arguments matching ``save_kwargs``: the model files hold the trainable tensors only."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return {"load_module_strict": False}
    return {"strict": False}


def trainable_state(accelerator, model, transformer: torch.nn.Module) -> dict:
    """The trainable tensors by state-dict name, full (not sharded), on every rank under DeepSpeed
    (a collective under ZeRO-3) and at least on the main process otherwise (FSDP gathers there)."""
    names = {n for n, p in transformer.named_parameters() if p.requires_grad}
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        state = accelerator.get_state_dict(model)
        return {k: v for k, v in state.items() if k in names}
    import deepspeed

    params = dict(transformer.named_parameters())
    with deepspeed.zero.GatheredParameters([params[n] for n in sorted(names)]):
        return {n: params[n].detach().cpu().clone() for n in sorted(names)}


def replicated_state(accelerator, model, transformer: torch.nn.Module) -> dict | None:
    """The trainable tensors as every rank holds them in full (to compare ranks); None under FSDP,
    where each rank holds only its shard."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return trainable_state(accelerator, model, transformer)
    return {n: p for n, p in transformer.named_parameters() if p.requires_grad}


def check_engine(accelerator) -> None:
    """Refuse a run that would not be what its accelerate config asks for: accelerate enables FSDP only
    on GPU-like devices (on a CPU machine an FSDP config runs as plain DDP), and a launcher whose ranks
    did not join one process group trains the same output folder several times over."""
    wanted = [name for name, flag in (("fsdp", "ACCELERATE_USE_FSDP"), (DEEPSPEED, "ACCELERATE_USE_DEEPSPEED"))
              if parse_flag_from_env(flag)]
    actual = engine_name(accelerator)
    if wanted and wanted[0] != actual:
        raise DWMError("accelerate config", f"it asks for {wanted[0]}, but accelerate runs {actual} "
                       f"({accelerator.distributed_type.value}) on this machine (accelerate enables FSDP on GPUs only)",
                       "use a DDP or DeepSpeed config on a machine without GPUs (docs/training.md, launch modes)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise DWMError("accelerate config", f"{world} processes were launched but accelerate sees "
                       f"{accelerator.num_processes} ({accelerator.distributed_type.value})",
                       "on a machine without GPUs launch with ACCELERATE_USE_CPU=1 (DDP over gloo) or a DeepSpeed config")


def validation_samples(accelerator, samples: list) -> list:
    """The validation samples this engine can sample on the main process alone: none where every rank
    holds only a shard of the weights (ZeRO-3, FSDP), which one process cannot run by itself."""
    stage = getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) if uses_deepspeed() else 0
    if samples and (stage == 3 or accelerator.distributed_type == DistributedType.FSDP):
        accelerator.print(f"validation skipped: under {engine_name(accelerator)} (ZeRO-3/FSDP) every rank holds a "
                          "shard of the weights; generate from the exported checkpoints instead")
        return []
    return samples


@contextlib.contextmanager
def loading(accelerator):
    """Load the base inside this: while accelerate's DeepSpeed config is registered with transformers,
    transformers loads its models (the text encoders) ZeRO-3-partitioned, but only the transformer
    goes through DeepSpeed; the encoders must load whole, as under DDP."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        accelerator.state.deepspeed_plugin.set_deepspeed_weakref()
