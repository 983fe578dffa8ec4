"""peft adapter bookkeeping shared by both families' LoRA code.

A base keeps ``adapters``: {id(checkpoint): (adapter name, checkpoint)}. Installing is
family-specific (key names, alpha); weighting, switching off and evicting are the same.
"""

from __future__ import annotations

MAX_LOADED = 8  # adapters kept installed; older unused ones are deleted beyond this


def evict(base, keep: set[str]) -> None:
    unused = [key for key, (name, _) in base.adapters.items() if name not in keep]
    for key in unused[: max(0, len(base.adapters) - MAX_LOADED)]:
        base.transformer.delete_adapters(base.adapters.pop(key)[0])


def weigh_adapters(base, weights: dict[str, float]) -> None:
    """Run the transformer with exactly these adapters at these weights (empty = no LoRA)."""
    transformer = base.transformer
    if weights:
        transformer.enable_lora()
        transformer.set_adapters(list(weights), list(weights.values()))
    elif base.adapters:
        transformer.disable_lora()
    evict(base, set(weights))
