"""The sampler node: LoRAs on, denoise with one progress update (and preview) per step."""

from __future__ import annotations

from dwm.cogvideox.lora import activate
from dwm.preview import latents_to_rgb
from dwm.cogvideox.sampler import SCHEDULERS, SamplerSettings, sample
from PIL import Image

from .. import host
from .conditioning import MAX_SEED
from .sockets import CATEGORY, CONDITIONING, LATENTS, MODEL, SCENE, Latents


def _cancel() -> bool:
    """The engine's cancel check: the host raises its own interrupt, which it reports as such."""
    host.check_interrupted()
    return False


def _step_reporter(total: int, scene):
    """``on_step`` for the engine: the host's progress bar plus a preview of item 0's middle frame."""
    bar = host.progress_bar(total)
    size = host.preview_size()

    def on_step(i, steps, latents):
        if bar is None:
            return
        preview = None
        if size:
            rgb = latents_to_rgb(latents[0, latents.shape[1] // 2], scene.preview)
            preview = ("JPEG", Image.fromarray(rgb.numpy()), size)
        bar.update_absolute(i + 1, steps, preview)

    return on_step


class DWMSampler:
    """Denoise DWM latents: one video per seed (seed, seed+1, ... for a batch)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "conditioning": (CONDITIONING,),
            "scene": (SCENE,),
            "steps": ("INT", {"default": 50, "min": 1, "max": 500}),
            "cfg": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "Guidance scale; 1 = no guidance (faster, ignores the negative)."}),
            "scheduler": (list(SCHEDULERS), {"default": "ddim"}),
            "seed": ("INT", {"default": 42, "min": 0, "max": MAX_SEED, "control_after_generate": True}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Videos per run, with seeds seed, seed+1, ..."}),
            "dynamic_cfg": ("BOOLEAN", {"default": False,
                                        "tooltip": "CogVideoX's cosine guidance ramp."}),
        }}

    RETURN_TYPES = (LATENTS,)
    RETURN_NAMES = ("latents",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, conditioning, scene, steps, cfg, scheduler, seed, batch_size, dynamic_cfg):
        settings = SamplerSettings(steps=steps, guidance=cfg, scheduler=scheduler, seed=seed,
                                   batch=batch_size, dynamic_cfg=dynamic_cfg)
        host.load(model.patchers, "transformer")
        try:
            activate(model.base, model.loras)
            latents = sample(model.base, scene, conditioning.positive, conditioning.negative, settings,
                             on_step=_step_reporter(steps, scene), cancel=_cancel)
        finally:
            host.free_cache()
        return (Latents(latents.cpu()),)
