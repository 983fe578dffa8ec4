"""DWM-Wan loaders: the Wan2.1-Fun InP base as a stock host MODEL, and a DWM-Wan release on it."""

from __future__ import annotations

from contextlib import contextmanager

import comfy.model_base
import comfy.sd
import torch
from comfy_api.latest import io
from comfyui_dwm.errors import DWMError
from comfyui_dwm.wan.model import read_wan_config, read_wan_state_dict

from . import files
from .patch import apply_release, get_release

CATEGORY = "DWM/Wan"
# The host's own weight dtype choices (as its Load Diffusion Model node sets them).
WEIGHT_DTYPES = {
    "default": {},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}


@contextmanager
def as_input(engine_name: str, node_input: str):
    """Re-label the engine's DWMError for ``engine_name`` with the node's input name the user sees."""
    try:
        yield
    except DWMError as err:
        if err.what != engine_name:
            raise
        raise DWMError(node_input, err.problem, err.fix) from None


class DWMWanModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMWanModelLoader",
            display_name="DWM-Wan Model Loader",
            category=CATEGORY,
            description="Load a Wan2.1-Fun InP base from its VideoX-Fun folder (config.json + "
                        "diffusion_pytorch_model*.safetensors shards) as ComfyUI's own Wan model. A single-file "
                        "Fun InP loaded with Load Diffusion Model works the same with the DWM-Wan nodes.",
            inputs=[
                io.Combo.Input("model_name", options=files.model_choices(),
                               tooltip="A Wan2.1-Fun InP folder (e.g. Wan2.1-Fun-V1.1-14B-InP) in "
                                       "models/diffusion_models or models/dwm, found by its config.json."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Weight storage, as in Load Diffusion Model: default keeps ComfyUI's "
                                       "choice; fp8 halves the memory at some quality cost."),
            ],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="The stock Wan 2.1 image-to-video model; add the DWM-Wan LoRA "
                                             "Loader after it.")],
        )

    @classmethod
    def execute(cls, model_name, weight_dtype) -> io.NodeOutput:
        if weight_dtype not in WEIGHT_DTYPES:
            raise DWMError("weight_dtype", f"unknown choice {weight_dtype!r}", f"use one of {list(WEIGHT_DTYPES)}")
        folder = files.resolve_model(model_name)
        with as_input("model", "model_name"):
            read_wan_config(folder)  # refuses t2v / non-InP folders with a clear line
            state = read_wan_state_dict(folder)
        model = comfy.sd.load_diffusion_model_state_dict(state, model_options=dict(WEIGHT_DTYPES[weight_dtype]))
        if model is None or not isinstance(model.model, comfy.model_base.WAN21):
            raise DWMError("model_name", f"ComfyUI does not recognise the weights in {folder} as a Wan 2.1 model",
                           "finish the download, or use the folder of alibaba-pai/Wan2.1-Fun-V1.1-14B-InP")
        return io.NodeOutput(model)


class DWMWanLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DWMWanLoraLoader",
            display_name="DWM-Wan LoRA Loader",
            category=CATEGORY,
            description="Apply a DWM-Wan release (LoRA + the widened 52-channel patch embedding) to a Wan2.1-Fun "
                        "InP model. Chain core LoRA loaders (e.g. LightX2V) after it; changing the strength "
                        "does not reload the base.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1-Fun InP model from the DWM-Wan Model Loader or "
                                                "Load Diffusion Model."),
                io.Combo.Input("lora_name", options=files.lora_choices(),
                               tooltip="A release folder in models/loras holding "
                                       "lora_diffusion_pytorch_model.safetensors and non_lora_weights.safetensors "
                                       "(e.g. DWM-Wan2.1-Fun-14b-LoRA)."),
                io.Float.Input("strength", default=1.0, min=-2.0, max=2.0, step=0.01,
                               tooltip="1 = as trained, 0 = the base model. Scales the LoRA and blends the "
                                       "patch embedding between the base's and the release's."),
            ],
            outputs=[io.Model.Output(display_name="model",
                                     tooltip="The model running DWM: feed it DWM-Wan Scene Conditioning "
                                             "through ModelSamplingSD3 (shift 5) and KSampler.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength) -> io.NodeOutput:
        with as_input("lora", "lora_name"):
            release = get_release(files.resolve_lora(lora_name))
            return io.NodeOutput(apply_release(model, release, strength))
