"""Conditioning nodes' work: prompt embeddings and the encoded static-scene and hand videos."""

from __future__ import annotations

from dataclasses import fields

from dwm.cogvideox.scene import encode_scene
from dwm.cogvideox.text import encode_prompt

from .. import host
from .sockets import Conditioning, ModelHandle, Scene, frames_of


def encode_text(model: ModelHandle, prompt: str = "", negative_prompt: str = "") -> Conditioning:
    """DWM Text Encode: both prompts through the base's T5 (cached per prompt), kept on the CPU."""
    host.load(model.patchers, "text_encoder")
    return Conditioning(encode_prompt(model.base, prompt).cpu(), encode_prompt(model.base, negative_prompt).cpu())


def encode_videos(model: ModelHandle, static_video, hand_video, width: int = 720, height: int = 480,
                  num_frames: int = 49, tiled_vae: bool = True, seed: int = 0) -> Scene:
    """DWM Scene Encode: both videos (IMAGE batches or VIDEOs) to the target size and frame count
    (warning when cut or padded), encoded; a VIDEO's frame rate is kept for the decoder."""
    static, static_rate = frames_of(static_video, "static_video")
    hands, hand_rate = frames_of(hand_video, "hand_video")
    host.load(model.patchers, "vae")
    try:
        scene = encode_scene(model.base.vae, static, hands, width, height, num_frames or None, seed=seed,
                             tiling=tiled_vae, check_cancel=host.check_interrupted)
    finally:
        host.free_cache()
    values = {f.name: getattr(scene, f.name) for f in fields(scene)}
    values.update(static=scene.static.cpu(), hands=scene.hands.cpu())
    return Scene(**values, fps=static_rate or hand_rate)
