"""Video nodes: decode latents to IMAGE frames, and a side-by-side comparison."""

from __future__ import annotations

from dwm.compare import side_by_side
from dwm.cogvideox.decode import decode_latents
from dwm.frames import match_length

from .. import host
from .sockets import CATEGORY, LATENTS, MODEL


class DWMDecode:
    """Decode every batch item; their frames come out one after another as one IMAGE batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "latents": (LATENTS,),
            "tiled_vae": ("BOOLEAN", {"default": True, "tooltip": "Bounds VAE memory (decode is the "
                                                                  "usual out-of-memory spot)."}),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    def decode(self, model, latents, tiled_vae):
        host.load(model.patchers, "vae")
        try:
            videos = decode_latents(model.base.vae, latents.samples, tiling=tiled_vae,
                                    check_cancel=host.check_interrupted)
        finally:
            host.free_cache()
        return (videos.reshape(-1, *videos.shape[2:]),)


class DWMCompare:
    """static | hands | output | ground truth, at the output's height and frame count."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "static_video": ("IMAGE",),
            "hand_video": ("IMAGE",),
            "output": ("IMAGE",),
        }, "optional": {
            "ground_truth": ("IMAGE",),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "compare"
    CATEGORY = CATEGORY

    def compare(self, static_video, hand_video, output, ground_truth=None):
        frames = output.shape[0]
        # A batch decodes to its videos one after another: repeat the inputs once per video.
        repeats = frames // static_video.shape[0] if frames % static_video.shape[0] == 0 else 1

        def fit(video):
            return match_length(video.repeat(repeats, 1, 1, 1), frames)

        panels = [fit(static_video), fit(hand_video), output]
        if ground_truth is not None:
            panels.append(fit(ground_truth))
        return (side_by_side(panels, height=output.shape[1]),)
