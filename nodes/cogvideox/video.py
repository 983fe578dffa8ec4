"""Video nodes' work: decode latents to frames, and a labelled side-by-side comparison.

Both give frames plus a frame rate, from which the node makes its IMAGE and VIDEO outputs.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from comfyui_dwm.cogvideox.decode import decode_latents
from comfyui_dwm.compare import side_by_side
from comfyui_dwm.frames import match_length

from .. import host
from .placement import placed
from .sockets import DEFAULT_FPS, Latents, ModelHandle, as_rate, frames_of


def decode(model: ModelHandle, latents: Latents, tiled_vae: bool = True,
           fps: float = DEFAULT_FPS) -> tuple[torch.Tensor, Fraction]:
    """DWM Decode: every batch item's frames one after another; the scene's VIDEO rate, else ``fps``.
    Tiled whatever ``tiled_vae`` says where the memory mode wants it."""
    with placed(model, "vae") as plan:
        videos = decode_latents(model.base.vae, latents.samples, tiling=tiled_vae or plan.vae_tiling,
                                check_cancel=host.check_interrupted)
    return videos.reshape(-1, *videos.shape[2:]), latents.fps or as_rate(fps)


def compare(static_video, hand_video, output, ground_truth=None,
            fps: float = DEFAULT_FPS) -> tuple[torch.Tensor, Fraction]:
    """DWM Compare: static | hands | output | ground truth, labelled, at the output's height and length.

    Inputs are IMAGE batches or VIDEOs; the rate is the first VIDEO's (output first), else ``fps``. Only
    the frames shown are taken from each input (a VIDEO is streamed at the output's rate and height).
    """
    out, out_rate = frames_of(output, "output")
    frames, height = out.shape[0], out.shape[1]
    wanted = {"fps": out_rate or as_rate(fps), "max_frames": frames, "height": height}
    static, static_rate = frames_of(static_video, "static_video", **wanted)
    hands, hand_rate = frames_of(hand_video, "hand_video", **wanted)
    truth, truth_rate = frames_of(ground_truth, "ground_truth", **wanted) if ground_truth is not None else (None, None)
    # A batch decodes to its videos one after another: repeat the inputs once per video.
    repeats = frames // static.shape[0] if frames % static.shape[0] == 0 else 1

    def fit(video):
        if video is None:
            return None
        shown = video[:frames]  # a view: nothing beyond the frames shown is copied
        return match_length(shown.repeat(repeats, 1, 1, 1) if repeats > 1 else shown, frames)

    side = side_by_side([fit(static), fit(hands), out, fit(truth)], height=height)
    return side, out_rate or static_rate or hand_rate or truth_rate or as_rate(fps)
