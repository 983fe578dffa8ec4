"""The CogVideoX DWM nodes: each node's work is a plain function (importable and tested without
ComfyUI), keyed here by node id; their V3 classes, which need ComfyUI, are in ``v3.py``."""

from .conditioning import encode_text, encode_videos
from .loaders import load_lora, load_model
from .sampling import sample_latents
from .video import compare, decode

NODE_FUNCTIONS = {"DWMModelLoader": load_model, "DWMLoraLoader": load_lora, "DWMTextEncode": encode_text,
                  "DWMSceneEncode": encode_videos, "DWMSampler": sample_latents, "DWMDecode": decode,
                  "DWMCompare": compare}
