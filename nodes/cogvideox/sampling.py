"""The sampler node's work: memory mode and LoRAs on, denoise with one progress update (and preview) per step,
under the run's step cache and attention backend."""

from __future__ import annotations

from comfyui_dwm.cogvideox.sampler import SamplerSettings, sample
from comfyui_dwm.cogvideox.speed import set_attention, step_cache
from comfyui_dwm.preview import latents_to_rgb
from PIL import Image

from .. import host
from .placement import placed
from .sockets import Conditioning, Latents, ModelHandle, Scene


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


def sample_latents(model: ModelHandle, conditioning: Conditioning, scene: Scene, steps: int = 50,
                   cfg: float = 6.0, scheduler: str = "ddim", seed: int = 42, batch_size: int = 1,
                   dynamic_cfg: bool = False, cache: str = "none", attention: str = "sdpa") -> Latents:
    """DWM Sampler: one video per seed (seed, seed+1, ... for a batch), the handle's LoRAs applied in its
    memory mode. ``cache`` (a step cache, reset for this run) and ``attention`` apply to this run only:
    the base is shared with other handles."""
    settings = SamplerSettings(steps=steps, guidance=cfg, scheduler=scheduler, seed=seed,
                               batch=batch_size, dynamic_cfg=dynamic_cfg)
    with placed(model, "transformer", apply=True, loras=True):
        transformer = model.base.transformer
        set_attention(transformer, attention)
        with step_cache(transformer, cache, steps=steps, cfg=cfg > 1):
            latents = sample(model.base, scene, conditioning.positive, conditioning.negative, settings,
                             on_step=_step_reporter(steps, scene), cancel=_cancel)
    return Latents(latents.cpu(), getattr(scene, "fps", None))
