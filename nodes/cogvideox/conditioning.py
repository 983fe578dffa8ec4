"""Conditioning nodes: prompt embeddings and the encoded static-scene and hand videos."""

from __future__ import annotations

from dataclasses import replace

from dwm.cogvideox.scene import encode_scene
from dwm.cogvideox.text import encode_prompt

from .. import host
from .sockets import CATEGORY, CONDITIONING, MODEL, SCENE, Conditioning

MAX_SIZE = 2048
MAX_FRAMES = 1025
MAX_SEED = 0xFFFFFFFFFFFFFFFF  # as the core KSampler; the engine wraps derived seeds into range


class DWMTextEncode:
    """Encode the action prompt and the negative prompt with the base's T5 (cached per prompt)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "What the hands do; may be empty."}),
        }, "optional": {
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "Used by classifier-free guidance (cfg > 1)."}),
        }}

    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, model, prompt, negative_prompt=""):
        host.load(model.patchers, "text_encoder")
        positive = encode_prompt(model.base, prompt).cpu()
        negative = encode_prompt(model.base, negative_prompt).cpu()
        return (Conditioning(positive, negative),)


class DWMSceneEncode:
    """Bring both videos to the target size and frame count (warning when cut or padded) and encode them."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL,),
            "static_video": ("IMAGE", {"tooltip": "The scene with nobody in it, frames as an IMAGE batch."}),
            "hand_video": ("IMAGE", {"tooltip": "The hand meshes on black, same camera path."}),
            "width": ("INT", {"default": 720, "min": 16, "max": MAX_SIZE, "step": 16,
                              "tooltip": "Multiple of 16; videos are scaled to cover it and centre-cropped."}),
            "height": ("INT", {"default": 480, "min": 16, "max": MAX_SIZE, "step": 16,
                               "tooltip": "Multiple of 16."}),
            "num_frames": ("INT", {"default": 49, "min": 0, "max": MAX_FRAMES, "step": 1,
                                   "tooltip": "4k+1 frames (49 in the paper); 0 = the longest 4k+1 the "
                                              "videos allow."}),
            "tiled_vae": ("BOOLEAN", {"default": True, "tooltip": "Bounds VAE memory; turn off only "
                                                                  "with plenty of VRAM."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED,
                             "tooltip": "Seed of the hand video's latent sample."}),
        }}

    RETURN_TYPES = (SCENE,)
    RETURN_NAMES = ("scene",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, model, static_video, hand_video, width, height, num_frames, tiled_vae, seed):
        host.load(model.patchers, "vae")
        try:
            scene = encode_scene(model.base.vae, static_video, hand_video, width, height,
                                 num_frames or None, seed=seed, tiling=tiled_vae,
                                 check_cancel=host.check_interrupted)
        finally:
            host.free_cache()
        return (replace(scene, static=scene.static.cpu(), hands=scene.hands.cpu()),)
