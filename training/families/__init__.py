"""What differs between model families in training, behind one interface the loop in ``train.py`` uses.

A family assembles the trainable model from a base folder, turns dataset items into its loss, writes
its release format and samples validation videos. The family is read from the base's configs
(``dwm.family.base_family``), never from names; a hub id or an incomplete folder is checked as a
CogVideoX-Fun base, whose preflight says what is missing.
"""

from __future__ import annotations

import os

from comfyui_dwm.family import base_family


def validation_run(generate, base, settings_cls, cfg, **as_trained):
    """Validation: frames -> one video ``[F, H, W, 3]`` with the weights being trained, as they are
    (``as_trained``: the family's keyword that leaves the transformer untouched)."""
    settings = settings_cls(steps=cfg.validation_inference_steps, guidance=cfg.validation_guidance,
                            seed=cfg.validation_seed)

    def run(static, hands, prompt):
        return generate(base, static, hands, prompt, settings=settings, width=cfg.width, height=cfg.height,
                        num_frames=cfg.num_frames, **as_trained)[0]

    return run


def family_name(model: str) -> str:
    configs = (os.path.join(model, "transformer", "config.json"), os.path.join(model, "config.json"))
    if os.path.isdir(model) and any(os.path.isfile(c) for c in configs):
        return base_family(model)
    return "cogvideox"


def for_model(model: str):
    """A fresh family object (``CogVideoXFamily`` or ``WanFamily``) for this base."""
    if family_name(model) == "wan":
        from .wan import WanFamily

        return WanFamily()
    from .cogvideox import CogVideoXFamily

    return CogVideoXFamily()
