"""Conditioning nodes' work: prompt embeddings and the encoded static-scene and hand videos."""

from __future__ import annotations

from dataclasses import fields

from comfyui_dwm.cogvideox.scene import encode_scene
from comfyui_dwm.cogvideox.text import encode_prompt

from .. import host
from .placement import placed
from .sockets import DEFAULT_FPS, Conditioning, ModelHandle, Scene, frames_of


def encode_text(model: ModelHandle, prompt: str = "", negative_prompt: str = "") -> Conditioning:
    """DWM Text Encode: both prompts through the base's T5 (cached per prompt), kept on the CPU."""
    with placed(model, "text_encoder"):
        return Conditioning(encode_prompt(model.base, prompt).cpu(), encode_prompt(model.base, negative_prompt).cpu())


def encode_videos(model: ModelHandle, static_video, hand_video, width: int = 720, height: int = 480,
                  num_frames: int = 49, tiled_vae: bool = True, seed: int = 0, fps: float = DEFAULT_FPS) -> Scene:
    """DWM Scene Encode: both videos (IMAGE batches or VIDEOs) to the target size and frame count
    (warning when cut or padded), encoded; tiled whatever ``tiled_vae`` says where the memory mode wants
    it. A VIDEO is streamed at ``fps`` (0: its own rate), only the frames and size used decoded; its
    resulting rate is kept for the decoder."""
    wanted = {"fps": fps, "max_frames": num_frames or None, "width": width, "height": height}
    static, static_rate = frames_of(static_video, "static_video", **wanted)
    hands, hand_rate = frames_of(hand_video, "hand_video", **wanted)
    with placed(model, "vae") as plan:
        scene = encode_scene(model.base.vae, static, hands, width, height, num_frames or None, seed=seed,
                             tiling=tiled_vae or plan.vae_tiling, check_cancel=host.check_interrupted)
    values = {f.name: getattr(scene, f.name) for f in fields(scene)}
    values.update(static=scene.static.cpu(), hands=scene.hands.cpu())
    return Scene(**values, fps=static_rate or hand_rate)
