"""A handle's memory mode under the host's memory management: who moves which component, and where.

ONE MOVER per component. The host's ModelPatchers move the components the engine leaves alone; under
group offload (``offload``, ``fp8+offload``, ``24gb`` on a card too small for it) diffusers' hooks move the
transformer (and, under ``24gb`` on a GPU, T5), and their patchers load to the CPU only (host.patchers):
the host still evicts a device copy made for another handle, but never moves them itself.

The engine applies the mode with ``place=False``: it hooks what it moves and leaves every other
component where the host put it, so what the host tracks stays true. It runs only where a node needs
it: the sampler (transformer) and text encode when T5 is or was offloaded by the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from comfyui_dwm.cogvideox import memory
from comfyui_dwm.cogvideox.memory import MemoryPlan

from .. import host
from .sockets import ModelHandle


def engine_moved(plan: MemoryPlan) -> frozenset:
    """The components the engine's hooks move under ``plan``."""
    return frozenset(name for name, on in (("transformer", plan.offload), ("text_encoder", plan.text_offload)) if on)


def _apply(model: ModelHandle, device: torch.device, loras: bool) -> None:
    base = model.base
    if model.memory_mode == "none":
        memory.release(base)  # another handle's mode on this shared base
    else:
        memory.apply_memory_mode(base, model.memory_mode, device, place=False)
    if loras:
        memory.activate(base, model.loras)


@contextlib.contextmanager
def placed(model: ModelHandle, *names: str, apply: bool = False, loras: bool = False) -> Iterator[MemoryPlan]:
    """Load ``names`` through the host (and, with ``apply``, put the base in the handle's memory mode,
    with its LoRAs when ``loras``) for the body; yields the mode's plan. Out of memory in the body ends
    in the one message that names the memory option to turn on."""
    base = model.base
    try:
        device = host.compute_device(model.device)
        plan = memory.plan_for(model.memory_mode, device, base.transformer)
        moved = engine_moved(plan)
        state = memory.memory_state(base)
        if "text_encoder" in names and (plan.text_offload or (state and state.plan.text_offload)):
            apply = True  # T5's hooks go on (or off) before it encodes
        patchers = model.loaded.patchers_for(model.device, moved)
        host.load(patchers, *dict.fromkeys(names + tuple(sorted(moved))))
        if apply:
            _apply(model, device, loras)
        yield plan
    except torch.OutOfMemoryError as err:
        raise memory.out_of_memory(base, err) from None
    finally:
        host.free_cache()
