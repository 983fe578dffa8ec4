"""DWM-Wan scene conditioning in the host's own Wan layout, for core ModelSamplingSD3 + KSampler.

Both prompts get ``concat_latent_image`` = static latents then hand latents (channels), a
``concat_mask`` of zeros (0 = known: the host turns it into the all-ones mask DWM was trained with)
and a ``clip_vision_output`` of zero features (the reference feeds zeros to the image branch). The
host's ``WAN21.concat_cond`` then builds ``[mask x4, static, hands]`` after the noise: 16+4+16+16 = 52
input channels, the order of the release's patch embedding.
"""

from __future__ import annotations

import comfy.clip_vision
import comfy.model_management
import node_helpers
import torch
from comfy_api.latest import io
from comfyui_dwm.errors import DWMError
from comfyui_dwm.frames import check_num_frames, prepare_frames
from comfyui_dwm.video_stream import DEFAULT_FPS

from .. import host
from .loaders import CATEGORY, as_input

LATENT_CHANNELS = 16  # Wan 2.1 VAE
CLIP_TOKENS, CLIP_WIDTH = 257, 1280  # the open-clip ViT-H features the image branch takes
MAX_SIZE = 2048
MAX_FRAMES = 1025


def _frames(images, video, name: str, fps: float, length: int, width: int, height: int) -> torch.Tensor:
    """The frames of whichever of the IMAGE / VIDEO inputs is connected (exactly one must be); a VIDEO is
    streamed at ``fps``, only ``length`` frames at the size decoded."""
    if images is not None and video is not None:
        raise DWMError(f"{name}_images", f"both {name}_images and {name}_video are connected",
                       "connect only one of them")
    if video is not None:
        return host.video_frames(video, f"{name}_video", fps, length, width, height)[0]
    if images is None:
        raise DWMError(f"{name}_images", f"no {name} video is connected",
                       f"connect {name}_images (an IMAGE batch) or {name}_video (a VIDEO)")
    return images


def zero_clip_vision_output(batch: int = 1) -> comfy.clip_vision.Output:
    out = comfy.clip_vision.Output()
    out.penultimate_hidden_states = torch.zeros(batch, CLIP_TOKENS, CLIP_WIDTH)
    return out


def encode(vae, frames: torch.Tensor, width: int, height: int, length: int, name: str) -> torch.Tensor:
    """Frames brought to the target size and count (``dwm/frames.py`` rules), encoded by the host VAE."""
    pixels = (prepare_frames(frames, width, height, length, name).permute(1, 2, 3, 0) + 1) / 2
    latents = vae.encode(pixels[:, :, :, :3])
    want = (LATENT_CHANNELS, (length - 1) // 4 + 1, height // 8, width // 8)
    if latents.ndim != 5 or tuple(latents.shape[1:]) != want:
        raise DWMError("vae", f"it encodes {length} frames of {width}x{height} to {list(latents.shape)}, not "
                       f"[1, {', '.join(map(str, want))}] as the Wan 2.1 VAE does",
                       "load the Wan 2.1 VAE (wan_2.1_vae.safetensors) with Load VAE")
    return latents


class DWMWanSceneConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMWanSceneConditioning",
            display_name="DWM-Wan Scene Conditioning",
            category=CATEGORY,
            description="Encode the static-scene video and the hand video with the Wan VAE and attach them to "
                        "both prompts the way DWM-Wan was trained (every pixel known, no image features). "
                        "Videos are scaled to cover width x height, centre-cropped, and cut or padded to "
                        "length frames (with a warning). Sample with ModelSamplingSD3 (shift 5) and KSampler "
                        "(euler, normal, 50 steps, cfg 6).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The action prompt, from CLIP Text Encode (umT5)."),
                io.Conditioning.Input("negative",
                                      tooltip="The negative prompt (the reference uses 'bad detailed')."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors)."),
                io.Int.Input("width", default=720, min=16, max=MAX_SIZE, step=16,
                             tooltip="Output width, a multiple of 16 (720 in the paper)."),
                io.Int.Input("height", default=480, min=16, max=MAX_SIZE, step=16,
                             tooltip="Output height, a multiple of 16 (480 in the paper)."),
                io.Int.Input("length", default=49, min=1, max=MAX_FRAMES, step=4,
                             tooltip="Frames, of the form 4k+1 (49 in the paper); longer videos are cut, "
                                     "shorter ones padded with their last frame."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Videos sampled at once from the same scene (different noise)."),
                io.Image.Input("static_images", optional=True,
                               tooltip="The static scene (nobody in it) as an IMAGE batch; or use static_video."),
                io.Image.Input("hand_images", optional=True,
                               tooltip="The rendered hand meshes on black, same camera path, as an IMAGE "
                                       "batch; or use hand_video."),
                io.Video.Input("static_video", optional=True, tooltip="The static scene as a VIDEO (Load Video)."),
                io.Video.Input("hand_video", optional=True, tooltip="The hand video as a VIDEO (Load Video)."),
                io.Float.Input("fps", default=DEFAULT_FPS, min=0.0, max=240.0, step=1.0, optional=True,
                               tooltip="A VIDEO input is resampled to this rate (8, DWM's training rate; 0 = "
                                       "keep its own), and only the frames and size used are decoded (with a "
                                       "warning). IMAGE batches are used as they are."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="The positive prompt with the scene."),
                io.Conditioning.Output(display_name="negative", tooltip="The negative prompt with the scene."),
                io.Latent.Output(display_name="latent",
                                 tooltip="Empty video latent of the right size for KSampler."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, width, height, length, batch_size, static_images=None,
                hand_images=None, static_video=None, hand_video=None, fps=DEFAULT_FPS) -> io.NodeOutput:
        with as_input("num_frames", "length"):
            check_num_frames(length)
        static = _frames(static_images, static_video, "static", fps, length, width, height)
        hands = _frames(hand_images, hand_video, "hand", fps, length, width, height)
        static = encode(vae, static, width, height, length, "static video")
        hands = encode(vae, hands, width, height, length, "hand video")
        values = {"concat_latent_image": torch.cat([static, hands], dim=1),
                  "concat_mask": torch.zeros((1, 4, *static.shape[2:]), dtype=static.dtype),
                  "clip_vision_output": zero_clip_vision_output()}
        latent = torch.zeros([batch_size, LATENT_CHANNELS, (length - 1) // 4 + 1, height // 8, width // 8],
                             device=comfy.model_management.intermediate_device())
        return io.NodeOutput(node_helpers.conditioning_set_values(positive, values),
                             node_helpers.conditioning_set_values(negative, values), {"samples": latent})
