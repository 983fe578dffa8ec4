"""Check a run's inputs before any model is loaded: a typo must not cost a 5B load (or hours).

The list files and every sample (each video's first frame, each tensor file's shape), the model folder's layout and
transformer config, the output folder's writability. Config values are checked when it is parsed
(``config.py``) and the checkpoint to resume from once the accelerator exists (``checkpointing.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from comfyui_dwm.cogvideox.model import BASE_CHANNELS, COMPONENTS, DWM_CHANNELS
from comfyui_dwm.dataset import Sample, VIDEO_DIRS, read_list
from comfyui_dwm.errors import DWMError
from comfyui_dwm.safety import check_writable
from comfyui_dwm.video_io import probe_video

from .config import TrainConfig
from .data import DWMDataset

MODEL_FIX = ("pass the folder of a CogVideoX-Fun InP model in diffusers layout (transformer/, vae/, "
             "text_encoder/, tokenizer/, scheduler/), e.g. a download of alibaba-pai/CogVideoX-Fun-V1.1-5b-InP, "
             "or a Wan2.1-Fun InP folder (VideoX-Fun layout: config.json + diffusion_pytorch_model*.safetensors)")


@dataclass
class Inputs:
    dataset: DWMDataset  # every sample probed
    validation: list[Sample]


def transformer_config(model: str) -> dict:
    """The base's transformer config, read without loading weights; refuses what is not an InP base."""
    from diffusers import CogVideoXTransformer3DModel

    if os.path.isdir(model):
        missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(model, c))]
        if missing:
            raise DWMError("model", f"{model} lacks the sub-folders {', '.join(missing)}", MODEL_FIX)
    elif os.path.exists(model) or model.count("/") != 1:
        raise DWMError("model", f"{model!r} is neither a model folder nor a hub id (owner/name)", MODEL_FIX)
    try:
        config = dict(CogVideoXTransformer3DModel.load_config(model, subfolder="transformer"))
    except (OSError, ValueError) as err:
        raise DWMError("model", f"cannot read the transformer config of {model} ({str(err).splitlines()[0]})",
                       MODEL_FIX) from None
    if config.get("in_channels") not in (BASE_CHANNELS, DWM_CHANNELS):
        raise DWMError("model", f"the transformer of {model} takes {config.get('in_channels')} input channels, "
                       f"not the {BASE_CHANNELS} of an inpainting (InP) model", MODEL_FIX)
    return config


def check_inputs(cfg: TrainConfig, family) -> Inputs:
    """The probed training set and the validation samples; raises DWMError on the first bad input.
    ``family`` (``training/families``) checks the base and names the precomputed files."""
    if not os.path.isdir(cfg.data_root):
        raise DWMError("data_root", f"{cfg.data_root} is not a folder",
                       "pass the folder that holds videos/, videos_static/, videos_hands/ (or the list's paths)")
    text_dim = family.check_model(cfg.model)
    dataset = DWMDataset(read_list(cfg.data_root, cfg.train_list), cfg.width, cfg.height, cfg.num_frames,
                         text_dim, family.layout)
    dataset.probe()
    validation = []
    if cfg.validation_list and cfg.num_validation_videos > 0:
        validation = read_list(cfg.data_root, cfg.validation_list)[: cfg.num_validation_videos]
        for sample in validation:
            for key in VIDEO_DIRS:
                probe_video(sample.video(key), name=f"validation sample {sample.name} {VIDEO_DIRS[key]}")
    check_writable(cfg.output_dir, "output_dir")
    return Inputs(dataset, validation)
