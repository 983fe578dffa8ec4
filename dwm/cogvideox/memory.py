"""Memory modes of a CogVideoX DWM base: fp8 weight storage, block-level group offload, VAE tiling.

* ``fp8``: diffusers' layerwise casting stores the transformer's Linear/Conv weights in float8_e4m3fn and
  upcasts each layer to the compute dtype for its forward (5B: 10.4 -> 5.9 GiB). The patch embedding,
  norms and the LoRA layers stay in the compute dtype (diffusers' default skip patterns).
  peft creates a new adapter in its base layer's dtype, which under casting is fp8 (the forward then
  fails, and the LoRA would be quantised): :func:`activate` therefore lifts the casting while a new
  adapter (or a full fine-tune) goes in, then casts again. fp8 -> bf16/fp32 -> fp8 is exact, so the base
  weights lose nothing more than the first cast did.
* ``offload``: diffusers' block-level group offloading keeps the weights on the CPU and moves one
  transformer block at a time to the device (on CUDA a side stream prefetches the next block).
  ONE MOVER: while it is on, only these hooks move the transformer; ``transformer.to()`` by anyone else
  (a host's model manager included) would fight them, so :func:`apply_memory_mode` refuses a transformer
  that accelerate already dispatches, and the sampler asks :func:`execution_device` where to compute.
* VAE tiling and slicing: bound the VAE's peak by the tile size (see scene.configure_vae).
* ``24gb``: fp8 + VAE tiling and slicing, the T5 encoder offloaded between prompts on a GPU, and the
  transformer offloaded only when the card cannot hold its fp8 weights plus ``HEADROOM``.

The state lives on the transformer (``_dwm_memory``), so a mode survives as long as the model does and
:func:`apply_memory_mode` is idempotent: calling it again re-applies only what changed (mode, device,
installed adapters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import DWMError
from . import lora
from .checkpoint import DWMCheckpoint
from .model import DWMBase

MEMORY_MODES = ("none", "fp8", "offload", "fp8+offload", "24gb")
FP8 = torch.float8_e4m3fn
HEADROOM = 12 * 2**30  # bytes: activations at 49x720x480 with CFG + a transient T5 (estimate, not measured)
GROUP_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
CAST_HOOK = "layerwise_casting"
MODE_HELP = {
    "none": "everything on the device in the load precision",
    "fp8": "transformer weights stored in fp8, computed in the load precision (about half the memory)",
    "offload": "transformer weights on the CPU, one block at a time on the device (slower)",
    "fp8+offload": "both: the least device memory",
    "24gb": "fp8 + VAE tiling + T5 offloaded between prompts; offload too when the card is smaller",
}


@dataclass(frozen=True)
class MemoryPlan:
    fp8: bool = False
    offload: bool = False
    vae_tiling: bool = False  # forces VAE tiling and slicing on
    text_offload: bool = False


@dataclass(frozen=True)
class MemoryState:
    mode: str
    plan: MemoryPlan
    device: torch.device
    compute_dtype: torch.dtype
    adapters: tuple
    place: bool = True  # False: a host's model manager moves what no hook moves


def _fp8_bytes(transformer) -> int:
    return sum(p.numel() for p in transformer.parameters())


def plan_for(mode: str, device: torch.device, transformer) -> MemoryPlan:
    """What a mode turns on for this transformer on this device."""
    if mode not in MEMORY_MODES:
        raise DWMError("memory mode", f"unknown memory mode {mode!r}", f"choose one of {', '.join(MEMORY_MODES)}")
    if mode != "24gb":
        return MemoryPlan(fp8="fp8" in mode, offload="offload" in mode)
    on_gpu = device.type == "cuda"
    small = on_gpu and torch.cuda.get_device_properties(device).total_memory < _fp8_bytes(transformer) + HEADROOM
    return MemoryPlan(fp8=True, offload=small, vae_tiling=True, text_offload=on_gpu)


def memory_state(base: DWMBase) -> MemoryState | None:
    return getattr(base.transformer, "_dwm_memory", None)


def _adapter_names(transformer) -> tuple:
    return tuple(sorted(getattr(transformer, "peft_config", {}) or {}))


def _remove_hooks(module, names: Sequence[str]) -> None:
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(module)
    for name in names:
        registry.remove_hook(name, recurse=True)


def _set_storage(transformer, dtype: torch.dtype) -> bool:
    """Store every layer under a casting hook in ``dtype``; False when there is no such hook yet.

    diffusers refuses to remove a casting hook (it assumes the weights are lost); ours are not (fp8 ->
    compute is exact), so lifting fp8 sets the hooks' storage to the compute dtype: they then cast nothing.
    """
    found = False
    for module in transformer.modules():
        hook = getattr(module, "_diffusers_hook", None) and module._diffusers_hook.get_hook(CAST_HOOK)
        if hook:
            hook.storage_dtype, found = dtype, True
            module.to(dtype=dtype)
    return found


def release(base: DWMBase) -> None:
    """Undo the current mode: offload hooks removed, fp8 weights back in the compute dtype (exact)."""
    state = memory_state(base)
    if state is None:
        return
    transformer = base.transformer
    if state.plan.offload:
        _remove_hooks(transformer, GROUP_HOOKS)
    if state.plan.text_offload:
        _remove_hooks(base.text_encoder, GROUP_HOOKS)
    if state.plan.fp8:
        _set_storage(transformer, state.compute_dtype)
        for param in transformer.parameters():
            if param.dtype == FP8:  # LoRA weights a direct lora.activate made fp8 included
                param.data = param.data.to(state.compute_dtype)
    transformer._dwm_memory = None


def _check_one_mover(transformer) -> None:
    movers = [name for name, m in transformer.named_modules() if hasattr(m, "_hf_hook")]
    if movers:
        raise DWMError("memory mode", f"accelerate already moves this transformer ({movers[0] or 'the model'})",
                       "load the base without device_map/cpu offload, or use memory mode 'none' or 'fp8'")


def apply_memory_mode(base: DWMBase, mode: str, device, place: bool = True) -> None:
    """Put ``base`` in memory mode ``mode`` (one of :data:`MEMORY_MODES`) for compute on ``device``.

    Idempotent: a repeat with the same mode, device and adapters does nothing; after adapters change it
    re-applies the casting so new LoRA layers compute in full precision (prefer :func:`activate`, which
    also keeps them unquantised). ``place=False`` leaves the components no hook moves where they are,
    for a host whose model manager moves them (ComfyUI): one mover per component.
    """
    device = torch.device(device)
    transformer = base.transformer
    plan = plan_for(mode, device, transformer)
    state = memory_state(base)
    if state and (state.plan, state.device, state.adapters, state.place) == \
            (plan, device, _adapter_names(transformer), place):
        return
    release(base)
    compute = base.dtype
    if plan.fp8 and not _set_storage(transformer, FP8):
        transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=compute)
    if plan.offload:
        _check_one_mover(transformer)
        transformer.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1,
                                         use_stream=device.type == "cuda")
    elif place:
        transformer.to(device)
    if plan.text_offload:  # T5 has no top-level block list: it moves as one group, only for its forward
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(base.text_encoder, device, offload_type="block_level", num_blocks_per_group=1)
    elif place:
        base.text_encoder.to(device)
    transformer._dwm_memory = MemoryState(mode, plan, device, compute, _adapter_names(transformer), place)


def _changes_weights(base: DWMBase, loras: Sequence[tuple[DWMCheckpoint, float]]) -> bool:
    """Whether activating ``loras`` installs an adapter or rewrites full-fine-tune weights."""
    new_adapter = any(not c.is_full and id(c) not in base.adapters for c, _ in loras)
    return new_adapter or bool(base.full_blend) or any(c.is_full for c, _ in loras)


def activate(base: DWMBase, loras: Sequence[tuple[DWMCheckpoint, float]]) -> None:
    """``lora.activate`` under the base's memory mode: new adapters go in at full precision, then the
    mode is re-applied (a strength change alone touches no hook)."""
    state = memory_state(base)
    if state is not None and state.plan.fp8 and _changes_weights(base, loras):
        release(base)
    lora.activate(base, loras)
    if state is not None:
        apply_memory_mode(base, state.mode, state.device, state.place)


def execution_device(base: DWMBase) -> torch.device:
    """Where the transformer computes: the onload device under offload (its weights sit on the CPU)."""
    state = memory_state(base)
    return state.device if state is not None and state.plan.offload else base.transformer.device


def forces_vae_tiling(base: DWMBase) -> bool:
    state = memory_state(base)
    return state is not None and state.plan.vae_tiling


def out_of_memory(base: DWMBase, err: BaseException) -> DWMError:
    """The one message for an out-of-memory error: the next memory option to turn on."""
    state = memory_state(base)
    mode = state.mode if state else "none"
    offloaded = state is not None and state.plan.offload
    if not offloaded and mode in ("none", "fp8", "offload"):
        fix = ("use memory mode '24gb' (--memory-mode 24gb, or memory_mode on the loader node): fp8 weights, "
               "VAE tiling, offload where the card needs it")
    elif not offloaded:
        fix = "use memory mode 'fp8+offload' (--memory-mode fp8+offload), and keep VAE tiling on"
    else:
        fix = "lower the width/height or the batch, or generate fewer frames"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DWMError("memory", f"out of memory in memory mode '{mode}' ({first[:120]})", fix)
