"""Apply DWM LoRAs at a strength, stacked, without reloading the model.

A DWM checkpoint has two parts:

* the attention LoRA, installed as a peft adapter through diffusers' ``load_lora_adapter`` and
  weighted with ``set_adapters`` (strength scales its delta: 0 = off, 1 = as trained);
* the full widened ``patch_embed.proj``, which no adapter API covers. We blend it linearly with the
  same strength: ``W = W_base + sum_i s_i * (W_i - W_base)``, where ``W_base`` is the base projection
  with zero hand channels. Strength 0 gives the base model back exactly (the hand video is then
  ignored); 1 gives the trained projection; values in between scale both the change to the base
  channels and the weight of the hand channels.

A full fine-tune (reference ``transformer/`` folder) has no adapter: every one of its tensors is
blended the same way, against a CPU copy of the base tensor kept on first use (``base.base_weights``).

Adapters stay loaded once per checkpoint object, so a strength sweep only re-weights them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapters import weigh_adapters
from .checkpoint import DWMCheckpoint, check_fits, full_parameter
from .model import DWMBase


def _ensure_adapter(base: DWMBase, ckpt: DWMCheckpoint) -> str | None:
    entry = base.adapters.get(id(ckpt))
    if entry is not None:
        return entry[0]
    if ckpt.is_full and any(c is ckpt for c, _ in base.full_blend):
        return None  # checked when it was first blended
    check_fits(ckpt, base.transformer, base.version)
    if ckpt.is_full:  # no adapter: its weights are blended by _blend_full
        return None
    name = f"dwm_{len(base.adapters)}_{id(ckpt):x}"
    config = {"r": ckpt.rank, "lora_alpha": ckpt.alpha, "target_modules": ckpt.target_modules}
    lora = {k: v.to(base.dtype) for k, v in ckpt.lora.items()}
    base.transformer.load_lora_adapter(lora, prefix=None, adapter_name=name, metadata=config)
    # Holding ckpt in the entry keeps its id unique while the adapter is installed.
    base.adapters[id(ckpt)] = (name, ckpt)
    return name


def _blend(target: torch.Tensor, base_value: torch.Tensor, active: list) -> None:
    """target = base + sum s * (w - base) over the (w, s) in ``active``, computed in fp32."""
    start = base_value.float()
    active = [(w.float(), s) for w, s in active]
    if len(active) == 1:  # lerp is exact at both ends: strength 1 gives the checkpoint bit for bit
        value = torch.lerp(start, *active[0])
    else:
        value = start + sum((s * (w - start) for w, s in active), torch.zeros_like(start))
    with torch.no_grad():
        target.copy_(value.to(target.dtype))


def _blend_patch_embed(base: DWMBase, loras: Sequence[tuple[DWMCheckpoint, float]]) -> None:
    proj = base.transformer.patch_embed.proj
    for part, base_value in base.base_proj.items():
        _blend(getattr(proj, part), base_value,
               [(c.patch_embed[part], s) for c, s in loras if s and part in c.patch_embed])


def _blend_full(base: DWMBase, loras: Sequence[tuple[DWMCheckpoint, float]]) -> None:
    full = [(c, float(s)) for c, s in loras if c.is_full]
    if len(full) == len(base.full_blend) and all(c is d and s == t for (c, s), (d, t) in zip(full, base.full_blend)):
        return  # the same fine-tunes at the same strengths are blended already: a 5B rewrite saved
    for key in set(base.base_weights).union(*(c.weights for c, _ in full)):
        target = full_parameter(base.transformer, key)
        if key not in base.base_weights:
            base.base_weights[key] = target.detach().to("cpu", copy=True)
        _blend(target, base.base_weights[key], [(c.weights[key], s) for c, s in full if s and key in c.weights])
    base.full_blend = full


def activate(base: DWMBase, loras: Sequence[tuple[DWMCheckpoint, float]]) -> None:
    """Make the transformer compute the base plus each LoRA at its strength (empty = base)."""
    weights: dict[str, float] = {}
    for ckpt, strength in loras:
        name = _ensure_adapter(base, ckpt)
        if name is not None:
            weights[name] = weights.get(name, 0.0) + float(strength)
    weigh_adapters(base, weights)
    _blend_patch_embed(base, loras)
    _blend_full(base, loras)
